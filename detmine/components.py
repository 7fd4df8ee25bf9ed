"""The one table type for every kind of component, and the one coercion rule for option values.

Every kind of component -- models, classification and box losses, miners, matcher presets,
transform presets, hooks -- is an entry of a :class:`ComponentTable` (``detmine.mining.MINERS``,
``detmine.losses.CLS_LOSSES``, ``detmine.engine.hooks.HOOKS`` ...). The table owns

- name lookup, with a one-line "did you mean" error;
- the options: the constructor's keyword parameters and their annotated types (the constructor
  is the schema, written once);
- coercion of option values (:func:`coerce`: one rule for the command line, YAML and Python; a
  wrong type names the key, the value and the expected type);
- the config key the user wrote (passed in by the caller, never hard-coded in a component: a
  component raises :class:`~detmine.errors.OptionError` naming only its option, the table
  prefixes the key);
- construction.

::

    MINERS.build("ohem", {"nms_iou": 0.5}, key="mining.ohem", name_key="mining.type")
    MINERS["hard"] = MyMiner            # or @MINERS.register("hard"), from a plugin

No torch import: the config code uses this module before anything heavy is loaded. See
docs/architecture.md ("Component tables").
"""

from __future__ import annotations

import collections.abc as cabc
import dataclasses
import difflib
import functools
import inspect
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping, Sequence
from typing import Any, Literal, Union

from detmine.errors import ConfigError, OptionError

_OPTION_KINDS = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


# ----------------------------------------------------------------------------- coercion


def type_name(tp: Any) -> str:
    """A readable name of an annotation: ``one of 'a', 'b'``, ``int or null``, ``a list of float``."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple, cabc.Sequence):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis] or [Any]
        return f"a list of {type_name(args[0])}"
    if origin in (dict, cabc.Mapping):
        return "a mapping"
    if tp is type(None):
        return "null"
    if tp is Any:
        return "any value"
    return getattr(tp, "__name__", str(tp))


def _type_error(key: str, tp: Any, value: Any) -> ConfigError:
    return ConfigError(f"config key '{key}' expects {type_name(tp)}, got {value!r} ({type(value).__name__})")


def _literal_error(key: str, tp: Any, choices: Sequence[Any], value: Any) -> ConfigError:
    hint = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
    extra = f"; did you mean {hint[0]!r}?" if hint else ""
    return ConfigError(f"config key '{key}' must be {type_name(tp)}, got {value!r}{extra}")


def _coerce_scalar(value: Any, tp: Any, key: str, widen: bool) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value) if widen else value
        if isinstance(value, str) and "e" in value.lower():  # YAML 1.1 reads "1e-3" as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is type(None):
        if value is None:
            return None
    raise _type_error(key, tp, value)


def coerce(
    value: Any,
    tp: Any,
    key: str,
    *,
    widen: bool = True,
    section: Callable[[type, dict[str, Any], str], Any] | None = None,
) -> Any:
    """Check ``value`` against the annotation ``tp`` and return it (the one coercion rule).

    Supported: ``bool``, ``int``, ``float`` (an int is accepted; ``widen`` turns it into a float;
    a string in exponent notation such as ``"1e-3"``, which YAML 1.1 reads as a string, is parsed), ``str``, ``None``, ``Literal``, unions, lists / sequences /
    tuples (a list or tuple of items, each checked; returned as a list), dicts / mappings,
    ``Any``, and dataclass sections through ``section(cls, values, key)``. Any other annotation
    (a class such as ``Tensor``) is not checked here: the constructor receives the value as it is.

    Raises:
        ConfigError: one line naming ``key``, the value and the expected type (the closest
            choice for a ``Literal``).
    """
    origin = typing.get_origin(tp)
    if tp is Any or isinstance(tp, typing.TypeVar):
        return value
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices:
            return value
        raise _literal_error(key, tp, choices, value)
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        for option in options:
            try:
                return coerce(value, option, key, widen=widen, section=section)
            except ConfigError:
                continue
        literals = [o for o in options if typing.get_origin(o) is Literal]
        if literals and isinstance(value, str):
            raise _literal_error(key, tp, typing.get_args(literals[0]), value)
        raise _type_error(key, tp, value)
    if origin in (list, tuple, cabc.Sequence):
        if not isinstance(value, (list, tuple)):
            raise _type_error(key, tp, value)
        args = [a for a in typing.get_args(tp) if a is not Ellipsis] or [Any]
        item = args[0] if origin is not tuple or len(args) == 1 else Any
        return [coerce(v, item, f"{key}[{i}]", widen=widen, section=section) for i, v in enumerate(value)]
    if origin in (dict, cabc.Mapping) or tp in (dict, cabc.Mapping):
        if not isinstance(value, dict):
            raise _type_error(key, tp, value)
        return dict(value)
    if tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _type_error(key, tp, value)
        return list(value)
    if dataclasses.is_dataclass(tp) and section is not None:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' is a section and expects a mapping, got {value!r}")
        return section(typing.cast(type, tp), value, key)
    if tp in (bool, int, float, str, type(None)):
        return _coerce_scalar(value, tp, key, widen)
    return value  # a class the config cannot spell (Tensor, a callable): the constructor checks it


# ----------------------------------------------------------------------------- names and options


def _parameters(cls_or_fn: Callable) -> Mapping[str, inspect.Parameter]:
    """The signature's parameters; a class gives its constructor's (without ``self``)."""
    return inspect.signature(cls_or_fn).parameters


def component_options(cls_or_fn: Callable) -> list[str]:
    """The keyword options a component's constructor (or builder function) accepts, in
    signature order: its keyword-only and positional-or-keyword parameters (``self``
    excluded; ``*args`` / ``**kwargs`` are not options)."""
    return [name for name, p in _parameters(cls_or_fn).items() if p.kind in _OPTION_KINDS]


def option_types(cls_or_fn: Callable) -> dict[str, Any]:
    """``{option: annotation}`` of a constructor / builder (``Any`` where none is given or it
    cannot be resolved)."""
    target = cls_or_fn
    while isinstance(target, functools.partial):
        target = target.func
    if inspect.isclass(target):
        target = target.__init__
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # an annotation naming something not importable here: check nothing
        hints = {}
    return {name: hints.get(name, Any) for name in component_options(cls_or_fn)}


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


def check_options(
    fn: Callable, options: Mapping[str, Any] | Iterable[str], key: str, skip: Sequence[str] = ()
) -> dict[str, Any]:
    """Check ``options`` against the keyword parameters of ``fn`` (a class or a function) and,
    for a mapping, coerce each value to its annotation (:func:`coerce`, ints not widened so the
    constructor sees the value as written). Returns the coerced options.

    A ``**kwargs`` signature accepts any name (it validates its own options).

    Args:
        fn: the constructor / builder the options are passed to.
        options: the options (a mapping, or only their names).
        key: the config path of the options (``"model.options"``, ``"loss.focal"``).
        skip: parameters the caller passes itself (not the user's to set there).
    """
    params = _parameters(fn)
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        valid = [name for name in component_options(fn) if name not in skip]
        check_names(options, valid, key, f" for {getattr(fn, '__name__', fn)}")
    if not isinstance(options, Mapping):
        return {}
    types_ = option_types(fn)
    return {
        name: coerce(value, types_.get(name, Any), f"{key}.{name}", widen=False)
        for name, value in options.items()
    }


def lookup(table: Mapping[str, Any], name: str, name_key: str) -> Any:
    """``table[name]``, or a one-line :class:`ConfigError`: ``config key 'mining.type' is 'ohm';
    did you mean 'ohem'? valid: 'all', 'ssd', 'ohem', 'random'``."""
    if isinstance(name, str) and name in table:
        return table[name]
    hint = _closest(str(name), list(table))
    did_you_mean = f"did you mean {hint!r}? " if hint else ""
    raise ConfigError(
        f"config key '{name_key}' is {name!r}; {did_you_mean}valid: {', '.join(repr(n) for n in table) or '(none)'}"
    )


def construct(factory: Callable, options: Mapping[str, Any], key: str, **passed: Any) -> Any:
    """``factory(**passed, **options)``; an :class:`OptionError` it raises becomes a
    :class:`ConfigError` naming ``{key}.{option}``; the built object learns ``config_key``."""
    try:
        built = factory(**passed, **options)
    except OptionError as exc:
        raise ConfigError(f"{key}.{exc.option} {exc.message}") from None
    try:
        built.config_key = key
    except (AttributeError, TypeError):
        pass  # a builder's product that takes no attributes (a tuple, a slotted object)
    return built


class ComponentTable(MutableMapping[str, Any]):
    """``name -> class / builder`` for one kind of component.

    A mapping (``MINERS["hard"] = MyMiner`` registers, ``"ohem" in MINERS`` looks up), read when
    a check runs, so components registered from outside the package (``plugins:``) are valid like
    the built-in ones.

    Args:
        kind: what the entries are, for messages (``"miner"``).
        entries: the built-in entries.
        passed: constructor parameters the builder passes itself (``num_classes`` of a model),
            not options a user sets.
        provided: facts the builder hands to an entry that declares a parameter of that name
            (``facts``: the training set's counts, for a loss that needs them); an entry
            without that parameter does not get it. Not options either.
        entry_keys: for a kind named in a list of entries (``hooks: [{name: ..., enabled: ...}]``),
            the keys of an entry that are not options (:func:`check_entries`).
    """

    def __init__(
        self,
        kind: str,
        entries: Mapping[str, Any] | None = None,
        *,
        passed: Sequence[str] = (),
        provided: Sequence[str] = (),
        entry_keys: Sequence[str] = ("name",),
    ):
        self.kind = kind
        self.passed = (*passed, *provided)
        self.provided = tuple(provided)
        self.entry_keys = tuple(entry_keys)
        self._entries: dict[str, Any] = dict(entries or {})

    # mapping protocol
    def __getitem__(self, name: str) -> Any:
        return self._entries[name]

    def __setitem__(self, name: str, factory: Any) -> None:
        if not callable(factory):
            raise TypeError(f"a {self.kind} must be a class or a builder function, got {factory!r}")
        self._entries[name] = factory

    def __delitem__(self, name: str) -> None:
        del self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"ComponentTable({self.kind!r}: {', '.join(self._entries)})"

    def register(self, name: str | None = None) -> Callable[[Any], Any]:
        """Decorator: ``@MINERS.register("hard")`` adds the class under ``name`` (its
        ``__name__`` lower-cased when omitted) and returns it unchanged."""

        def add(factory: Any) -> Any:
            self[name or factory.__name__.lower()] = factory
            return factory

        return add

    def options(self, name: str) -> list[str]:
        """The options entry ``name`` accepts (its keyword parameters, less ``passed`` and
        ``provided``)."""
        return [o for o in component_options(self[name]) if o not in self.passed]

    def declares(self, name: str, parameter: str) -> bool:
        """Whether entry ``name`` takes ``parameter`` (e.g. a loss that asks for ``facts``)."""
        return parameter in component_options(self[name])

    def get_entry_options(self, name: str, *, name_key: str) -> list[str]:
        """:meth:`options` of the entry, after a "did you mean" lookup naming ``name_key``."""
        self.get_entry(name, name_key=name_key)
        return self.options(name)

    def get_entry(self, name: str, *, name_key: str) -> Any:
        """The entry, or a "did you mean" :class:`ConfigError` naming ``name_key``."""
        return lookup(self, name, name_key)

    def check(
        self, name: str, options: Mapping[str, Any] | None, *, key: str, name_key: str
    ) -> dict[str, Any]:
        """Check that ``name`` is an entry and that ``options`` fit its constructor (names and
        annotated types); returns the coerced options. ``key`` is where the options live
        (``"mining.ohem"``), ``name_key`` where the name was written (``"mining.type"``)."""
        factory = self.get_entry(name, name_key=name_key)
        return check_options(factory, dict(options or {}), key, skip=self.passed)

    def build(
        self,
        name: str,
        options: Mapping[str, Any] | None = None,
        *,
        key: str,
        name_key: str | None = None,
        **passed: Any,
    ) -> Any:
        """:meth:`check`, then construct with ``passed`` (e.g. ``num_classes``) and the options;
        value errors the constructor raises (:class:`~detmine.errors.OptionError`) name
        ``{key}.{option}``. Of the table's ``provided`` facts in ``passed``, the entry gets
        those it declares a parameter for."""
        checked = self.check(name, options, key=key, name_key=name_key or key)
        given = {k: v for k, v in passed.items() if k not in self.provided or self.declares(name, k)}
        return construct(self[name], checked, key, **given)


def check_section(
    values: Mapping[str, Any],
    *,
    key: str,
    fields: Sequence[str],
    tables: Mapping[str, Mapping[str, Any]],
    defaults: Mapping[str, str | None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Check a component section (``loss``, ``mining``): ``{field: value, <component name>:
    {options}}``, where the value of each field in ``tables`` names an entry of that table.

    - a key that is neither a field nor a component name is one line; when it is an option of
      a component it is pointed to its place (``loss.gamma`` -> did you mean ``loss.focal.gamma``,
      the chosen components first);
    - each chosen name is an entry of its table ("did you mean");
    - each ``<name>: {options}`` sub-section fits its constructor (names and types), also for
      components not chosen (a recipe may keep them).

    Args:
        values: the section as a flat mapping.
        key: the section's config key (``"loss"``).
        fields: the section's own keys (``cls``, ``box``, ``box_weight`` ...).
        tables: ``{field: table}`` for the fields that name components.
        defaults: ``{field: the name used when the field is null}`` (the head's default), for
            the "did you mean" order.

    Returns:
        ``{component name: its coerced options}``, ``None`` values left out (the default).
    """
    chosen = {f: values.get(f) or (defaults or {}).get(f) for f in tables}
    for field_name, name in chosen.items():
        if values.get(field_name) is not None:
            lookup(tables[field_name], typing.cast(str, name), f"{key}.{field_name}")
    owner_of = {name: f for f, table in tables.items() for name in table}
    first = [n for n in chosen.values() if n in owner_of]
    order = first + [n for n in owner_of if n not in first]
    nested = {n: component_options(tables[owner_of[n]][n]) for n in order}
    check_names(values, [*fields, *owner_of], key, nested=nested)
    found: dict[str, dict[str, Any]] = {}
    for name in owner_of:
        if name not in values or values[name] is None:
            continue
        options = values[name]
        if not isinstance(options, Mapping):
            raise ConfigError(
                f"config key '{key}.{name}' holds the options of {name!r}: a mapping, got {options!r}"
            )
        options = {k: v for k, v in options.items() if v is not None}
        table = tables[owner_of[name]]
        found[name] = check_options(table[name], options, f"{key}.{name}", skip=getattr(table, "passed", ()))
    return found


@dataclasses.dataclass
class Entry:
    """One entry of a list of named components (``hooks: [{name: counter, period: 2}]``):
    its ``name``, the ``reserved`` keys it set (``enabled``, ``priority``), its coerced
    ``options`` and its config ``key`` (``hooks[0]``)."""

    name: str
    reserved: dict[str, Any]
    options: dict[str, Any]
    key: str


#: the types of the reserved keys of a named entry.
RESERVED_TYPES: dict[str, Any] = {"enabled": bool, "priority": int | None}


def check_entries(entries: Sequence[Any], table: ComponentTable, *, key: str) -> list[Entry]:
    """Check a list of named component entries: each a mapping with ``name`` (an entry of
    ``table``, "did you mean", each name once: it is the key of the component's state), the
    table's other ``entry_keys`` with their :data:`RESERVED_TYPES`, and the rest options of the
    entry's constructor (names and types) -- one line naming ``{key}[i].<key>``. Returns them as
    :class:`Entry` s."""
    reserved = table.entry_keys
    if not isinstance(entries, (list, tuple)):
        raise ConfigError(
            f"config key '{key}' must be a list of {{name: ..., <option>: ...}} entries, got {entries!r}"
        )
    out: list[Entry] = []
    for i, entry in enumerate(entries):
        where = f"{key}[{i}]"
        if not isinstance(entry, Mapping) or "name" not in entry:
            raise ConfigError(
                f"config key '{where}' must be a mapping with a 'name' (one of: {', '.join(table)}), got {entry!r}"
            )
        name = entry["name"]
        lookup(table, name, f"{where}.name")
        first = next((e.key for e in out if e.name == name), None)
        if first is not None:
            raise ConfigError(
                f"config key '{where}.name' repeats {name!r} of '{first}': give each {table.kind} once"
            )
        fixed = {
            k: coerce(entry[k], RESERVED_TYPES.get(k, Any), f"{where}.{k}")
            for k in reserved
            if k != "name" and k in entry
        }
        options = {k: v for k, v in entry.items() if k not in reserved}
        if not _takes_any(table[name]):  # name the reserved keys among the valid ones too
            check_names(options, [*reserved, *table.options(name)], where, f" for {table.kind} {name!r}")
        out.append(Entry(name, fixed, table.check(name, options, key=where, name_key=f"{where}.name"), where))
    return out


def _takes_any(fn: Callable) -> bool:
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in _parameters(fn).values())


def check_component(
    table: Mapping[str, Any],
    name: str,
    options: Mapping[str, Any] | Iterable[str],
    key: str,
    *,
    field: str = "type",
    skip: Sequence[str] = (),
) -> dict[str, Any]:
    """Check ``name`` against ``table`` (the name written at ``{key}.{field}``) and its options
    (living under ``{key}.{name}``); returns the coerced options. The functional form of
    :meth:`ComponentTable.check` for a plain mapping."""
    factory = lookup(table, name, f"{key}.{field}")
    skip = (*skip, *getattr(table, "passed", ()))  # what the builder passes is no user option
    return check_options(factory, options, f"{key}.{name}", skip=skip)


def build_component(
    table: Mapping[str, Any],
    name: str,
    options: Mapping[str, Any] | None,
    key: str,
    *,
    field: str = "type",
) -> Any:
    """:func:`check_component`, then construct (errors name ``{key}.{name}.{option}``)."""
    checked = check_component(table, name, dict(options or {}), key, field=field)
    return construct(table[name], checked, f"{key}.{name}")


__all__ = [
    "ComponentTable",
    "build_component",
    "Entry",
    "check_component",
    "check_entries",
    "check_names",
    "check_options",
    "check_section",
    "coerce",
    "component_options",
    "construct",
    "lookup",
    "option_types",
    "type_name",
]
