"""Build datasets, loaders, the model and the criterion from a :class:`~detmine.config.Config`.

Every tool (train, evaluate, visualise) goes through these functions, so a recipe means
the same thing everywhere. Free-form option dicts (``model.options``, ``data.options``,
``data.transform_options``, ``data.loader_options``) are checked here against the
signature of the function they are passed to: an unknown option is a one-line
:class:`~detmine.errors.ConfigError` naming the key and the valid options.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from detmine.config import Config
from detmine.engine import distributed as dist
from detmine.errors import ConfigError


def check_options(fn: Callable, options: dict[str, Any], key: str, skip: tuple[str, ...] = ()) -> None:
    """Raise ConfigError when ``options`` holds a keyword ``fn`` does not accept.

    ``key`` is the config path of the dict (e.g. ``model.options``); ``skip`` lists the
    parameters the builder passes itself (they are not the user's to set there).
    """
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return  # a **kwargs builder validates its own options
    valid = [
        name
        for name, p in params.items()
        if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        and name not in skip
    ]
    check_names(options, valid, key, f" for {getattr(fn, '__name__', fn)}")


def check_names(options: Any, valid: Sequence[str], key: str, where: str = "", note: str = "") -> None:
    """Raise ConfigError for the first name in ``options`` outside ``valid``: one line naming
    ``key.name``, the closest valid name and all of them."""
    for name in options:
        if name not in valid:
            hint = difflib.get_close_matches(name, valid, n=1)
            did_you_mean = f"did you mean '{key}.{hint[0]}'? " if hint else ""
            raise ConfigError(
                f"unknown config key '{key}.{name}'{where}; {did_you_mean}"
                f"valid options: {', '.join(valid) if valid else '(none)'}{note}"
            )


# ----------------------------------------------------------------------------- data


def prepare_data(cfg: Config) -> None:
    """Generate the synthetic dataset on first use (idempotent; a no-op for COCO/VOC)."""
    if cfg.data.kind == "synthetic":
        from detmine.data.synthetic import ensure_synthetic

        ensure_synthetic(cfg.data.root, progress=dist.is_main_process(), **cfg.data.synthetic)


EVAL_GEOMETRY_KEYS = ("square", "max_size", "min_box_size")


def eval_transform_options(cfg: Config) -> dict[str, Any]:
    """Keyword options of the ``eval`` preset: the geometry the recipe trains with.

    A fixed ``image_size`` square after the ``ssd`` (and ``eval``) training presets; after
    ``retinanet`` the shorter side resized to ``image_size`` with the aspect ratio kept and the
    longer side capped at the training ``max_size`` (or a square when the training transform
    has ``square: true``). ``data.eval_transform_options`` overrides any of these. The eval
    preset never flips or crops.
    """
    d = cfg.data
    train_opts = dict(d.transform_options)
    if d.train_transform == "retinanet":
        options: dict[str, Any] = {"square": bool(train_opts.get("square", False))}
        if "max_size" in train_opts:
            options["max_size"] = train_opts["max_size"]
    else:
        options = {"square": True}
    if "min_box_size" in train_opts:
        options["min_box_size"] = train_opts["min_box_size"]
    extra = dict(d.eval_transform_options)
    check_names(extra, EVAL_GEOMETRY_KEYS, "data.eval_transform_options", note=" (evaluation never augments)")
    options.update(extra)
    return options


def build_dataset_split(cfg: Config, split: str, train: bool) -> Any:
    """One split of the configured dataset with the training or evaluation transform."""
    from detmine.data import build_dataset
    from detmine.data.transforms import build_transforms

    d = cfg.data
    if train:
        t_opts = dict(d.transform_options)
        check_options(build_transforms, t_opts, "data.transform_options", skip=("preset", "image_size"))
        transform = build_transforms(d.train_transform, d.image_size, **t_opts)
    else:
        transform = build_transforms("eval", d.image_size, **eval_transform_options(cfg))
    options = dict(d.options) if train else {**d.options, **d.val_options}
    if d.kind == "voc" and options.get("class_names") is None:
        options["class_names"] = voc_class_names(cfg)
    return build_dataset(d.kind, d.root, split, transform=transform, on_bad_image=d.on_bad_image, **options)


def voc_class_names(cfg: Config) -> list[str]:
    """The class names of a VOC-format dataset without ``data.options.class_names``: discovered
    from the TRAINING split's annotations, so every split and tool shares one mapping."""
    from detmine.data.voc import discover_class_names

    d = cfg.data
    years = {"years": d.options["years"]} if "years" in d.options else {}
    return discover_class_names(d.root, split=d.train_split, **years)


def build_datasets(cfg: Config) -> tuple[Any, Any]:
    """``(train_dataset, val_dataset)`` of the configured data. VOC class names discovered from
    the annotations are written into ``cfg.data.options.class_names``, so the run's
    config.yaml keeps the mapping for evaluation and prediction."""
    train_set = build_dataset_split(cfg, cfg.data.train_split, True)
    if cfg.data.kind == "voc" and cfg.data.options.get("class_names") is None:
        cfg.data.options["class_names"] = list(train_set.class_names)
        if dist.is_main_process():
            print(
                f"VOC split {cfg.data.train_split!r}: data.options.class_names not given; using the "
                f"{len(train_set.class_names)} classes of its annotations: {train_set.class_names} "
                "(saved in the run's config.yaml; set data.options.class_names to choose the order)"
            )
    return train_set, build_dataset_split(cfg, cfg.data.val_split, False)


def per_process_batch(global_batch: int, what: str = "train.batch_size") -> int:
    world = dist.get_world_size()
    if global_batch % world:
        raise ConfigError(
            f"{what}={global_batch} is the global batch and must be divisible by the {world} processes"
        )
    return global_batch // world


def batch_geometry(model: nn.Module | None) -> dict[str, Any]:
    """``size_divisible`` / ``pad_value`` of the loader for ``model``: the input divisibility the
    model declares (1 for fixed-size SSD, so 300 px stays 300 px) and its normalisation mean in
    0..255 pixels (padding becomes zero after normalisation)."""
    if model is None:
        return {}
    out: dict[str, Any] = {}
    if hasattr(model, "size_divisible"):
        out["size_divisible"] = int(model.size_divisible)
    if hasattr(model, "pad_value"):
        out["pad_value"] = tuple(float(v) for v in model.pad_value)
    return out


def build_train_loader(cfg: Config, dataset: Any, model: nn.Module | None = None) -> Any:
    """The training loader: shuffled with a sampler seeded by ``train.seed`` (resumable),
    sharded over the processes when distributed; per-process batch = global / world size;
    batches padded as ``model`` declares (:func:`batch_geometry`)."""
    from detmine.data.loader import build_dataloader

    opts = dict(cfg.data.loader_options)
    check_options(build_dataloader, opts, "data.loader_options", skip=("dataset", "batch_size", "train"))
    return build_dataloader(
        dataset,
        per_process_batch(cfg.train.batch_size),
        train=True,
        num_workers=cfg.data.num_workers,
        distributed=dist.get_world_size() > 1,
        seed=cfg.train.seed,
        **{**batch_geometry(model), **opts},
    )


def build_val_loader(cfg: Config, dataset: Any, model: nn.Module | None = None) -> Any:
    """The evaluation loader (in order, sharded when distributed), optionally the first
    ``eval.max_images`` images only; batches padded as ``model`` declares."""
    from torch.utils.data import Subset

    from detmine.data.loader import build_dataloader

    if cfg.eval.max_images > 0 and cfg.eval.max_images < len(dataset):
        dataset = Subset(dataset, range(cfg.eval.max_images))
    batch = max(1, cfg.eval.batch_size // dist.get_world_size())
    return build_dataloader(
        dataset,
        batch,
        train=False,
        num_workers=cfg.data.num_workers,
        distributed=dist.get_world_size() > 1,
        seed=cfg.train.seed,
        **batch_geometry(model),
    )


# ----------------------------------------------------------------------------- model / criterion


def build_model_from_config(
    cfg: Config, num_classes: int, *, load_weights: bool = True, trust_checkpoint: bool = False
) -> nn.Module:
    """``build_model(model.name, num_classes, **model.options)``, then ``model.weights`` if set
    (and ``load_weights``)."""
    from detmine import modeling

    name, options = cfg.model.name, dict(cfg.model.options)
    table = getattr(modeling, "MODELS", None)
    if isinstance(table, dict):
        if name not in table:
            hint = difflib.get_close_matches(name, list(table), n=1)
            did_you_mean = f"did you mean {hint[0]!r}? " if hint else ""
            raise ConfigError(
                f"config key 'model.name' is {name!r}; {did_you_mean}valid models: {', '.join(table)}"
            )
        check_options(table[name], options, "model.options", skip=("num_classes",))
    model = modeling.build_model(name, num_classes, **options)
    if cfg.model.weights and load_weights:
        load_model_weights(model, cfg.model.weights, cfg=cfg, trusted=trust_checkpoint)
    return model


def _warn_input_size(state: dict[str, Any], cfg: Config | None, path: str | Path) -> None:
    saved = state.get("config")
    trained = saved.get("data", {}).get("image_size") if isinstance(saved, dict) else None
    if cfg is not None and trained is not None and trained != cfg.data.image_size and dist.is_main_process():
        print(
            f"warning: {path} was trained at data.image_size={trained}, this run uses "
            f"{cfg.data.image_size}; detections may be worse at a size the model has not seen"
        )


def load_model_weights(
    model: nn.Module, path: str | Path, *, cfg: Config | None = None, trusted: bool = False
) -> list[str]:
    """Initialise the detector from a checkpoint (its EMA weights when it has them), an exported
    ``.safetensors`` or a bare state dict, loading every tensor that fits (fine-tuning with
    another number of classes keeps the new classifier). Returns the names of the tensors
    left at their initialisation, which are also printed."""
    from detmine.engine.checkpoint import load_checkpoint, load_model_state, select_weights

    state = load_checkpoint(path, trusted=trusted)
    weights, _ = select_weights(state, "auto", str(path))
    skipped = load_model_state(model, weights, source=str(path), partial=True)
    if skipped and dist.is_main_process():
        shown = ", ".join(skipped[:6]) + (f" and {len(skipped) - 6} more" if len(skipped) > 6 else "")
        print(
            f"note: model.weights {path}: {len(skipped)} tensors do not fit and keep their initialisation: {shown}"
        )
    _warn_input_size(state, cfg, path)
    return skipped


@dataclass
class DetectorWeights:
    """The weights a tool chose from a checkpoint: ``state_dict``, ``which`` (``ema`` |
    ``model``), the checkpoint's saved ``config`` (or None) and its ``path``."""

    state_dict: dict[str, Any]
    which: str
    config: dict[str, Any] | None
    path: str


def read_detector_weights(
    checkpoint: str | Path, *, weights: str = "auto", trusted: bool = False
) -> DetectorWeights:
    """Read a checkpoint / ``.safetensors`` / bare state dict and pick its ``weights`` (``auto``:
    the EMA when it has one, as the trainer evaluates). Fails fast, before any data work."""
    from detmine.engine.checkpoint import load_checkpoint, select_weights

    state = load_checkpoint(checkpoint, trusted=trusted)
    chosen, which = select_weights(state, weights, str(checkpoint))
    config = state.get("config") if isinstance(state.get("config"), dict) else None
    return DetectorWeights(chosen, which, config, str(checkpoint))


def load_detector(
    cfg: Config, num_classes: int, weights: DetectorWeights, *, device: Any = "cpu"
) -> nn.Module:
    """The detector of ``cfg`` with ``weights`` (see :func:`read_detector_weights`), in eval mode
    on ``device``, for every tool (evaluate, visualise, export, predict). Weights that do not fit
    raise one line naming the first mismatching tensors with both shapes."""
    from detmine.engine.checkpoint import load_model_state

    model = build_model_from_config(cfg, num_classes, load_weights=False)
    load_model_state(model, weights.state_dict, source=weights.path)
    _warn_input_size({"config": weights.config}, cfg, weights.path)
    return model.to(device).eval()


def build_criterion_from_config(cfg: Config, model: nn.Module) -> nn.Module:
    """The criterion for ``model``'s head (activation, box coder) and the matching, loss and
    mining sections."""
    import dataclasses

    from detmine.criterion import build_criterion

    mining = {"type": cfg.mining.type, **cfg.mining.options()}
    if cfg.mining.type is None:
        default = "ssd" if model.cls_activation == "softmax" else "all"
        mining = {"type": default, **dataclasses.replace(cfg.mining, type=default).options()}
    return build_criterion(
        model.cls_activation,
        model.box_coder,
        matching=dataclasses.asdict(cfg.matching),
        loss=dataclasses.asdict(cfg.loss),
        mining=mining,
    )


def build_trainer(
    cfg: Config,
    model: nn.Module,
    criterion: nn.Module,
    train_set: Any,
    val_set: Any,
    *,
    overwrite: bool = False,
    allow_config_change: bool = False,
    trust_checkpoint: bool = False,
) -> Any:
    """A :class:`~detmine.engine.trainer.Trainer` over the two datasets, with the config's loaders
    (``overwrite`` / ``allow_config_change`` / ``trust_checkpoint``: see the Trainer)."""
    from detmine.engine.trainer import Trainer

    return Trainer(
        cfg,
        overwrite=overwrite,
        allow_config_change=allow_config_change,
        trust_checkpoint=trust_checkpoint,
        model=model,
        criterion=criterion,
        train_loader=build_train_loader(cfg, train_set, model),
        val_loader=build_val_loader(cfg, val_set, model),
        val_dataset=val_set,
        class_names=list(train_set.class_names),
    )
