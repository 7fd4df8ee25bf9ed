"""The hard-negative gallery as a web page: ``index.html`` with every crop, its score, class and
source image, relative links only (a folder that opens offline, can be copied or zipped).

Folder layout (written by :func:`write_gallery_page`)::

    index.html
    crops/001.png               the false positive with its context, box drawn (rank order)
    sources/001_img<id>.jpg     the whole image it came from, the box drawn

The page is static HTML with inline CSS: no script, no external resource.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import quote

import cv2
import numpy as np

from detmine.viz.gallery import GalleryItem, _class_name

_STYLE = """
body { font-family: system-ui, sans-serif; background: #191919; color: #eee; margin: 16px; }
h1 { font-size: 20px; margin: 0 0 4px; } p.summary { color: #bbb; margin: 0 0 14px; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(170px, 1fr)); gap: 12px; }
figure { margin: 0; background: #262626; border-radius: 6px; padding: 6px; }
figure img { width: 100%; height: auto; display: block; image-rendering: auto; border-radius: 4px; }
figcaption { font-size: 13px; line-height: 1.35; margin-top: 4px; }
.rank { color: #999; } .score { font-weight: 600; } .cls { border-left: 4px solid; padding-left: 4px; }
a { color: #8ab4ff; }
"""


def _safe(name: object) -> str:
    """A file-name-safe form of an image id."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", str(name))[:80] or "_"


def _png(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", np.ascontiguousarray(image[..., ::-1]))
    if not ok:
        raise ValueError("could not encode a gallery crop as PNG")
    return data.tobytes()


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def gallery_page(
    items: Sequence[GalleryItem],
    *,
    class_names: Sequence[str] | None = None,
    title: str = "Hardest false positives",
    summary: str = "",
) -> dict[str, bytes]:
    """The page's files: ``relative path -> content`` (``index.html``, the crops, the sources).

    Args:
        items: the gallery's items, highest score first (:attr:`HardNegativeGallery.items`).
        class_names: ``K`` names (index k-1 is class k).
        title, summary: the page's heading and the line under it.
    """
    from detmine.viz.colors import class_color

    files: dict[str, bytes] = {}
    cards = []
    for rank, it in enumerate(items, start=1):
        crop_path = f"crops/{rank:03d}.png"
        files[crop_path] = _png(it.crop if it.crop is not None else it.tile)
        name = html.escape(_class_name(it.label, class_names))
        image_id = html.escape(str(it.image_id))
        alt = f"#{rank} {name} {it.score:.3f} image {image_id}"
        img = f'<img src="{quote(crop_path)}" alt="{alt}">'
        source = f"image {image_id}"
        if it.source_jpeg:
            src_path = f"sources/{rank:03d}_img{_safe(it.image_id)}.jpg"
            files[src_path] = it.source_jpeg
            img = f'<a href="{quote(src_path)}">{img}</a>'
            source = f'source: <a href="{quote(src_path)}">image {image_id}</a>'
        box = ", ".join(f"{v:.0f}" for v in it.box)
        cards.append(
            f'<figure>{img}<figcaption><span class="rank">#{rank}</span> '
            f'<span class="cls" style="border-color:{_hex(class_color(it.label))}">{name}</span> '
            f'<span class="score">{it.score:.3f}</span><br>{source}'
            f'<br><span class="rank">box {box}</span></figcaption></figure>'
        )
    body = "\n".join(cards) if cards else "<p>No false positives found.</p>"
    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        f'<h1>{html.escape(title)}</h1>\n<p class="summary">{html.escape(summary)}</p>\n'
        f'<div class="grid">\n{body}\n</div>\n</body>\n</html>\n'
    )
    files["index.html"] = page.encode("utf-8")
    return files


def write_gallery_page(
    folder: str | Path,
    files: dict[str, bytes],
    write: Callable[[Path, bytes], object] | None = None,
) -> Path:
    """Write :func:`gallery_page`'s files under ``folder`` (``index.html`` last, so a page never
    links a file not yet written); returns the path of ``index.html``.

    Args:
        write: ``write(path, data)``; default an atomic write (:func:`detmine.safe_io.atomic_write_bytes`).
    """
    from detmine.safe_io import atomic_write_bytes

    folder = Path(folder)
    put = write or (lambda path, data: atomic_write_bytes(path, data, what="gallery page"))
    for rel in sorted(files, key=lambda r: r == "index.html"):
        put(folder / rel, files[rel])
    return folder / "index.html"
