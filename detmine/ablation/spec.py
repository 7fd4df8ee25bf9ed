"""The ablation file: one recipe, strategies as sets of config overrides, seeds, a baseline.

::

    recipe: configs/quickstart.yaml        # relative to the current folder, else to this file
    output_dir: runs/ablations/synthetic   # one run folder per cell: <output_dir>/<strategy>/seed<seed>
    seeds: [0, 1, 2]
    baseline: focal                        # the strategy every other one is compared with
    overrides: {train.max_iters: 400}      # applied to every cell (before the strategy's)
    strategies:
      focal: {loss.cls: focal}
      ohem128_nms05: {mining: ohem, mining.ohem.nms_iou: 0.5, loss.cls: balanced_ce}

Each cell's config is the recipe, the common overrides, the strategy's overrides, then
``train.seed`` and ``output_dir``; every cell is loaded (and so checked against the schema and
the component tables) before anything runs, and an unknown key names the strategy.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from detmine.config import Config, load_config
from detmine.errors import ConfigError

_FILE_KEYS = ("recipe", "output_dir", "seeds", "baseline", "overrides", "strategies", "plugins")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


def override_items(overrides: dict[str, Any]) -> list[str]:
    """``{"a.b": value}`` as command-line ``a.b=value`` items: strings as written, anything else
    as JSON (a YAML subset the config parser reads back to the same value)."""
    return [
        f"{key}={value if isinstance(value, str) else json.dumps(value)}" for key, value in overrides.items()
    ]


@dataclass(frozen=True)
class Cell:
    """One run of the grid: a strategy at a seed, in its own run folder."""

    strategy: str
    seed: int
    path: Path
    overrides: tuple[str, ...]  # every override after the recipe, as command-line items

    @property
    def name(self) -> str:
        return f"{self.strategy}/seed{self.seed}"


@dataclass
class AblationSpec:
    """A parsed, checked ablation file (see the module docstring)."""

    source: Path
    recipe: Path
    output_dir: Path
    seeds: list[int]
    baseline: str
    strategies: dict[str, dict[str, Any]]
    overrides: dict[str, Any] = field(default_factory=dict)
    plugins: list[str] = field(default_factory=list)

    def cells(self) -> list[Cell]:
        """Every strategy x seed, strategies in file order, seeds in order."""
        common = override_items(self.overrides)
        out = []
        for name, strategy in self.strategies.items():
            for seed in self.seeds:
                path = self.output_dir / name / f"seed{seed}"
                items = (*common, *override_items(strategy), f"train.seed={seed}", f"output_dir={path}")
                out.append(Cell(name, seed, path, items))
        return out

    def cell_config(self, cell: Cell) -> Config:
        """The cell's config, loaded and checked; an error names the strategy."""
        try:
            return load_config(self.recipe, cell.overrides, plugins=self.plugins)
        except ConfigError as exc:
            raise ConfigError(f"{self.source}: strategy {cell.strategy!r}: {exc}") from None

    def check(self) -> dict[Cell, Config]:
        """Load every cell's config (before anything runs); returns them."""
        return {cell: self.cell_config(cell) for cell in self.cells()}


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping of config keys to values, got {value!r}")
    bad = next((k for k in value if not isinstance(k, str) or not k), None)
    if bad is not None:
        raise ConfigError(f"{where} has a key that is not a dotted config key: {bad!r}")
    return dict(value)


def _resolve(path: str, source: Path) -> Path:
    candidate = Path(path)
    if candidate.is_absolute() or candidate.exists():
        return candidate
    beside = source.parent / candidate
    return beside if beside.exists() else candidate


def load_ablation(path: str | Path, *, output_dir: str | Path | None = None) -> AblationSpec:
    """Read and check an ablation file (``yaml.safe_load``; nothing in it runs code).

    Raises:
        ConfigError: one line naming the file, the key (and the strategy) and what was expected.
    """
    source = Path(path)
    if not source.is_file():
        raise ConfigError(f"ablation file {source} does not exist")
    try:
        raw = yaml.safe_load(source.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"ablation file {source} is not valid YAML: {getattr(exc, 'problem', exc)}"
        ) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"ablation file {source} must hold a mapping ({', '.join(_FILE_KEYS)})")
    unknown = [k for k in raw if k not in _FILE_KEYS]
    if unknown:
        raise ConfigError(f"{source}: unknown key {unknown[0]!r}; valid: {', '.join(_FILE_KEYS)}")
    for key in ("recipe", "strategies"):
        if key not in raw:
            raise ConfigError(f"{source}: '{key}' is missing")
    recipe = _resolve(str(raw["recipe"]), source)
    if not recipe.is_file():
        raise ConfigError(f"{source}: recipe {raw['recipe']} does not exist")
    seeds = raw.get("seeds", [0])
    if (
        not isinstance(seeds, list)
        or not seeds
        or any(isinstance(s, bool) or not isinstance(s, int) for s in seeds)
        or len(set(seeds)) != len(seeds)
    ):
        raise ConfigError(f"{source}: 'seeds' must be a non-empty list of distinct integers, got {seeds!r}")
    strategies = raw["strategies"]
    if not isinstance(strategies, dict) or not strategies:
        raise ConfigError(f"{source}: 'strategies' must map strategy names to override mappings")
    checked: dict[str, dict[str, Any]] = {}
    for name, overrides in strategies.items():
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(
                f"{source}: strategy name {name!r} must be letters, digits, '_', '.', '+' or '-' (it names a folder)"
            )
        checked[name] = _mapping(overrides, f"{source}: strategy {name!r}")
    baseline = raw.get("baseline", next(iter(checked)))
    if baseline not in checked:
        raise ConfigError(f"{source}: baseline {baseline!r} is not a strategy; valid: {', '.join(checked)}")
    plugins = raw.get("plugins") or []
    if not isinstance(plugins, list) or not all(isinstance(p, str) for p in plugins):
        raise ConfigError(f"{source}: 'plugins' must be a list of module names or .py files")
    out = output_dir if output_dir is not None else raw.get("output_dir", f"runs/ablations/{source.stem}")
    return AblationSpec(
        source=source,
        recipe=recipe.resolve(),
        output_dir=Path(out).resolve(),  # absolute: printed commands run from any folder
        seeds=list(seeds),
        baseline=baseline,
        strategies=checked,
        overrides=_mapping(raw.get("overrides"), f"{source}: 'overrides'"),
        plugins=list(plugins),
    )
