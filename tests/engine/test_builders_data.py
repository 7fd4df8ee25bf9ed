"""A training split without a single annotated object trains, with one warning on stderr."""

from __future__ import annotations

import json
import shutil

from detmine.config import load_config
from detmine.engine import builders


def _config(root):
    return load_config(
        None,
        [
            "data.kind=coco",
            f"data.root={root}",
            "data.image_size=64",
            "data.num_workers=0",
            "train.max_iters=1",
        ],
    )


def test_a_training_split_without_objects_is_one_warning(tmp_path, tiny_coco_root, capsys):
    root = tmp_path / "coco"
    shutil.copytree(tiny_coco_root, root)
    builders.build_datasets(_config(root))
    assert "nothing to learn" not in capsys.readouterr().err  # the split as generated has objects

    ann = root / "annotations" / "instances_train.json"
    data = json.loads(ann.read_text())
    assert data["annotations"]
    data["annotations"] = []
    ann.write_text(json.dumps(data))
    train_set, _ = builders.build_datasets(_config(root))
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if "nothing to learn but background" in line]
    assert len(lines) == 1 and lines[0].startswith("warning: ") and "'train'" in lines[0]
    assert f"{len(train_set)} images" in lines[0] and "nothing to learn" not in captured.out
