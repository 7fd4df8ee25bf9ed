"""The constructor is the schema: generic checks of component names and options.

Every kind of component (miner, classification loss, box loss, model, ...) has one explicit
``name -> class`` table (``detmine.mining.MINERS``, ``detmine.losses.CLS_LOSSES``, ...). The
options a component accepts are its constructor's keyword arguments and nothing else: no
config dataclass or key tuple repeats them. These functions check a name against a table and
options against a constructor, with one-line "did you mean" errors::

    check_component(CLS_LOSSES, "focal", {"alpah": 1}, "loss")
    # ConfigError: unknown config key 'loss.focal.alpah' for FocalLoss; did you mean
    #              'loss.focal.alpha'? valid options: alpha, gamma, class_weights

Tables are read when the check runs, so a component registered from outside the package
(``CLS_LOSSES["my_loss"] = MyLoss``) is accepted like a built-in one. Value checks (ranges,
types) stay in the constructors, which raise :class:`~detmine.errors.ConfigError` naming the
config key.

No torch import: the config code uses this module before anything heavy is loaded.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from detmine.errors import ConfigError

_OPTION_KINDS = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def _parameters(cls_or_fn: Callable) -> Mapping[str, inspect.Parameter]:
    """The signature's parameters; a class gives its constructor's (without ``self``)."""
    return inspect.signature(cls_or_fn).parameters


def component_options(cls_or_fn: Callable) -> list[str]:
    """The keyword options a component's constructor (or builder function) accepts, in
    signature order: its keyword-only and positional-or-keyword parameters (``self``
    excluded; ``*args`` / ``**kwargs`` are not options)."""
    return [name for name, p in _parameters(cls_or_fn).items() if p.kind in _OPTION_KINDS]


def _closest(name: str, valid: Sequence[str]) -> str | None:
    hint = difflib.get_close_matches(str(name), [str(v) for v in valid], n=1)
    return hint[0] if hint else None


def check_names(
    given: Iterable[str],
    valid: Sequence[str],
    key: str,
    where: str = "",
    note: str = "",
    *,
    nested: Mapping[str, Sequence[str]] | None = None,
) -> None:
    """Raise :class:`ConfigError` for the first name in ``given`` outside ``valid``.

    One line: ``unknown config key '{key}.{name}'{where}; did you mean '{key}.{closest}'?
    valid options: a, b, c{note}`` ("did you mean" only when a name is close, ``(none)`` when
    ``valid`` is empty).

    Args:
        given: the names to check (e.g. the keys of an options dict).
        valid: the accepted names.
        key: the config path of the mapping the names are keys of (``"mining.ohem"``).
        where: appended after the key (``" for OHEMMiner"``).
        note: appended at the end of the message.
        nested: ``{sub-section: its option names}`` of the section's components: a name
            that is one of their options is pointed to its place (``loss.beta`` -> did you
            mean ``loss.smooth_l1.beta``; the first sub-section that has it).
    """
    valid = list(valid)
    for name in given:
        if name not in valid:
            owner = next((sub for sub, options in (nested or {}).items() if name in options), None)
            hint = f"{owner}.{name}" if owner is not None else _closest(name, valid)
            did_you_mean = f"did you mean '{key}.{hint}'? " if hint else ""
            raise ConfigError(
                f"unknown config key '{key}.{name}'{where}; {did_you_mean}"
                f"valid options: {', '.join(valid) if valid else '(none)'}{note}"
            )


def check_options(fn: Callable, options: Iterable[str], key: str, skip: Sequence[str] = ()) -> None:
    """Raise :class:`ConfigError` when ``options`` holds a keyword that ``fn`` (a class or a
    function) does not accept; a ``**kwargs`` signature accepts anything (it validates its own
    options).

    Args:
        fn: the constructor / builder the options are passed to.
        options: the option names (e.g. a dict of options).
        key: the config path of the options (``"model.options"``, ``"loss.focal"``).
        skip: parameters the caller passes itself (not the user's to set there).
    """
    params = _parameters(fn)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    valid = [name for name in component_options(fn) if name not in skip]
    check_names(options, valid, key, f" for {getattr(fn, '__name__', fn)}")


def check_component(
    table: Mapping[str, Any],
    name: str,
    options: Mapping[str, Any] | Iterable[str],
    key: str,
    *,
    field: str = "type",
    skip: Sequence[str] = (),
) -> None:
    """Check that ``name`` is in ``table`` and that ``options`` fit its constructor.

    Keys: the name is the value of ``{key}.{field}`` (``mining.type``, ``loss.cls``); its
    options live under ``{key}.{name}`` (``mining.ohem.nms_iou``, ``loss.focal.gamma``).

    Args:
        table: the ``name -> class`` table, read now (components registered from outside
            the package are valid).
        name: the chosen component.
        options: its options (a mapping or the option names).
        key: the config section (``"mining"``, ``"loss"``).
        field: the section's key that holds the name, for the message.
        skip: constructor parameters the builder passes itself.

    Raises:
        ConfigError: one line: ``config key 'mining.type' is 'ohm'; did you mean 'ohem'?
            valid: 'all', 'ssd', 'ohem', 'random'``, or an unknown option (see
            :func:`check_names`).
    """
    if name not in table:
        hint = _closest(name, list(table))
        did_you_mean = f"did you mean {hint!r}? " if hint else ""
        raise ConfigError(
            f"config key '{key}.{field}' is {name!r}; {did_you_mean}"
            f"valid: {', '.join(repr(n) for n in table) or '(none)'}"
        )
    check_options(table[name], options, f"{key}.{name}", skip=skip)


def build_component(
    table: Mapping[str, Any],
    name: str,
    options: Mapping[str, Any] | None,
    key: str,
    *,
    field: str = "type",
) -> Any:
    """:func:`check_component`, then ``table[name](**options)``."""
    options = dict(options or {})
    check_component(table, name, options, key, field=field)
    return table[name](**options)


__all__ = ["build_component", "check_component", "check_names", "check_options", "component_options"]
