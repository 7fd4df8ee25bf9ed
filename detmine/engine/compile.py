"""``train.compile``: the training forward through ``torch.compile``, eager wherever that fails.

:class:`CompiledForward` is what the trainer calls instead of ``model(images)``. It compiles
lazily (the first step pays for it: tens of seconds on a CPU), never changes the model's
parameters or state-dict keys (the trainer, the EMA, the hooks and the checkpoints keep using
the eager module, so a compiled run's checkpoints have no ``_orig_mod.`` prefix), and falls
back to eager -- with one warning, training goes on -- when compilation is not available here
(no C++ compiler for the CPU backend, no Triton on CUDA, a platform dynamo does not support) or
fails at a step.

Input sizes: the first size compiles static kernels; at the first batch of another height or
width, height, width and batch size are marked dynamic, so dynamo's own guards hold for the
later sizes (tests/engine/test_compile.py: one recompile for three sizes). torch's kernels and
inductor still add size guards of their own (a conv's threshold on the feature-map area): a
640 px ResNet-18 RetinaNet compiled once per padded size on bench/step.py ``--sizes``, where a
bare ``torch.compile`` compiles twice per size. A recipe with varying sizes pays a compile per
new size (minutes on a CPU) until its sizes are all seen; fixed-size inputs compile once. The
anchor generator runs eagerly between the compiled graphs: its Python-side cache, keyed by the
feature-map sizes, would otherwise make dynamo specialise on every size (and recompile at the
first cache hit).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from detmine import distributed as dist
from detmine.console import log, warn

#: the compilers the CPU backend (inductor's C++ code generation) can use.
_CXX = ("g++", "c++", "clang++")


def compile_unavailable(device: torch.device, backend: str | Callable = "inductor") -> str | None:
    """Why ``torch.compile`` cannot run on ``device`` here (one phrase), or None."""
    try:
        supported = torch._dynamo.is_dynamo_supported()
    except Exception:  # noqa: BLE001 -- older torch raises instead of answering
        supported = False
    if not supported:
        return "torch.compile is not supported on this platform / Python"
    if backend != "inductor":
        return None
    if device.type == "cpu" and not (os.environ.get("CXX") or any(shutil.which(c) for c in _CXX)):
        return "no C++ compiler found for the CPU backend (install g++ or set CXX)"
    if device.type == "cuda":
        try:
            from torch.utils._triton import has_triton
        except ImportError:
            return "this torch has no Triton support"
        if not has_triton():
            return "Triton is not installed"
    return None


def _first_line(exc: BaseException) -> str:
    """``Type: first line`` of the innermost cause (dynamo wraps a backend's error)."""
    while (inner := exc.__cause__ or getattr(exc, "inner_exception", None)) is not None and inner is not exc:
        exc = inner
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


class CompiledForward:
    """``model(images)`` through ``torch.compile`` with a once-only fallback to eager.

    Args:
        model: the training model (maybe DDP-wrapped); it is called, never replaced.
        device: where it runs (which compiler it needs).
        backend: the ``torch.compile`` backend (tests pass a failing one).

    Attributes: ``compiled`` (False once fallen back or when compilation is unavailable),
    ``first_call_s`` (the first compiled call's wall time, compilation included) and
    ``dynamic_sizes`` (whether another input size was seen).
    """

    def __init__(
        self, model: nn.Module, device: torch.device, *, backend: str | Callable = "inductor"
    ) -> None:
        self.model = model
        self.first_call_s: float | None = None
        self.dynamic_sizes = False
        self._first_shape: tuple[int, ...] | None = None
        self._compiled: Callable[..., Any] | None = None
        reason = compile_unavailable(device, backend)
        if reason is not None:
            self._fall_back(reason)
            return
        _keep_anchors_eager(model)
        self._compiled = torch.compile(model, backend=backend)

    @property
    def compiled(self) -> bool:
        return self._compiled is not None

    def __call__(self, images: torch.Tensor) -> Any:
        if self._compiled is None:
            return self.model(images)
        self._mark_sizes(images)
        start = time.perf_counter()
        try:
            out = self._compiled(images)
        except Exception as exc:  # noqa: BLE001 -- any compiler failure: the eager model decides
            # Eager first: an error of the model itself is raised from there, not hidden as a
            # compile failure. (A graph that ran before the failing one may already have updated
            # BatchNorm statistics once more for this batch: a one-off, at the fallback.)
            out = self.model(images)
            self._fall_back(f"compilation failed ({_first_line(exc)})")
            return out
        if self.first_call_s is None:
            self.first_call_s = time.perf_counter() - start
            if dist.is_main_process():
                log(f"train.compile: first step forward compiled in {self.first_call_s:.1f} s")
        return out

    def _mark_sizes(self, images: torch.Tensor) -> None:
        """Batch, height and width dynamic from the first batch of another size on (one
        recompile for every later size; a fixed-size run keeps static kernels)."""
        shape = tuple(images.shape)
        if self._first_shape is None:
            self._first_shape = shape
        elif shape != self._first_shape:
            self.dynamic_sizes = True
        if self.dynamic_sizes and images.dim() == 4:
            torch._dynamo.maybe_mark_dynamic(images, [0, 2, 3])

    def _fall_back(self, reason: str) -> None:
        self._compiled = None
        if dist.is_main_process():
            warn(f"train.compile: {reason}; training runs eagerly")


def _keep_anchors_eager(model: nn.Module) -> None:
    """Run the detector's anchor generator outside the compiled graphs (see the module doc);
    eager calls are unaffected."""
    generator = getattr(dist.unwrap(model), "anchor_generator", None)
    if isinstance(generator, nn.Module) and "forward" not in vars(generator):
        generator.forward = torch.compiler.disable(generator.forward)  # type: ignore[method-assign]
