"""``build_criterion``: a :class:`~detmine.criterion.Criterion` from the ``matching`` / ``loss`` /
``mining`` config sections, every name looked up in its table and every option checked against
its constructor (:mod:`detmine.components`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from detmine.box_coder import BoxCoder
from detmine.components import check_section, component_options
from detmine.criterion.dense import Criterion, misfit_message
from detmine.errors import ConfigError
from detmine.losses import BOX_LOSSES, CLS_LOSSES
from detmine.matching import build_matcher
from detmine.mining import MINERS
from detmine.structures import TrainingSetFacts, head_defaults

#: the parts ``build_criterion`` builds; the other ``Criterion`` keywords are ``loss.*`` settings.
_PARTS = ("matcher", "box_coder", "miner", "cls_loss", "box_loss")


def criterion_settings() -> list[str]:
    """The ``loss.*`` keys that are :class:`Criterion` settings (``box_weight``, ``normalizer`` ...)."""
    return [name for name in component_options(Criterion) if name not in _PARTS]


def check_loss_section(
    loss: Mapping[str, Any], cls_activation: str | None = None
) -> dict[str, dict[str, Any]]:
    """Check the ``loss`` section (see :func:`~detmine.components.check_section`); returns
    ``{loss name: coerced options}``. Used by the config at load and by :func:`build_criterion`."""
    defaults = head_defaults(cls_activation) if cls_activation else {}
    return check_section(
        loss,
        key="loss",
        fields=["cls", "box", *criterion_settings()],
        tables={"cls": CLS_LOSSES, "box": BOX_LOSSES},
        defaults={"cls": defaults.get("cls"), "box": defaults.get("box")},
    )


def check_mining_section(
    mining: Mapping[str, Any], cls_activation: str | None = None
) -> dict[str, dict[str, Any]]:
    """Check the ``mining`` section; returns ``{miner name: coerced options}``."""
    defaults = head_defaults(cls_activation) if cls_activation else {}
    return check_section(
        mining,
        key="mining",
        fields=["type"],
        tables={"type": MINERS},
        defaults={"type": defaults.get("mining")},
    )


def build_criterion(
    cls_activation: str,
    box_coder: BoxCoder,
    *,
    matching: Mapping[str, Any] | None = None,
    loss: Mapping[str, Any] | None = None,
    mining: Mapping[str, Any] | None = None,
    facts: TrainingSetFacts | None = None,
) -> Criterion:
    """Build a :class:`Criterion` for a head from the config sections. ``None`` / a missing key
    means its default; a component the section names nothing for is the head's default
    (:data:`~detmine.structures.HEAD_DEFAULTS`).

    Args:
        cls_activation: the model's ``cls_activation`` (``"softmax"`` / ``"sigmoid"``).
        box_coder: the model's ``box_coder``.
        matching: ``preset`` (``"ssd"`` / ``"retinanet"``, see
            :func:`detmine.matching.build_matcher`) and overrides of the preset:
            ``fg_iou_thresh``, ``bg_iou_thresh``, ``allow_low_quality``, ``force_best_match``,
            ``ignore_iof_thresh``.
        loss: ``cls`` (a :data:`~detmine.losses.CLS_LOSSES` name fitting the head), ``box``
            (a :data:`~detmine.losses.BOX_LOSSES` name), the :class:`Criterion` settings
            ``box_weight``, ``normalize_by``, ``normalizer``, ``normalizer_momentum``, and
            ``{loss name: {options}}`` (``"focal": {"gamma": 2.0}``, ``"smooth_l1": {"beta":
            1.0}``): the chosen losses' options are used; those of other losses are checked
            and ignored.
        mining: ``type`` (a :data:`~detmine.mining.MINERS` name) and ``{miner name:
            {options}}``, the same way (``"ohem": {"nms_iou": 0.5}``).
        facts: the training set's counts (:class:`~detmine.structures.TrainingSetFacts`),
            handed to a loss or miner whose constructor has a ``facts`` parameter (class
            weights from frequencies, logit adjustment); None when not known (such a component
            then says what it is missing).

    Raises:
        ConfigError: an unknown name or option (one line, "did you mean", the valid ones), a
            classification loss that does not fit the head, or a bad value.
    """
    defaults = head_defaults(cls_activation)
    matching = {k: v for k, v in dict(matching or {}).items() if v is not None}
    matcher = build_matcher(matching.pop("preset", None), cls_activation=cls_activation, **matching)

    loss = dict(loss or {})
    cls_name = loss.get("cls") or defaults["cls"]
    box_name = loss.get("box") or defaults["box"]
    options = check_loss_section(loss, cls_activation)
    fits = getattr(CLS_LOSSES.get_entry(cls_name, name_key="loss.cls"), "activation", None)
    if fits != cls_activation:
        raise ConfigError(misfit_message(cls_name, fits, cls_activation))
    cls_loss = CLS_LOSSES.build(
        cls_name, options.get(cls_name), key=f"loss.{cls_name}", name_key="loss.cls", facts=facts
    )
    box_loss = BOX_LOSSES.build(box_name, options.get(box_name), key=f"loss.{box_name}", name_key="loss.box")

    mining = dict(mining or {})
    miner_type = mining.get("type") or defaults["mining"]
    options = check_mining_section(mining, cls_activation)
    miner = MINERS.build(
        miner_type, options.get(miner_type), key=f"mining.{miner_type}", name_key="mining.type", facts=facts
    )

    return Criterion(
        matcher=matcher,
        box_coder=box_coder,
        miner=miner,
        cls_loss=cls_loss,
        box_loss=box_loss,
        **{name: loss[name] for name in criterion_settings() if loss.get(name) is not None},
    )
