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
from typing import Any, Union

import yaml

from detmine.components import coerce, type_name
from detmine.config.schema import Config, has_components, section_options, validate_config
from detmine.errors import ConfigError


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """The one coercion rule (:func:`detmine.components.coerce`), sections built here."""
    return coerce(value, tp, key, section=_build_section)


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
    return {name: _resolve(where) for name, where in getattr(cls, "COMPONENT_TABLES", {}).items()}


def _component_names(cls: type) -> list[str]:
    if not has_components(cls):
        return []
    return sorted({n for table in _tables(cls).values() for n in table})


#: the sections whose components are checked against their tables at load (all by default; a
#: tool that only builds the model passes fewer, e.g. evaluation does not read ``loss``).
COMPONENT_SECTIONS = ("data", "model", "matching", "loss", "mining", "hooks", "eval")

#: the component tables (and signatures) a config names entries of, as ``module:attribute``:
#: resolved when a config is checked, so the config layer imports no package above it and a
#: plugin's registrations (made before the check) are seen.
TABLES = {
    "transform": "detmine.data.transforms:TRANSFORM_PRESETS",
    "eval_geometry": "detmine.data.transforms:EVAL_GEOMETRY_KEYS",
    "loader": "detmine.data.loader:build_dataloader",
    "loader_passed": "detmine.data.loader:LOADER_PASSED",
    "model": "detmine.modeling:MODELS",
    "matcher": "detmine.matching:MATCHER_PRESETS",
    "head_defaults": "detmine.structures:HEAD_DEFAULTS",
    "hook": "detmine.engine.hooks:HOOKS",
    "eval_view": "detmine.evaluation.views:EVAL_VIEWS",
}


def _resolve(where: str) -> Any:
    module, attribute = where.split(":")
    return getattr(importlib.import_module(module), attribute)


def _table(kind: str) -> Any:
    return _resolve(TABLES[kind])


def validate_components(cfg: Config, sections: typing.Collection[str] = COMPONENT_SECTIONS) -> None:
    """Check every component the config names against its table -- the name ("did you mean"),
    the options against the constructor's signature and their types -- once, at load, before
    any data is read: ``data.train_transform`` / ``transform_options`` / ``loader_options`` /
    ``eval_transform_options``, ``model.name`` / ``options``, ``matching.preset`` and its
    options, the ``loss`` and ``mining`` sections, the ``hooks`` and ``eval.views`` lists. Coerced options are
    written back (``[1, 2]`` for a tuple option)."""
    from detmine.components import check_entries, check_names, check_options, check_section

    if "data" in sections:
        d = cfg.data
        d.transform_options = _table("transform").check(
            d.train_transform,
            d.transform_options,
            key="data.transform_options",
            name_key="data.train_transform",
        )
        skip = _table("loader_passed")
        d.loader_options = check_options(_table("loader"), d.loader_options, "data.loader_options", skip=skip)
        note = " (evaluation never augments)"
        check_names(
            d.eval_transform_options, _table("eval_geometry"), "data.eval_transform_options", note=note
        )
    if "model" in sections:
        cfg.model.options = _table("model").check(
            cfg.model.name, cfg.model.options, key="model.options", name_key="model.name"
        )
    if "matching" in sections:
        _check_matching(cfg)
    for name in ("loss", "mining"):
        if name in sections:
            section = getattr(cfg, name)
            fields = [f.name for f in dataclasses.fields(section) if f.name != "components"]
            check_section(section_options(section), key=name, fields=fields, tables=_tables(type(section)))
    if "hooks" in sections and cfg.hooks:
        check_entries(cfg.hooks, _table("hook"), key="hooks")
    if "eval" in sections and cfg.eval.views:
        check_entries(cfg.eval.views, _table("eval_view"), key="eval.views")


def _check_matching(cfg: Config) -> None:
    """``matching.preset`` and its options (without a preset: valid for every head's default)."""
    from detmine.components import check_names

    m, presets = cfg.matching, _table("matcher")
    names = [m.preset] if m.preset is not None else [d["matching"] for d in _table("head_defaults").values()]
    given = {k: v for k, v in m.options.items() if v is not None}  # null: the preset's value
    for preset in names:
        valid = presets.get_entry_options(preset, name_key="matching.preset")
        check_names(m.options, ["preset", *valid], "matching")
        given = presets.check(preset, given, key="matching", name_key="matching.preset")
    m.options = {k: given.get(k) for k in m.options}


def _section_hint(cls: type, key: str, name: str) -> ConfigError:
    """The unknown-key error of a section; in a component section a key that is an option of
    one of its components is pointed to its place (``loss.gamma`` -> ``loss.focal.gamma``)."""
    names = [f.name for f in dataclasses.fields(cls) if f.name != "components"]
    if has_components(cls):
        from detmine.components import check_names, component_options

        tables = _tables(cls)
        nested = {n: component_options(t[n]) for t in tables.values() for n in t}
        try:
            check_names([name], names + _component_names(cls), key.rsplit(".", 1)[0], nested=nested)
        except ConfigError as exc:
            return exc
    return _unknown_key(key, name, names + _component_names(cls))


def _build_section(cls: type, values: dict[str, Any], prefix: str) -> Any:
    """Instantiate dataclass ``cls`` from a mapping, checking every key and type. In a
    component section a key that is not a field is a component's option sub-section
    (``loss.focal: {gamma: 2}``); its name and options are checked by
    :func:`validate_components`."""
    hints = _hints(cls)
    flat = getattr(cls, "FLAT_OPTIONS", None)
    names = [f.name for f in dataclasses.fields(cls) if f.name not in ("components", flat)]
    kwargs: dict[str, Any] = {}
    components: dict[str, dict[str, Any]] = {}
    flat_options: dict[str, Any] = {}
    for name, value in values.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if name in names:
            kwargs[name] = _coerce(value, hints[name], key)
        elif flat is not None:
            flat_options[str(name)] = value  # an option of the section's component: checked with it
        elif has_components(cls) and isinstance(value, dict | None):
            components[str(name)] = dict(value or {})
        else:
            raise _section_hint(cls, key, str(name))
    if has_components(cls):
        kwargs["components"] = components
    if flat is not None:
        kwargs[flat] = flat_options
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
        elif f.name == getattr(type(cfg), "FLAT_OPTIONS", None):
            out.update(copy.deepcopy(value))
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
            flat = getattr(cls, "FLAT_OPTIONS", None)
            if flat is not None and (name == flat or name not in hints):
                tp = Any  # an option of the section's component: checked by validate_components
            elif name == "components" or name not in hints:
                if not has_components(cls):
                    raise _unknown_key(key, name, [f.name for f in dataclasses.fields(cls)])
                if last and not _looks_like_mapping(raw):
                    raise _section_hint(cls, key, name)  # `loss.gamma=1`: point to `loss.focal.gamma`
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
            raise ConfigError(f"config key '{key}' is a {type_name(tp)} value, not a section")


def _looks_like_mapping(raw: str) -> bool:
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return False
    return value is None or isinstance(value, dict)


def load_config(
    path: str | Path | None,
    overrides: typing.Sequence[str] = (),
    *,
    plugins: typing.Sequence[str] = (),
    sections: typing.Collection[str] = COMPONENT_SECTIONS,
) -> Config:
    """Read a YAML recipe (or start from the defaults when ``path`` is None), apply
    ``key.sub=value`` overrides in order, import the config's ``plugins`` and the extra
    ``plugins`` (``--plugin``; added to ``cfg.plugins``), and validate the result against the
    schema and the component tables (only the component ``sections`` a tool uses)."""
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
    from detmine.plugins import import_plugins

    cfg.plugins = import_plugins([*cfg.plugins, *plugins])
    validate_config(cfg)
    validate_components(cfg, sections)
    return cfg


def save_config(cfg: Config, path: str | Path, header: typing.Sequence[str] = ()) -> Path:
    """Write the fully resolved config as YAML (loadable again with :func:`load_config`),
    preceded by ``header`` lines as YAML comments (e.g. the history of resumed changes)."""
    path = Path(path)
    comments = "".join(f"# {line}\n" for line in header)
    text = comments + yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=None)
    from detmine.safe_io import atomic_write_text

    atomic_write_text(path, text, what="config")
    return path
