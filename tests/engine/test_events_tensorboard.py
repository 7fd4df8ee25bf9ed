"""TensorBoard pictures: RGB uint8 images are written as JPEG summaries that decode back to the
picture (TensorBoard's image plugin serves any format it detects), everything else goes
through ``SummaryWriter.add_image`` unchanged."""

from __future__ import annotations

import cv2
import numpy as np
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from detmine.engine.events import EventStorage, TensorBoardWriter, jpeg_image_summary


def _picture(height: int = 96, width: int = 160) -> np.ndarray:
    """``[H, W, 3]`` uint8: a smooth ramp with a box drawn on it."""
    ramp = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    image = np.broadcast_to(ramp, (height, width, 3)).astype(np.uint8).copy()
    image[..., 1] = 80
    cv2.rectangle(image, (20, 10), (90, 70), (255, 40, 40), 2)
    return image


def _written_images(tmp_path, events: list[tuple[str, object, str]]):
    writer = TensorBoardWriter(tmp_path)
    writer.start(0, 1)
    storage = EventStorage()
    for tag, image, formats in events:
        storage.put_image(tag, image, step=3, dataformats=formats)
    writer.write(storage.drain(), 3)
    writer.close()
    acc = EventAccumulator(str(tmp_path), size_guidance={"images": 0})
    acc.Reload()
    return {tag: acc.Images(tag) for tag in acc.Tags()["images"]}


def test_rgb_pictures_are_jpeg_and_decode_back(tmp_path):
    picture = _picture()
    chw = torch.from_numpy(picture).permute(2, 0, 1).contiguous()
    images = _written_images(tmp_path, [("a", picture, "HWC"), ("b", chw, "CHW")])
    for tag in ("a", "b"):
        (event,) = images[tag]
        assert event.step == 3 and (event.height, event.width) == picture.shape[:2]
        assert event.encoded_image_string[:3] == b"\xff\xd8\xff"  # JPEG's start-of-image marker
        decoded = cv2.imdecode(np.frombuffer(event.encoded_image_string, np.uint8), cv2.IMREAD_COLOR)
        rgb = decoded[:, :, ::-1].astype(np.int16)
        assert np.abs(rgb - picture).mean() < 2.0  # red stays red: the channels are not swapped
        assert rgb[10, 50, 0] > 200 and rgb[10, 50, 2] < 90


def test_other_images_go_through_add_image(tmp_path):
    grey_float = np.full((1, 20, 30), 0.5, dtype=np.float32)
    assert jpeg_image_summary("g", grey_float, "CHW") is None
    assert jpeg_image_summary("n", _picture()[None], "NHWC") is None
    images = _written_images(tmp_path, [("g", grey_float, "CHW")])
    (event,) = images["g"]
    assert event.encoded_image_string[:4] == b"\x89PNG"
    assert (event.height, event.width) == (20, 30)
