"""``build_criterion``: a :class:`~detmine.criterion.Criterion` from the ``matching`` / ``loss`` /
``mining`` config sections, every name looked up in its table and every option checked against
its constructor (:mod:`detmine.components`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from detmine.box_coder import BoxCoder
from detmine.components import build_component, check_component, check_names, component_options
from detmine.criterion.dense import Criterion, misfit_message
from detmine.errors import ConfigError
from detmine.losses import BOX_LOSSES, CLS_LOSSES
from detmine.matching import build_matcher
from detmine.mining import MINERS
from detmine.structures import head_defaults

#: the parts ``build_criterion`` builds; the other ``Criterion`` keywords are ``loss.*`` settings.
_PARTS = ("matcher", "box_coder", "miner", "cls_loss", "box_loss")


def _options(section: Mapping[str, Any], name: str, key: str) -> dict[str, Any]:
    """``section[name]`` as a dict of options without its ``None`` values (``None`` = default)."""
    value = section.get(name)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"config key '{key}.{name}' holds the options of {name!r}: a mapping, got {value!r}"
        )
    return {k: v for k, v in value.items() if v is not None}


def _components(
    section: Mapping[str, Any], tables: tuple[Mapping[str, Any], ...], key: str
) -> dict[str, dict[str, Any]]:
    """``{component name: options}`` of every component the section holds options for, each
    checked against its constructor (also those not chosen: a recipe may keep them)."""
    found = {}
    for table in tables:
        for name in table:
            if name in section:
                found[name] = _options(section, name, key)
                check_component(table, name, found[name], key)
    return found


def _nested(table: Mapping[str, Any], first: tuple[str, ...]) -> dict[str, list[str]]:
    """``{name: constructor options}`` of a table's components, the chosen ones ``first``
    (where a misplaced option such as ``loss.alpha`` is pointed to)."""
    names = [n for n in first if n in table] + [n for n in table if n not in first]
    return {name: component_options(table[name]) for name in names}


def build_criterion(
    cls_activation: str,
    box_coder: BoxCoder,
    *,
    matching: Mapping[str, Any] | None = None,
    loss: Mapping[str, Any] | None = None,
    mining: Mapping[str, Any] | None = None,
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

    Raises:
        ConfigError: an unknown name or option (one line, "did you mean", the valid ones), a
            classification loss that does not fit the head, or a bad value.
    """
    defaults = head_defaults(cls_activation)
    matching = {k: v for k, v in dict(matching or {}).items() if v is not None}
    matcher = build_matcher(matching.pop("preset", None), cls_activation=cls_activation, **matching)

    loss = dict(loss or {})
    settings = [name for name in component_options(Criterion) if name not in _PARTS]
    cls_name = loss.get("cls") or defaults["cls"]
    box_name = loss.get("box") or defaults["box"]
    nested = _nested({**CLS_LOSSES, **BOX_LOSSES}, first=(cls_name, box_name))
    check_names(loss, ["cls", "box", *settings, *CLS_LOSSES, *BOX_LOSSES], "loss", nested=nested)
    options = _components(loss, (CLS_LOSSES, BOX_LOSSES), "loss")
    check_component(CLS_LOSSES, cls_name, options.get(cls_name, {}), "loss", field="cls")
    fits = getattr(CLS_LOSSES[cls_name], "activation", None)
    if fits != cls_activation:
        raise ConfigError(misfit_message(cls_name, fits, cls_activation))
    cls_loss = CLS_LOSSES[cls_name](**options.get(cls_name, {}))
    box_loss = build_component(BOX_LOSSES, box_name, options.get(box_name, {}), "loss", field="box")

    mining = dict(mining or {})
    miner_type = mining.get("type") or defaults["mining"]
    check_names(mining, ["type", *MINERS], "mining", nested=_nested(MINERS, first=(miner_type,)))
    options = _components(mining, (MINERS,), "mining")
    miner = build_component(MINERS, miner_type, options.get(miner_type, {}), "mining")

    return Criterion(
        matcher=matcher,
        box_coder=box_coder,
        miner=miner,
        cls_loss=cls_loss,
        box_loss=box_loss,
        **{name: loss[name] for name in settings if loss.get(name) is not None},
    )
