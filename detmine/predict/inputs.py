"""What ``tools/predict.py`` reads: image files, folders (recursive), glob patterns and video
files, mixed freely (:func:`resolve_inputs`); the images as a dataset with counted skips
(:class:`ImageFiles`, the hard-negative miner's :class:`ImageFolder` over a list of files) and a
video's frames one by one (:class:`VideoFrames`), both through the evaluation transform.
"""

from __future__ import annotations

import glob
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from detmine.data._common import Transform
from detmine.data.negative_mining import IMAGE_SUFFIXES, ImageFolder
from detmine.errors import DataError
from detmine.structures import Target

#: file name endings read as videos (any case); every other file named explicitly is an image.
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
_GLOB_CHARS = frozenset("*?[")


@dataclass
class InputItem:
    """One INPUT as the user gave it, and what it stands for.

    Attributes:
        text: the argument as written.
        kind: ``file``, ``video``, ``folder`` or ``glob``.
        images: the image files it names (in order; a file may also belong to another input).
        videos: the video files it names.
        problem: why it names nothing (``no such file or folder``...), else "".
    """

    text: str
    kind: str
    images: list[Path] = field(default_factory=list)
    videos: list[Path] = field(default_factory=list)
    problem: str = ""


@dataclass
class ResolvedInputs:
    """Every input and the files to read: ``images`` and ``videos`` unique, in input order."""

    items: list[InputItem]
    images: list[Path]
    videos: list[Path]


def is_video(path: str | Path) -> bool:
    """Whether ``path`` names a video file (by :data:`VIDEO_SUFFIXES`)."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def _is_media(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES


def _inside(path: Path, folder: Path | None) -> bool:
    return folder is not None and folder in path.resolve().parents


def _folder_files(folder: Path, exclude: Path | None) -> list[Path]:
    """The image and video files under ``folder`` (recursive), sorted; those inside
    ``exclude`` (the output folder: a second run never reads the first one's pictures) left out."""
    return sorted(p for p in folder.rglob("*") if _is_media(p) and p.is_file() and not _inside(p, exclude))


def _resolve_one(text: str, exclude: Path | None) -> InputItem:
    path = Path(text)
    if path.is_file():
        kind = "video" if is_video(path) else "file"
        return InputItem(
            text, kind, images=[] if kind == "video" else [path], videos=[path] if kind == "video" else []
        )
    if path.is_dir():
        files = _folder_files(path, exclude)
        item = InputItem(text, "folder", problem="" if files else "no image or video in the folder")
    elif _GLOB_CHARS & set(text):
        files = []
        for match in sorted(glob.glob(text, recursive=True)):
            found = Path(match)
            if found.is_dir():
                files += _folder_files(found, exclude)
            elif _is_media(found) and not _inside(found, exclude):
                files.append(found)
        item = InputItem(text, "glob", problem="" if files else "no image or video matches")
    else:
        return InputItem(text, "file", problem="no such file or folder")
    for f in files:
        (item.videos if is_video(f) else item.images).append(f)
    return item


def resolve_inputs(inputs: Sequence[str], *, exclude: str | Path | None = None) -> ResolvedInputs:
    """Turn INPUT arguments into image and video files.

    An existing file is a video by its ending (:data:`VIDEO_SUFFIXES`), else an image whatever
    its ending (one that cannot be decoded is skipped and counted later); a folder gives its
    images and videos recursively, a pattern with ``*``, ``?`` or ``[`` (``**`` recursive) those
    it matches, each sorted by name. A file named twice is read once.

    Args:
        inputs: the arguments, in order.
        exclude: a folder whose files folders and patterns never give (the output folder).

    Raises:
        DataError: no input names any image or video (one line naming each input and why).
    """
    skip = Path(exclude).resolve() if exclude is not None else None
    items = [_resolve_one(text, skip) for text in inputs]
    images: dict[Path, Path] = {}
    videos: dict[Path, Path] = {}
    for item in items:
        for f in item.images:
            images.setdefault(f.resolve(), f)
        for f in item.videos:
            videos.setdefault(f.resolve(), f)
    if not images and not videos:
        named = "; ".join(f"{item.text} ({item.problem})" for item in items)
        raise DataError(
            f"no images found in {named} (images: {', '.join(IMAGE_SUFFIXES)}; "
            f"videos: {', '.join(VIDEO_SUFFIXES)})"
        )
    return ResolvedInputs(items, list(images.values()), list(videos.values()))


class ImageFiles(ImageFolder):
    """:class:`~detmine.data.negative_mining.ImageFolder` over a list of image files:
    ``files[i] -> (image uint8 [3, H', W'], Target)`` through ``transform`` with no boxes,
    ``image_id = i`` and ``orig_size`` the decoded ``(H, W)``, or a ``SkippedSample`` for a file
    that cannot be read (the loader counts it)."""

    def __init__(self, paths: Sequence[str | Path], *, transform: Transform | None) -> None:
        self.paths = [str(p) for p in paths]
        self.transform = transform


def frame_sample(
    frame: np.ndarray, transform: Transform | None, image_id: int
) -> tuple[torch.Tensor, Target]:
    """One video frame (uint8 ``[H, W, 3]`` RGB) as an :class:`ImageFiles` sample:
    ``(image uint8 [3, H', W'], Target)`` with no boxes."""
    orig = (int(frame.shape[0]), int(frame.shape[1]))
    image = frame
    if transform is not None:
        empty = np.zeros((0, 4), np.float32)
        image = transform(image=frame, boxes=empty, labels=np.zeros(0, np.int64), ignore_boxes=empty)["image"]
    target: Target = {
        "boxes": torch.zeros((0, 4), dtype=torch.float32),
        "labels": torch.zeros(0, dtype=torch.int64),
        "ignore_boxes": torch.zeros((0, 4), dtype=torch.float32),
        "image_id": int(image_id),
        "orig_size": orig,
        "input_size": (int(image.shape[0]), int(image.shape[1])),
    }
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).contiguous(), target


class VideoFrames:
    """A video file read with OpenCV's ``VideoCapture``, frame by frame.

    ``opened`` says whether it could be opened; ``fps`` (25 when the file does not say),
    ``frame_count`` (0 when unknown) and ``size`` ``(W, H)`` describe it. Use as a context
    manager (releases the file).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self.capture = cv2.VideoCapture(self.path)
        self.opened = bool(self.capture.isOpened())
        fps = float(self.capture.get(cv2.CAP_PROP_FPS)) if self.opened else 0.0
        self.fps = fps if np.isfinite(fps) and fps > 0 else 25.0
        count = self.capture.get(cv2.CAP_PROP_FRAME_COUNT) if self.opened else 0.0
        self.frame_count = int(count) if np.isfinite(count) and count > 0 else 0
        self.size = (
            int(self.capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
            int(self.capture.get(cv2.CAP_PROP_FRAME_HEIGHT)),
        )

    def frames(self, every: int = 1) -> Iterator[tuple[int, np.ndarray]]:
        """``(frame index, uint8 [H, W, 3] RGB)`` of every ``every``-th frame (0, every, ...)
        until the video ends or a frame cannot be decoded."""
        index = 0
        while self.opened:
            if index % every:  # a frame left out is not decoded
                if not self.capture.grab():
                    return
            else:
                ok, frame = self.capture.read()
                if not ok or frame is None:
                    return
                yield index, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            index += 1

    def close(self) -> None:
        self.capture.release()

    def __enter__(self) -> VideoFrames:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
