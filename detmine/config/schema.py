"""The config schema: one dataclass per section of a recipe.

Sections mirror the parts they configure. Free-form dicts appear only where the option set
depends on a component chosen elsewhere (``model.options`` on ``model.name``,
``data.options`` on ``data.kind``); the ``loss`` and ``mining`` sections hold one sub-section
per component name (``loss.focal``, ``mining.ohem``), checked against that component's
constructor: the constructor is the schema, written once.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from detmine.errors import ConfigError


@dataclass
class HardNegativesConfig:
    """Offline hard-negative bootstrapping (``data.hard_negatives``): a pool mined by
    ``tools/mine_hard_negatives.py`` joins the training stream as background-only samples.

    Every key defaults to null (a run without a pool and a run from before this section have
    the same config). With ``pool`` set, each epoch holds ``round(n * ratio / (1 - ratio))``
    pool samples among its ``n`` training samples (see
    ``detmine.data.samplers.TrainingBatchSampler``), shuffled in with them and augmented by
    the training transform like any image; they carry no boxes, so every anchor on them is
    background for the matcher and every miner.
    """

    #: the pool (JSON written by ``tools/mine_hard_negatives.py``); null = off.
    pool: str | None = None
    #: expected share of pool samples in the training stream, in (0, 1); null = 0.25.
    ratio: float | None = None
    #: true: a crop around each mined box instead of the whole image; null = false.
    crop: bool | None = None
    #: context of a crop: the box grown by this fraction of its width / height on each side;
    #: null = 0.5.
    crop_context: float | None = None
    #: each side of a crop at least this many pixels (the image's side when smaller); null = 64.
    crop_min_size: int | None = None

    #: the values a null key stands for.
    DEFAULTS: typing.ClassVar[dict[str, Any]] = {
        "ratio": 0.25,
        "crop": False,
        "crop_context": 0.5,
        "crop_min_size": 64,
    }

    def __post_init__(self) -> None:
        key = "data.hard_negatives"
        if self.ratio is not None and not 0.0 < self.ratio < 1.0:
            raise ConfigError(f"{key}.ratio must be in (0, 1) (the share of pool samples), got {self.ratio}")
        if self.crop_context is not None and self.crop_context < 0:
            raise ConfigError(f"{key}.crop_context must be >= 0, got {self.crop_context}")
        if self.crop_min_size is not None and self.crop_min_size < 1:
            raise ConfigError(f"{key}.crop_min_size must be >= 1, got {self.crop_min_size}")

    def resolved(self) -> dict[str, Any]:
        """``{pool, ratio, crop, crop_context, crop_min_size}`` with every null replaced by its default."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {k: self.DEFAULTS[k] if v is None and k in self.DEFAULTS else v for k, v in values.items()}


@dataclass
class DataConfig:
    """Where the data is and how it is read and augmented."""

    kind: Literal["synthetic", "coco", "voc"] = "synthetic"
    root: str = "data/synthetic"
    train_split: str = "train"
    val_split: str = "val"
    image_size: int = 256
    #: an entry of ``detmine.data.transforms.TRANSFORM_PRESETS`` (``ssd``, ``retinanet``, ``eval``).
    train_transform: str = "retinanet"
    #: evaluation always uses the deterministic ``eval`` preset (no flip, no crop).
    eval_transform: Literal["eval"] = "eval"
    #: keyword options of the training preset (its builder's signature is their schema).
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
    #: offline hard negatives mixed into training (:class:`HardNegativesConfig`; off by default).
    hard_negatives: HardNegativesConfig = field(default_factory=HardNegativesConfig)


@dataclass
class ModelConfig:
    """Which detector: ``name`` is an entry of ``detmine.modeling.MODELS``; ``options`` are the
    keyword options of its builder (checked against its signature at load)."""

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
    """Anchor-to-ground-truth matching (``detmine.matching.build_matcher``).

    ``preset`` names an entry of ``detmine.matching.MATCHER_PRESETS`` (``null``: the head's --
    ``ssd`` (0.5/0.5 + forced best anchor) for softmax heads, ``retinanet`` (0.5/0.4 +
    low-quality matches) for sigmoid heads). Every other ``matching.*`` key overrides one of the
    preset's options (``fg_iou_thresh``, ``bg_iou_thresh``, ``allow_low_quality``,
    ``force_best_match``, ``ignore_iof_thresh`` for the built-in presets), checked against the
    preset's signature: written once, there.
    """

    #: the keys other than the fields are the preset's options, kept in ``options``.
    FLAT_OPTIONS: typing.ClassVar[str] = "options"

    preset: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def matcher_options(self) -> dict[str, Any]:
        """The ``matching`` argument of ``build_criterion``."""
        return {"preset": self.preset, **self.options}


@dataclass
class LossConfig:
    """Classification and box losses (``detmine.criterion.build_criterion``).

    ``cls`` and ``box`` name entries of ``detmine.losses.CLS_LOSSES`` / ``BOX_LOSSES``
    (``null``: the head's default -- softmax: ``softmax_ce`` + ``smooth_l1``; sigmoid:
    ``focal`` + ``l1``). Each loss's own options live under its name, checked against its
    constructor: ``loss.focal.gamma``, ``loss.smooth_l1.beta``, ``loss.balanced_ce.alpha``.
    """

    #: field -> the table (``module:attribute``) it names an entry of; the entries' names
    #: may also appear as ``loss.<name>`` option sub-sections.
    COMPONENT_TABLES: typing.ClassVar[dict[str, str]] = {
        "cls": "detmine.losses:CLS_LOSSES",
        "box": "detmine.losses:BOX_LOSSES",
    }

    cls: str | None = None
    box: str | None = None
    box_weight: float | None = None
    #: what the classification loss is divided by: the ``positives`` of the batch or the
    #: ``selected`` examples (null: the miner's own choice -- positives for ``all`` / ``ssd``,
    #: selected for ``ohem`` / ``random``). The box loss is always divided by the positives.
    normalize_by: Literal["positives", "selected"] | None = None
    #: "batch": divide by that count in the batch; "ema": by an EMA of it (saved in checkpoints).
    normalizer: Literal["batch", "ema"] | None = None
    normalizer_momentum: float | None = None
    #: ``{loss name: {option: value}}``, written as ``loss.<name>`` in YAML.
    components: dict[str, dict[str, Any]] = field(default_factory=dict)

    def criterion_options(self) -> dict[str, Any]:
        """The ``loss`` argument of ``build_criterion``."""
        return section_options(self)


@dataclass
class MiningConfig:
    """Which anchors' classification loss counts (``detmine.mining.build_miner``).

    ``type`` names an entry of ``detmine.mining.MINERS`` (``null``: ``ssd`` for softmax
    heads, ``all`` for sigmoid ones); each miner's options live under its name, checked
    against its constructor (``mining.ohem.nms_iou``), so ``mining=ohem`` alone is a complete
    one-line swap that keeps the recipe's options for the other miners.
    """

    COMPONENT_TABLES: typing.ClassVar[dict[str, str]] = {"type": "detmine.mining:MINERS"}

    type: str | None = None
    #: ``{miner name: {option: value}}``, written as ``mining.<name>`` in YAML.
    components: dict[str, dict[str, Any]] = field(default_factory=dict)

    def criterion_options(self) -> dict[str, Any]:
        """The ``mining`` argument of ``build_criterion``."""
        return section_options(self)


def section_options(section: Any) -> dict[str, Any]:
    """A component section as one flat dict: its fields plus ``{name: options}``."""
    plain = {f.name: getattr(section, f.name) for f in dataclasses.fields(section) if f.name != "components"}
    return {**plain, **{name: dict(options) for name, options in section.components.items()}}


def has_components(cls: type) -> bool:
    """True for sections that hold ``<component name>: {options}`` sub-sections."""
    return bool(getattr(cls, "COMPONENT_TABLES", None))


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
    #: mixed precision of the training forward: "auto" (bf16 on CUDA, fp32 on the CPU), "bf16"
    #: (bfloat16 autocast, on CUDA and on the CPU), "fp16" (float16 autocast with a GradScaler;
    #: CUDA, and the CPU where torch supports it) or "off" (fp32). The losses run in fp32.
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"
    #: ``torch.compile`` the training forward (the first step compiles; without a working
    #: compiler the run warns once and stays eager); null = false, so a config from before
    #: this key compares equal. Evaluation and checkpoints are unchanged.
    compile: bool | None = None
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
    """Inference post-processing (``DenseDetector.predict``): score threshold, top-k before
    NMS and what it is taken over, NMS IoU, detections kept per image. Defaults: torchvision's
    RetinaNet; SSD recipes use SSD's 0.01 / 400 per class / 0.45 / 200."""

    score_thresh: float = 0.05
    topk_candidates: int = 1000
    nms_thresh: float = 0.5
    detections_per_img: int = 100
    #: the ``topk_candidates`` are taken per image and pyramid ``level`` over all (anchor,
    #: class) pairs (RetinaNet), or per image and ``class`` over all anchors (SSD).
    topk_per: Literal["level", "class"] = "level"
    #: per-class operating thresholds applied after NMS: ``K`` scores (class ``k`` at
    #: ``k - 1``), or the path of a ``thresholds.json`` the ``thresholds`` evaluation view wrote
    #: next to a checkpoint; null = none (only ``score_thresh``).
    class_thresholds: list[float] | str | None = None

    def options(self) -> dict[str, Any]:
        """Keyword options of ``DenseDetector.predict``."""
        return dataclasses.asdict(self)


@dataclass
class EvalConfig:
    """Evaluation during and after training."""

    #: evaluate every ``period`` iterations (0: only at the end).
    period: int = 0
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    #: the COCO evaluator: all three give identical numbers (tests/evaluation/test_evaluator.py);
    #: hotcoco is the fastest (bench/eval_speed.py).
    backend: Literal["hotcoco", "faster_coco_eval", "pycocotools"] = "hotcoco"
    batch_size: int = 16
    #: evaluate on the first ``max_images`` images of the split (0: all).
    max_images: int = 0
    #: with each evaluation, the validation loss (the criterion on the val split, no_grad).
    val_loss: bool = True
    #: the analysis views run after each evaluation, on top of the built-in ones (``errors``,
    #: ``frequency``, ``confusion``, ``thresholds``): ``[{name: <EVAL_VIEWS entry>, <option>:
    #: value}]``; an entry naming a built-in view changes its options, ``enabled: false``
    #: switches it off (see ``detmine.evaluation.views``).
    views: list[dict[str, Any]] = field(default_factory=list)


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
    #: hooks on top of the built-in ones: ``[{name: <HOOKS entry>, <option>: value, ...}]``;
    #: an entry naming a built-in hook changes its options, ``enabled: false`` switches it off,
    #: ``priority`` re-orders (see ``detmine.engine.hooks``).
    hooks: list[dict[str, Any]] = field(default_factory=list)
    #: modules or ``.py`` files imported before the components are checked (a user's own
    #: miners, losses, hooks ...); saved with the run so every tool imports them too.
    plugins: list[str] = field(default_factory=list)
    output_dir: str = "runs/default"


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
