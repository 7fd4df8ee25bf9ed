"""The evaluation views' table: built-ins on by default, switched off or re-optioned by
``eval.views``, a user's view added in one line, checked at load, run after every evaluation
(scalars in metrics.jsonl, tables printed, files in the run folder); a failing view is a
warning, never the end of a run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from detmine.config import load_config
from detmine.engine import builders
from detmine.engine.run_state import seed_everything
from detmine.errors import ConfigError
from detmine.evaluation.views import (
    BUILTIN_VIEWS,
    EVAL_VIEWS,
    ConfusionView,
    ErrorsView,
    ViewInput,
    ViewOutput,
    build_views,
    run_views,
    views_scalars,
    views_table,
)

TINY = [
    "data.kind=synthetic",
    "data.synthetic={num_train: 12, num_val: 4, size: 64, seed: 0}",
    "data.image_size=64",
    "data.num_workers=0",
    "model.name=retinanet_tiny_fpn",
    "model.options={image_size: 64, widths: [8, 8, 16, 16, 32], fpn_channels: 16, head_convs: 1}",
    "train.max_iters=2",
    "train.batch_size=4",
    "train.warmup_iters=1",
    "train.checkpoint_period=2",
    "eval.batch_size=4",
    "vis.period=0",
]


class ProbeView:
    """A user's view: counts the detections and images it was shown."""

    def __init__(self, *, scale: float = 1.0) -> None:
        self.scale = scale

    def __call__(self, view: ViewInput) -> ViewOutput:
        return ViewOutput(
            scalars={"detections": self.scale * len(view.detections), "images": float(len(view.image_ids))},
            table=f"probe saw {len(view.image_ids)} images",
            images={"blank": np.zeros((4, 4, 3), np.uint8)},
            files={"probe.json": json.dumps({"classes": view.class_names})},
        )


@pytest.fixture
def probe():
    EVAL_VIEWS["probe"] = ProbeView
    yield
    del EVAL_VIEWS["probe"]


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    from detmine.data.synthetic import ensure_synthetic

    root = tmp_path_factory.mktemp("synthetic")
    ensure_synthetic(root, num_train=12, num_val=4, size=64, seed=0, workers=0, progress=False)
    return root


def test_the_built_ins_run_by_default_and_entries_change_them(probe):
    assert [name for name, _ in build_views(None)] == list(BUILTIN_VIEWS)
    views = dict(
        build_views(
            [
                {"name": "confusion", "enabled": False},
                {"name": "errors", "score_thresh": 0.3},
                {"name": "probe", "scale": 2},
            ]
        )
    )
    assert "confusion" not in views and isinstance(views["errors"], ErrorsView)
    assert views["errors"].score_thresh == 0.3 and views["probe"].scale == 2
    assert list(views)[-1] == "probe"  # a user's view runs after the built-ins
    assert isinstance(
        dict(build_views([{"name": "confusion", "iou_thresh": 0.7}]))["confusion"], ConfusionView
    )


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"name": "confuson"}, r"'eval\.views\[0\]\.name' is 'confuson'; did you mean 'confusion'\?"),
        (
            {"name": "errors", "score_tresh": 0.3},
            r"'eval\.views\[0\]\.score_tresh'.*did you mean 'eval\.views\[0\]\.score_thresh'",
        ),
        (
            {"name": "thresholds", "rule": "recall"},
            r"'eval\.views\[0\]\.rule' must be one of 'f1', 'precision'",
        ),
        ({"name": "frequency", "split": 3}, r"'eval\.views\[0\]\.split'"),
    ],
)
def test_a_bad_entry_is_one_line_at_load(entry, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["train.max_iters=1", f"eval.views=[{json.dumps(entry)}]"])


def test_a_failing_view_is_a_warning(capsys):
    def broken(view):
        raise RuntimeError("no luck\nsecond line")

    view_input = ViewInput(gt={}, detections=[], image_ids=[], class_names=[], category_ids=[])
    outputs = run_views([("broken", broken), ("probe", ProbeView())], view_input)
    assert list(outputs) == ["probe"]
    assert "warning: evaluation view 'broken' failed: no luck" in capsys.readouterr().err
    assert views_scalars(outputs) == {"probe/detections": 0.0, "probe/images": 0.0}
    assert views_table(outputs) == "[probe]\nprobe saw 0 images"


def test_every_evaluation_of_a_run_runs_the_views(tmp_path, synthetic_root, probe, capsys):
    """A user's view next to the built-ins: its scalars land in the eval record, its file in the
    run folder, its table in the printed result; the built-ins' files too."""
    overrides = [*TINY, f"data.root={synthetic_root}", f"output_dir={tmp_path}", "eval.views=[{name: probe}]"]
    cfg = load_config(None, overrides)
    seed_everything(0)
    train_set, val_set = builders.build_datasets(cfg)
    model = builders.build_model_from_config(cfg, train_set.num_classes)
    criterion = builders.build_criterion_from_config(cfg, model)
    result = builders.build_trainer(cfg, model, criterion, train_set, val_set).train()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in records if r["type"] == "eval"][-1]
    assert final["probe/images"] == 4.0 and final["probe/detections"] == len(result.results)
    assert json.loads((tmp_path / "probe.json").read_text())["classes"] == list(train_set.class_names)
    assert "[probe]\nprobe saw 4 images" in result.table
    assert (tmp_path / "thresholds.json").is_file() and (tmp_path / "confusion_matrix.csv").is_file()
    assert {"errors", "frequency", "confusion", "thresholds", "probe"} <= set(result.views)
