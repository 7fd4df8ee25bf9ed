"""tools/mine_hard_negatives.py: a pool of the detections on background-only images only,
sorted by score, at most --top; --images FOLDER; unreadable images counted; one-line errors,
the output checked before the work."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

TINY_MODEL = {
    "prior_prob": 0.2,
    "image_size": 64,
    "widths": [8, 8, 16, 16, 32],
    "fpn_channels": 16,
    "head_convs": 1,
}


@pytest.fixture(scope="module")
def recipe(tmp_path_factory, tiny_synthetic_root):
    """A recipe over a copy of the tiny synthetic set (COCO layout) and the checkpoint of a fresh
    tiny RetinaNet whose prior (0.2) makes it fire everywhere."""
    from detmine.config import config_to_dict, load_config
    from detmine.engine.checkpoint import save_checkpoint
    from detmine.modeling import build_model

    tmp = tmp_path_factory.mktemp("mine")
    root = tmp / "synth"
    shutil.copytree(tiny_synthetic_root, root, ignore=shutil.ignore_patterns("VOCdevkit"))
    config = tmp / "tiny.yaml"
    config.write_text(
        f"data: {{kind: coco, root: {root}, image_size: 64, num_workers: 0}}\n"
        f"model: {{name: retinanet_tiny_fpn, options: {json.dumps(TINY_MODEL)}}}\n"
        f"train: {{max_iters: 1, device: cpu}}\neval: {{batch_size: 4}}\noutput_dir: {tmp / 'run'}\n"
    )
    torch.manual_seed(0)
    model = build_model("retinanet_tiny_fpn", 6, **TINY_MODEL)
    ckpt = save_checkpoint(
        tmp / "run" / "model_0000001.pth",
        {"model": model.state_dict(), "iteration": 1, "config": config_to_dict(load_config(config))},
    )
    return config, ckpt, root


def _mine(load_tool, capsys, config, ckpt, out, *extra) -> tuple[int, str, str]:
    code = load_tool("mine_hard_negatives").main(
        [str(config), str(ckpt), "--out", str(out), "--no-progress", "--score-thresh", "0.1", *extra]
    )
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _train_annotations(root: Path) -> tuple[dict[int, str], set[int]]:
    data = json.loads((root / "annotations" / "instances_train.json").read_text())
    with_objects = {a["image_id"] for a in data["annotations"]}
    files = {
        img["id"]: str((root / "images" / "train" / img["file_name"]).resolve()) for img in data["images"]
    }
    return files, {i for i in files if i not in with_objects}


def test_the_pool_holds_only_background_images_detections_sorted_at_most_top(
    recipe, tmp_path, capsys, load_tool
) -> None:
    config, ckpt, root = recipe
    files, background = _train_annotations(root)
    assert 0 < len(background) < len(files)
    # the images with objects are never decoded: corrupt them all
    work = tmp_path / "synth"
    shutil.copytree(root, work)
    for image_id, path in files.items():
        if image_id not in background:
            (work / "images" / "train" / Path(path).name).write_bytes(b"not a jpeg")
    out = tmp_path / "pools" / "pool.json"
    code, stdout, stderr = _mine(
        load_tool, capsys, config, ckpt, out, "--crop", "--top", "7", f"data.root={work}"
    )
    assert (
        code == 0 and "skipped" not in stderr and f"on the {len(background)} background-only images" in stdout
    )
    pool = json.loads(out.read_text())
    entries = pool["entries"]
    assert len(entries) == 7 and pool["info"]["num_false_positives"] >= 7
    assert {e["image_id"] for e in entries} <= background and all(e["source"] == "train" for e in entries)
    assert all(Path(e["path"]).name == Path(files[e["image_id"]]).name for e in entries)
    scores = [e["score"] for e in entries]
    assert scores == sorted(scores, reverse=True) and min(scores) >= 0.1
    for e in entries:
        x0, y0, x1, y1 = e["box"]
        assert (e["width"], e["height"]) == (128, 128) and 0 <= x0 < x1 <= 128 and 0 <= y0 < y1 <= 128
        assert 1 <= e["label"] <= 6 and e["class"] == pool["class_names"][e["label"] - 1]
    assert len({e["image_id"] for e in entries}) < len(entries)  # --crop: every false positive

    whole = tmp_path / "whole.json"
    assert _mine(load_tool, capsys, config, ckpt, whole, f"data.root={work}")[0] == 0
    per_image = [e["image_id"] for e in json.loads(whole.read_text())["entries"]]
    assert sorted(per_image) == sorted(set(per_image)) and set(per_image) == background  # one per image


def test_images_folder_every_image_is_background_and_bad_files_are_counted(
    recipe, tmp_path, capsys, load_tool
) -> None:
    config, ckpt, root = recipe
    folder = tmp_path / "negatives" / "sub"
    folder.mkdir(parents=True)
    for p in sorted((root / "images" / "val").glob("*.jpg"))[:3]:
        shutil.copy(p, folder / p.name)
    (folder / "broken.png").write_bytes(b"\x89PNG nonsense")
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "folder_pool.json"
    code, stdout, stderr = _mine(
        load_tool, capsys, config, ckpt, out, "--images", str(tmp_path / "negatives")
    )
    assert code == 0, stderr
    assert "warning: 1 of 4 images skipped: 1 unreadable; first: " in stderr and "broken.png" in stderr
    pool = json.loads(out.read_text())
    assert pool["info"]["num_images"] == 3 and pool["info"]["num_skipped"] == 1
    assert {Path(e["path"]).parent for e in pool["entries"]} == {folder.resolve()}
    assert all(e["source"] == "folder" and e["image_id"] is None for e in pool["entries"])
    assert len(pool["entries"]) == 3  # one per image, each fires at prior 0.2


def _single_error(code: int, stderr: str, *needles: str) -> None:
    assert code == 2 and "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_user_errors_are_one_line_and_the_output_is_checked_first(
    recipe, tmp_path, capsys, load_tool
) -> None:
    config, ckpt, _ = recipe
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, stderr = _mine(load_tool, capsys, config, tmp_path / "missing.pth", blocker / "pool.json")
    _single_error(code, stderr, f"cannot write pool {blocker / 'pool.json'}", "nothing was run")

    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, stderr = _mine(load_tool, capsys, config, ckpt, tmp_path / "p.json", "--images", str(empty))
    _single_error(code, stderr, f"--images {empty}: no images found")

    from detmine.engine.checkpoint import save_checkpoint
    from detmine.modeling import build_model

    other = build_model("retinanet_tiny_fpn", 6, **{**TINY_MODEL, "fpn_channels": 8})
    misfit = save_checkpoint(tmp_path / "misfit.pth", {"model": other.state_dict(), "iteration": 1})
    code, _, stderr = _mine(load_tool, capsys, config, misfit, tmp_path / "p.json")
    _single_error(code, stderr, str(misfit))
    assert not (tmp_path / "p.json").exists()

    code, _, stderr = _mine(
        load_tool, capsys, config, ckpt, tmp_path / "p.json", "--split", "val", "--top", "3"
    )
    assert code == 0  # the val split has background-only images too


def test_version_as_a_process(tool_process) -> None:
    result = tool_process("mine_hard_negatives.py", "--version", timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("detmine ")
