"""The prediction loop: images (batched by the evaluation loader, unreadable ones skipped and
counted) and videos (frame by frame), run through ``DenseDetector.predict`` at the recipe's
evaluation geometry, each image's detections kept as COCO results and drawn into a picture (a
video into an annotated video)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from detmine.data._common import Transform, read_rgb
from detmine.data.loader import DetectionDataLoader, build_dataloader, collate
from detmine.errors import CheckpointError
from detmine.predict.drawing import draw_detections
from detmine.predict.inputs import ImageFiles, VideoFrames, frame_sample
from detmine.predict.results import ImageDetections, PictureNames, coco_results, keep_detections
from detmine.safe_io import atomic_write_bytes, write_error
from detmine.structures import Target

#: OpenCV's Motion-JPEG in an AVI container: written by every OpenCV build, no codec to install.
VIDEO_FOURCC = "MJPG"
VIDEO_SUFFIX = ".avi"
PICTURE_SUFFIX = ".jpg"
JPEG_QUALITY = 90


class Predictor:
    """A detector over batches of inputs, collecting COCO results, the image index and pictures.

    Args:
        model: a detector in eval mode with ``predict(images uint8 [B, 3, H, W], input_sizes,
            orig_sizes, **options)`` -> per image ``{boxes [D, 4] xyxy original pixels,
            scores [D], labels [D] 1..K}``.
        transform: the evaluation transform (the recipe's geometry).
        geometry: ``size_divisible`` / ``pad_value`` of the batches (the model's).
        predict_options: ``eval.postprocess`` with its class thresholds read.
        class_names: ``[K]``; category_ids: contiguous label -> original category id.
        out_dir: where pictures go (None: no pictures).
        score_thresh: detections below it are neither kept nor drawn (None: all ``predict`` returns).
        device: where the model runs.
        on_images: called with the number of images each batch used up (a progress bar).
    """

    def __init__(
        self,
        model: Any,
        *,
        transform: Transform | None,
        geometry: Mapping[str, Any],
        predict_options: Mapping[str, Any],
        class_names: Sequence[str],
        category_ids: Mapping[int, int],
        out_dir: Path | None,
        score_thresh: float | None = None,
        device: torch.device | str = "cpu",
        on_images: Callable[[int], None] | None = None,
    ) -> None:
        self.model = model
        self.transform = transform
        self.geometry = dict(geometry)
        self.predict_options = dict(predict_options)
        self.class_names = list(class_names)
        self.category_ids = dict(category_ids)
        self.out_dir = out_dir
        self.score_thresh = score_thresh
        self.device = torch.device(device)
        self.on_images = on_images
        self.results: list[dict[str, Any]] = []
        self.images: list[dict[str, Any]] = []
        self.skipped_videos: list[tuple[str, str]] = []
        self.names = PictureNames()

    def _predict(self, images: torch.Tensor, targets: Sequence[Target]) -> list[ImageDetections]:
        """``images`` uint8 ``[B, 3, H, W]`` -> the kept detections of each image."""
        with torch.no_grad():
            detections = self.model.predict(
                images.to(self.device),
                input_sizes=[t["input_size"] for t in targets],
                orig_sizes=[t["orig_size"] for t in targets],
                **self.predict_options,
            )
        return [keep_detections(det, self.score_thresh) for det in detections]

    def _record(
        self, image_id: int, file_name: str, size: tuple[int, int], det: ImageDetections, **extra: Any
    ) -> None:
        self.results += coco_results(
            det, image_id=image_id, file_name=file_name, category_ids=self.category_ids
        )
        height, width = size
        self.images.append(
            {"id": image_id, "file_name": file_name, "width": width, "height": height, **extra}
        )

    def _draw(self, image: np.ndarray, det: ImageDetections) -> np.ndarray:
        return draw_detections(
            image, det.boxes.numpy(), det.scores.numpy(), det.labels.numpy(), self.class_names
        )

    def run_images(
        self, paths: Sequence[str | Path], *, batch_size: int, num_workers: int = 0, seed: int = 0
    ) -> DetectionDataLoader:
        """Predict on image files; image ``paths[i]`` gets id ``i + 1``. Returns the loader
        (``loader.skipped_summary()``, ``num_dropped_samples``: the images it could not read)."""
        dataset = ImageFiles(paths, transform=self.transform)
        loader = build_dataloader(
            dataset, batch_size, train=False, num_workers=num_workers, seed=seed, **self.geometry
        )
        seen: set[int] = set()
        done = 0
        for images, targets in loader:
            for target, det in zip(targets, self._predict(images, targets), strict=True):
                index = int(target["image_id"])
                path = dataset.paths[index]
                picture = self._write_picture(self.out_dir, path, index + 1, det) if self.out_dir else None
                self._record(
                    index + 1, path, target["orig_size"], det, **({"picture": picture} if picture else {})
                )
                seen.add(index)
            if self.on_images is not None:  # skipped images count as done
                self.on_images(loader.num_requested_samples - done)
            done = loader.num_requested_samples
        self.images += [
            {"id": i + 1, "file_name": p, "skipped": True}
            for i, p in enumerate(dataset.paths)
            if i not in seen
        ]
        return loader

    def _write_picture(self, out_dir: Path, path: str, image_id: int, det: ImageDetections) -> str | None:
        """Draw ``det`` on the image file ``path`` into ``out_dir``; returns the picture's name
        (None when the file can no longer be read)."""
        image, _ = read_rgb(path)  # decoded again: the loader's copy went through the transform
        if image is None:
            return None
        name = self.names(path, image_id, PICTURE_SUFFIX)
        data = _encode_jpeg(self._draw(image, det))
        atomic_write_bytes(out_dir / name, data, what="picture", where="--out-dir")
        return name

    def run_video(self, path: str | Path, *, first_id: int, batch_size: int, every: int = 1) -> int:
        """Predict on every ``every``-th frame of a video; the frames get ids ``first_id``,
        ``first_id + 1``, ... and file names ``<video>#<frame index>``. With an output folder
        the annotated frames go to ``<stem>.avi`` there (Motion-JPEG, the input's size, its
        frame rate divided by ``every``). Returns the number of frames read (0: the video was
        skipped and counted)."""
        with VideoFrames(path) as video:
            if not video.opened:
                self.skipped_videos.append((str(path), "cannot be opened"))
                return 0
            writer = (
                _VideoOutput(self.out_dir, self.names(path, first_id, VIDEO_SUFFIX), video.fps / every)
                if self.out_dir
                else None
            )
            count = 0
            try:
                batch: list[tuple[int, np.ndarray]] = []
                for frame in video.frames(every):
                    batch.append(frame)
                    if len(batch) == batch_size:
                        count += self._video_batch(str(path), batch, first_id + count, writer)
                        batch = []
                if batch:
                    count += self._video_batch(str(path), batch, first_id + count, writer)
                if writer is not None and count:
                    writer.finish()
            finally:
                if writer is not None:
                    writer.discard()
            if not count:
                self.skipped_videos.append((str(path), "no frame could be decoded"))
            return count

    def _video_batch(
        self, path: str, frames: list[tuple[int, np.ndarray]], first_id: int, writer: _VideoOutput | None
    ) -> int:
        samples = [frame_sample(frame, self.transform, first_id + k) for k, (_, frame) in enumerate(frames)]
        images, targets = collate(samples, **self.geometry)
        for k, ((index, frame), det) in enumerate(zip(frames, self._predict(images, targets), strict=True)):
            extra: dict[str, Any] = {"video": path, "frame": index}
            if writer is not None:
                writer.write(self._draw(frame, det))
                extra["picture"] = writer.name
            self._record(first_id + k, f"{path}#{index}", targets[k]["orig_size"], det, **extra)
        if self.on_images is not None:
            self.on_images(len(frames))
        return len(frames)

    def skipped_videos_summary(self, num_videos: int) -> str | None:
        """``"1 of 2 videos skipped: clip.avi (cannot be opened)"`` or None."""
        if not self.skipped_videos:
            return None
        path, reason = self.skipped_videos[0]
        more = f" and {len(self.skipped_videos) - 1} more" if len(self.skipped_videos) > 1 else ""
        return f"{len(self.skipped_videos)} of {num_videos} videos skipped: {path} ({reason}){more}"


def _encode_jpeg(image: np.ndarray) -> bytes:
    """uint8 ``[H, W, 3]`` RGB -> JPEG bytes."""
    ok, data = cv2.imencode(
        PICTURE_SUFFIX, cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
    )
    if not ok:
        raise CheckpointError("cannot encode a picture as JPEG (OpenCV's imencode failed)")
    return data.tobytes()


class _VideoOutput:
    """An annotated video written to a hidden temporary file beside ``name`` and moved into place
    by :meth:`finish` (never half a video under the final name); opened at the first frame."""

    def __init__(self, out_dir: Path, name: str, fps: float) -> None:
        self.path = out_dir / name
        self.tmp = out_dir / f".{Path(name).stem}.partial{VIDEO_SUFFIX}"  # the ending picks the container
        self.name, self.fps = name, fps
        self.writer: cv2.VideoWriter | None = None

    def write(self, frame: np.ndarray) -> None:
        if self.writer is None:
            height, width = frame.shape[:2]
            self.writer = cv2.VideoWriter(
                str(self.tmp), cv2.VideoWriter.fourcc(*VIDEO_FOURCC), self.fps, (width, height)
            )
            if not self.writer.isOpened():
                raise CheckpointError(
                    f"cannot write video {self.path}: OpenCV's VideoWriter ({VIDEO_FOURCC}) could not open "
                    f"{self.tmp} (choose another --out-dir, or --no-pictures)"
                )
        self.writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))

    def finish(self) -> None:
        if self.writer is None:
            return
        self.writer.release()
        self.writer = None
        try:
            os.replace(self.tmp, self.path)
        except OSError as exc:
            raise write_error(self.path, exc, "video", where="--out-dir") from None

    def discard(self) -> None:
        """Release the writer and remove the temporary file (after :meth:`finish`: nothing left)."""
        if self.writer is not None:
            self.writer.release()
            self.writer = None
        try:
            self.tmp.unlink()
        except OSError:
            pass
