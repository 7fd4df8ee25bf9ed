"""``tools/analyze_data.py``: the report of a split on the COCO and VOC layouts and on a
synthetic recipe (class counts equal to ``count_classes``, the plots written), the real
selection of a freshly saved model, one-line errors before any work, ``--help``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from detmine.analysis import count_classes
from detmine.config import load_config
from detmine.engine import builders
from detmine.engine.checkpoint import save_checkpoint

ROOT = Path(__file__).resolve().parents[2]
PLOTS = [
    "class_long_tail.png",
    "box_sizes.png",
    "anchor_coverage.png",
    "coverage_by_class.png",
    "anchors_per_image.png",
]
TINY_MODEL = [
    "model.name=retinanet_tiny_fpn",
    "model.options={image_size: 64, widths: [8, 8, 16, 16, 32], fpn_channels: 16, head_convs: 1}",
    "data.image_size=64",
]
SYNTHETIC = "data.synthetic={num_train: 12, num_val: 6, size: 128, seed: 0, voc: true}"


def _class_rows(summary: str) -> dict[str, tuple[int, int]]:
    """``{class: (objects, images with the class)}`` from the class table of ``summary.md``."""
    table = summary.split("| class | objects | share of objects | images with the class |")[1].split("\n\n")[
        0
    ]
    rows = re.findall(r"^\| (.+?) \| (\d+) \| [^|]+ \| (\d+) \|$", table, flags=re.M)
    return {name: (int(objects), int(images)) for name, objects, images in rows}


def _check_report(out: Path, cfg_args: list[str], split: str = "train") -> str:
    summary = (out / "summary.md").read_text()
    cfg = load_config(cfg_args[0], cfg_args[1:])
    counts = count_classes(builders.build_dataset_split(cfg, split, True))
    assert _class_rows(summary) == {
        name: (n, m) for name, n, m in zip(counts.class_names, counts.instances, counts.images, strict=True)
    }
    assert f"| {counts.num_images} | {counts.num_instances} | {counts.images_without_objects} (" in summary
    for name in PLOTS:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    for needed in (
        "tools/analyze_data.py",
        "## Anchor coverage",
        "## What the miner keeps",
        "per 10k images",
    ):
        assert needed in summary
    return summary


@pytest.mark.parametrize("layout", ["coco", "voc"])
def test_report_on_the_coco_and_voc_layouts(
    layout, load_tool, tiny_coco_root, tiny_voc_root, tmp_path, capsys
):
    root = tiny_coco_root if layout == "coco" else tiny_voc_root
    cfg_args = [
        str(ROOT / "configs" / "quickstart.yaml"),
        f"data.kind={layout}",
        f"data.root={root}",
        "data.num_workers=0",
    ]
    out = tmp_path / "report"
    assert load_tool("analyze_data").main([*cfg_args, "--out-dir", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert (
        "best anchor IoU < 0.5" in printed
        and "per 10k images" in printed
        and str(out / "summary.md") in printed
    )
    summary = _check_report(out, cfg_args)
    assert "AllAnchorsMiner()" in summary and "every non-ignored anchor" in summary


def test_synthetic_ssd_recipe_with_tensorboard(load_tool, tiny_synthetic_root, tmp_path):
    cfg_args = [str(ROOT / "configs" / "quickstart_ssd.yaml"), f"data.root={tiny_synthetic_root}", SYNTHETIC,
                "data.num_workers=0"]  # fmt: skip
    out = tmp_path / "report"
    assert (
        load_tool("analyze_data").main([*cfg_args, "--out-dir", str(out), "--tensorboard", "--no-progress"])
        == 0
    )
    summary = _check_report(out, cfg_args)
    assert "SSDMiner(neg_pos_ratio=3, min_negatives=8)" in summary
    assert "Matcher(fg_iou_thresh=0.5, bg_iou_thresh=0.5" in summary
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))


def test_checkpoint_reports_the_real_selection(load_tool, tiny_coco_root, tmp_path, capsys):
    cfg_args = [str(ROOT / "configs" / "quickstart.yaml"), "data.kind=coco", f"data.root={tiny_coco_root}",
                "data.num_workers=0", "mining.type=ssd", *TINY_MODEL]  # fmt: skip
    torch.manual_seed(0)
    model = builders.build_model_from_config(load_config(cfg_args[0], cfg_args[1:]), 6)
    ckpt = save_checkpoint(tmp_path / "model.pth", {"model": model.state_dict(), "iteration": 1})
    out = tmp_path / "report"
    argv = [*cfg_args, "--out-dir", str(out), "--checkpoint", str(ckpt), "--max-images", "5", "--no-progress"]
    assert load_tool("analyze_data").main(argv) == 0
    assert "checkpoint: " in capsys.readouterr().out
    summary = _check_report(out, cfg_args)
    assert "## The real selection" in summary and "over the first 5 images" in summary
    assert (out / "mining_replay.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["configs/nope.yaml"], "nope.yaml"),
        (["configs/quickstart.yaml", "mining.type=ohm"], "did you mean 'ohem'"),
    ],
)
def test_bad_config_is_one_error_line(args, message, load_tool, tmp_path, capsys):
    code = load_tool("analyze_data").main([str(ROOT / args[0]), *args[1:], "--out-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert not (tmp_path / "r").exists()


def test_unwritable_out_dir_is_one_error_line_before_any_work(load_tool, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    argv = [
        str(ROOT / "configs" / "quickstart.yaml"),
        "data.root=/nonexistent",
        "--out-dir",
        str(blocker / "sub"),
    ]
    assert load_tool("analyze_data").main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write report folder") and err.count("\n") == 1
    assert "nothing was run" in err


def test_help(tool_process):
    result = tool_process("analyze_data.py", "--help", timeout=60)
    assert result.returncode == 0
    for option in (
        "--split",
        "--out-dir",
        "--checkpoint",
        "--tensorboard",
        "--max-images",
        "--plugin",
        "--version",
    ):
        assert option in result.stdout
