"""Colours of the roles an anchor or box can play in a mining picture (RGB tuples).

The palette is chosen so the roles stay apart at a glance:

- ground truth: bright green, drawn thickest and on top;
- positive anchors: blue;
- mined negatives: a hot -> cool ramp by loss rank (rank 0, the hardest, is dark
  red; the last of the top-N is pale yellow), never green or blue;
- ignored anchors: grey, thin and half transparent.
"""

from __future__ import annotations

import cv2
import numpy as np

RGB = tuple[int, int, int]

GT_COLOR: RGB = (0, 230, 0)
POSITIVE_COLOR: RGB = (30, 120, 255)
IGNORED_COLOR: RGB = (150, 150, 150)
IGNORE_REGION_COLOR: RGB = (255, 0, 255)
TEXT_COLOR: RGB = (255, 255, 255)
LEGEND_BG: RGB = (25, 25, 25)

# Hot -> cool ramp for mined negatives ranked by loss (0 = highest loss).
_NEG_RAMP = np.array(
    [
        (150, 0, 0),  # dark red: the hardest negative
        (235, 30, 10),  # red
        (255, 120, 0),  # orange
        (255, 200, 40),  # amber
        (255, 250, 150),  # pale yellow: the easiest of the top-N
    ],
    dtype=np.float64,
)


def _rgb(row: np.ndarray) -> RGB:
    return int(round(row[0])), int(round(row[1])), int(round(row[2]))


def negative_rank_colors(n: int) -> list[RGB]:
    """``n`` colours for negatives ranked 0 (hardest) .. n-1, hot to cool."""
    if n <= 0:
        return []
    if n == 1:
        return [_rgb(_NEG_RAMP[0])]
    pos = np.linspace(0.0, len(_NEG_RAMP) - 1, n)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, len(_NEG_RAMP) - 1)
    frac = (pos - lo)[:, None]
    rgb = _NEG_RAMP[lo] * (1.0 - frac) + _NEG_RAMP[hi] * frac
    return [_rgb(row) for row in rgb]


def class_color(label: int) -> RGB:
    """A stable, saturated colour per class id (for prediction captions)."""
    hue = (label * 47) % 180  # OpenCV hue range 0..179; 47 spreads neighbours apart
    hsv = np.array([[[hue, 200, 255]]], dtype=np.uint8)
    r, g, b = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0]
    return int(r), int(g), int(b)
