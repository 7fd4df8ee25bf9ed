"""tools/predict.py: files, folders, globs and a video give the detections ``model.predict``
gives through the evaluation transform, as COCO results with the dataset's original category ids
and xywh boxes in original pixels; pictures at the input's size; thresholds.json next to the
checkpoint applied (and ignored with --thresholds none); unreadable inputs skipped and counted;
one-line errors, the output folder checked before the work."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

TINY_MODEL = {
    "prior_prob": 0.2,  # an untrained model that fires everywhere
    "image_size": 64,
    "widths": [8, 8, 16, 16, 32],
    "fpn_channels": 16,
    "head_convs": 1,
}
TINY_SYNTHETIC = {"num_train": 12, "num_val": 6, "size": 128, "seed": 0, "voc": True}  # tests/conftest.py's
COCO_IDS = [4, 8, 15, 16, 23, 42]  # the COCO-layout copy's category ids, in class order


def _checkpoint(folder: Path, config: Path) -> Path:
    from detmine.config import config_to_dict, load_config
    from detmine.engine.checkpoint import save_checkpoint
    from detmine.modeling import build_model

    torch.manual_seed(0)
    model = build_model("retinanet_tiny_fpn", 6, **TINY_MODEL)
    state = {"model": model.state_dict(), "iteration": 1, "config": config_to_dict(load_config(config))}
    return save_checkpoint(folder / "model_0000001.pth", state)


def _recipe(tmp: Path, data: str) -> tuple[Path, Path]:
    config = tmp / "tiny.yaml"
    config.write_text(
        f"data: {data}\n"
        f"model: {{name: retinanet_tiny_fpn, options: {json.dumps(TINY_MODEL)}}}\n"
        f"train: {{max_iters: 1, device: cpu}}\neval: {{batch_size: 4}}\noutput_dir: {tmp / 'run'}\n"
    )
    return config, _checkpoint(tmp / "run", config)


@pytest.fixture(scope="module")
def synthetic_recipe(tmp_path_factory, tiny_synthetic_root) -> tuple[Path, Path, Path]:
    """The tiny synthetic set (read in place: its generator options match) and a fresh model."""
    tmp = tmp_path_factory.mktemp("predict_synthetic")
    data = (
        f"{{kind: synthetic, root: {tiny_synthetic_root}, image_size: 64, num_workers: 0, "
        f"synthetic: {json.dumps(TINY_SYNTHETIC)}}}"
    )
    return (*_recipe(tmp, data), tiny_synthetic_root)


@pytest.fixture(scope="module")
def coco_recipe(tmp_path_factory, tiny_synthetic_root) -> tuple[Path, Path, Path]:
    """A COCO-layout copy of the tiny set whose category ids are :data:`COCO_IDS`."""
    tmp = tmp_path_factory.mktemp("predict_coco")
    root = tmp / "coco"
    shutil.copytree(tiny_synthetic_root, root, ignore=shutil.ignore_patterns("VOCdevkit", ".detmine*"))
    for ann in (root / "annotations").glob("instances_*.json"):
        gt = json.loads(ann.read_text())
        new = {c["id"]: COCO_IDS[k] for k, c in enumerate(gt["categories"])}
        gt["categories"] = [{**c, "id": new[c["id"]]} for c in gt["categories"]]
        gt["annotations"] = [{**a, "category_id": new[a["category_id"]]} for a in gt["annotations"]]
        ann.write_text(json.dumps(gt))
    return (*_recipe(tmp, f"{{kind: coco, root: {root}, image_size: 64, num_workers: 0}}"), root)


def _predict(load_tool, capsys, config, ckpt, *args) -> tuple[int, str, str]:
    """``tools/predict.py CONFIG CKPT ARGS... --out-dir OUT --no-progress`` in-process; the last
    of ``args`` is OUT."""
    *rest, out = args
    argv = [str(config), str(ckpt), *map(str, rest), "--out-dir", str(out), "--no-progress"]
    code = load_tool("predict").main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _direct(
    config: Path, ckpt: Path, batches: list[list[np.ndarray]], thresholds: list[float] | None = None
) -> tuple[list[dict], dict[int, int]]:
    """``model.predict`` on RGB images through the evaluation transform, batch by batch, as the
    tool's loader pads them: per image ``(boxes xyxy, scores, labels)`` in original pixels."""
    from detmine.config import load_config
    from detmine.data.loader import collate
    from detmine.engine import builders

    cfg = load_config(config)
    model, dataset, _ = builders.detector_for_split(cfg, cfg.data.val_split, ckpt)
    empty = np.zeros((0, 4), np.float32)
    out = []
    for batch in batches:
        samples = []
        for image in batch:
            x = dataset.transform(image=image, boxes=empty, labels=np.zeros(0, np.int64))["image"]
            target = {"orig_size": image.shape[:2], "input_size": x.shape[:2], "image_id": 0}
            samples.append((torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1).contiguous(), target))
        images, targets = collate(samples, **builders.batch_geometry(model))
        options = {**cfg.eval.postprocess.options(), "class_thresholds": thresholds}
        dets = model.predict(
            images, [t["input_size"] for t in targets], [t["orig_size"] for t in targets], **options
        )
        out += [{k: v.double().numpy() for k, v in det.items()} for det in dets]
    return out, dataset.contiguous_to_category_id


def _read(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def _assert_same(results: list[dict], image_id: int, direct: dict, category_ids: dict) -> None:
    """The image's results equal the direct detections: original category ids, xywh boxes."""
    mine = [r for r in results if r["image_id"] == image_id]
    assert len(mine) == len(direct["scores"]) > 0
    boxes = direct["boxes"]
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    np.testing.assert_allclose([r["bbox"] for r in mine], xywh, rtol=0, atol=1e-3)
    np.testing.assert_allclose([r["score"] for r in mine], direct["scores"], rtol=0, atol=1e-5)
    assert [r["category_id"] for r in mine] == [category_ids[int(k)] for k in direct["labels"]]


@pytest.mark.parametrize("layout", ["synthetic", "coco"])
def test_files_folder_and_glob_equal_a_direct_predict(layout, request, tmp_path, capsys, load_tool) -> None:
    config, ckpt, root = request.getfixturevalue(f"{layout}_recipe")
    val = sorted((root / "images" / "val").glob("*.jpg"))
    folder = tmp_path / "shots" / "nested"
    folder.mkdir(parents=True)
    shutil.copy(val[1], folder / val[1].name)
    shutil.copy(val[2], folder / val[2].name)
    globbed = tmp_path / "more"
    globbed.mkdir()
    for p in val[3:5]:
        shutil.copy(p, globbed / p.name)
    out = tmp_path / "out"
    code, stdout, stderr = _predict(
        load_tool,
        capsys,
        config,
        ckpt,
        val[0],
        tmp_path / "shots",
        f"{globbed}/*.jpg",
        "--batch-size",
        "2",
        out,
    )
    assert code == 0, stderr
    assert "predicting 5 images with retinanet_tiny_fpn (model weights) on cpu, batch size 2" in stdout
    assert "per-class thresholds" not in stdout and "skipped" not in stderr

    index = json.loads((out / "index.json").read_text())
    images = index["images"]
    assert [e["id"] for e in images] == [1, 2, 3, 4, 5]
    assert [e["input"] for e in index["inputs"]] == [str(val[0]), str(tmp_path / "shots"), f"{globbed}/*.jpg"]
    assert [e["image_ids"] for e in index["inputs"]] == [[1], [2, 3], [4, 5]]
    assert [Path(e["file_name"]).name for e in images] == [p.name for p in val[:5]]
    expected_ids = COCO_IDS if layout == "coco" else [1, 2, 3, 5, 7, 9]
    assert [c["id"] for c in index["categories"]] == expected_ids

    results = json.loads((out / "results.json").read_text())
    originals = [_read(p) for p in val[:5]]
    direct, category_ids = _direct(config, ckpt, [originals[0:2], originals[2:4], originals[4:5]])
    for image_id, det in enumerate(direct, start=1):
        _assert_same(results, image_id, det, category_ids)
    assert {r["category_id"] for r in results} <= set(expected_ids)
    assert {r["file_name"] for r in results if r["image_id"] == 2} == {images[1]["file_name"]}
    for entry, original in zip(images, originals, strict=True):
        picture = _read(out / entry["picture"])
        assert picture.shape == original.shape == (entry["height"], entry["width"], 3)
        assert not np.array_equal(picture, original)  # boxes were drawn


def _write_video(path: Path, frames: list[np.ndarray], fps: float = 10.0) -> None:
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, (width, height))
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()


def _read_video(path: Path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    capture.release()
    return frames


def test_a_video_every_second_frame_after_an_image(synthetic_recipe, tmp_path, capsys, load_tool) -> None:
    config, ckpt, root = synthetic_recipe
    val = sorted((root / "images" / "val").glob("*.jpg"))
    clip = tmp_path / "clip.avi"
    _write_video(clip, [_read(val[k % len(val)]) for k in range(5)])
    frames = _read_video(clip)  # what the tool sees: the decoded Motion-JPEG frames
    out = tmp_path / "out"
    code, stdout, stderr = _predict(
        load_tool, capsys, config, ckpt, val[0], clip, "--every-n-frames", "2", "--batch-size", "2", out
    )
    assert code == 0, stderr
    assert "predicting 1 image and 1 video" in stdout and "on 1 image and 3 video frames" in stdout
    index = json.loads((out / "index.json").read_text())
    assert [e["image_ids"] for e in index["inputs"]] == [[1], [2, 3, 4]]
    video_entries = index["images"][1:]
    assert [(e["frame"], e["file_name"], e["picture"]) for e in video_entries] == [
        (k, f"{clip}#{k}", "clip.avi") for k in (0, 2, 4)
    ]
    results = json.loads((out / "results.json").read_text())
    direct, category_ids = _direct(config, ckpt, [[frames[0], frames[2]], [frames[4]]])
    for image_id, det in zip((2, 3, 4), direct, strict=True):
        _assert_same(results, image_id, det, category_ids)
    annotated = _read_video(out / "clip.avi")
    assert len(annotated) == 3 and all(f.shape == frames[0].shape for f in annotated)
    assert not list(out.glob(".*"))  # no temporary file left


def test_thresholds_next_to_the_checkpoint_are_used_unless_none(
    synthetic_recipe, tmp_path, capsys, load_tool
) -> None:
    config, ckpt, root = synthetic_recipe
    run = tmp_path / "run"
    run.mkdir()
    local = Path(shutil.copy(ckpt, run / "best.pth"))
    thresholds = [0.0, 1.0, 1.0, 1.0, 1.0, 1.0]  # class 1 only
    payload = {"rule": "f1", "classes": [{"name": f"c{k}", "threshold": t} for k, t in enumerate(thresholds)]}
    (run / "thresholds.json").write_text(json.dumps(payload))
    image = sorted((root / "images" / "val").glob("*.jpg"))[0]

    code, stdout, _ = _predict(load_tool, capsys, config, local, image, tmp_path / "auto")
    assert code == 0 and f"per-class thresholds: {run / 'thresholds.json'}" in stdout
    auto = json.loads((tmp_path / "auto" / "results.json").read_text())
    assert auto and {r["category_id"] for r in auto} == {1}
    direct, category_ids = _direct(config, ckpt, [[_read(image)]], thresholds=thresholds)
    _assert_same(auto, 1, direct[0], category_ids)

    code, stdout, _ = _predict(
        load_tool, capsys, config, local, image, "--thresholds", "none", tmp_path / "none"
    )
    assert code == 0 and "per-class thresholds" not in stdout
    assert len({r["category_id"] for r in json.loads((tmp_path / "none" / "results.json").read_text())}) > 1

    elsewhere = tmp_path / "chosen.json"
    shutil.copy(run / "thresholds.json", elsewhere)
    code, _, _ = _predict(
        load_tool, capsys, config, ckpt, image, "--thresholds", elsewhere, tmp_path / "path"
    )
    assert code == 0 and json.loads((tmp_path / "path" / "results.json").read_text()) == auto

    everything = json.loads((tmp_path / "none" / "results.json").read_text())
    median = f"{float(np.median([r['score'] for r in everything])):.4f}"
    args = ("--thresholds", "none", "--score-thresh", median, tmp_path / "floor")
    code, stdout, _ = _predict(load_tool, capsys, config, local, image, *args)
    floor = json.loads((tmp_path / "floor" / "results.json").read_text())
    assert code == 0 and f"at score >= {float(median)}" in stdout
    assert floor == [r for r in everything if r["score"] >= float(median)]
    assert 0 < len(floor) < len(everything)


def test_unreadable_inputs_are_skipped_and_counted(synthetic_recipe, tmp_path, capsys, load_tool) -> None:
    config, ckpt, root = synthetic_recipe
    folder = tmp_path / "mixed"
    folder.mkdir()
    for p in sorted((root / "images" / "val").glob("*.jpg"))[:3]:
        shutil.copy(p, folder / p.name)
    (folder / "broken.png").write_bytes(b"\x89PNG nonsense")
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.avi").write_bytes(b"not a video" * 10)
    out = tmp_path / "out"
    code, stdout, stderr = _predict(load_tool, capsys, config, ckpt, folder, "--no-pictures", out)
    assert code == 0, stderr
    warnings = [line for line in stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "1 of 4 images skipped: 1 unreadable; first: " in warnings[0]
    assert (
        "broken.png" in warnings[0]
        and "1 of 1 videos skipped: " in warnings[0]
        and "broken.avi" in warnings[0]
    )
    assert "on 3 images" in stdout
    index = json.loads((out / "index.json").read_text())
    assert [Path(e["file_name"]).name for e in index["images"] if e.get("skipped")] == ["broken.png"]
    assert index["info"]["num_skipped"] == 2
    assert sorted(p.name for p in out.iterdir()) == ["index.json", "results.json"]  # --no-pictures


def _single_error(code: int, stderr: str, *needles: str) -> None:
    assert code == 2 and "Traceback" not in stderr
    lines = [line for line in stderr.strip().splitlines() if not line.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_user_errors_are_one_line_and_the_output_is_checked_first(
    synthetic_recipe, tmp_path, capsys, load_tool
) -> None:
    config, ckpt, root = synthetic_recipe
    image = sorted((root / "images" / "val").glob("*.jpg"))[0]
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, stderr = _predict(load_tool, capsys, config, tmp_path / "missing.pth", image, blocker / "out")
    _single_error(code, stderr, f"cannot write output folder {blocker / 'out'}", "nothing was run")

    code, _, stderr = _predict(load_tool, capsys, config, ckpt, image, blocker)
    _single_error(code, stderr, f"cannot write output folder {blocker}", "nothing was run")

    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, stderr = _predict(load_tool, capsys, config, ckpt, empty, tmp_path / "nope.jpg", tmp_path / "o1")
    _single_error(
        code, stderr, "no images found in", f"{empty} (no image or video in the folder)", "nope.jpg"
    )

    from detmine.engine.checkpoint import save_checkpoint
    from detmine.modeling import build_model

    other = build_model("retinanet_tiny_fpn", 6, **{**TINY_MODEL, "fpn_channels": 8})
    misfit = save_checkpoint(tmp_path / "misfit.pth", {"model": other.state_dict(), "iteration": 1})
    code, _, stderr = _predict(load_tool, capsys, config, misfit, image, tmp_path / "o2")
    _single_error(code, stderr, str(misfit))
    assert not (tmp_path / "o2").exists()
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    code, _, stderr = _predict(load_tool, capsys, config, garbage, image, tmp_path / "o2")
    _single_error(code, stderr, str(garbage))

    missing = tmp_path / "t.json"
    code, _, stderr = _predict(
        load_tool, capsys, config, ckpt, image, "--thresholds", missing, tmp_path / "o3"
    )
    _single_error(code, stderr, f"--thresholds {missing}: no such file")
    short = tmp_path / "short.json"
    short.write_text(json.dumps({"classes": [{"threshold": 0.5}]}))
    code, _, stderr = _predict(load_tool, capsys, config, ckpt, image, "--thresholds", short, tmp_path / "o4")
    _single_error(code, stderr, "1 class thresholds for a model of 6 classes")

    code, _, stderr = _predict(
        load_tool, capsys, config, ckpt, image, "model.options.widths=oops", tmp_path / "o5"
    )
    _single_error(code, stderr, "model.options")

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    code, _, stderr = _predict(load_tool, capsys, config, ckpt, broken, tmp_path / "o6")
    _single_error(code, stderr, "no input could be read: 1 of 1 images skipped: 1 unreadable", "broken.jpg")


def test_help_says_what_it_does(load_tool, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        load_tool("predict").main(["--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0
    assert "Run a trained detector on your own images and videos" in out
    assert "--thresholds" in out and "--every-n-frames" in out and "results.json" in out


def test_version_as_a_process(tool_process) -> None:
    result = tool_process("predict.py", "--version", timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("detmine ")
