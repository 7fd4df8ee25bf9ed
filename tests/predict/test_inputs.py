"""detmine.predict.inputs: files, folders, globs and videos resolved in input order; the image
files read with counted skips; a video's frames every n-th."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from detmine.errors import DataError
from detmine.predict.inputs import ImageFiles, VideoFrames, frame_sample, is_video, resolve_inputs


def _image(path: Path, value: int = 128, size: tuple[int, int] = (20, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((*size, 3), value, np.uint8))
    return path


def _video(path: Path, n: int, size: tuple[int, int] = (24, 32), fps: float = 10.0) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, (size[1], size[0]))
    for k in range(n):
        writer.write(np.full((*size, 3), 20 * k, np.uint8))
    writer.release()
    return path


def test_files_folders_globs_and_videos_in_input_order(tmp_path: Path) -> None:
    a = _image(tmp_path / "a.jpg")
    b = _image(tmp_path / "shots" / "z" / "b.png")
    c = _image(tmp_path / "shots" / "c.JPG")
    clip = _video(tmp_path / "shots" / "clip.avi", 3)
    (tmp_path / "shots" / "notes.txt").write_text("no image")
    d = _image(tmp_path / "more" / "d.jpg")
    odd = tmp_path / "named.dat"
    odd.write_bytes(b"named explicitly: an image whatever its ending")
    out = tmp_path / "shots" / "out"
    _image(out / "old_picture.jpg")  # the output folder is never read back

    got = resolve_inputs(
        [str(a), str(tmp_path / "shots"), str(tmp_path / "more" / "*.jpg"), str(a), str(odd)], exclude=out
    )
    assert got.images == [a, c, b, d, odd]  # sorted by path within a folder; `a` once
    assert got.videos == [clip]
    assert [(i.kind, i.problem) for i in got.items] == [
        ("file", ""),
        ("folder", ""),
        ("glob", ""),
        ("file", ""),
        ("file", ""),
    ]
    assert got.items[1].videos == [clip] and got.items[3].images == [a]
    assert is_video("x.MP4") and not is_video("x.jpg")


def test_inputs_that_name_nothing(tmp_path: Path) -> None:
    _image(tmp_path / "a.jpg")
    (tmp_path / "empty").mkdir()
    got = resolve_inputs([str(tmp_path / "a.jpg"), str(tmp_path / "missing.jpg"), str(tmp_path / "*.png")])
    assert [i.problem for i in got.items] == ["", "no such file or folder", "no image or video matches"]
    with pytest.raises(DataError) as exc:
        resolve_inputs([str(tmp_path / "empty"), str(tmp_path / "nope")])
    message = str(exc.value)
    assert "\n" not in message and message.startswith("no images found in ")
    assert f"{tmp_path / 'empty'} (no image or video in the folder)" in message
    assert f"{tmp_path / 'nope'} (no such file or folder)" in message


def test_image_files_are_read_with_the_transform_and_bad_ones_skipped(tmp_path: Path) -> None:
    good = _image(tmp_path / "good.jpg", size=(20, 30))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    files = ImageFiles([good, bad, tmp_path / "gone.jpg"], transform=None)
    image, target = files[0]
    assert image.shape == (3, 20, 30) and target["orig_size"] == (20, 30) and target["image_id"] == 0
    assert not files[1] and files[1].kind == "unreadable" and files[2].kind == "missing"


def test_video_frames_every_nth(tmp_path: Path) -> None:
    clip = _video(tmp_path / "clip.avi", 7, fps=12.0)
    with VideoFrames(clip) as video:
        assert video.opened and video.fps == 12.0 and video.frame_count == 7 and video.size == (32, 24)
        frames = list(video.frames(every=3))
    assert [k for k, _ in frames] == [0, 3, 6]
    assert all(f.shape == (24, 32, 3) and f.dtype == np.uint8 for _, f in frames)
    assert abs(int(frames[1][1].mean()) - 60) <= 3  # frame 3 (value 60), not frame 1
    broken = tmp_path / "broken.avi"
    broken.write_bytes(b"garbage" * 20)
    with VideoFrames(broken) as video:
        assert not video.opened and list(video.frames()) == []


def test_frame_sample_is_an_image_files_sample(tmp_path: Path) -> None:
    frame = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    image, target = frame_sample(frame, None, 7)
    assert image.shape == (3, 20, 30) and np.array_equal(image.permute(1, 2, 0).numpy(), frame)
    assert target["image_id"] == 7 and target["orig_size"] == target["input_size"] == (20, 30)
    assert target["boxes"].shape == (0, 4)
