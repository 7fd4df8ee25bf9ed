"""The detector and its criterion from the config, and weights into a detector (fine-tuning,
the tools)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from detmine import distributed as dist
from detmine.config import Config
from detmine.console import log


def build_model_from_config(
    cfg: Config, num_classes: int, *, load_weights: bool = True, trust_checkpoint: bool = False
) -> nn.Module:
    """``build_model(model.name, num_classes, **model.options)``, then ``model.weights`` if set
    (and ``load_weights``); ``trust_checkpoint`` lets both the backbone files of
    ``model.options.weights`` and ``model.weights`` use the full unpickler."""
    from detmine import modeling
    from detmine.modeling.weights import trusting_weights

    with trusting_weights(trust_checkpoint):
        model = modeling.build_model(cfg.model.name, num_classes, **cfg.model.options)
    if cfg.model.weights and load_weights:
        load_model_weights(model, cfg.model.weights, cfg=cfg, trusted=trust_checkpoint)
    return model


def _warn_input_size(state: dict[str, Any], cfg: Config | None, path: str | Path) -> None:
    saved = state.get("config")
    trained = saved.get("data", {}).get("image_size") if isinstance(saved, dict) else None
    if cfg is not None and trained is not None and trained != cfg.data.image_size and dist.is_main_process():
        log(
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
        log(
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
    cfg: Config, num_classes: int, weights: DetectorWeights, *, device: Any = "cpu", trusted: bool = False
) -> nn.Module:
    """The detector of ``cfg`` with ``weights`` (see :func:`read_detector_weights`), in eval mode
    on ``device``, for every tool (evaluate, visualise, export, predict). Weights that do not fit
    raise one line naming the first mismatching tensors with both shapes; ``trusted``: backbone
    files of ``model.options.weights`` may need the full unpickler."""
    from detmine.engine.checkpoint import load_model_state

    model = build_model_from_config(cfg, num_classes, load_weights=False, trust_checkpoint=trusted)
    load_model_state(model, weights.state_dict, source=weights.path)
    _warn_input_size({"config": weights.config}, cfg, weights.path)
    return model.to(device).eval()


def build_criterion_from_config(cfg: Config, model: nn.Module, facts: Any = None) -> nn.Module:
    """The criterion for ``model``'s head (activation, box coder) from the ``matching``,
    ``loss`` and ``mining`` sections (unset components: the head's defaults). ``facts``: the
    training set's counts (:func:`training_set_facts`) for a loss or miner that asks for them."""

    from detmine.criterion import build_criterion

    return build_criterion(
        model.cls_activation,
        model.box_coder,
        matching=cfg.matching.matcher_options(),
        loss=cfg.loss.criterion_options(),
        mining=cfg.mining.criterion_options(),
        facts=facts,
    )


def build_matcher_from_config(cfg: Config, model: Any) -> Any:
    """The run's matcher: the ``matching`` section (unset: the head's preset) for ``model``'s
    head, as the criterion builds it."""
    from detmine.matching import build_matcher

    options = {k: v for k, v in cfg.matching.matcher_options().items() if v is not None}
    return build_matcher(options.pop("preset", None), cls_activation=model.cls_activation, **options)


def training_set_facts(cfg: Config, model: Any, train_set: Any = None) -> Any:
    """The training split's counts (:class:`detmine.analysis.DatasetFacts`) for a loss or miner
    that asks for them: class counts from the annotations, and the run's matcher over the
    model's anchors at the evaluation geometry. Lazy: nothing is counted unless asked for, and
    without ``train_set`` the training split is built only then."""
    from detmine.analysis import DatasetFacts, EvalGeometry, count_anchor_labels
    from detmine.data.transforms import build_transforms
    from detmine.engine.builders.data import eval_transform_options

    def count_anchors(dataset: Any) -> Any:
        matcher = build_matcher_from_config(cfg, model)
        transform = build_transforms("eval", cfg.data.image_size, **eval_transform_options(cfg))
        return count_anchor_labels(
            dataset,
            anchors_for=model.anchors_for,
            matcher=matcher,
            geometry=EvalGeometry(transform),
            size_divisible=int(getattr(model, "size_divisible", 1)),
            progress=dist.is_main_process(),
        )

    def build_train_split() -> Any:
        from detmine.engine.builders.data import build_dataset_split

        return build_dataset_split(cfg, cfg.data.train_split, True)

    dataset = train_set if train_set is not None else build_train_split
    return DatasetFacts(dataset, count_anchors if hasattr(model, "anchors_for") else None)


def detector_for_split(
    cfg: Config,
    split: str,
    checkpoint: str | Path,
    *,
    weights: str = "auto",
    trusted: bool = False,
    device: Any = "cpu",
) -> tuple[nn.Module, Any, DetectorWeights]:
    """What every tool over a trained detector starts with: the checkpoint's weights (read
    first, so a bad file fails before any data work), the data prepared, ``split`` with the
    evaluation transform, and the detector loaded. Returns ``(model, dataset, weights)``."""
    from detmine.engine.builders.data import build_dataset_split, prepare_data

    chosen = read_detector_weights(checkpoint, weights=weights, trusted=trusted)
    prepare_data(cfg)
    dataset = build_dataset_split(cfg, split, train=False)
    return load_detector(cfg, dataset.num_classes, chosen, device=device, trusted=trusted), dataset, chosen
