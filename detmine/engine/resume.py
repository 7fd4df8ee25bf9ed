"""What may change when a run is resumed, and the record of what did.

A checkpoint stores the resolved config it was trained with. On ``--resume`` the new config
is compared with it key by key (dotted keys, free-form option dicts included):

- **free to change** (:data:`FREE_KEYS`): where results go and how the run is watched --
  ``output_dir``, ``eval.*``, ``vis.*``, the ``hooks`` and ``plugins`` lists (the components a
  run uses are named in their own keys, which are compared), any period (``train.log_period``,
  ``train.checkpoint_period``, a hook's ``period``), ``train.keep_last``, ``data.num_workers``
  (the batches do not depend on the worker count), ``train.compile`` (how the forward runs, not
  what it computes) and ``train.resume`` itself;
- **changed with a warning** (:data:`LENGTH_KEYS`): ``train.max_iters`` / ``train.epochs``
  -- the schedule is re-stretched over the new length; ``train.amp`` (:data:`PRECISION_KEYS`)
  -- the steps from here run in the new precision (a checkpoint of detmine <= 0.2 says
  ``amp: bf16``, which meant fp32 on the CPU: resumed with today's ``auto`` it goes on in fp32);
- **anything else** is refused with one line listing each key and both values, unless the
  user passes ``--allow-config-change``; then the new values are used (a changed
  ``train.lr`` rescales the schedule's base learning rates, a changed optimizer starts from a
  fresh optimizer state) and ``config.yaml`` records the change in its header.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from detmine.errors import ConfigError

FREE_PREFIXES = ("output_dir", "eval.", "vis.", "hooks", "plugins")
FREE_KEYS = (
    "train.log_period",
    "train.checkpoint_period",
    "train.keep_last",
    "train.resume",
    "train.compile",
    "data.num_workers",
)
LENGTH_KEYS = ("train.max_iters", "train.epochs")
PRECISION_KEYS = ("train.amp",)

_MISSING = "<unset>"


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as ``{"a.b.c": value}`` (lists stay values)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _unset(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value == _MISSING) or value == [] or value == {}


def _is_free(key: str) -> bool:
    """Free to change on resume: the keys above, the ``hooks`` list (hooks observe, they never
    change what training does) and any period (``*.period``, ``*_period``): how often something
    is watched, whichever hook or section it belongs to."""
    last = key.rsplit(".", 1)[-1]
    if last == "period" or last.endswith("_period"):
        return True
    return key in FREE_KEYS or any(key == p.rstrip(".") or key.startswith(p) for p in FREE_PREFIXES)


@dataclass
class ConfigChanges:
    """The differences between a checkpoint's config and the resumed run's, by kind."""

    free: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    length: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    precision: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    other: dict[str, tuple[Any, Any]] = field(default_factory=dict)

    def describe(self, kind: str = "other") -> str:
        items = getattr(self, kind)
        return "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in items.items())

    @property
    def recorded(self) -> dict[str, tuple[Any, Any]]:
        """The changes worth a line in config.yaml (what affects the weights)."""
        return {**self.length, **self.precision, **self.other}


def diff_configs(saved: dict[str, Any], current: dict[str, Any]) -> ConfigChanges:
    """Compare two resolved configs (as plain dicts) key by key."""
    old, new = flatten(saved), flatten(current)
    changes = ConfigChanges()
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, _MISSING), new.get(key, _MISSING)
        if a == b or (_unset(a) and _unset(b)):  # null / empty means the default, like unset
            continue
        if _is_free(key):
            changes.free[key] = (a, b)
        elif key in LENGTH_KEYS:
            changes.length[key] = (a, b)
        elif key in PRECISION_KEYS:
            changes.precision[key] = (a, b)
        else:
            changes.other[key] = (a, b)
    return changes


def check_resume_config(
    saved: dict[str, Any] | None, current: dict[str, Any], *, allow_change: bool, source: str
) -> ConfigChanges:
    """The changes of ``current`` against the checkpoint's ``saved`` config.

    Raises:
        ConfigError: a key outside the free and length keys differs and ``allow_change`` is
            False; the message lists every such key with both values.
    """
    if not saved:
        return ConfigChanges()
    changes = diff_configs(saved, current)
    if changes.other and not allow_change:
        raise ConfigError(
            f"the config differs from the one {source} was trained with: {changes.describe()}; "
            "resume with the same config, or pass --allow-config-change to continue with the new values"
        )
    return changes
