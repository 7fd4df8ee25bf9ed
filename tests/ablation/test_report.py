"""The ablation table: means over seeds, paired differences with intervals, the files."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from detmine.ablation.report import (
    markdown_table,
    summarize,
    write_cells_csv,
    write_csv,
    write_hparams,
    write_plot,
)
from detmine.ablation.results import CellResult
from detmine.evaluation.image_matches import image_matches

GT = {
    "images": [{"id": i, "width": 100, "height": 100} for i in range(1, 21)],
    "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    "annotations": [
        {
            "id": i,
            "image_id": i,
            "category_id": 1 + i % 2,
            "bbox": [10, 10, 30, 30],
            "area": 900,
            "iscrowd": 0,
        }
        for i in range(1, 21)
    ],
}


def _matches(hit_rate: float, seed: int):
    """Detections that hit the object on a share of the images, and miss elsewhere."""
    rng = np.random.default_rng(seed)
    results = []
    for i in range(1, 21):
        hit = rng.random() < hit_rate
        box = [10, 10, 30, 30] if hit else [60, 60, 30, 30]
        results.append({"image_id": i, "category_id": 1 + i % 2, "bbox": box, "score": float(rng.random())})
    return image_matches(GT, results)


def _result(strategy: str, seed: int, hit_rate: float) -> CellResult:
    matches = _matches(hit_rate, 10 * seed + int(100 * hit_rate))
    from detmine.evaluation.weighted_ap import coco_ap

    ap = coco_ap(matches)
    stats = {k: float(ap[k]) if ap[k] >= 0 else math.nan for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")}
    return CellResult(
        strategy=strategy,
        seed=seed,
        path=Path(f"/runs/{strategy}/seed{seed}"),
        stats=stats,
        per_class_ap={"a": stats["AP"], "b": stats["AP"] / 2},
        train_seconds=10.0 + seed,
        images_per_s=50.0,
        background_fp=0.1 * seed,
        matches=matches,
    )


def _results():
    return [_result("base", s, 0.3) for s in range(3)] + [_result("better", s, 0.95) for s in range(3)]


STRATEGIES = {"base": {"loss.cls": "focal"}, "better": {"mining": "ohem"}}


def test_differences_against_the_baseline_over_seeds_and_images():
    summaries = summarize(_results(), STRATEGIES, "base", bootstrap_samples=200)
    base, better = summaries
    assert (base.name, better.name) == ("base", "better")
    assert base.diff_seeds is None and base.diff_images is None
    diffs = [b.stats["AP"] - a.stats["AP"] for a, b in zip(_results()[:3], _results()[3:], strict=True)]
    assert better.diff_seeds.mean == np.mean(diffs)
    assert better.diff_seeds.excludes_zero and better.diff_images.excludes_zero
    assert better.diff_images.low > 0
    assert better.mean("AP") == np.mean([r.stats["AP"] for r in _results()[3:]])
    assert math.isnan(better.mean("APl"))  # no large object: n/a, not -1


def test_the_markdown_table_bolds_the_best_and_marks_real_differences():
    summaries = summarize(_results(), STRATEGIES, "base", bootstrap_samples=200)
    text = markdown_table(summaries, "base", ["# grid"])
    row = next(line for line in text.splitlines() if line.startswith("| `better`"))
    assert row.count("**") >= 2 and row.endswith("* |")
    assert "ΔAP vs base, over seeds (95% t)" in text and "APl" not in text.split("\n")[2]
    assert "| `base` | 3 |" in text and "Per-class AP" in text
    assert "- `better`: mining=ohem" in text


def test_one_seed_has_no_interval():
    one = [r for r in _results() if r.seed == 0]
    summaries = summarize(one, STRATEGIES, "base", bootstrap_samples=50)
    assert "(one seed: no interval)" in markdown_table(summaries, "base")


def test_the_files(tmp_path):
    results = _results()
    summaries = summarize(results, STRATEGIES, "base", bootstrap_samples=50)
    write_csv(tmp_path / "table.csv", summaries)
    rows = list(csv.DictReader((tmp_path / "table.csv").open()))
    assert [r["strategy"] for r in rows] == ["base", "better"]
    assert float(rows[1]["AP_mean"]) == summaries[1].mean("AP") and rows[0]["dAP_seeds_mean"] == ""
    write_cells_csv(tmp_path / "cells.csv", results)
    assert len(list(csv.DictReader((tmp_path / "cells.csv").open()))) == 6
    write_plot(tmp_path / "ablation.png", summaries, "base")
    assert (tmp_path / "ablation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    write_hparams(tmp_path / "tb", results, STRATEGIES)
    assert len(list((tmp_path / "tb").rglob("events.out.tfevents.*"))) >= 6
