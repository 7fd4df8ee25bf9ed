"""detmine.env: the bug-report table (keys, versions equal to the installed metadata, git, GPUs)."""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

import detmine
from detmine import env

REPO = Path(__file__).resolve().parents[1]

KEYS = [
    "Python", "Platform", "CPU", "CPU count", "detmine", "detmine git commit", "torch", "torch threads",
    "torch built with CUDA", "cuDNN", "CUDA available", "torchvision", "numpy", "albumentations", "OpenCV",
    "pycocotools", "faster-coco-eval", "tensorboard", "safetensors", "PyYAML", "tqdm",
]  # fmt: skip


def _metadata(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def test_keys_on_a_machine_without_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rows = env.collect_env_rows()
    keys = [k for k, _ in rows]
    if torch.version.hip:  # a ROCm build says so instead
        keys[keys.index("torch built with ROCm")] = "torch built with CUDA"
    assert [k for k in keys if k != "MPS available"] == KEYS
    assert dict(rows)["CUDA available"] == "False"


def test_versions_equal_the_installed_metadata():
    rows = dict(env.collect_env_rows())
    for key, dist in env.PACKAGES.items():
        assert rows[key] == (_metadata(dist) or env.NOT_INSTALLED), key
    torch_version = rows["torch"].split(" @ ")[0]
    assert torch_version == torch.__version__  # may carry a build tag (+cu130) the metadata lacks
    assert torch_version.split("+")[0] == _metadata("torch").split("+")[0]
    for dist in env.OPENCV_DISTRIBUTIONS:
        if _metadata(dist):
            assert f"{_metadata(dist)} ({dist})" in rows["OpenCV"]
    assert rows["detmine"].startswith(detmine.__version__ + " ")
    assert rows["detmine"].endswith(f"@ {REPO / 'detmine'}")
    assert rows["Python"].startswith(".".join(map(str, sys.version_info[:3])))


def test_missing_package_reads_not_installed(monkeypatch):
    monkeypatch.setattr(env, "PACKAGES", {"nothing": "detmine-no-such-distribution"})
    monkeypatch.setattr(env, "OPENCV_DISTRIBUTIONS", ("detmine-no-such-opencv",))
    rows = dict(env.collect_env_rows())
    assert rows["nothing"] == env.NOT_INSTALLED and "OpenCV" not in rows


def _head() -> str:
    return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short=12", "HEAD"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip


def test_git_commit_of_the_checkout(tmp_path):
    if shutil.which("git") and (REPO / ".git").exists():
        before = _head()
        commit = env._git_commit(REPO)
        after = _head()  # HEAD can move under a concurrent commit
        assert commit.removesuffix(" + local changes") in (before, after)
    assert env._git_commit(tmp_path) == "not a git checkout"
    (tmp_path / ".git").mkdir()  # looks like a checkout, but git cannot read it
    assert env._git_commit(tmp_path).startswith("unknown (git")


def test_no_failure_without_git(monkeypatch):
    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(env.subprocess, "run", no_git)
    assert env._git_commit(REPO if (REPO / ".git").exists() else Path("/nonexistent")) in (
        "unknown (git not found)",
        "not a git checkout",
    )
    assert "detmine git commit" in env.collect_env()


def test_gpu_rows_when_cuda_is_available(monkeypatch):
    props = SimpleNamespace(name="NVIDIA Fake 80GB", major=9, minor=0, total_memory=80 * 2**30)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props)
    monkeypatch.setattr(env, "_nvidia_driver", lambda: "999.1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    rows = dict(env.collect_env_rows())
    assert rows["CUDA available"] == "True" and rows["NVIDIA driver"] == "999.1"
    assert rows["GPU 0"] == rows["GPU 1"] == "NVIDIA Fake 80GB (compute capability 9.0, 80.0 GiB)"
    assert rows["CUDA_VISIBLE_DEVICES"] == "3,5"


def test_table_and_module_entry_point():
    table = env.collect_env()
    lines = table.splitlines()
    assert lines[0] == lines[-1] and set(lines[0]) == {"-", " "}
    width = lines[0].index(" ")
    assert [line[:width].rstrip() for line in lines[1:-1]] == [k for k, _ in env.collect_env_rows()]
    out = subprocess.run(
        [sys.executable, "-m", "detmine.env"], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert out.returncode == 0, out.stderr
    keys = [line.split("  ")[0] for line in out.stdout.splitlines()[1:-1]]
    assert set(KEYS) - {"torch built with CUDA"} <= set(keys)
