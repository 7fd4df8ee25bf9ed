"""The environment detmine runs in, for bug reports: ``python -m detmine.env``.

Prints one table: Python and platform, torch / torchvision and what torch sees of CUDA, cuDNN
and the GPUs, the versions of the libraries detmine uses, and detmine's own version and git
commit (when it runs from a git checkout). Library versions come from the installed
distributions' metadata (:func:`importlib.metadata.version`), so nothing but torch is imported.
Nothing here raises: what cannot be found reads ``not installed`` / ``unknown``.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path

import detmine

NOT_INSTALLED = "not installed"

#: table key -> distribution name, for the libraries shown by their installed version.
PACKAGES: dict[str, str] = {
    "torchvision": "torchvision",
    "numpy": "numpy",
    "albumentations": "albumentations",
    "pycocotools": "pycocotools",
    "faster-coco-eval": "faster-coco-eval",
    "tensorboard": "tensorboard",
    "safetensors": "safetensors",
    "PyYAML": "PyYAML",
    "tqdm": "tqdm",
}

#: the distributions that provide ``cv2`` (two of them installed at once break each other).
OPENCV_DISTRIBUTIONS = (
    "opencv-python-headless",
    "opencv-python",
    "opencv-contrib-python-headless",
    "opencv-contrib-python",
)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _opencv() -> str:
    found = [(d, v) for d in OPENCV_DISTRIBUTIONS if (v := _version(d)) is not None]
    if not found:
        return NOT_INSTALLED
    text = ", ".join(f"{v} ({d})" for d, v in found)
    return text + ("; several OpenCV distributions installed: keep one" if len(found) > 1 else "")


def _git_commit(checkout: Path) -> str:
    """Short commit of the checkout detmine is imported from, ``+ local changes`` when dirty."""
    if not (checkout / ".git").exists():
        return "not a git checkout"

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(checkout), *args], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "--short=12", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except FileNotFoundError:
        return "unknown (git not found)"
    except subprocess.CalledProcessError as exc:
        last = (exc.stderr or "").strip().splitlines()[-1:] or [f"exit status {exc.returncode}"]
        return f"unknown (git: {last[0]})"
    except (subprocess.TimeoutExpired, OSError) as exc:
        return f"unknown ({type(exc).__name__})"
    return commit + (" + local changes" if dirty else "")


def _detmine_rows() -> list[tuple[str, str]]:
    package_dir = Path(detmine.__file__).resolve().parent
    version = detmine.__version__
    installed = _version("detmine")
    if installed is not None and installed != version:
        version += f" (installed metadata says {installed}: reinstall with pip install -e .)"
    return [
        ("detmine", f"{version} @ {package_dir}"),
        ("detmine git commit", _git_commit(package_dir.parent)),
    ]


def _nvidia_driver() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    return out[0] if out else None


def _torch_rows() -> list[tuple[str, str]]:
    if _version("torch") is None:
        return [("torch", NOT_INSTALLED)]
    try:
        import torch
    except Exception as exc:  # a broken torch install is exactly what a bug report needs to show
        return [("torch", f"{_version('torch')} (import failed: {type(exc).__name__}: {exc})")]
    rows = [
        ("torch", f"{torch.__version__} @ {Path(torch.__file__).resolve().parent}"),
        ("torch threads", str(torch.get_num_threads())),
    ]
    hip = getattr(torch.version, "hip", None)
    if hip:
        rows.append(("torch built with ROCm", str(hip)))
    else:
        rows.append(
            ("torch built with CUDA", str(torch.version.cuda) if torch.version.cuda else "no (CPU build)")
        )
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    rows.append(("cuDNN", str(cudnn) if cudnn else "not available"))
    available = torch.cuda.is_available()
    rows.append(("CUDA available", str(available)))
    if available:
        driver = _nvidia_driver()
        if driver:
            rows.append(("NVIDIA driver", driver))
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            rows.append(
                (
                    f"GPU {i}",
                    f"{p.name} (compute capability {p.major}.{p.minor}, {p.total_memory / 2**30:.1f} GiB)",
                )
            )
        if "CUDA_VISIBLE_DEVICES" in os.environ:
            rows.append(("CUDA_VISIBLE_DEVICES", os.environ["CUDA_VISIBLE_DEVICES"]))
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        rows.append(("MPS available", "True"))
    return rows


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; the platform's processor string elsewhere), with
    family / model numbers where known: runs are deterministic on one CPU type only, so every
    published figure names it."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine() or "unknown CPU"
    fields: dict[str, str] = {}
    for line in info.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name") or platform.processor() or "unknown CPU"
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    return name


def collect_env_rows() -> list[tuple[str, str]]:
    """``(key, value)`` rows of the environment table, in display order."""
    rows = [
        ("Python", f"{platform.python_version()} ({platform.python_implementation()}) @ {sys.executable}"),
        ("Platform", platform.platform()),
        ("CPU", cpu_model()),
        ("CPU count", str(os.cpu_count())),
        *_detmine_rows(),
        *_torch_rows(),
    ]
    for key, dist in PACKAGES.items():
        rows.append((key, _version(dist) or NOT_INSTALLED))
        if key == "albumentations":
            rows.append(("OpenCV", _opencv()))
    return rows


def collect_env() -> str:
    """The environment as a two-column text table (paste it into bug reports)."""
    rows = collect_env_rows()
    width = max(len(k) for k, _ in rows)
    rule = "-" * width + "  " + "-" * min(max(len(v) for _, v in rows), 100)
    return "\n".join([rule, *(f"{k:<{width}}  {v}" for k, v in rows), rule])


def main() -> int:
    print(collect_env())
    return 0


if __name__ == "__main__":
    sys.exit(main())
