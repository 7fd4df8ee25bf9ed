"""Anchor generators: SSD default boxes and RetinaNet grid anchors.

Both produce one ``[A, 4]`` xyxy tensor in network-input pixels for a batch (every image of a
batch is padded to one size), in the order the heads flatten their outputs:
level-major, then feature-map row ``y``, column ``x``, then anchor type. This is torchvision's
order, so outputs are comparable anchor by anchor with ``DefaultBoxGenerator`` and
``AnchorGenerator``.

Anchors are cached per ``(feature-map sizes, image size, device, dtype)``: a fixed-size training
run computes them once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

_CACHE_LIMIT = 16

SizeHW = tuple[int, int]


class _CachedAnchors(nn.Module):
    """Shared caching; subclasses implement ``_generate`` and ``num_anchors_per_location``."""

    def __init__(self) -> None:
        super().__init__()
        self._cache: dict[tuple, tuple[Tensor, list[int]]] = {}

    def num_anchors_per_location(self) -> list[int]:
        raise NotImplementedError

    def _generate(self, feature_sizes: list[SizeHW], image_size: SizeHW, dtype: torch.dtype) -> list[Tensor]:
        raise NotImplementedError

    def forward(
        self,
        feature_sizes: Sequence[SizeHW],
        image_size: SizeHW,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> tuple[Tensor, list[int]]:
        """Anchors for one padded batch.

        Args:
            feature_sizes: ``(H_l, W_l)`` of each feature map, finest level first.
            image_size: ``(H, W)`` of the padded input batch.

        Returns:
            ``anchors [A, 4]`` xyxy input pixels and the number of anchors of each level
            (``H_l * W_l * anchors_per_location[l]``), summing to ``A``.
        """
        sizes = [(int(h), int(w)) for h, w in feature_sizes]
        image_size = (int(image_size[0]), int(image_size[1]))
        key = (tuple(sizes), image_size, str(device), dtype)
        hit = self._cache.get(key)
        if hit is None:
            if len(sizes) != len(self.num_anchors_per_location()):
                raise ValueError(
                    f"{type(self).__name__} has {len(self.num_anchors_per_location())} levels, "
                    f"got {len(sizes)} feature maps"
                )
            levels = self._generate(sizes, image_size, torch.float32)
            counts = [int(level.shape[0]) for level in levels]
            anchors = torch.cat(levels, dim=0).to(device=device, dtype=dtype)
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            hit = self._cache[key] = (anchors, counts)
        return hit[0], list(hit[1])


class DefaultBoxes(_CachedAnchors):
    """SSD default boxes (Liu et al. 2016, section 2.2; torchvision ``DefaultBoxGenerator``).

    Per location of level ``k``: a square box of scale ``s_k``, a square of ``sqrt(s_k s_{k+1})``,
    and for each aspect ratio ``r`` the pair ``(s_k sqrt(r), s_k / sqrt(r))`` and its transpose,
    i.e. ``2 + 2 * len(aspect_ratios[k])`` boxes. Scales are fractions of the image side.

    Args:
        aspect_ratios: per level, the ratios besides 1 (SSD300: ``[[2], [2, 3], [2, 3], [2, 3],
            [2], [2]]``).
        scales: ``L + 1`` scales; if None, spaced linearly from ``min_ratio`` to ``max_ratio``
            with a final 1.0 (the paper's formula).
        steps: per level, the stride in input pixels used to place the centres
            (SSD300: ``[8, 16, 32, 64, 100, 300]``); None uses the feature-map size.
        clip: clamp the relative widths/heights to ``[0, 1]`` before converting to xyxy (as
            torchvision does); the xyxy boxes themselves may still cross the image border.
    """

    def __init__(
        self,
        *,
        aspect_ratios: Sequence[Sequence[float]],
        min_ratio: float = 0.15,
        max_ratio: float = 0.9,
        scales: Sequence[float] | None = None,
        steps: Sequence[float] | None = None,
        clip: bool = True,
    ) -> None:
        super().__init__()
        num_levels = len(aspect_ratios)
        if steps is not None and len(steps) != num_levels:
            raise ValueError(f"steps has {len(steps)} entries, expected one per level ({num_levels})")
        if scales is None:
            if num_levels > 1:
                span = max_ratio - min_ratio
                scales = [min_ratio + span * k / (num_levels - 1.0) for k in range(num_levels)] + [1.0]
            else:
                scales = [min_ratio, max_ratio]
        if len(scales) != num_levels + 1:
            raise ValueError(f"scales has {len(scales)} entries, expected levels + 1 ({num_levels + 1})")
        self.aspect_ratios = [list(r) for r in aspect_ratios]
        self.scales = list(scales)
        self.steps = None if steps is None else list(steps)
        self.clip = clip
        self._wh = [self._wh_pairs(k) for k in range(num_levels)]

    def _wh_pairs(self, k: int) -> Tensor:
        s_k = self.scales[k]
        s_prime = math.sqrt(self.scales[k] * self.scales[k + 1])
        pairs = [[s_k, s_k], [s_prime, s_prime]]
        for ratio in self.aspect_ratios[k]:
            root = math.sqrt(ratio)
            pairs += [[s_k * root, s_k / root], [s_k / root, s_k * root]]
        wh = torch.tensor(pairs, dtype=torch.float32)
        return wh.clamp(0.0, 1.0) if self.clip else wh

    def num_anchors_per_location(self) -> list[int]:
        return [2 + 2 * len(r) for r in self.aspect_ratios]

    def _generate(self, feature_sizes: list[SizeHW], image_size: SizeHW, dtype: torch.dtype) -> list[Tensor]:
        img_h, img_w = image_size
        scale_xy = torch.tensor([img_w, img_h], dtype=dtype)
        levels = []
        for k, (fh, fw) in enumerate(feature_sizes):
            if self.steps is not None:
                cells_x, cells_y = img_w / self.steps[k], img_h / self.steps[k]
            else:
                cells_x, cells_y = fw, fh
            cx = ((torch.arange(fw) + 0.5) / cells_x).to(dtype)
            cy = ((torch.arange(fh) + 0.5) / cells_y).to(dtype)
            grid_y, grid_x = torch.meshgrid(cy, cx, indexing="ij")
            centres = torch.stack((grid_x, grid_y), dim=-1).reshape(-1, 1, 2)  # [HW, 1, 2]
            wh = self._wh[k].to(dtype).unsqueeze(0)  # [1, n, 2]
            boxes = torch.cat((centres - 0.5 * wh, centres + 0.5 * wh), dim=-1)  # [HW, n, 4] relative
            levels.append((boxes.reshape(-1, 4) * scale_xy.repeat(2)).contiguous())
        return levels

    def extra_repr(self) -> str:
        return (
            f"aspect_ratios={self.aspect_ratios}, scales={self.scales}, steps={self.steps}, clip={self.clip}"
        )


def retinanet_anchor_sizes(
    base_sizes: Sequence[int] = (32, 64, 128, 256, 512),
    octave_scales: Sequence[float] = (1.0, 2 ** (1.0 / 3), 2 ** (2.0 / 3)),
) -> list[list[int]]:
    """Per-level anchor sizes ``int(base * scale)`` -- torchvision's RetinaNet default for the defaults."""
    return [[int(base * s) for s in octave_scales] for base in base_sizes]


class GridAnchors(_CachedAnchors):
    """RetinaNet anchors: ``len(sizes[l]) * len(aspect_ratios)`` boxes per location of level ``l``.

    Same construction as torchvision's ``AnchorGenerator``: zero-centred base anchors of area
    ``size^2`` with ``h / w = ratio`` (ordered ratio-major, then size), rounded to integers, shifted
    by ``(x * stride_l, y * stride_l)`` for cell ``(y, x)`` of level ``l`` (anchor centres at the
    top-left corner of each cell, as in torchvision).

    ``stride_l`` is the level's true downsampling factor, given as ``strides`` (RetinaNet P3-P7:
    8, 16, 32, 64, 128; the model builders always pass it). torchvision instead takes
    ``image_size // feature_size`` per axis, which equals the true stride only when the input is a
    multiple of the coarsest stride: at 800x1216 its P7 (7x10 cells) gets strides 114 x 121
    instead of 128 and the last anchor centres drift 84 px (y) and 63 px (x) from the cells they
    are predicted from. ``strides=None`` keeps torchvision's rule, for comparisons only.

    Args:
        sizes: per level, the anchor sizes in input pixels (see :func:`retinanet_anchor_sizes`).
        aspect_ratios: height / width ratios, shared by all levels.
        strides: per level, the feature map's stride in input pixels; a forward whose feature
            maps do not fit them (``|cells * stride - H| < stride`` per axis, true of ``ceil`` and
            ``floor(H / stride)`` cells) raises ``ValueError``. None: torchvision's
            ``image_size // feature_size``.
    """

    def __init__(
        self,
        *,
        sizes: Sequence[Sequence[float]],
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        strides: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if strides is not None:
            if len(strides) != len(sizes):
                raise ValueError(f"strides has {len(strides)} entries, expected one per level ({len(sizes)})")
            if any(int(s) != s or s < 1 for s in strides):
                raise ValueError(f"strides must be positive integers, got {list(strides)}")
        self.sizes = [list(s) for s in sizes]
        self.aspect_ratios = list(aspect_ratios)
        self.strides = None if strides is None else [int(s) for s in strides]
        self._base = [self._base_anchors(s) for s in self.sizes]

    def _base_anchors(self, sizes: list[float]) -> Tensor:
        scales = torch.as_tensor(sizes, dtype=torch.float32)
        h_ratios = torch.sqrt(torch.as_tensor(self.aspect_ratios, dtype=torch.float32))
        w_ratios = 1.0 / h_ratios
        ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)
        hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
        return (torch.stack((-ws, -hs, ws, hs), dim=1) / 2).round()

    def num_anchors_per_location(self) -> list[int]:
        return [len(s) * len(self.aspect_ratios) for s in self.sizes]

    def _strides(self, feature_sizes: list[SizeHW], image_size: SizeHW) -> list[tuple[int, int]]:
        """``(stride_y, stride_x)`` per level."""
        img_h, img_w = image_size
        if self.strides is None:
            return [(img_h // fh, img_w // fw) for fh, fw in feature_sizes]
        for level, ((fh, fw), s) in enumerate(zip(feature_sizes, self.strides, strict=True)):
            # A stride-s map of an H-pixel input has ceil(H / s) cells (padded convs) or
            # floor(H / s): either way |cells * s - H| < s.
            if abs(fh * s - img_h) >= s or abs(fw * s - img_w) >= s:
                raise ValueError(
                    f"feature map {level} is {fh}x{fw} for a {img_h}x{img_w} input, which does not "
                    f"fit its stride {s} (strides {self.strides})"
                )
        return [(s, s) for s in self.strides]

    def _generate(self, feature_sizes: list[SizeHW], image_size: SizeHW, dtype: torch.dtype) -> list[Tensor]:
        levels = []
        strides = self._strides(feature_sizes, image_size)
        for (fh, fw), (stride_y, stride_x), base in zip(feature_sizes, strides, self._base, strict=True):
            xs = torch.arange(fw, dtype=torch.int32) * stride_x
            ys = torch.arange(fh, dtype=torch.int32) * stride_y
            grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
            gx, gy = grid_x.reshape(-1), grid_y.reshape(-1)
            shifts = torch.stack((gx, gy, gx, gy), dim=1)
            levels.append((shifts.view(-1, 1, 4) + base.to(dtype).view(1, -1, 4)).reshape(-1, 4))
        return levels

    def extra_repr(self) -> str:
        return f"sizes={self.sizes}, aspect_ratios={self.aspect_ratios}, strides={self.strides}"
