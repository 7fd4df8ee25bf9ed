"""Output faults of the tools: an unusable output location is one ``error:`` line naming the path
and the cause, before any work; a write that fails after an evaluation still prints the table
first. CI runs as root (chmod does not stop root), so a path under a regular file gives a real
ENOTDIR / EEXIST and the file system's EROFS / ENOSPC answers are simulated on ``mkstemp``."""

from __future__ import annotations

import contextlib
import errno
import io
import os
from pathlib import Path

import pytest
import torch

from detmine import safe_io
from detmine.config import load_config, save_config
from detmine.data.synthetic import CLASS_NAMES
from detmine.engine import builders
from detmine.engine.checkpoint import save_checkpoint

TABLE = "Average Precision  (AP) @[ IoU=0.50:0.95"


@pytest.fixture(scope="module")
def recipe(tmp_path_factory, tiny_synthetic_root):
    tmp = tmp_path_factory.mktemp("outfaults")
    cfg = load_config(
        None,
        [
            f"data.root={tiny_synthetic_root}",
            "data.synthetic={num_train: 12, num_val: 6, size: 128, seed: 0, voc: true}",
            "data.kind=coco",
            "data.image_size=64",
            "data.num_workers=0",
            "model.name=retinanet_tiny_fpn",
            "model.options={image_size: 64, widths: [8, 8, 16, 16, 32], fpn_channels: 16, head_convs: 1}",
            "train.max_iters=1",
            "train.device=cpu",
            "eval.batch_size=2",
            "eval.max_images=2",
            f"output_dir={tmp / 'run'}",
        ],
    )
    config = save_config(cfg, tmp / "tiny.yaml")
    torch.manual_seed(0)
    model = builders.build_model_from_config(cfg, len(CLASS_NAMES))
    ckpt = save_checkpoint(tmp / "ckpt" / "model.pth", {"model": model.state_dict(), "iteration": 1})
    return config, ckpt


def _run(tool, argv: list[str]) -> tuple[int, str]:
    """``tool.main(argv)`` with stdout and stderr in one stream, in the order they were written."""
    both = io.StringIO()
    with contextlib.redirect_stdout(both), contextlib.redirect_stderr(both):
        code = tool.main(argv)
    return code, both.getvalue()


def _single_error(output: str, path: Path, *needles: str) -> str:
    assert "Traceback" not in output, output
    errors = [ln for ln in output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and errors[-1] == output.strip().splitlines()[-1], output
    for needle in (str(path), *needles):
        assert needle in errors[0], errors[0]
    return errors[0]


def _fail_mkstemp(monkeypatch, code: int, *, prefix: str = "") -> None:
    """``mkstemp`` answers ``OSError(code)`` for temp files whose name starts with ``prefix``."""
    real = safe_io.tempfile.mkstemp

    def fake(*args, **kwargs):
        if str(kwargs.get("prefix", "")).startswith(prefix):
            raise OSError(code, os.strerror(code))
        return real(*args, **kwargs)

    monkeypatch.setattr(safe_io.tempfile, "mkstemp", fake)


@pytest.fixture
def blocker(tmp_path) -> Path:
    path = tmp_path / "plain_file"
    path.write_text("a file, not a folder")
    return path


# ----------------------------------------------------------------------------- evaluate


def _evaluate_argv(recipe, out: Path) -> list[str]:
    config, ckpt = recipe
    return [str(config), str(ckpt), "--no-progress", "--device", "cpu", "--out", str(out)]


def test_evaluate_out_under_a_file_fails_before_the_work(recipe, blocker, load_tool):
    out = blocker / "sub" / "results.json"
    code, output = _run(load_tool("evaluate"), _evaluate_argv(recipe, out))
    assert code == 2
    _single_error(output, out, "is a file, not a folder", "nothing was run")
    assert TABLE not in output


def test_evaluate_out_that_is_a_folder_fails_before_the_work(recipe, tmp_path, load_tool):
    code, output = _run(load_tool("evaluate"), _evaluate_argv(recipe, tmp_path))
    assert code == 2
    _single_error(output, tmp_path, "is a folder", "--out")
    assert TABLE not in output


@pytest.mark.parametrize("code_name", ["EROFS", "ENOSPC"])
def test_evaluate_read_only_or_full_output_fails_before_the_work(
    recipe, tmp_path, monkeypatch, load_tool, code_name
):
    out = tmp_path / "results.json"
    _fail_mkstemp(monkeypatch, getattr(errno, code_name))
    code, output = _run(load_tool("evaluate"), _evaluate_argv(recipe, out))
    assert code == 2
    _single_error(output, out, f"[{code_name}]")
    assert TABLE not in output and not out.exists()


@pytest.mark.parametrize(
    ("code_name", "target"), [("ENOSPC", "results.json"), ("EROFS", "results.metrics.json")]
)
def test_evaluate_write_failing_after_the_work_prints_the_table_first(
    recipe, tmp_path, monkeypatch, load_tool, code_name, target
):
    out = tmp_path / "results.json"
    _fail_mkstemp(monkeypatch, getattr(errno, code_name), prefix=f".{target}.")  # the write, not the check
    code, output = _run(load_tool("evaluate"), _evaluate_argv(recipe, out))
    assert code == 2
    line = _single_error(output, tmp_path / target, f"[{code_name}]", "evaluation above is complete")
    assert output.index(TABLE) < output.index(line)
    assert "Per-class AP" in output[: output.index(line)]
    assert not (tmp_path / target).exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


# ----------------------------------------------------------------------------- visualize_negatives


def _vis_argv(recipe, out_dir: Path, *extra: str) -> list[str]:
    config, ckpt = recipe
    return [str(config), str(ckpt), "--no-progress", "--device", "cpu", "--num-images", "2", "--gallery-images", "2",
            "--out-dir", str(out_dir), *extra]  # fmt: skip


def test_visualize_out_dir_under_a_file_fails_before_the_work(recipe, blocker, load_tool):
    out_dir = blocker / "negatives"
    code, output = _run(load_tool("visualize_negatives"), _vis_argv(recipe, out_dir))
    assert code == 2
    _single_error(output, out_dir, "is a file, not a folder", "nothing was run")
    assert "wrote" not in output


def test_visualize_logdir_under_a_file_fails_before_the_work(recipe, tmp_path, blocker, load_tool):
    logdir = blocker / "tb"
    code, output = _run(
        load_tool("visualize_negatives"), _vis_argv(recipe, tmp_path / "o", "--logdir", str(logdir))
    )
    assert code == 2
    _single_error(output, logdir, "--logdir")
    assert not (tmp_path / "o").exists()


def test_visualize_read_only_out_dir_fails_before_the_work(recipe, tmp_path, monkeypatch, load_tool):
    out_dir = tmp_path / "negatives"
    _fail_mkstemp(monkeypatch, errno.EROFS)
    code, output = _run(load_tool("visualize_negatives"), _vis_argv(recipe, out_dir))
    assert code == 2
    _single_error(output, out_dir, "[EROFS]", "--out-dir")
    assert not out_dir.exists()


@pytest.mark.parametrize("target", ["0000_img", "gallery.png", "gallery.json"])
def test_visualize_write_failing_during_the_work_is_one_line(
    recipe, tmp_path, monkeypatch, load_tool, target
):
    out_dir = tmp_path / "negatives"
    _fail_mkstemp(monkeypatch, errno.ENOSPC, prefix=f".{target}")
    code, output = _run(load_tool("visualize_negatives"), _vis_argv(recipe, out_dir))
    assert code == 2
    line = _single_error(output, out_dir, "[ENOSPC]", "disk is full")
    assert target in line


# ----------------------------------------------------------------------------- export_weights


def test_export_out_under_a_file_fails_before_reading(recipe, blocker, load_tool):
    out = blocker / "w.safetensors"
    code, output = _run(load_tool("export_weights"), [str(recipe[1]), str(out)])
    assert code == 2
    _single_error(output, out, "is a file, not a folder")


@pytest.mark.parametrize("prefix", [".write-check.", ".w.safetensors."], ids=["check", "write"])
def test_export_read_only_or_full_output_is_one_line_and_writes_nothing(
    recipe, tmp_path, monkeypatch, load_tool, prefix
):
    out = tmp_path / "w.safetensors"
    _fail_mkstemp(monkeypatch, errno.EROFS if prefix == ".write-check." else errno.ENOSPC, prefix=prefix)
    code, output = _run(load_tool("export_weights"), [str(recipe[1]), str(out)])
    assert code == 2
    _single_error(output, out, "[EROFS]" if prefix == ".write-check." else "[ENOSPC]")
    assert list(tmp_path.iterdir()) == []
