"""Builders: the config turned into parts. Every tool (train, evaluate, visualise, export)
goes through these functions, so a recipe means the same thing everywhere.

- :mod:`~detmine.engine.builders.data`: datasets, transforms, loaders;
- :mod:`~detmine.engine.builders.model`: the detector, weights into it, the criterion;
- :mod:`~detmine.engine.builders.training`: device, optimisation parts, the run folder, the
  hooks and the :class:`~detmine.engine.trainer.Trainer`.

Free-form option dicts (``model.options``, ``data.options``, ``data.transform_options``,
``data.loader_options``) are checked against the signature of the function they are passed
to: an unknown option is a one-line :class:`~detmine.errors.ConfigError` naming the key and
the valid options.
"""

from detmine.engine.builders.data import (
    batch_geometry,
    build_dataset_split,
    build_datasets,
    build_train_loader,
    build_val_loader,
    eval_transform_options,
    per_process_batch,
    prepare_data,
    voc_class_names,
)
from detmine.engine.builders.model import (
    DetectorWeights,
    build_criterion_from_config,
    build_model_from_config,
    detector_for_split,
    load_detector,
    load_model_weights,
    read_detector_weights,
)
from detmine.engine.builders.training import (
    RunFolder,
    build_hooks,
    build_optimization,
    build_trainer,
    schedule_length,
)

__all__ = [
    "DetectorWeights",
    "RunFolder",
    "batch_geometry",
    "build_criterion_from_config",
    "build_dataset_split",
    "build_datasets",
    "build_hooks",
    "build_model_from_config",
    "build_optimization",
    "build_train_loader",
    "build_trainer",
    "build_val_loader",
    "detector_for_split",
    "eval_transform_options",
    "load_detector",
    "load_model_weights",
    "per_process_batch",
    "prepare_data",
    "read_detector_weights",
    "schedule_length",
    "voc_class_names",
]
