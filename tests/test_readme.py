"""The README's library example runs as written (extracted from README.md itself)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def library_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Use it as a library", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the library section should hold one python block"
    return blocks[0]


def test_readme_library_example_runs(tmp_path):
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    script = tmp_path / "example.py"
    script.write_text(library_example())
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert "anchors counted" in lines[-2] and "'cls'" in lines[-2]
    assert lines[-1].startswith("torch.Size([")
    assert (tmp_path / "data" / "example" / "annotations").is_dir()


def test_readme_plugin_example_registers_and_trains(tmp_path):
    """The plugin file of "How it fits together", as written, trains two iterations through
    the real tools/train.py with its miner, loss and hook named in overrides."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## How it fits together", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    plugin = tmp_path / "my_parts.py"
    plugin.write_text(block)
    overrides = [
        f"data.root={tmp_path / 'data'}",
        "data.synthetic={num_train: 8, num_val: 4, size: 64}",
        "data.image_size=64",
        "data.num_workers=0",
        "model.options={image_size: 64, widths: [8, 8, 16, 16, 32], fpn_channels: 16, head_convs: 1}",
        "train.max_iters=2",
        "train.batch_size=4",
        "mining=strided",
        "mining.strided.stride=3",
        "loss.cls=scaled_bce",
        "loss.scaled_bce.scale=0.5",
        "hooks=[{name: counter, period: 1}]",
        "eval.batch_size=4",
    ]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "train.py"), str(ROOT / "configs" / "quickstart.yaml"),
         "--plugin", str(plugin), "--output-dir", str(tmp_path / "run"), *overrides],
        cwd=tmp_path,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [line for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert sum('"type": "counter"' in line for line in records) == 2
