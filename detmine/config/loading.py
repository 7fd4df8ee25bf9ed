"""Reading a recipe: YAML loading, dotted command-line overrides, type checks, saving.

::

    cfg = load_config("configs/quickstart.yaml", ["mining.type=ohem", "train.lr=0.01"])

Every key is checked against the schema (:mod:`detmine.config.schema`): an unknown key or a
value of the wrong type raises a one-line :class:`~detmine.errors.ConfigError` naming the full
dotted key, the expected type (or the valid choices) and, for typos, the closest valid key.
Values of overrides are parsed with ``yaml.safe_load`` (``train.steps=[100,200]``,
``model.options.pretrained=false``). ``section=value`` is a shortcut for
``section.type=value`` (``mining=ohem``). Component sub-sections (``loss.focal.gamma=3``,
``mining.ohem.nms_iou=0.5``) are checked against the component's constructor.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import importlib
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from detmine.config.schema import Config, has_components, validate_config
from detmine.errors import ConfigError


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


def _tables(cls: type) -> dict[str, dict[str, Any]]:
    """``{field: table}`` of a component section, imported on use (so components registered
    from outside the package before the config is checked are accepted)."""
    out = {}
    for name, where in getattr(cls, "COMPONENT_TABLES", {}).items():
        module, attribute = where.split(":")
        out[name] = getattr(importlib.import_module(module), attribute)
    return out


def _component_names(cls: type) -> list[str]:
    if not has_components(cls):
        return []
    return sorted({n for table in _tables(cls).values() for n in table})


def validate_components(cfg: Config) -> None:
    """Check the component sections against the tables: each chosen name (``loss.cls``,
    ``mining.type``) is in its table, each ``<section>.<name>`` sub-section names a component
    and holds only options of its constructor -- one-line "did you mean" errors."""
    from detmine.components import check_component, check_names

    for section_name in ("loss", "mining"):
        section = getattr(cfg, section_name)
        tables = _tables(type(section))
        for field_name, table in tables.items():
            chosen = getattr(section, field_name)
            if chosen is not None:
                check_component(
                    table, chosen, section.components.get(chosen, {}), section_name, field=field_name
                )
        owners = {name: table[name] for table in tables.values() for name in table}
        fields = [f.name for f in dataclasses.fields(section) if f.name != "components"]
        check_names(section.components, [*fields, *sorted(owners)], section_name)
        for name, options in section.components.items():
            check_component(owners, name, options, section_name)


def _build_section(cls: type, values: dict[str, Any], prefix: str) -> Any:
    """Instantiate dataclass ``cls`` from a mapping, checking every key and type. In a
    component section a key that is not a field is a component's option sub-section
    (``loss.focal: {gamma: 2}``); its name and options are checked by
    :func:`validate_components`."""
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name != "components"]
    kwargs: dict[str, Any] = {}
    components: dict[str, dict[str, Any]] = {}
    for name, value in values.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if name in names:
            kwargs[name] = _coerce(value, hints[name], key)
        elif has_components(cls) and isinstance(value, dict | None):
            components[str(name)] = dict(value or {})
        else:
            raise _unknown_key(key, str(name), names + _component_names(cls))
    if has_components(cls):
        kwargs["components"] = components
    return cls(**kwargs)


# ----------------------------------------------------------------------------- loading


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain nested dicts/lists (YAML/JSON serialisable), component option
    sub-sections written under their names (``loss.focal``)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.name == "components" and has_components(type(cfg)):
            out.update({name: dict(options) for name, options in value.items()})
        elif dataclasses.is_dataclass(value):
            out[f.name] = config_to_dict(value)
        else:
            out[f.name] = copy.deepcopy(value)
    return out


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
            if name == "components" or name not in hints:
                if not has_components(cls):
                    raise _unknown_key(key, name, [f.name for f in dataclasses.fields(cls)])
                tp = dict[str, Any]  # a component's options: checked by validate_components
            else:
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
    validate_components(cfg)
    return cfg


def save_config(cfg: Config, path: str | Path, header: typing.Sequence[str] = ()) -> Path:
    """Write the fully resolved config as YAML (loadable again with :func:`load_config`),
    preceded by ``header`` lines as YAML comments (e.g. the history of resumed changes)."""
    path = Path(path)
    comments = "".join(f"# {line}\n" for line in header)
    text = comments + yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=None)
    from detmine.engine.safe_io import atomic_write_text

    atomic_write_text(path, text, what="config")
    return path
