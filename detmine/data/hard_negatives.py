"""The hard-negative pool file: the highest-scoring false positives of a trained detector on
images without objects, for offline bootstrapping (Sung & Poggio 1994, Felzenszwalb et al. 2010).

``tools/mine_hard_negatives.py`` writes it; ``data.hard_negatives.pool`` mixes it into training
(:mod:`detmine.data.pool_dataset`). One JSON object::

    {"format": "detmine.hard_negative_pool", "version": 1,
     "class_names": ["circle", ...],             # the detector's classes (label k at k - 1)
     "info": {...},                               # how it was mined: free-form, for people
     "entries": [                                 # sorted by score, highest first
       {"path": "/abs/images/train/000000000007.jpg", "width": 256, "height": 256,
        "box": [x0, y0, x1, y1],                  # xyxy, original pixels
        "score": 0.93, "label": 4, "class": "cross",
        "source": "train", "image_id": 7},        # the split (image_id: its COCO id) or "folder"
       ...]}

Paths are written absolute; a relative path (a pool written by hand) is read relative to the
pool file's folder. Every problem of a pool file is one line naming the file, the entry and
what is wrong (:class:`~detmine.errors.DataError`).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detmine.errors import DataError

POOL_FORMAT = "detmine.hard_negative_pool"
POOL_VERSION = 1


@dataclass(frozen=True)
class PoolEntry:
    """One mined false positive.

    Attributes:
        path: the image file (absolute once read or written).
        width, height: the image's size in pixels.
        box: ``(x0, y0, x1, y1)`` of the detection in the image's pixels.
        score: the detector's score.
        label: the predicted class, contiguous ``1..K``.
        source: where the image came from: a split name (``"train"``) or ``"folder"``.
        image_id: the image's id in its split (None for a folder).
    """

    path: str
    width: int
    height: int
    box: tuple[float, float, float, float]
    score: float
    label: int
    source: str
    image_id: int | None = None


@dataclass
class HardNegativePool:
    """A pool: its entries (highest score first), the detector's class names and ``info``
    (how it was mined: config, checkpoint, images searched, threshold ...)."""

    entries: list[PoolEntry]
    class_names: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.entries)


def sort_entries(entries: list[PoolEntry], top: int | None = None) -> list[PoolEntry]:
    """``entries`` by score, highest first (ties: path, then box), the first ``top`` only."""
    ordered = sorted(entries, key=lambda e: (-e.score, e.path, e.box))
    return ordered if top is None else ordered[:top]


def entry_to_dict(entry: PoolEntry, class_names: list[str]) -> dict[str, Any]:
    name = class_names[entry.label - 1] if 0 < entry.label <= len(class_names) else None
    return {
        "path": entry.path,
        "width": entry.width,
        "height": entry.height,
        "box": [round(float(v), 2) for v in entry.box],
        "score": round(float(entry.score), 6),
        "label": entry.label,
        "class": name,
        "source": entry.source,
        "image_id": entry.image_id,
    }


def pool_to_dict(pool: HardNegativePool) -> dict[str, Any]:
    """The JSON object of ``pool`` (entries with absolute paths)."""
    entries = [
        entry_to_dict(PoolEntry(**{**e.__dict__, "path": os.path.abspath(e.path)}), pool.class_names)
        for e in pool.entries
    ]
    return {
        "format": POOL_FORMAT,
        "version": POOL_VERSION,
        "class_names": list(pool.class_names),
        "info": dict(pool.info),
        "entries": entries,
    }


def write_pool(path: str | os.PathLike, pool: HardNegativePool, *, where: str = "--out") -> Path:
    """Write ``pool`` as JSON, atomically (a failed write is one line naming ``path``)."""
    from detmine.safe_io import atomic_write_text

    return atomic_write_text(path, pool_json(pool), what="pool", where=where)


def pool_json(pool: HardNegativePool) -> str:
    """The pool file's text: the header indented, one line per entry."""
    data = pool_to_dict(pool)
    entries = data.pop("entries")
    head = json.dumps({**data, "entries": []}, indent=1)
    if not entries:
        return head + "\n"
    lines = ",\n  ".join(json.dumps(e) for e in entries)
    return head[: -len("[]\n}")] + "[\n  " + lines + "\n ]\n}\n"


def read_pool(path: str | os.PathLike) -> HardNegativePool:
    """Read and check a pool file; relative image paths are taken relative to its folder.

    Raises:
        DataError: one line ``hard-negative pool <path>: <what is wrong>`` (missing, not JSON,
            another format or version, a malformed entry named by its index).
    """
    path = Path(path)
    where = f"hard-negative pool {path}"
    if not path.is_file():
        raise DataError(f"{where}: no such file" if not path.exists() else f"{where}: not a file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise DataError(f"{where}: not a text (UTF-8 JSON) file") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except OSError as exc:
        raise DataError(f"{where}: cannot be read ({exc.strerror or exc})") from None
    return pool_from_dict(data, where, base=path.resolve().parent)


def pool_from_dict(data: Any, where: str, *, base: Path | None = None) -> HardNegativePool:
    """The pool of a parsed JSON object; ``where`` starts every error message."""
    if not isinstance(data, dict) or data.get("format") != POOL_FORMAT:
        got = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise DataError(f"{where}: not a hard-negative pool (expected format {POOL_FORMAT!r}, got {got!r})")
    if data.get("version") != POOL_VERSION:
        raise DataError(
            f"{where}: pool version {data.get('version')!r} is not supported (this detmine reads {POOL_VERSION})"
        )
    names = data.get("class_names", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise DataError(f"{where}: 'class_names' must be a list of strings")
    info = data.get("info", {})
    if not isinstance(info, dict):
        raise DataError(f"{where}: 'info' must be an object")
    raw = data.get("entries")
    if not isinstance(raw, list):
        raise DataError(f"{where}: 'entries' must be a list of objects")
    entries = [_entry(item, f"{where}: entry {i}", base) for i, item in enumerate(raw)]
    return HardNegativePool(entries, list(names), info)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _entry(item: Any, where: str, base: Path | None) -> PoolEntry:
    """One entry checked: a path, a positive size, a box inside the image, a score, a label."""
    if not isinstance(item, dict):
        raise DataError(f"{where}: must be an object, got {type(item).__name__}")
    missing = [k for k in ("path", "width", "height", "box", "score", "label") if k not in item]
    if missing:
        raise DataError(f"{where}: missing {', '.join(repr(k) for k in missing)}")
    path, width, height, box = item["path"], item["width"], item["height"], item["box"]
    if not isinstance(path, str) or not path:
        raise DataError(f"{where}: 'path' must be a non-empty string, got {path!r}")
    for key, value in (("width", width), ("height", height), ("label", item["label"])):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise DataError(f"{where}: {key!r} must be a positive integer, got {value!r}")
    if not _number(item["score"]):
        raise DataError(f"{where}: 'score' must be a finite number, got {item['score']!r}")
    if not (isinstance(box, list) and len(box) == 4 and all(_number(v) for v in box)):
        raise DataError(f"{where}: 'box' must be 4 numbers [x0, y0, x1, y1], got {box!r}")
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise DataError(f"{where}: 'box' {box} is empty or not inside the {width}x{height} image")
    image_id = item.get("image_id")
    if image_id is not None and (not isinstance(image_id, int) or isinstance(image_id, bool)):
        raise DataError(f"{where}: 'image_id' must be an integer or null, got {image_id!r}")
    source = item.get("source", "")
    if not isinstance(source, str):
        raise DataError(f"{where}: 'source' must be a string, got {source!r}")
    if base is not None and not os.path.isabs(path):
        path = str(base / path)
    return PoolEntry(
        path, width, height, (x0, y0, x1, y1), float(item["score"]), item["label"], source, image_id
    )
