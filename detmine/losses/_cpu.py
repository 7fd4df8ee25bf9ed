"""CPU helpers of the fused losses: a reusable gradient buffer and a fused row log-sum-exp.

On the CPU the dense losses are bound by memory traffic, and by page faults more than by
bandwidth: a fresh ``[B, A, K + 1]`` float32 tensor of the SSD300 batch (90 MB) costs
40-60 ms of first-touch page faults -- four times the cost of reading the logits. The
helpers here avoid both kinds of cost:

- :class:`GradientBuffer` keeps the storage of the last gradient it handed out and gives it
  out again once nobody else holds it (what the CUDA caching allocator does for free), so
  the ``d loss / d logits`` of every training step after the first is written into memory
  that is already mapped;
- :func:`row_logsumexp` (and :func:`row_logsumexp_and_pick`, which also gathers one column
  per row) computes ``logsumexp`` over the last dimension in L2-sized chunks,
  one read of the input and no input-sized intermediate tensor (``torch.logsumexp`` and
  ``log_softmax`` write one or more).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["GradientBuffer", "GRADIENT_BUFFER", "row_logsumexp", "row_logsumexp_and_pick"]

#: elements per chunk of :func:`row_logsumexp` (about 1 MB of float32: two buffers stay in L2)
CHUNK_ELEMENTS = 1 << 18

_storage_use_count = getattr(torch._C, "_storage_Use_Count", None)


def _use_count(storage: torch.UntypedStorage) -> int:
    """How many tensors / storage handles share ``storage`` (a private PyTorch counter)."""
    return _storage_use_count(storage._cdata)  # type: ignore[misc]


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The strides of a contiguous tensor of ``shape``."""
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


@dataclass
class _KnownContents:
    """What the kept storage holds: zeros, except the flat ``rows`` of a ``shape`` tensor
    (row width ``shape[-1]``), as of the version ``version`` of its handed-out views."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    rows: Tensor | None
    version: int


class GradientBuffer:
    """One reusable CPU gradient storage.

    :meth:`take` returns a tensor of the requested shape on the kept storage when no tensor
    handed out before is still alive (its consumer -- autograd, ``.grad``, a view in the
    head's backward -- has let go of it), otherwise a fresh ``torch.empty``, which then
    becomes the kept storage if it is larger. Contents are undefined, as ``torch.empty``'s.

    Whether a handed-out tensor is alive is read off the storage's use count, so a gradient
    someone still holds (``logits.grad`` kept for accumulation, a hook) is never
    overwritten. Memory cost: the largest gradient of the process stays allocated between
    steps. Only for CPU tensors; elsewhere (and on a PyTorch without the counter) it is
    ``torch.empty``.

    A sparse gradient (softmax CE under a miner: a few percent of the rows) need not be
    zeroed whole every step: :meth:`take_zeros` zeros only the rows that
    :meth:`note_zeros` / :meth:`note_rows` say the last one wrote, when the storage's version
    counter shows nobody else wrote into it since (handed-out tensors are views of one kept
    base tensor, so an in-place PyTorch operation by any consumer moves that counter). Writes
    that bypass PyTorch's version counting -- through ``.data``, ``.numpy()``, DLPack -- are
    not seen: a consumer that writes into a gradient that way must not hand it back.

    Attributes:
        enabled: switch it off to get ``torch.empty`` always.
    """

    def __init__(self) -> None:
        self.enabled = _storage_use_count is not None
        self._storage: torch.UntypedStorage | None = None
        self._base: Tensor | None = None  # a uint8 view of the whole kept storage
        self._known: _KnownContents | None = None
        self._idle_count = 0
        self._lock = threading.Lock()  # check-and-hand-out must not interleave between threads

    def take(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
        """A contiguous ``shape`` tensor, on the kept storage when it is free and large enough."""
        if not self.enabled or device.type != "cpu":
            return torch.empty(shape, dtype=dtype, device=device)
        with self._lock:
            self._known = None
            return self._take(shape, dtype)

    def take_zeros(
        self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
    ) -> tuple[Tensor, bool]:
        """:meth:`take`, and whether the tensor already holds zeros: True when it is the kept
        storage whose last contents are known (:meth:`note_rows`), whose written rows this
        call zeroed; False means undefined contents, for the caller to zero."""
        if not self.enabled or device.type != "cpu":
            return torch.empty(shape, dtype=dtype, device=device), False
        with self._lock:
            known, self._known = self._known, None
            out = self._take(shape, dtype)
            if known is None or not self._still_holds(known, out):
                return out, False
            if known.rows is not None and known.rows.numel():
                out.view(-1, shape[-1]).index_fill_(0, known.rows, 0)
            return out, True

    def note_zeros(self, tensor: Tensor) -> None:
        """Record that ``tensor`` (from :meth:`take` / :meth:`take_zeros`) holds zeros only."""
        self._note(tensor, None)

    def note_rows(self, tensor: Tensor, rows: Tensor) -> None:
        """Record that ``tensor`` holds zeros but in the flat ``rows [N]`` (of row width
        ``tensor.shape[-1]``) -- call it only when it was all zeros (:meth:`is_zeros`) before
        those rows were written."""
        self._note(tensor, rows)

    def is_zeros(self, tensor: Tensor) -> bool:
        """True when ``tensor`` is the kept storage and still all zeros as :meth:`note_zeros` left it."""
        with self._lock:
            known = self._known
            return known is not None and known.rows is None and self._still_holds(known, tensor)

    def _still_holds(self, known: _KnownContents, tensor: Tensor) -> bool:
        """``tensor`` is the kept storage as ``known`` describes it: the same shape and dtype,
        and nobody wrote into it in place since (the base's version counter)."""
        return (
            self._on_base(tensor)
            and (known.shape, known.dtype) == (tuple(tensor.shape), tensor.dtype)
            and self._base is not None
            and self._base._version == known.version
        )

    def _note(self, tensor: Tensor, rows: Tensor | None) -> None:
        with self._lock:
            if not self._on_base(tensor) or self._base is None:
                self._known = None
                return
            self._known = _KnownContents(tuple(tensor.shape), tensor.dtype, rows, self._base._version)

    def _on_base(self, tensor: Tensor) -> bool:
        return (
            self._base is not None
            and tensor.device.type == "cpu"
            and tensor.is_contiguous()
            and tensor.data_ptr() == self._base.data_ptr()
        )

    def _take(self, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
        nbytes = math.prod(shape) * dtype.itemsize
        base = self._base
        if base is not None and base.numel() >= nbytes and self._storage is not None:
            if _use_count(self._storage) <= self._idle_count:
                return base[:nbytes].view(dtype).view(shape)
        self._known = None
        base = torch.empty(max(nbytes, 1), dtype=torch.uint8)
        # a kept storage that is large enough is busy here: keep it for the next steps
        if self._base is None or self._base.numel() < nbytes:
            self._base, self._storage = base, base.untyped_storage()
            self._idle_count = _use_count(self._storage)  # before any view of it exists
        return base[:nbytes].view(dtype).view(shape)

    def release(self) -> None:
        """Drop the kept storage (its memory returns to the system once no tensor uses it)."""
        with self._lock:
            self._storage = self._base = self._known = None


#: the buffer of the fused losses' gradients (one per process)
GRADIENT_BUFFER = GradientBuffer()


def _log_tiny(dtype: torch.dtype) -> float:
    """Below this ``log(sum(exp(x)))`` the unshifted sum may have lost precision (subnormal)."""
    return 0.9 * math.log(torch.finfo(dtype).tiny)


def row_logsumexp(x: Tensor) -> Tensor:
    """``torch.logsumexp(x, -1)``, ``[..., C] -> [...]``, without writing an ``x``-sized
    tensor (see :func:`row_logsumexp_and_pick`)."""
    return _chunked_logsumexp(x, None)[0]


def row_logsumexp_and_pick(x: Tensor, pick: Tensor, zero: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``torch.logsumexp(x, -1)`` and ``x[..., pick]``, without writing an ``x``-sized tensor
    (but ``zero``, if given, is zeroed on the way).

    On the CPU, for float32 / float64 ``x``: chunks of rows small enough for the L2 cache go
    through ``exp`` into one reused buffer and a matrix-vector product with ones (BLAS,
    faster than ``sum(-1)`` over a short row); the picked column is gathered from the chunk
    while it is in cache (a gather over the whole tensor touches one cache line per row,
    a quarter of the cost of the ``exp``). The exponentials are not shifted by the row
    maximum -- that would be a second reduction, as expensive as the sum -- so the rows
    whose sum overflows or underflows (``|x|`` near 88 in float32) are recomputed with
    ``torch.logsumexp``: exact for every input, a handful of rows at most in practice.
    Elsewhere: ``torch.logsumexp`` and ``gather``.

    Zeroing a gradient-sized buffer chunk by chunk in the same loop costs less than a
    separate ``zero_()`` (the writes overlap the ``exp``, which leaves memory idle).

    Args:
        x: ``[..., C]``.
        pick: ``[...]`` int64 column per row, in ``0..C-1``.
        zero: optional contiguous tensor of ``x``'s shape to fill with zeros.

    Returns:
        ``(lse [...], picked [...])``.
    """
    lse, picked = _chunked_logsumexp(x, pick, zero)
    assert picked is not None
    return lse, picked


def _chunked_logsumexp(
    x: Tensor, pick: Tensor | None, zero: Tensor | None = None
) -> tuple[Tensor, Tensor | None]:
    """:func:`row_logsumexp_and_pick`, the picked column only when ``pick`` is given."""
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64) or x.numel() == 0:
        picked = None if pick is None else x.gather(-1, pick.unsqueeze(-1)).squeeze(-1)
        if zero is not None:
            zero.zero_()
        return torch.logsumexp(x, dim=-1), picked
    cols = x.shape[-1]
    zero_rows = None if zero is None else zero.view(-1, cols)
    flat = x.detach().reshape(-1, cols)
    rows = flat.shape[0]
    step = max(1, CHUNK_ELEMENTS // cols)
    buf = torch.empty(min(step, rows), cols, dtype=x.dtype)
    ones = torch.ones(cols, dtype=x.dtype)
    out = torch.empty(rows, dtype=x.dtype)
    picked = None if pick is None else torch.empty(rows, 1, dtype=x.dtype)
    columns = None if pick is None else pick.reshape(-1, 1)
    for start in range(0, rows, step):
        chunk = flat[start : start + step]
        stop = start + chunk.shape[0]
        exp = torch.exp(chunk, out=buf[: chunk.shape[0]])
        torch.mv(exp, ones, out=out[start:stop])
        if picked is not None and columns is not None:
            torch.gather(chunk, 1, columns[start:stop], out=picked[start:stop])
        if zero_rows is not None:
            zero_rows[start:stop].zero_()
    out.log_()
    redo = (~torch.isfinite(out) | (out < _log_tiny(x.dtype))).nonzero().squeeze(1)
    if redo.numel():
        out[redo] = torch.logsumexp(flat[redo], dim=-1)
    shape = x.shape[:-1]
    return out.view(shape), None if picked is None else picked.view(shape)
