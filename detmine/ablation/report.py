"""The ablation table: per strategy the mean +- std over seeds, and against the baseline the
mean paired difference of AP with 95% intervals -- over seeds (Student t) and over validation
images (a paired bootstrap of the same runs) -- marked when the interval excludes 0.

Writes ``table.md`` (with the command, date and machine), ``table.csv`` (a row per strategy),
``cells.csv`` (a row per run), ``ablation.png`` (AP per strategy with its seeds, and the
differences with both intervals) and TensorBoard HParams entries (``tensorboard/``).
"""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detmine.ablation.results import BUCKET_COLUMNS, COCO_COLUMNS, CellResult
from detmine.ablation.spec import override_items

#: (column, heading, higher is better, as a percentage)
COLUMNS: tuple[tuple[str, str, bool, bool], ...] = (
    *((c, c, True, True) for c in COCO_COLUMNS),
    *((c, c.replace("_", " "), True, True) for c in BUCKET_COLUMNS),
    ("background_fp", "bg FP / img", False, False),
    ("train_seconds", "train s", False, False),
    ("images_per_s", "img/s", True, False),
)


@dataclass
class StrategySummary:
    """One strategy over its seeds, and its difference from the baseline (None for the
    baseline itself or where a difference cannot be taken)."""

    name: str
    seeds: list[int]
    values: dict[str, list[float]]
    per_class: dict[str, float | None]
    diff_seeds: Any = None  # detmine.evaluation.intervals.Interval
    diff_images: Any = None
    overrides: dict[str, Any] = field(default_factory=dict)

    def mean(self, column: str) -> float:
        values = [v for v in self.values.get(column, []) if v is not None and not math.isnan(v)]
        return statistics.fmean(values) if values else math.nan

    def std(self, column: str) -> float:
        values = [v for v in self.values.get(column, []) if v is not None and not math.isnan(v)]
        return statistics.stdev(values) if len(values) > 1 else math.nan


def _value(result: CellResult, column: str) -> float:
    if column in COCO_COLUMNS or column in BUCKET_COLUMNS:
        return result.stats.get(column, math.nan)
    return float(getattr(result, column))


def summarize(
    results: Sequence[CellResult],
    strategies: dict[str, dict[str, Any]],
    baseline: str,
    *,
    bootstrap_samples: int = 1000,
    confidence: float = 0.95,
) -> list[StrategySummary]:
    """Group the cells by strategy (file order) and compare each with ``baseline`` over the
    seeds both finished."""
    from detmine.evaluation.intervals import paired_bootstrap, t_interval

    by_strategy: dict[str, dict[int, CellResult]] = {}
    for r in results:
        by_strategy.setdefault(r.strategy, {})[r.seed] = r
    base = by_strategy.get(baseline, {})
    out = []
    for name in strategies:
        cells = by_strategy.get(name)
        if not cells:
            continue
        seeds = sorted(cells)
        classes = sorted({c for r in cells.values() for c in r.per_class_ap})
        per_class: dict[str, float | None] = {}
        for c in classes:
            found = [r.per_class_ap.get(c) for r in cells.values()]
            values = [float(v) for v in found if v is not None and not math.isnan(v)]
            per_class[c] = statistics.fmean(values) if values else None
        summary = StrategySummary(
            name=name,
            seeds=seeds,
            values={col: [_value(cells[s], col) for s in seeds] for col, *_ in COLUMNS},
            per_class=per_class,
            overrides=strategies[name],
        )
        paired = [s for s in seeds if s in base]
        if name != baseline and paired:
            diffs = [cells[s].stats["AP"] - base[s].stats["AP"] for s in paired]
            summary.diff_seeds = t_interval(diffs, confidence=confidence)
            summary.diff_images = paired_bootstrap(
                [cells[s].matches for s in paired],
                [base[s].matches for s in paired],
                metric="AP",
                num_samples=bootstrap_samples,
                seed=0,
                confidence=confidence,
            )
        out.append(summary)
    return out


def _cell(mean: float, std: float, percent: bool) -> str:
    if math.isnan(mean):
        return "n/a"
    scale = 100.0 if percent else 1.0
    digits = 1 if percent or abs(mean) >= 10 else 2
    text = f"{mean * scale:.{digits}f}"
    if not math.isnan(std):
        text += f" ± {std * scale:.{digits}f}"
    return text


def _interval(interval: Any) -> str:
    if interval is None:
        return "—"
    if not math.isfinite(interval.low) or not math.isfinite(interval.high):
        return f"{100 * interval.mean:+.1f} (one seed: no interval)"
    mark = " *" if interval.excludes_zero else ""
    return f"{100 * interval.mean:+.1f} [{100 * interval.low:+.1f}, {100 * interval.high:+.1f}]{mark}"


def _best(summaries: Sequence[StrategySummary], column: str, higher: bool) -> str | None:
    """The strategy with the best mean of ``column``; None when fewer than two have one or the
    best is tied (as printed)."""
    means = sorted(
        ((s.mean(column), s.name) for s in summaries if not math.isnan(s.mean(column))), reverse=higher
    )
    if len(means) < 2 or f"{means[0][0]:.4g}" == f"{means[1][0]:.4g}":
        return None
    return means[0][1]


def markdown_table(summaries: Sequence[StrategySummary], baseline: str, header: Sequence[str] = ()) -> str:
    """``table.md``: the header lines, the main table (best mean per column in bold) and the
    per-class AP table."""
    columns = [c for c in COLUMNS if any(not math.isnan(s.mean(c[0])) for s in summaries)]
    heads = ["strategy", "seeds", *(h for _, h, _, _ in columns)]
    heads += [f"ΔAP vs {baseline}, over seeds (95% t)", f"ΔAP vs {baseline}, over images (95% bootstrap)"]
    lines = [*header, "", "| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    best = {col: _best(summaries, col, higher) for col, _, higher, _ in columns}
    for s in summaries:
        row = [f"`{s.name}`", str(len(s.seeds))]
        for col, _, _, percent in columns:
            text = _cell(s.mean(col), s.std(col), percent)
            row.append(f"**{text}**" if best[col] == s.name else text)
        row += [_interval(s.diff_seeds), _interval(s.diff_images)]
        lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        "AP columns in % (mean ± std over seeds); ΔAP in AP points, the mean paired difference with its "
        "95% interval; `*` marks an interval that excludes 0. `bg FP / img`: detections at score >= 0.5 "
        "touching no object (IoU < 0.1), per validation image. `train s`: training time of the logged "
        "windows (evaluation excluded).",
    ]
    classes = sorted({c for s in summaries for c in s.per_class})
    if classes:
        lines += ["", "Per-class AP (%, mean over seeds):", ""]
        lines += ["| strategy | " + " | ".join(classes) + " |", "|" + "---|" * (len(classes) + 1)]
        for s in summaries:
            values = [s.per_class.get(c) for c in classes]
            lines.append(
                f"| `{s.name}` | "
                + " | ".join("n/a" if v is None else f"{100 * v:.1f}" for v in values)
                + " |"
            )
    overrides = [
        f"- `{s.name}`: {' '.join(override_items(s.overrides)) or '(the recipe)'}" for s in summaries
    ]
    return "\n".join([*lines, "", "Strategies:", "", *overrides, ""])


def write_csv(path: Path, summaries: Sequence[StrategySummary]) -> None:
    classes = sorted({c for s in summaries for c in s.per_class})
    fields = ["strategy", "seeds"]
    for col, *_ in COLUMNS:
        fields += [f"{col}_mean", f"{col}_std"]
    for what in ("seeds", "images"):
        fields += [f"dAP_{what}_mean", f"dAP_{what}_low", f"dAP_{what}_high"]
    fields += [f"AP/{c}" for c in classes]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(fields)
        for s in summaries:
            row: list[Any] = [s.name, " ".join(map(str, s.seeds))]
            for col, *_ in COLUMNS:
                row += [s.mean(col), s.std(col)]
            for interval in (s.diff_seeds, s.diff_images):
                row += [""] * 3 if interval is None else [interval.mean, interval.low, interval.high]
            row += ["" if s.per_class.get(c) is None else s.per_class[c] for c in classes]
            writer.writerow(row)


def write_cells_csv(path: Path, results: Sequence[CellResult]) -> None:
    fields = ["strategy", "seed", "path", *(c for c, *_ in COLUMNS)]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(fields)
        for r in results:
            writer.writerow([r.strategy, r.seed, str(r.path), *(_value(r, c) for c, *_ in COLUMNS)])


def write_plot(path: Path, summaries: Sequence[StrategySummary], baseline: str) -> None:
    """AP per strategy (mean ± std bars, each seed a dot) and ΔAP against the baseline with the
    seed and image intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [s.name for s in summaries]
    fig, (left, right) = plt.subplots(1, 2, figsize=(max(8.0, 1.6 * len(names) + 4), 4.2))
    xs = list(range(len(names)))
    means = [100 * s.mean("AP") for s in summaries]
    stds = [0.0 if math.isnan(s.std("AP")) else 100 * s.std("AP") for s in summaries]
    left.bar(xs, means, yerr=stds, capsize=4, color="#9ecae1", edgecolor="#3182bd")
    for x, s in zip(xs, summaries, strict=True):
        left.scatter(
            [x] * len(s.values["AP"]), [100 * v for v in s.values["AP"]], color="#08519c", s=12, zorder=3
        )
    left.set_xticks(xs, names, rotation=30, ha="right")
    left.set_ylabel("AP (%)")
    left.set_title("AP over seeds (mean ± std, dots: seeds)")
    others = [s for s in summaries if s.diff_seeds is not None]
    for offset, attr, label, color in (
        (-0.12, "diff_seeds", "over seeds (t)", "#e6550d"),
        (0.12, "diff_images", "over images (bootstrap)", "#31a354"),
    ):
        points = [(i, getattr(s, attr)) for i, s in enumerate(others) if getattr(s, attr) is not None]
        if not points:
            continue
        xs_ = [i + offset for i, _ in points]
        y = [100 * iv.mean for _, iv in points]
        low = [100 * (iv.mean - iv.low) if math.isfinite(iv.low) else 0.0 for _, iv in points]
        high = [100 * (iv.high - iv.mean) if math.isfinite(iv.high) else 0.0 for _, iv in points]
        right.errorbar(
            xs_, y, yerr=[low, high], fmt="o", capsize=4, color=color, label=f"95% interval {label}"
        )
    right.axhline(0.0, color="grey", linewidth=1)
    right.set_xticks(range(len(others)), [s.name for s in others], rotation=30, ha="right")
    right.set_ylabel(f"ΔAP vs {baseline} (points)")
    right.set_title("paired differences")
    if others:
        right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_hparams(folder: Path, results: Sequence[CellResult], strategies: dict[str, dict[str, Any]]) -> None:
    """One TensorBoard HParams entry per run: the strategy, its overrides and the seed against
    the final numbers, so the runs can be filtered and compared in TensorBoard."""
    from torch.utils.tensorboard import SummaryWriter

    keys = sorted({k for overrides in strategies.values() for k in overrides})
    writer = SummaryWriter(log_dir=str(folder))
    try:
        for r in results:
            overrides = strategies.get(r.strategy, {})
            hparams: dict[str, Any] = {"strategy": r.strategy, "seed": r.seed}
            hparams.update({k: str(overrides.get(k, "(recipe)")) for k in keys})
            metrics = {f"hparam/{c}": _value(r, c) for c, *_ in COLUMNS if not math.isnan(_value(r, c))}
            writer.add_hparams(hparams, metrics, run_name=f"{r.strategy}/seed{r.seed}")
    finally:
        writer.close()
