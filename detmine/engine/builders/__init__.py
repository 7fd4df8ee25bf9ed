"""Builders: the config turned into parts. Every tool (train, evaluate, visualise, export)
goes through these functions, so a recipe means the same thing everywhere.

- :mod:`~detmine.engine.builders.data`: datasets, transforms, loaders;
- :mod:`~detmine.engine.builders.model`: the detector, weights into it, the criterion;
- :mod:`~detmine.engine.builders.training`: device, optimisation parts, the hooks and the
  :class:`~detmine.engine.trainer.Trainer` over the run folder
  (:class:`~detmine.engine.run_folder.RunFolder`).

Builders only build: the config they are given was checked once, at load
(:func:`detmine.config.load_config`: every component name, option and type against its table's
constructor signature).
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
    build_matcher_from_config,
    build_model_from_config,
    detector_for_split,
    load_detector,
    load_model_weights,
    read_detector_weights,
    training_set_facts,
)
from detmine.engine.builders.training import (
    build_hooks,
    build_optimization,
    build_trainer,
    schedule_length,
)
from detmine.engine.run_folder import RunFolder

__all__ = [
    "DetectorWeights",
    "RunFolder",
    "batch_geometry",
    "build_criterion_from_config",
    "build_dataset_split",
    "build_datasets",
    "build_hooks",
    "build_matcher_from_config",
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
    "training_set_facts",
    "voc_class_names",
]
