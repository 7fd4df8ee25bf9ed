"""tools/visualize_negatives.py end to end on a tiny synthetic set and an untrained tiny model."""

import json
from pathlib import Path

import cv2
import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from detmine.config import load_config
from detmine.data.synthetic import ensure_synthetic
from detmine.engine import builders
from detmine.engine.checkpoint import save_checkpoint

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("visneg")
    data = ensure_synthetic(tmp / "syn", num_train=1, num_val=5, size=64, workers=1, progress=False)
    config = tmp / "tiny.yaml"
    recipe = {
        "data": {"kind": "coco", "root": str(data), "image_size": 64, "num_workers": 0},
        "model": {
            "name": "retinanet_tiny_fpn",
            "options": {"image_size": 64, "widths": [8, 8, 16, 16, 32], "fpn_channels": 16, "head_convs": 1},
        },
        "mining": {"type": "all"},
        "train": {"max_iters": 1, "device": "cpu"},
        "eval": {"batch_size": 2},
        "vis": {"top_k": 5},
        "output_dir": str(tmp / "run"),
    }
    config.write_text(yaml.safe_dump(recipe))
    cfg = load_config(config)
    torch.manual_seed(0)
    dataset = builders.build_dataset_split(cfg, "val", train=False)
    model = builders.build_model_from_config(cfg, dataset.num_classes)
    ckpt = tmp / "ckpt" / "model.pth"
    save_checkpoint(ckpt, {"model": model.state_dict(), "iteration": 0})
    return tmp, config, ckpt, dataset


def test_writes_pictures_gallery_and_tensorboard(setup, capsys, load_tool, check_page):
    tmp, config, ckpt, dataset = setup
    out, logdir = tmp / "out", tmp / "tb"
    # an untrained focal head scores ~0.01 (prior), so a low threshold gives false positives
    argv = [str(config), str(ckpt), "--num-images", "3", "--score-thresh", "0.005", "--gallery-size", "6"]
    argv += ["--out-dir", str(out), "--logdir", str(logdir), "--no-progress"]
    assert load_tool("visualize_negatives").main(argv) == 0
    assert "wrote 3 mined-negative pictures" in capsys.readouterr().out

    pngs = sorted((out / "negatives").glob("*.png"))
    assert [p.name for p in pngs] == [f"{i:04d}_img{dataset.image_ids[i]}.png" for i in range(3)]
    img = cv2.imread(str(pngs[0]))
    # 64 px input upscaled to 512 for readability, the heat map beside it, the legend below
    assert img.shape[1] == 2 * 512 + 6 and img.shape[0] > 512

    gallery = cv2.imread(str(out / "gallery.png"))
    items = json.loads((out / "gallery.json").read_text())
    assert 1 <= len(items) <= 6
    scores = [it["score"] for it in items]
    assert scores == sorted(scores, reverse=True) and min(scores) >= 0.005
    assert {it["image_id"] for it in items} <= set(dataset.image_ids)
    assert gallery.shape[1] == 160 * min(len(items), 8)
    page = check_page(out / "gallery" / "index.html")  # every crop and source linked, offline
    assert len(page.images) == len(items) and len(set(page.links)) == len(items)

    ea = EventAccumulator(str(logdir), size_guidance={"images": 0, "histograms": 0, "scalars": 0})
    ea.Reload()
    tags = ea.Tags()
    assert {"negatives/0", "negatives/1", "negatives/2", "negatives/gallery"} <= set(tags["images"])
    assert "mining/hist/neg_loss_all" in tags["histograms"]
    assert [e.step for e in ea.Scalars("mining/pos_per_image")] == [0, 1, 2]  # 5 images, batch 2


def test_one_line_errors(setup, capsys, load_tool):
    tmp, config, ckpt, _ = setup
    tool = load_tool("visualize_negatives")
    assert tool.main([str(config), str(tmp / "missing.pth"), "--out-dir", str(tmp / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "missing.pth" in err and err.count("\n") == 1
    assert tool.main([str(config), str(ckpt), "--weights", "ema", "--out-dir", str(tmp / "o")]) == 2
    assert "no EMA weights" in capsys.readouterr().err
    assert tool.main([str(config), str(ckpt), "model.name=nope", "--out-dir", str(tmp / "o")]) == 2
    assert "model.name" in capsys.readouterr().err
