"""Session-wide fixtures: one tiny synthetic dataset in the real COCO and VOC layouts.

``tiny_coco_root``: ``<root>/images/{train,val}/*.jpg`` + ``<root>/annotations/instances_{train,val}.json``
(12 train / 6 val images of 128 px, a third of them without objects; read it with
``build_dataset("synthetic" | "coco", root, split)``).
``tiny_voc_root``: the same images as ``VOCdevkit`` (``VOC2007/{Annotations,JPEGImages,
ImageSets/Main/{train,val,trainval}.txt}``); class names are ``detmine.data.synthetic.CLASS_NAMES``.
Treat both as read-only: copy them (``shutil.copytree``) before corrupting anything.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]

TINY_SYNTHETIC = dict(num_train=12, num_val=6, size=128, seed=0, voc=True)


@pytest.fixture(scope="session")
def tiny_synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from detmine.data.synthetic import ensure_synthetic

    return ensure_synthetic(tmp_path_factory.mktemp("tiny_synthetic") / "synthetic", workers=0, progress=False,
                            **TINY_SYNTHETIC)  # fmt: skip


@pytest.fixture(scope="session")
def tiny_coco_root(tiny_synthetic_root: Path) -> Path:
    return tiny_synthetic_root


@pytest.fixture(scope="session")
def tiny_voc_root(tiny_synthetic_root: Path) -> Path:
    return tiny_synthetic_root / "VOCdevkit"


def _load_tool(name: str) -> ModuleType:
    """``tools/<name>.py`` imported as a module (the tools are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"detmine_tool_{name}", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def load_tool() -> Callable[[str], ModuleType]:
    """``load_tool("evaluate").main([...])`` runs a tool in-process."""
    return _load_tool


def run_tool_process(name: str, *args: object, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python tools/<name> ARGS`` as a real process (one torch thread), output captured."""
    return subprocess.run(
        [sys.executable, str(ROOT / "tools" / name), *map(str, args)],
        cwd=ROOT,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def tool_process() -> Callable[..., subprocess.CompletedProcess]:
    """``tool_process("train.py", recipe, "--resume")``: a tool run as its own process."""
    return run_tool_process
