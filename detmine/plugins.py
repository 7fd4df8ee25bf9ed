"""User components from outside the package: ``plugins:`` in a config and ``--plugin`` on every
tool.

A plugin is an importable module name (``my_project.detmine_parts``) or a path to a ``.py``
file (a relative path is taken from the current folder, and saved absolute). Importing it runs its registrations (``MINERS["hard"] = HardMiner``,
``@HOOKS.register("counter")`` ...) before the config's components are checked; the list is
saved in the run's ``config.yaml`` (files as absolute paths), so every tool that reads the run
folder imports the same plugins. A plugin is code: it runs because the user named it in a
config or on the command line, never because a checkpoint or an exported file says so (a
checkpoint's saved config does not import anything). See docs/architecture.md ("Plugins").

No torch import.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Iterable
from pathlib import Path

from detmine.errors import ConfigError

_imported: dict[str, str] = {}


def normalize_plugin(spec: str) -> str:
    """A ``.py`` path as an absolute path (so a run folder's config works from any folder); a
    module name as it is."""
    spec = str(spec).strip()
    if spec.endswith(".py") or "/" in spec or "\\" in spec:
        return str(Path(spec).expanduser().resolve())
    return spec


def _module_name(path: Path) -> str:
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    return f"detmine_plugin_{path.stem}_{digest}"


def import_plugin(spec: str) -> str:
    """Import one plugin (once per process); returns its normalised name.

    Raises:
        ConfigError: one line naming the plugin and the cause (not found, or the first line of
            the error its import raised).
    """
    name = normalize_plugin(spec)
    if name in _imported:
        return name
    try:
        if name.endswith(".py") or Path(name).is_absolute():
            path = Path(name)
            if not path.is_file():
                raise ConfigError(f"plugin {spec!r}: file {path} does not exist")
            module_name = _module_name(path)
            loader_spec = importlib.util.spec_from_file_location(module_name, path)
            if loader_spec is None or loader_spec.loader is None:
                raise ConfigError(f"plugin {spec!r}: {path} is not an importable Python file")
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[module_name] = module
            try:
                loader_spec.loader.exec_module(module)
            except BaseException:
                sys.modules.pop(module_name, None)
                raise
        else:
            importlib.import_module(name)
    except ConfigError:
        raise
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"plugin {spec!r}: no module named {exc.name!r} (a module on PYTHONPATH or a path to a .py file)"
        ) from None
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ConfigError(f"plugin {spec!r} failed to import: {type(exc).__name__}: {first}") from None
    _imported[name] = spec
    return name


def import_plugins(specs: Iterable[str]) -> list[str]:
    """Import each plugin in order; returns their normalised names (duplicates dropped)."""
    names: list[str] = []
    for spec in specs:
        name = import_plugin(spec)
        if name not in names:
            names.append(name)
    return names


__all__ = ["import_plugin", "import_plugins", "normalize_plugin"]
