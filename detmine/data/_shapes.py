"""Drawing primitives of the synthetic dataset: class shapes, distractors, backgrounds.

Everything here is a pure function of a ``numpy.random.Generator`` so that an image is
reproducible from its seed alone. Masks are drawn with hard edges (no anti-aliasing) so a
box computed from a mask is exactly tight around the drawn pixels.
"""

from __future__ import annotations

import colorsys

import cv2
import numpy as np

# name, COCO category id (deliberately non-contiguous), hue in degrees, relative frequency.
# Frequencies fall geometrically: the most common class is 16x the rarest.
CLASS_SPECS: tuple[tuple[str, int, float, float], ...] = (
    ("circle", 1, 0.0, 1.0),
    ("square", 2, 235.0, 0.574),
    ("triangle", 3, 120.0, 0.330),
    ("cross", 5, 58.0, 0.189),
    ("ring", 7, 300.0, 0.109),
    ("star", 9, 180.0, 0.0625),
)
DISTRACTOR_KINDS = ("ellipse", "bar", "crescent", "chevron")
_SHIFT = 4  # fixed-point bits for cv2 drawing: sub-pixel vertex positions
_ONE = 1 << _SHIFT


def hsv_to_rgb(hue_deg: float, sat: float, val: float) -> np.ndarray:
    """RGB float32 ``[3]`` in 0..255 from hue in degrees and saturation / value in 0..1."""
    r, g, b = colorsys.hsv_to_rgb((hue_deg % 360.0) / 360.0, sat, val)
    return np.array([r, g, b], dtype=np.float32) * 255.0


def _fill_poly(mask: np.ndarray, pts: np.ndarray) -> None:
    cv2.fillPoly(mask, [np.round(pts * _ONE).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=_SHIFT)


def _fill_circle(mask: np.ndarray, cx: float, cy: float, r: float, value: int = 1) -> None:
    center = (int(round(cx * _ONE)), int(round(cy * _ONE)))
    cv2.circle(mask, center, max(int(round(r * _ONE)), _ONE), value, -1, lineType=cv2.LINE_8, shift=_SHIFT)


def _polar(cx: float, cy: float, radii: np.ndarray, angles: np.ndarray) -> np.ndarray:
    return np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)


def _rotated(cx: float, cy: float, pts: np.ndarray, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s], [s, c]], dtype=np.float64)
    return pts @ rot.T + np.array([cx, cy])


def draw_shape(mask: np.ndarray, kind: str, cx: float, cy: float, radius: float, angle: float) -> None:
    """Draw a filled shape of circumradius ``radius`` centred at (cx, cy) into a uint8 mask [H, W]."""
    r = radius
    if kind == "circle":
        _fill_circle(mask, cx, cy, r)
    elif kind == "ring":
        _fill_circle(mask, cx, cy, r)
        _fill_circle(mask, cx, cy, max(r * 0.55, r - 8.0), value=0)
    elif kind in ("square", "triangle"):
        n = 4 if kind == "square" else 3
        ang = angle + np.arange(n) * 2 * np.pi / n
        _fill_poly(mask, _polar(cx, cy, np.full(n, r), ang))
    elif kind == "star":
        ang = angle + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
        _fill_poly(mask, _polar(cx, cy, radii, ang))
    elif kind == "cross":
        t = 0.3 * r
        a = r / np.sqrt(1.0 + 0.09)  # arm tips stay inside the circumradius
        pts = np.array(
            [
                [t, a],
                [t, t],
                [a, t],
                [a, -t],
                [t, -t],
                [t, -a],
                [-t, -a],
                [-t, -t],
                [-a, -t],
                [-a, t],
                [-t, t],
                [-t, a],
            ]
        )
        _fill_poly(mask, _rotated(cx, cy, pts, angle))
    elif kind == "ellipse":
        ang = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        pts = np.stack([r * np.cos(ang), 0.38 * r * np.sin(ang)], axis=1)
        _fill_poly(mask, _rotated(cx, cy, pts, angle))
    elif kind == "bar":
        w = max(0.14 * r, 1.5)
        _fill_poly(mask, _rotated(cx, cy, np.array([[-r, -w], [r, -w], [r, w], [-r, w]]), angle))
    elif kind == "crescent":
        _fill_circle(mask, cx, cy, r)
        _fill_circle(mask, cx + 0.5 * r * np.cos(angle), cy + 0.5 * r * np.sin(angle), 0.85 * r, value=0)
    elif kind == "chevron":
        t = 0.28 * r
        pts = np.array(
            [[-r, -r * 0.7], [0, r * 0.3], [r, -r * 0.7], [r, -r * 0.7 + 2 * t], [0, r * 0.3 + 2 * t]]
        )
        pts = np.concatenate([pts, [[-r, -r * 0.7 + 2 * t]]])
        _fill_poly(mask, _rotated(cx, cy, pts, angle))
    else:
        raise ValueError(f"unknown shape kind {kind!r}")


def cut_half_plane(mask: np.ndarray, cx: float, cy: float, radius: float, rng: np.random.Generator) -> None:
    """Erase the part of a shape beyond a random line through its centre (a partial / occluded shape)."""
    h, w = mask.shape
    ang = rng.uniform(0, 2 * np.pi)
    off = rng.uniform(-0.15, 0.25) * radius
    x0, x1 = max(int(cx - radius - 2), 0), min(int(cx + radius + 3), w)
    y0, y1 = max(int(cy - radius - 2), 0), min(int(cy + radius + 3), h)
    yy, xx = np.mgrid[y0:y1, x0:x1]
    keep = (xx - cx) * np.cos(ang) + (yy - cy) * np.sin(ang) < off
    mask[y0:y1, x0:x1] &= keep.astype(np.uint8)


def paint(
    image: np.ndarray,
    mask: np.ndarray,
    rgb: np.ndarray,
    rng: np.random.Generator,
    pixels: tuple[np.ndarray, np.ndarray] | None = None,
) -> None:
    """Paint a mask onto a float image [H, W, 3] with a base colour, a linear shading and grain.

    ``pixels``: ``np.nonzero(mask)`` where the caller already has it.
    """
    ys, xs = np.nonzero(mask) if pixels is None else pixels
    if len(ys) == 0:
        return
    g = rng.uniform(-1, 1, size=2)
    extent = max(int(np.ptp(xs)), int(np.ptp(ys)), 1)
    shade = 1.0 + 0.15 * ((xs - xs.mean()) * g[0] + (ys - ys.mean()) * g[1]) / extent
    grain = rng.normal(0.0, 6.0, size=(len(ys), 3))
    image[ys, xs] = rgb[None, :] * shade[:, None] + grain


def background(size: int, rng: np.random.Generator) -> np.ndarray:
    """A cluttered, muted (low-saturation) background, float64 ``[size, size, 3]`` in about 0..255."""
    c0 = hsv_to_rgb(rng.uniform(0, 360), rng.uniform(0.0, 0.3), rng.uniform(0.3, 0.8))
    c1 = hsv_to_rgb(rng.uniform(0, 360), rng.uniform(0.0, 0.3), rng.uniform(0.3, 0.8))
    ang = rng.uniform(0, 2 * np.pi)
    lin = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    ramp = 0.5 + 0.5 * (lin[None, :] * np.cos(ang) + lin[:, None] * np.sin(ang)) / np.sqrt(2)
    # One channel at a time: the same float64 products and sums as broadcasting c0 and c1 over
    # [S, S, 1], at half the cost.
    inverse = 1 - ramp
    img = np.empty((size, size, 3), dtype=np.result_type(c0, ramp))
    for channel in range(3):
        np.add(c0[channel] * inverse, c1[channel] * ramp, out=img[..., channel])
    cells = int(rng.integers(3, 9))
    low = rng.normal(0, 22.0, size=(cells, cells, 3)).astype(np.float32)
    img += cv2.resize(low, (size, size), interpolation=cv2.INTER_CUBIC)
    for _ in range(int(rng.integers(2, 7))):  # muted blobs
        col = hsv_to_rgb(rng.uniform(0, 360), rng.uniform(0.0, 0.3), rng.uniform(0.25, 0.85))
        axes = (int(rng.uniform(0.03, 0.2) * size), int(rng.uniform(0.03, 0.2) * size))
        center = (int(rng.integers(0, size)), int(rng.integers(0, size)))
        cv2.ellipse(img, center, axes, float(rng.uniform(0, 180)), 0, 360, col.tolist(), -1)
    for _ in range(int(rng.integers(3, 11))):  # muted lines
        col = hsv_to_rgb(rng.uniform(0, 360), rng.uniform(0.0, 0.35), rng.uniform(0.2, 0.9))
        p0 = (int(rng.integers(0, size)), int(rng.integers(0, size)))
        p1 = (int(rng.integers(0, size)), int(rng.integers(0, size)))
        cv2.line(img, p0, p1, col.tolist(), int(rng.integers(1, 4)), lineType=cv2.LINE_AA)
    img += rng.normal(0, 5.0, size=(size, size, 3)).astype(np.float32)
    return img
