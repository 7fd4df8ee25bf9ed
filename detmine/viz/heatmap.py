"""Where the negatives' classification loss sits: a heat map per anchor location.

Focal loss, OHEM and SSD's 3:1 mining differ in *which* negatives carry the loss: the focal
loss leaves it on a few hard spots, OHEM keeps the top of the ranking, 3:1 mining a handful per
object. The heat map shows it at a glance, over the image: object edges, distractors, or plain
background.

Steps (each a function, so each can be checked on its own):

1. :func:`location_losses`: per pyramid level, the loss summed over the anchors that share a
   centre (the several sizes / aspect ratios of one feature-map cell) -> a ``[H_l, W_l]`` grid
   at the level's anchor centres (read from the anchors, so SSD's ``(x + 0.5) * step`` and
   RetinaNet's ``x * stride`` centres both land where they are).
2. :func:`heat_maps`: each level's grid resampled to the picture (bilinear between the anchor
   centres, the border values held outside them) and, merged (the default), summed over the
   levels. A level's sums are divided by the area of its cells first, so the map is a loss per
   input pixel: a coarse level's location covers many pixels and would otherwise outweigh a
   fine one's for the same loss (the merged map integrates to the total loss).
3. :func:`normalise` (max -> 1) and :func:`overlay`: a matplotlib colour map blended over a grey
   copy of the image, more opaque where the loss is higher.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import Tensor

DEFAULT_CMAP = "inferno"
_CENTRE_GRID = 64.0  # anchor centres are compared after rounding to 1/64 px (float noise)


@dataclass
class LevelMap:
    """The summed loss of one pyramid level, per anchor location.

    Attributes:
        xs: ``[W_l]`` sorted anchor-centre x of the level's locations (input pixels).
        ys: ``[H_l]`` sorted anchor-centre y.
        sums: ``[H_l, W_l]`` float64: the loss summed over the anchors centred at
            ``(xs[j], ys[i])`` (0 where none counts).
    """

    xs: np.ndarray
    ys: np.ndarray
    sums: np.ndarray

    def stride(self) -> tuple[float, float]:
        """``(x, y)`` median spacing of the centres (``nan`` along an axis with one centre)."""
        sx = float(np.median(np.diff(self.xs))) if len(self.xs) > 1 else float("nan")
        sy = float(np.median(np.diff(self.ys))) if len(self.ys) > 1 else float("nan")
        return sx, sy


def location_losses(
    anchors: Tensor,
    level_counts: Sequence[int] | None,
    loss: Tensor,
    mask: Tensor | None = None,
) -> list[LevelMap]:
    """Per level, the loss summed over the anchors of each location (anchor centre).

    Args:
        anchors: ``[A, 4]`` xyxy, level-major (``HeadOutputs.anchors``).
        level_counts: anchors per level, summing to ``A`` (``HeadOutputs.level_counts``);
            ``None``: all anchors are one level.
        loss: ``[A]`` per-anchor loss of one image.
        mask: ``[A]`` bool, the anchors that count (e.g. the mined negatives); ``None``: all.

    Returns:
        One :class:`LevelMap` per level.
    """
    a = anchors.shape[0]
    counts = [a] if level_counts is None else [int(c) for c in level_counts]
    if sum(counts) != a or loss.shape != (a,):
        raise ValueError(f"level_counts {counts} and loss {tuple(loss.shape)} do not fit {a} anchors")
    boxes = anchors.detach().to("cpu", torch.float64)
    values = loss.detach().to("cpu", torch.float64)
    if mask is not None:
        values = values.masked_fill(~mask.detach().cpu(), 0.0)
    centres = torch.round((boxes[:, :2] + boxes[:, 2:]) / 2 * _CENTRE_GRID) / _CENTRE_GRID
    out: list[LevelMap] = []
    start = 0
    for n in counts:
        cx, cy = centres[start : start + n, 0], centres[start : start + n, 1]
        xs, ix = torch.unique(cx, sorted=True, return_inverse=True)
        ys, iy = torch.unique(cy, sorted=True, return_inverse=True)
        sums = torch.zeros(len(ys) * len(xs), dtype=torch.float64)
        sums.index_add_(0, iy * len(xs) + ix, values[start : start + n])
        out.append(LevelMap(xs.numpy(), ys.numpy(), sums.reshape(len(ys), len(xs)).numpy()))
        start += n
    return out


def _cell_sizes(centres: np.ndarray, extent: float) -> np.ndarray:
    """Width of each location's cell along one axis: the spacing of the centres (the whole
    extent for a single centre)."""
    if len(centres) < 2:
        return np.full(len(centres), max(extent, 1.0))
    return np.gradient(centres.astype(np.float64))


def _interp_matrix(centres: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """``[len(positions), len(centres)]`` weights of linear interpolation between sorted
    ``centres`` at ``positions`` (held at the first / last centre outside them): row ``i``
    has at most two non-zeros, summing to 1."""
    n = len(centres)
    f = np.interp(positions, centres, np.arange(n, dtype=np.float64))
    lo = np.floor(f).astype(np.int64)
    hi = np.minimum(lo + 1, n - 1)
    frac = (f - lo).astype(np.float32)
    m = np.zeros((len(positions), n), dtype=np.float32)
    rows = np.arange(len(positions))
    np.add.at(m, (rows, lo), 1.0 - frac)
    np.add.at(m, (rows, hi), frac)
    return m


def _resample(values: np.ndarray, xs: np.ndarray, ys: np.ndarray, out_hw: tuple[int, int],
              scale: tuple[float, float]) -> np.ndarray:  # fmt: skip
    """``values [H_l, W_l]`` at centres ``(xs, ys)`` -> ``[h, w]`` at the output's pixel
    centres (``scale = (sx, sy)`` output pixels per input pixel): bilinear, which is separable,
    so two small matrix products instead of a per-pixel remap."""
    h, w = out_hw
    wx = _interp_matrix(xs, (np.arange(w) + 0.5) / scale[0])  # [w, W_l]
    wy = _interp_matrix(ys, (np.arange(h) + 0.5) / scale[1])  # [h, H_l]
    return (wy @ values.astype(np.float32)) @ wx.T


def heat_maps(
    levels: Sequence[LevelMap],
    input_hw: tuple[int, int],
    out_hw: tuple[int, int] | None = None,
    *,
    merge: bool = True,
) -> list[np.ndarray]:
    """The levels' loss per input pixel, resampled to the picture.

    Args:
        levels: :func:`location_losses` of one image.
        input_hw: ``(H, W)`` of the image in input pixels (the anchors' pixels).
        out_hw: ``(h, w)`` of the picture (an upscaled image); default ``input_hw``.
        merge: sum the levels into one map (else one map per level).

    Returns:
        ``[1]`` (merged) or ``[L]`` float32 ``[h, w]`` maps, loss per input pixel, not normalised.
    """
    h_in, w_in = input_hw
    h, w = out_hw or input_hw
    scale = (w / max(w_in, 1), h / max(h_in, 1))
    maps = []
    for lv in levels:
        area = _cell_sizes(lv.ys, h_in)[:, None] * _cell_sizes(lv.xs, w_in)[None, :]
        maps.append(_resample(lv.sums / np.maximum(area, 1e-6), lv.xs, lv.ys, (h, w), scale))
    if not merge:
        return maps
    total = np.zeros((h, w), dtype=np.float32)
    for m in maps:
        total += m
    return [total]


def normalise(heat: np.ndarray, peak: float | None = None) -> np.ndarray:
    """``heat / peak`` (default ``heat.max()``) as float32 clipped to ``[0, 1]`` (zeros when the
    peak is 0)."""
    if peak is None:
        peak = float(heat.max()) if heat.size else 0.0
    if peak <= 0:
        return np.zeros(heat.shape, dtype=np.float32)
    return np.clip(heat / peak, 0.0, 1.0).astype(np.float32)


@functools.lru_cache(maxsize=8)
def colormap_lut(name: str = DEFAULT_CMAP) -> np.ndarray:
    """A matplotlib colour map as a ``[256, 3]`` uint8 RGB lookup table (cached: read-only)."""
    import matplotlib

    rgba = matplotlib.colormaps[name](np.linspace(0.0, 1.0, 256))
    lut = np.round(rgba[:, :3] * 255).astype(np.uint8)
    lut.flags.writeable = False
    return lut


def overlay(
    image: np.ndarray, heat: np.ndarray, *, cmap: str = DEFAULT_CMAP, alpha: float = 0.75
) -> np.ndarray:
    """Blend a normalised heat map over a grey copy of ``image``.

    The image goes grey (and a little darker) so the colours read as loss only; the opacity
    grows with the heat (``alpha * sqrt(v)``) so the scene stays visible where the loss is low.

    Args:
        image: ``[H, W, 3]`` uint8 RGB.
        heat: ``[H, W]`` in ``[0, 1]`` (:func:`normalise`).

    Returns:
        ``[H, W, 3]`` uint8 RGB.
    """
    if heat.shape != image.shape[:2]:
        raise ValueError(f"heat map {heat.shape} does not fit the image {image.shape[:2]}")
    v = np.clip(heat, 0.0, 1.0).astype(np.float32)
    colours = colormap_lut(cmap)[np.round(v * 255).astype(np.uint8)].astype(np.float32)
    a = alpha * np.sqrt(v)
    base = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32) * (0.8 * (1.0 - a))
    out = colours * a[..., None] + base[..., None]
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def colour_ramp(width: int, height: int, cmap: str = DEFAULT_CMAP) -> np.ndarray:
    """A ``[height, width, 3]`` uint8 left-to-right gradient of ``cmap`` (the legend's key)."""
    lut = colormap_lut(cmap)
    idx = np.round(np.linspace(0, 255, max(width, 1))).astype(np.int64)
    return np.ascontiguousarray(np.broadcast_to(lut[idx][None], (max(height, 1), max(width, 1), 3)))
