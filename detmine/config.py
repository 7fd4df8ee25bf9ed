"""Typed configuration: dataclass schema, YAML loading and dotted command-line overrides.

A recipe is one YAML file whose sections mirror the dataclasses below::

    cfg = load_config("configs/quickstart.yaml", ["mining.type=ohem", "train.lr=0.01"])

Every key is checked against the schema: an unknown key or a value of the wrong type
raises a one-line :class:`~detmine.errors.ConfigError` naming the full dotted key, the
expected type (or the valid choices) and, for typos, the closest valid key. Values of
overrides are parsed with ``yaml.safe_load`` (``train.steps=[100,200]``,
``model.options.pretrained=false``). ``section=value`` is a shortcut for
``section.type=value`` (``mining=ohem``).

Free-form dicts appear only where the option set depends on a type chosen elsewhere
(``model.options`` depends on ``model.name``; ``data.options`` on ``data.kind``); the
builders in :mod:`detmine.engine.builders` validate them against the component they
configure. The miners' options are typed per miner (``mining.ssd``, ``mining.ohem``,
``mining.random``) so that ``mining.type=ohem`` alone is a complete one-line swap.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from detmine.errors import ConfigError

# ----------------------------------------------------------------------------- schema


@dataclass
class DataConfig:
    """Where the data is and how it is read and augmented."""

    kind: Literal["synthetic", "coco", "voc"] = "synthetic"
    root: str = "data/synthetic"
    train_split: str = "train"
    val_split: str = "val"
    image_size: int = 256
    train_transform: Literal["ssd", "retinanet", "eval"] = "retinanet"
    #: evaluation always uses the deterministic ``eval`` preset (no flip, no crop).
    eval_transform: Literal["eval"] = "eval"
    #: extra keyword options of ``build_transforms`` for the training preset.
    transform_options: dict[str, Any] = field(default_factory=dict)
    #: geometry of the evaluation resize (``square``, ``max_size``, ``min_box_size``); unset
    #: keys follow the training preset: a fixed square for ``ssd``, the shorter side with
    #: the aspect kept (and the training ``max_size``) for ``retinanet``.
    eval_transform_options: dict[str, Any] = field(default_factory=dict)
    #: extra keyword options of the dataset class chosen by ``kind`` (e.g. VOC ``years``).
    options: dict[str, Any] = field(default_factory=dict)
    #: options for the validation split only, merged over ``options`` (e.g. VOC ``years: ["2007"]``).
    val_options: dict[str, Any] = field(default_factory=dict)
    #: generator options of ``ensure_synthetic`` (num_train, num_val, size, seed) for kind=synthetic.
    synthetic: dict[str, Any] = field(default_factory=dict)
    on_bad_image: Literal["skip", "error"] = "skip"
    num_workers: int = 2
    #: extra keyword options of ``build_dataloader`` (aspect-ratio grouping, repeat factors...).
    loader_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelConfig:
    """Which detector; ``options`` are the keyword options of its builder."""

    name: str = "retinanet_resnet18_fpn"
    options: dict[str, Any] = field(default_factory=dict)
    #: convert BatchNorm to SyncBatchNorm when training on several processes.
    sync_bn: bool = False
    #: a detmine checkpoint, exported ``.safetensors`` or bare state dict to initialise the
    #: detector from (fine-tuning): every tensor that fits is loaded, the others (e.g. the
    #: classifier when the number of classes differs) are named and keep their initialisation.
    weights: str | None = None


@dataclass
class MatchingConfig:
    """Anchor-to-ground-truth matching (``detmine.criterion.build_matcher``).

    ``null`` means the preset's value; the preset defaults to the head: ``ssd`` (0.5/0.5 +
    forced best anchor) for softmax heads, ``retinanet`` (0.5/0.4 + low-quality matches) for
    sigmoid heads.
    """

    preset: Literal["ssd", "retinanet"] | None = None
    fg_iou_thresh: float | None = None
    bg_iou_thresh: float | None = None
    allow_low_quality: bool | None = None
    force_best_match: bool | None = None
    #: anchors covered by an ignore region (crowd / difficult) above this fraction become ignore.
    ignore_iof_thresh: float | None = None


@dataclass
class LossConfig:
    """Classification and box losses (``detmine.criterion.build_criterion``); ``null`` = the
    head's default (softmax: ``softmax_ce`` + ``smooth_l1``; sigmoid: ``focal`` + ``l1``)."""

    cls: Literal["softmax_ce", "focal", "balanced_ce"] | None = None
    #: focal / balanced-CE alpha: one float, or one per class.
    alpha: float | list[float] | None = None
    gamma: float | None = None
    class_weights: list[float] | None = None
    box: Literal["smooth_l1", "l1", "giou"] | None = None
    beta: float | None = None
    box_weight: float | None = None
    #: what the classification loss is divided by: the ``positives`` of the batch or the
    #: ``selected`` examples (null: the miner's own choice -- positives for ``all`` / ``ssd``,
    #: selected for ``ohem`` / ``random``). The box loss is always divided by the positives.
    normalize_by: Literal["positives", "selected"] | None = None
    #: "batch": divide by that count in the batch; "ema": by an EMA of it (saved in checkpoints).
    normalizer: Literal["batch", "ema"] | None = None
    normalizer_momentum: float | None = None


@dataclass
class SSDMinerConfig:
    """SSD hard negative mining: ``neg_pos_ratio`` negatives per positive per image, at least
    ``min_negatives`` per image (``null``: the miner's default, see ``detmine.mining.ssd``)."""

    neg_pos_ratio: float | None = None
    min_negatives: int | None = None


@dataclass
class OHEMMinerConfig:
    """OHEM: the ``batch_size_per_image`` highest-loss anchors after NMS at ``nms_iou``
    (``null``: the miner's default, see ``detmine.mining.ohem``)."""

    batch_size_per_image: int | None = None
    nms_iou: float | None = None
    pos_fraction: float | None = None
    pre_nms_topk: int | None = None
    #: boxes NMS runs over: ``anchors`` (default) or the decoded ``predictions``.
    nms_boxes: Literal["anchors", "predictions"] | None = None


@dataclass
class RandomMinerConfig:
    """Balanced random sampling (Faster R-CNN heuristic; ``null``: the miner's default)."""

    batch_size_per_image: int | None = None
    pos_fraction: float | None = None
    seed: int | None = None


@dataclass
class MiningConfig:
    """Which anchors' classification loss counts; options of each miner in its own section."""

    #: ``null``: ``ssd`` for softmax heads, ``all`` for sigmoid (focal) heads.
    type: Literal["all", "ssd", "ohem", "random"] | None = None
    ssd: SSDMinerConfig = field(default_factory=SSDMinerConfig)
    ohem: OHEMMinerConfig = field(default_factory=OHEMMinerConfig)
    random: RandomMinerConfig = field(default_factory=RandomMinerConfig)

    def options(self) -> dict[str, Any]:
        """Keyword options of ``build_miner(self.type, **options)`` for the chosen miner
        (unset ones left out, so the miner's defaults apply)."""
        section = getattr(self, self.type, None) if self.type else None
        if section is None:
            return {}
        return {k: v for k, v in dataclasses.asdict(section).items() if v is not None}


@dataclass
class TrainConfig:
    """Optimisation, schedule, precision, checkpoints.

    The training length is ``max_iters`` iterations, or ``epochs`` passes over the training
    set when ``max_iters`` is 0. ``steps`` (multistep schedule) use the same unit as the
    length: iterations with ``max_iters``, epochs with ``epochs``.
    ``batch_size`` is the GLOBAL batch over all processes.
    """

    max_iters: int = 0
    epochs: float = 0.0
    batch_size: int = 16
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    nesterov: bool = False
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 1e-4
    #: apply weight decay to normalisation layers and biases too (off in most recipes).
    decay_norm_and_bias: bool = False
    lr_schedule: Literal["multistep", "cosine", "constant"] = "multistep"
    steps: list[float] = field(default_factory=list)
    gamma: float = 0.1
    min_lr_ratio: float = 0.0
    warmup_iters: int = 500
    warmup_factor: float = 0.001
    clip_grad_norm: float = 0.0
    #: mixed precision on GPU ("bf16" | "fp16" with a GradScaler | "off"); CPU runs fp32.
    amp: Literal["bf16", "fp16", "off"] = "bf16"
    ema: bool = False
    ema_decay: float = 0.9998
    #: EMA decay ramps up as ``decay * (1 - exp(-updates / ema_tau))``.
    ema_tau: float = 2000.0
    seed: int = 42
    device: Literal["auto", "cpu", "cuda"] = "auto"
    log_period: int = 20
    checkpoint_period: int = 1000
    keep_last: int = 3
    resume: bool = False
    on_nonfinite: Literal["stop", "skip"] = "stop"


@dataclass
class PostprocessConfig:
    """Inference post-processing (``DenseDetector.predict``): score threshold, per-level
    top-k before NMS, NMS IoU, detections kept per image. Defaults: torchvision's RetinaNet;
    SSD recipes use SSD's 0.01 / 400 / 0.45 / 200."""

    score_thresh: float = 0.05
    topk_candidates: int = 1000
    nms_thresh: float = 0.5
    detections_per_img: int = 100

    def options(self) -> dict[str, Any]:
        """Keyword options of ``DenseDetector.predict``."""
        return dataclasses.asdict(self)


@dataclass
class EvalConfig:
    """Evaluation during and after training."""

    #: evaluate every ``period`` iterations (0: only at the end).
    period: int = 0
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    backend: Literal["faster_coco_eval", "pycocotools"] = "faster_coco_eval"
    batch_size: int = 16
    #: evaluate on the first ``max_images`` images of the split (0: all).
    max_images: int = 0


@dataclass
class VisConfig:
    """Mined-negative pictures in TensorBoard (``period`` 0 = off)."""

    period: int = 0
    num_images: int = 4
    top_k: int = 20


@dataclass
class Config:
    """The whole recipe."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    matching: MatchingConfig = field(default_factory=MatchingConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    mining: MiningConfig = field(default_factory=MiningConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    vis: VisConfig = field(default_factory=VisConfig)
    output_dir: str = "runs/default"


# ----------------------------------------------------------------------------- type checking

_MISSING = object()


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        return f"a list of {_type_name(item)}"
    if origin is dict:
        return "a mapping"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it (ints widen to float)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices:
            return value
        hint = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        extra = f"; did you mean {hint[0]!r}?" if hint else ""
        raise ConfigError(f"config key '{key}' must be {_type_name(tp)}, got {value!r}{extra}")
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        for option in options:
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
        literals = [o for o in options if typing.get_origin(o) is Literal]
        if literals and isinstance(value, str):  # name the choices and the closest one
            choices = [str(c) for c in typing.get_args(literals[0])]
            hint = difflib.get_close_matches(value, choices, n=1)
            extra = f"; did you mean {hint[0]!r}?" if hint else ""
            raise ConfigError(f"config key '{key}' must be {_type_name(tp)}, got {value!r}{extra}")
        raise _type_error(key, tp, value)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise _type_error(key, tp, value)
        (item,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _type_error(key, tp, value)
        return dict(value)
    if tp is type(None):
        if value is None:
            return None
        raise _type_error(key, tp, value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _type_error(key, tp, value)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _type_error(key, tp, value)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise _type_error(key, tp, value)
    if tp is str:
        if isinstance(value, str):
            return value
        raise _type_error(key, tp, value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' is a section and expects a mapping, got {value!r}")
        return _build_section(tp, value, key)
    raise ConfigError(f"config key '{key}' has an unsupported type {tp!r}")  # schema bug


def _type_error(key: str, tp: Any, value: Any) -> ConfigError:
    return ConfigError(f"config key '{key}' expects {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def _unknown_key(key: str, name: str, valid: list[str]) -> ConfigError:
    hint = difflib.get_close_matches(name, valid, n=1)
    prefix = key.rsplit(".", 1)[0] + "." if "." in key else ""
    did_you_mean = f"did you mean '{prefix}{hint[0]}'? " if hint else ""
    return ConfigError(f"unknown config key '{key}'; {did_you_mean}valid keys: {', '.join(valid)}")


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _build_section(cls: type, values: dict[str, Any], prefix: str) -> Any:
    """Instantiate dataclass ``cls`` from a mapping, checking every key and type."""
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for name, value in values.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if name not in names:
            raise _unknown_key(key, str(name), names)
        kwargs[name] = _coerce(value, hints[name], key)
    return cls(**kwargs)


# ----------------------------------------------------------------------------- loading


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain nested dicts/lists (YAML/JSON serialisable)."""
    return dataclasses.asdict(cfg)


def config_from_dict(values: dict[str, Any]) -> Config:
    """Build and validate a :class:`Config` from nested dicts (e.g. a checkpoint's ``config``)."""
    if not isinstance(values, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(values).__name__}")
    return _build_section(Config, values, "")


def _parse_override(item: str) -> tuple[list[str], str]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.sub=value (e.g. train.lr=0.01)")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r} has an empty key part")
    return key.split("."), raw


def apply_override(values: dict[str, Any], item: str) -> None:
    """Apply one ``key.sub=value`` override to the nested dict ``values`` (schema-checked)."""
    path, raw = _parse_override(item)
    cls: Any = Config
    node = values
    for depth, name in enumerate(path):
        key = ".".join(path[: depth + 1])
        last = depth == len(path) - 1
        if cls is None:  # inside a free-form dict: any key
            tp: Any = Any
        else:
            hints = _hints(cls)
            if name not in hints:
                raise _unknown_key(key, name, [f.name for f in dataclasses.fields(cls)])
            tp = hints[name]
        if last:
            if tp is str or (
                typing.get_origin(tp) in (Union, types.UnionType) and str in typing.get_args(tp)
            ):
                value: Any = None if raw.strip() in ("null", "~") and tp is not str else raw
            else:
                try:
                    value = yaml.safe_load(raw)
                except yaml.YAMLError as exc:
                    raise ConfigError(
                        f"override {key}={raw!r}: value is not valid YAML ({exc.problem})"
                    ) from None
            if dataclasses.is_dataclass(tp) and not isinstance(value, dict):
                if "type" in _hints(tp):  # `mining=ohem` -> `mining.type=ohem`
                    node.setdefault(name, {})
                    if not isinstance(node[name], dict):
                        node[name] = {}
                    node[name]["type"] = _coerce(value, _hints(tp)["type"], f"{key}.type")
                    return
            node[name] = value if cls is None else _coerce(value, tp, key)
            return
        child = node.get(name)
        if not isinstance(child, dict):
            child = {}
            node[name] = child
        node = child
        if cls is not None and dataclasses.is_dataclass(tp):
            cls = tp
        elif cls is not None and typing.get_origin(tp) is dict:
            cls = None
        elif cls is not None:
            raise ConfigError(f"config key '{key}' is a {_type_name(tp)} value, not a section")


def load_config(path: str | Path | None, overrides: typing.Sequence[str] = ()) -> Config:
    """Read a YAML recipe (or start from the defaults when ``path`` is None), apply
    ``key.sub=value`` overrides in order, and validate the result against the schema."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(
                f"config file {path}{where} is not valid YAML: {getattr(exc, 'problem', exc)}"
            ) from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"config file {path} must hold a mapping of sections, got {type(loaded).__name__}"
            )
        values = loaded
    try:
        _build_section(Config, values, "")  # report file errors before override errors
    except ConfigError as exc:
        if path is not None:
            raise ConfigError(f"{exc} (in {path})") from None
        raise
    for item in overrides:
        apply_override(values, item)
    cfg = _build_section(Config, values, "")
    validate_config(cfg)
    return cfg


def validate_config(cfg: Config) -> None:
    """Cross-field checks that types alone cannot express."""
    t = cfg.train
    if t.max_iters < 0 or t.epochs < 0:
        raise ConfigError("train.max_iters and train.epochs must be >= 0")
    if t.max_iters == 0 and t.epochs == 0:
        raise ConfigError("set the training length: train.max_iters (iterations) or train.epochs")
    if t.batch_size < 1:
        raise ConfigError(f"train.batch_size must be >= 1, got {t.batch_size}")
    if t.lr <= 0:
        raise ConfigError(f"train.lr must be > 0, got {t.lr}")
    if len(t.betas) != 2:
        raise ConfigError(f"train.betas expects two floats, got {t.betas}")
    if list(t.steps) != sorted(t.steps):
        raise ConfigError(f"train.steps must be increasing, got {t.steps}")
    if not 0.0 <= t.ema_decay < 1.0:
        raise ConfigError(f"train.ema_decay must be in [0, 1), got {t.ema_decay}")
    if t.keep_last < 1:
        raise ConfigError(f"train.keep_last must be >= 1, got {t.keep_last}")
    for key in ("log_period", "checkpoint_period", "warmup_iters"):
        if getattr(t, key) < 0:
            raise ConfigError(f"train.{key} must be >= 0, got {getattr(t, key)}")
    if cfg.eval.period < 0 or cfg.vis.period < 0:
        raise ConfigError("eval.period and vis.period must be >= 0 (0 = off)")
    if cfg.data.image_size < 32:
        raise ConfigError(f"data.image_size must be >= 32, got {cfg.data.image_size}")
    pp = cfg.eval.postprocess
    if not 0.0 <= pp.score_thresh < 1.0:
        raise ConfigError(f"eval.postprocess.score_thresh must be in [0, 1), got {pp.score_thresh}")
    if not 0.0 < pp.nms_thresh <= 1.0:
        raise ConfigError(f"eval.postprocess.nms_thresh must be in (0, 1], got {pp.nms_thresh}")
    for key in ("topk_candidates", "detections_per_img"):
        if getattr(pp, key) < 1:
            raise ConfigError(f"eval.postprocess.{key} must be >= 1, got {getattr(pp, key)}")


def save_config(cfg: Config, path: str | Path, header: typing.Sequence[str] = ()) -> Path:
    """Write the fully resolved config as YAML (loadable again with :func:`load_config`),
    preceded by ``header`` lines as YAML comments (e.g. the history of resumed changes)."""
    path = Path(path)
    comments = "".join(f"# {line}\n" for line in header)
    text = comments + yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=None)
    from detmine.engine.safe_io import atomic_write_text

    atomic_write_text(path, text, what="config")
    return path
