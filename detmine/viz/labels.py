"""Label rectangles that never overlap: greedy placement around each box.

A picture of a crowded image (dozens of ground-truth boxes, the hardest negatives piled on
the same object) is unreadable when the labels sit on each other. :class:`LabelPlacer`
hands out label rectangles one at a time, highest priority first: each label tries a fixed
list of spots around its box (above, below, inside, to the side; always inside the image)
and takes the first one that overlaps no label placed before it; a label with no free spot
is skipped. Every placed rectangle is kept in :attr:`LabelPlacer.rects`, so a caller (and a
test) can check the layout.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Rect:
    """An axis-aligned pixel rectangle: columns ``x .. x + w - 1``, rows ``y .. y + h - 1``."""

    x: int
    y: int
    w: int
    h: int

    @property
    def x2(self) -> int:
        """One past the last column."""
        return self.x + self.w

    @property
    def y2(self) -> int:
        """One past the last row."""
        return self.y + self.h

    def intersects(self, other: Rect) -> bool:
        """Whether the two share at least one pixel."""
        return self.x < other.x2 and other.x < self.x2 and self.y < other.y2 and other.y < self.y2

    def shifted(self, dx: int, dy: int) -> Rect:
        """The same rectangle moved by ``(dx, dy)`` (a panel pasted into a larger picture)."""
        return Rect(self.x + dx, self.y + dy, self.w, self.h)


def any_intersect(rects: Iterable[Rect]) -> bool:
    """Whether any two of ``rects`` overlap (``O(n^2)``, for checks of a few hundred)."""
    items = list(rects)
    return any(a.intersects(b) for i, a in enumerate(items) for b in items[i + 1 :])


def _clamp(v: int, lo: int, hi: int) -> int:
    return min(max(v, lo), max(hi, lo))


class LabelPlacer:
    """Greedy, collision-free label placement inside a ``width x height`` picture.

    Args:
        width, height: the picture's size in pixels.
        gap: free pixels kept between two labels.
        taken: rectangles already occupied (other labels, a title).
    """

    def __init__(self, width: int, height: int, *, gap: int = 1, taken: Iterable[Rect] = ()) -> None:
        self.width = width
        self.height = height
        self.gap = gap
        self.rects: list[Rect] = list(taken)
        self.skipped = 0

    def candidates(self, box: tuple[int, int, int, int], w: int, h: int) -> list[Rect]:
        """The spots tried for a ``w x h`` label of ``box = (x1, y1, x2, y2)``, in order,
        each clamped into the picture."""
        x1, y1, x2, y2 = box
        spots = [
            (x1, y1 - h),  # above, left-aligned: the usual place
            (x1, y2 + 1),  # below, left-aligned
            (x1, y1),  # inside, top-left
            (x2 - w + 1, y1 - h),  # above, right-aligned
            (x2 - w + 1, y2 + 1),  # below, right-aligned
            (x1, y2 - h + 1),  # inside, bottom-left
            (x2 + 1, y1),  # right of the box
            (x1 - w, y1),  # left of the box
        ]
        out: list[Rect] = []
        for x, y in spots:
            r = Rect(_clamp(x, 0, self.width - w), _clamp(y, 0, self.height - h), w, h)
            if r not in out:
                out.append(r)
        return out

    def place(self, box: tuple[int, int, int, int], w: int, h: int) -> Rect | None:
        """The first free spot for a ``w x h`` label of ``box``, recorded as taken; ``None``
        (and :attr:`skipped` + 1) when every spot collides or the label is larger than the
        picture."""
        if w > self.width or h > self.height:
            self.skipped += 1
            return None
        for r in self.candidates(box, w, h):
            padded = Rect(r.x - self.gap, r.y - self.gap, r.w + 2 * self.gap, r.h + 2 * self.gap)
            if not any(padded.intersects(o) for o in self.rects):
                self.rects.append(r)
                return r
        self.skipped += 1
        return None
