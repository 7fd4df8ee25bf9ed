"""SSD's minimum-IoU random crop as an albumentations transform.

albumentations has bbox-safe crops (keep every box) and "at least one box" crops,
but not the sampler of the SSD paper (Liu et al. 2016, section 2.2, also
torchvision's ``RandomIoUCrop``): pick a minimum Jaccard overlap from a fixed set,
then try random patches until one overlaps some ground-truth box at least that
much. Boxes are kept by the position of their *centre*, not by visibility.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from albumentations.augmentations.crops.transforms import BaseCrop
from torchvision.ops import box_iou

#: The SSD paper's options: ``None`` = keep the whole image, ``0.0`` = any patch
#: (still containing at least one box centre), otherwise the minimum IoU.
SSD_MIN_IOUS: tuple[float | None, ...] = (None, 0.0, 0.1, 0.3, 0.5, 0.7, 0.9)


class MinIoURandomCrop(BaseCrop):
    """Random patch whose IoU with at least one ground-truth box reaches a sampled threshold.

    Each call draws a threshold from ``min_ious``. ``None`` keeps the whole image.
    Otherwise up to ``trials`` candidate patches are drawn (side scales uniform in
    ``[min_scale, max_scale]`` of the image sides, independently for width and height,
    aspect ratio ``w / h`` in ``[min_aspect_ratio, max_aspect_ratio]``, uniform
    position). A candidate is accepted when at least one box centre lies strictly
    inside it and the best IoU between the patch and those boxes is ``>=`` the
    threshold. If all ``trials`` fail a new threshold is drawn, up to
    ``max_attempts`` times, then the image is left uncropped.

    Boxes whose centre is outside the accepted patch are dropped (their labels with
    them); the others are clipped to the patch by the surrounding ``A.Compose``
    (``BboxParams`` filtering).

    Ignore regions: a bbox whose first label column (column 4 of albumentations'
    internal bbox array, i.e. the first entry of ``BboxParams.label_fields``) equals
    ``ignore_label`` does not count for the IoU constraint and is kept whenever any
    part of it lies inside the patch (a crowd cut in half stays ignored rather than
    turning into background).

    An image without (non-ignore) boxes cannot satisfy the centre rule; it gets a
    patch drawn with the size / aspect constraints only (or none, for the ``None``
    option), so background-only images are augmented too.

    Targets: image, mask, bboxes, keypoints (like every albumentations crop).
    """

    def __init__(
        self,
        min_ious: Sequence[float | None] = SSD_MIN_IOUS,
        min_scale: float = 0.3,
        max_scale: float = 1.0,
        min_aspect_ratio: float = 0.5,
        max_aspect_ratio: float = 2.0,
        trials: int = 40,
        max_attempts: int = 50,
        ignore_label: float | None = -1,
        p: float = 1.0,
    ) -> None:
        super().__init__(p=p)
        if not min_ious:
            raise ValueError("MinIoURandomCrop: min_ious must not be empty")
        for value in min_ious:
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"MinIoURandomCrop: min_ious entries must be None or in [0, 1], got {value}")
        if not 0.0 < min_scale <= max_scale <= 1.0:
            raise ValueError(
                f"MinIoURandomCrop: need 0 < min_scale <= max_scale <= 1, got {min_scale}, {max_scale}"
            )
        if not 0.0 < min_aspect_ratio <= max_aspect_ratio:
            raise ValueError(
                f"MinIoURandomCrop: need 0 < min_aspect_ratio <= max_aspect_ratio, "
                f"got {min_aspect_ratio}, {max_aspect_ratio}"
            )
        if trials < 1 or max_attempts < 1:
            raise ValueError(
                f"MinIoURandomCrop: trials and max_attempts must be >= 1, got {trials}, {max_attempts}"
            )
        self.min_ious = tuple(min_ious)
        self.min_scale = min_scale
        self.max_scale = max_scale
        self.min_aspect_ratio = min_aspect_ratio
        self.max_aspect_ratio = max_aspect_ratio
        self.trials = trials
        self.max_attempts = max_attempts
        self.ignore_label = ignore_label

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return (
            "min_ious",
            "min_scale",
            "max_scale",
            "min_aspect_ratio",
            "max_aspect_ratio",
            "trials",
            "max_attempts",
            "ignore_label",
        )

    def _ignore_mask(self, bboxes: np.ndarray) -> np.ndarray:
        """bool ``[N]``: which rows of albumentations' bbox array are ignore regions."""
        if self.ignore_label is None or bboxes.ndim != 2 or bboxes.shape[1] <= 4:
            return np.zeros(len(bboxes), dtype=bool)
        return bboxes[:, 4] == self.ignore_label

    def _candidates(self, height: int, width: int) -> np.ndarray:
        """``trials`` candidate patches as int64 ``[T, 4]`` xyxy pixels, invalid ones removed."""
        rng = self.random_generator
        scales = rng.uniform(self.min_scale, self.max_scale, size=(self.trials, 2))
        crop_w = (width * scales[:, 0]).astype(np.int64)
        crop_h = (height * scales[:, 1]).astype(np.int64)
        offsets = rng.random((self.trials, 2))
        left = ((width - crop_w) * offsets[:, 0]).astype(np.int64)
        top = ((height - crop_h) * offsets[:, 1]).astype(np.int64)
        ok = (crop_w > 0) & (crop_h > 0)
        aspect = crop_w / np.maximum(crop_h, 1)
        ok &= (aspect >= self.min_aspect_ratio) & (aspect <= self.max_aspect_ratio)
        crops = np.stack([left, top, left + crop_w, top + crop_h], axis=1)
        return crops[ok]

    def _accept(self, crops: np.ndarray, boxes: np.ndarray, min_iou: float) -> np.ndarray | None:
        """First crop of ``crops [T, 4]`` meeting the centre + IoU rule against ``boxes [N, 4]``."""
        if len(crops) == 0:
            return None
        cx = (boxes[:, 0] + boxes[:, 2]) / 2
        cy = (boxes[:, 1] + boxes[:, 3]) / 2
        inside = (
            (crops[:, None, 0] < cx)
            & (cx < crops[:, None, 2])
            & (crops[:, None, 1] < cy)
            & (cy < crops[:, None, 3])
        )  # [T, N]
        iou = box_iou(torch.from_numpy(crops).double(), torch.from_numpy(boxes).double()).numpy()  # [T, N]
        best = np.where(inside, iou, -1.0).max(axis=1)
        ok = inside.any(axis=1) & (best >= min_iou)
        hits = np.flatnonzero(ok)
        return crops[hits[0]] if len(hits) else None

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        whole = (0, 0, width, height)
        bboxes = np.asarray(data.get("bboxes", np.zeros((0, 4))), dtype=np.float64)
        if bboxes.size == 0:
            bboxes = np.zeros((0, 4))
        real = bboxes[~self._ignore_mask(bboxes), :4] * np.array([width, height, width, height])
        for _ in range(self.max_attempts):
            min_iou = self.min_ious[int(self.random_generator.integers(len(self.min_ious)))]
            if min_iou is None:
                return {"crop_coords": whole}
            crops = self._candidates(height, width)
            if len(real) == 0:
                if len(crops):
                    return {"crop_coords": tuple(int(v) for v in crops[0])}
                continue
            crop = self._accept(crops, real, min_iou)
            if crop is not None:
                return {"crop_coords": tuple(int(v) for v in crop)}
        return {"crop_coords": whole}

    def apply_to_bboxes(
        self, bboxes: np.ndarray, crop_coords: tuple[int, int, int, int], **params: Any
    ) -> np.ndarray:
        """Drop boxes whose centre is outside the patch (ignore regions: fully outside), then crop."""
        height, width = params["shape"][:2]
        if len(bboxes) and tuple(crop_coords) != (0, 0, width, height):
            left, top, right, bottom = crop_coords
            px = bboxes[:, :4] * np.array([width, height, width, height])
            cx = (px[:, 0] + px[:, 2]) / 2
            cy = (px[:, 1] + px[:, 3]) / 2
            centre_in = (left < cx) & (cx < right) & (top < cy) & (cy < bottom)
            overlaps = (px[:, 2] > left) & (px[:, 0] < right) & (px[:, 3] > top) & (px[:, 1] < bottom)
            ignore = self._ignore_mask(bboxes)
            bboxes = bboxes[np.where(ignore, overlaps, centre_in)]
        return super().apply_to_bboxes(bboxes, crop_coords, **params)
