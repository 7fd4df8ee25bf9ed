"""The image records of a dataset in a few flat numpy buffers (:class:`FlatRecords`).

A list of per-image Python objects costs every forked ``DataLoader`` worker a copy of the pages
it touches: reading a record bumps reference counts, and a garbage collection walks every
object. Numpy buffers have one header each, so a worker that reads every record copies next
to nothing (bench/coco_load.py measures it); they also pickle as a few arrays.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import overload

import numpy as np

from detmine.data._common import ImageRecord


def _offsets(counts: np.ndarray) -> np.ndarray:
    """int64 ``[I + 1]``: where each image's rows start in a flat buffer (last: the total)."""
    out = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=out[1:])
    return out


def _frozen(array: np.ndarray, dtype: type, shape: tuple[int, ...]) -> np.ndarray:
    out: np.ndarray = np.ascontiguousarray(array, dtype=dtype).reshape(shape)
    out.flags.writeable = False
    return out


class FlatRecords(Sequence[ImageRecord]):
    """``Sequence[ImageRecord]`` stored as flat buffers; ``records[i]`` builds image ``i``'s
    :class:`~detmine.data._common.ImageRecord` on demand (its arrays are copies: changing them
    changes nothing here).

    Args:
        root: joined in front of every file name (``os.path.join``) to make the record's path.
        file_names: ``[I]`` file names (or whole paths, with ``root=""``).
        image_ids, heights, widths: ``[I]`` integers.
        box_counts: ``[I]`` objects per image; ``boxes`` float32 ``[N, 4]`` xyxy and
            ``labels`` int64 ``[N]`` (``N = sum(box_counts)``) hold them image after image.
        ignore_counts: ``[I]`` ignore regions per image; ``ignore_boxes`` float32 ``[M, 4]``.

    Attributes (read-only arrays): ``image_ids`` int64 ``[I]``, ``heights`` / ``widths``
    int64 ``[I]``, ``boxes`` ``[N, 4]``, ``labels`` ``[N]``, ``box_offsets`` int64 ``[I + 1]``
    (image ``i``'s objects are rows ``box_offsets[i]:box_offsets[i + 1]``), ``ignore_boxes``
    ``[M, 4]``, ``ignore_offsets`` ``[I + 1]``.
    """

    def __init__(
        self,
        *,
        root: str,
        file_names: Sequence[str],
        image_ids: np.ndarray | Sequence[int],
        heights: np.ndarray | Sequence[int],
        widths: np.ndarray | Sequence[int],
        box_counts: np.ndarray | Sequence[int],
        boxes: np.ndarray,
        labels: np.ndarray,
        ignore_counts: np.ndarray | Sequence[int],
        ignore_boxes: np.ndarray,
    ) -> None:
        num = len(file_names)
        self.root = root
        # surrogatepass: a JSON file may name a file with a lone surrogate escape
        encoded = [name.encode("utf-8", "surrogatepass") for name in file_names]
        self._names = _frozen(np.frombuffer(b"".join(encoded), dtype=np.uint8), np.uint8, (-1,))
        self._name_offsets = _frozen(_offsets(np.fromiter(map(len, encoded), np.int64, num)), np.int64, (-1,))
        self.image_ids = _frozen(np.asarray(image_ids), np.int64, (num,))
        self.heights = _frozen(np.asarray(heights), np.int64, (num,))
        self.widths = _frozen(np.asarray(widths), np.int64, (num,))
        self.box_offsets = _frozen(_offsets(np.asarray(box_counts, np.int64).reshape(num)), np.int64, (-1,))
        self.boxes = _frozen(boxes, np.float32, (-1, 4))
        self.labels = _frozen(labels, np.int64, (-1,))
        self.ignore_offsets = _frozen(
            _offsets(np.asarray(ignore_counts, np.int64).reshape(num)), np.int64, (-1,)
        )
        self.ignore_boxes = _frozen(ignore_boxes, np.float32, (-1, 4))
        if len(self.boxes) != self.box_offsets[-1] or len(self.labels) != len(self.boxes):
            raise ValueError(
                f"{len(self.boxes)} boxes and {len(self.labels)} labels for {self.box_offsets[-1]} objects"
            )
        if len(self.ignore_boxes) != self.ignore_offsets[-1]:
            raise ValueError(f"{len(self.ignore_boxes)} ignore boxes for {self.ignore_offsets[-1]} regions")

    @classmethod
    def from_records(cls, records: Sequence[ImageRecord]) -> FlatRecords:
        """The records of a list (their ``extra`` is not kept)."""
        empty = np.zeros((0, 4), np.float32)
        return cls(
            root="",
            file_names=[r.path for r in records],
            image_ids=[r.image_id for r in records],
            heights=[r.height for r in records],
            widths=[r.width for r in records],
            box_counts=[len(r.labels) for r in records],
            boxes=np.concatenate([empty, *(r.boxes.reshape(-1, 4) for r in records)]),
            labels=np.concatenate([np.zeros(0, np.int64), *(r.labels.reshape(-1) for r in records)]),
            ignore_counts=[len(r.ignore_boxes.reshape(-1, 4)) for r in records],
            ignore_boxes=np.concatenate([empty, *(r.ignore_boxes.reshape(-1, 4) for r in records)]),
        )

    def __len__(self) -> int:
        return len(self.image_ids)

    def _index(self, i: int) -> int:
        num = len(self)
        j = int(i) + num if int(i) < 0 else int(i)
        if not 0 <= j < num:
            raise IndexError(f"record index {i} out of range for {num} images")
        return j

    def file_name(self, i: int) -> str:
        """Image ``i``'s file name as given (without ``root``)."""
        i = self._index(i)
        name = self._names[self._name_offsets[i] : self._name_offsets[i + 1]].tobytes()
        return name.decode("utf-8", "surrogatepass")

    def path(self, i: int) -> str:
        """Image ``i``'s file: ``os.path.join(root, file_name(i))``."""
        return os.path.join(self.root, self.file_name(i))

    def labels_of(self, i: int) -> np.ndarray:
        """int64 ``[N_i]``: image ``i``'s labels (a read-only view)."""
        i = self._index(i)
        return self.labels[self.box_offsets[i] : self.box_offsets[i + 1]]

    def size_of(self, i: int) -> tuple[int, int]:
        """``(height, width)`` of image ``i``."""
        i = self._index(i)
        return int(self.heights[i]), int(self.widths[i])

    @overload
    def __getitem__(self, i: int) -> ImageRecord: ...

    @overload
    def __getitem__(self, i: slice) -> list[ImageRecord]: ...

    def __getitem__(self, i: int | slice) -> ImageRecord | list[ImageRecord]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = self._index(i)
        b0, b1 = self.box_offsets[i], self.box_offsets[i + 1]
        g0, g1 = self.ignore_offsets[i], self.ignore_offsets[i + 1]
        return ImageRecord(
            path=self.path(i),
            image_id=int(self.image_ids[i]),
            height=int(self.heights[i]),
            width=int(self.widths[i]),
            boxes=self.boxes[b0:b1].copy(),
            labels=self.labels[b0:b1].copy(),
            ignore_boxes=self.ignore_boxes[g0:g1].copy(),
        )

    def __iter__(self) -> Iterator[ImageRecord]:
        for i in range(len(self)):
            yield self[i]
