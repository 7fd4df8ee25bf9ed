"""Augmentation presets on albumentations, with boxes always consistent with pixels.

``build_transforms(preset, image_size, **opts)`` returns a :class:`DetectionTransform`,
a callable ``t(image, boxes, labels, ignore_boxes) -> dict`` (numpy in, numpy out):

- ``image``: uint8 ``[H, W, 3]`` RGB
- ``boxes``: float32 ``[N, 4]`` xyxy pixels; ``labels``: int64 ``[N]`` (1..K)
- ``ignore_boxes``: float32 ``[M, 4]`` xyxy pixels (crowd / difficult regions)

Ignore regions travel through the same geometric transforms as the boxes: they are
appended to the bbox list with label ``-1`` and split off again at the end. After
every geometric step albumentations clips boxes to the image and drops those that
left it (labels dropped with them); boxes narrower / lower than ``min_box_size``
pixels are dropped as degenerate.

Presets:
- ``"ssd"``: SSD photometric distortion (brightness, contrast, saturation, hue; each
  with p=0.5, in random order), zoom-out (:class:`ZoomOut`, canvas up to 4x filled
  with the mean, p=0.5), min-IoU random crop (:class:`MinIoURandomCrop`), horizontal
  flip, resize to a fixed ``image_size x image_size`` square.
- ``"retinanet"``: resize the shorter side to ``image_size`` (an int, or a sequence to
  pick from at random for multi-scale training) with the longer side capped at
  ``max_size`` (:class:`ResizeShortestEdge`), or a fixed square with ``square=True``;
  horizontal flip.
- ``"eval"``: the resize only, no randomness; ``square=True`` (SSD-style, the default)
  or ``square=False`` (RetinaNet-style shorter side / ``max_size``).

Randomness: every step of a :class:`DetectionTransform` draws from ONE numpy generator and
ONE ``random.Random`` shared by the whole pipeline (albumentations' ``set_random_state``),
so ``set_random_seed(s)`` makes the next call a pure function of ``s`` and the input.
(albumentations' own ``Compose(seed=s)`` gives every step a generator seeded with the same
``s``, so e.g. two ``p=0.5`` steps would always fire together.) Training loaders reseed it
per sample from ``(seed, epoch, index)``, see :mod:`detmine.data.samplers`. Our own steps
(:class:`ZoomOut`, :class:`~detmine.data.min_iou_crop.MinIoURandomCrop`) draw only from
albumentations' ``self.py_random`` / ``self.random_generator``.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np
from albumentations.augmentations.geometric.pad import Pad

from detmine.components import ComponentTable
from detmine.data.min_iou_crop import SSD_MIN_IOUS, MinIoURandomCrop
from detmine.errors import ConfigError, DataError, OptionError

#: ImageNet mean in 0..255 RGB: the model normalises with it, so a canvas filled
#: with it is zero after normalisation.
IMAGENET_MEAN_255: tuple[float, float, float] = (123.675, 116.28, 103.53)

#: options of the ``eval`` preset a recipe may set (``data.eval_transform_options``): geometry only.
EVAL_GEOMETRY_KEYS: tuple[str, ...] = ("square", "max_size", "min_box_size")


def resizes_to_square(preset: str, square: bool | None = None) -> bool:
    """Whether ``preset`` resizes to a fixed square: ``square`` when given, else True for every
    preset but ``retinanet`` (shorter side, aspect kept). The one place this is decided: the
    training pipeline and the evaluation geometry that follows it both ask here."""
    return bool(square) if square is not None else preset != "retinanet"


_IGNORE = -1  # label given to ignore regions inside the albumentations pipeline


class ZoomOut(Pad):
    """SSD's "expand": place the image at a random position on a larger canvas.

    The canvas side ratio ``r`` is uniform in ``[1, max_scale]`` (the same ``r`` for
    height and width, so the aspect ratio is kept), the free space is ``fill``.
    Boxes are shifted with the image (padding reuses ``A.Pad``). This makes objects
    smaller relative to the image, i.e. creates small-object training examples.
    """

    def __init__(
        self,
        max_scale: float = 4.0,
        fill: tuple[float, ...] | float = IMAGENET_MEAN_255,
        fill_mask: tuple[float, ...] | float = 0,
        p: float = 0.5,
    ) -> None:
        if max_scale < 1.0:
            raise ValueError(f"ZoomOut: max_scale must be >= 1, got {max_scale}")
        super().__init__(padding=0, fill=fill, fill_mask=fill_mask, border_mode=cv2.BORDER_CONSTANT, p=p)
        self.max_scale = max_scale

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("max_scale", "fill", "fill_mask")

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        ratio = self.py_random.uniform(1.0, self.max_scale)
        pad_w = int(width * ratio) - width
        pad_h = int(height * ratio) - height
        left = int(self.py_random.uniform(0, pad_w))
        top = int(self.py_random.uniform(0, pad_h))
        return {"pad_top": top, "pad_bottom": pad_h - top, "pad_left": left, "pad_right": pad_w - left}


class ResizeShortestEdge(A.SmallestMaxSize):
    """Scale so the shorter side is ``short_size`` unless the longer side would exceed ``max_size``.

    detectron2's ``ResizeShortestEdge`` / torchvision's ``GeneralizedRCNNTransform``
    rule: ``scale = short / min(h, w)``, reduced to ``max_size / max(h, w)`` when
    needed. ``short_size`` may be a sequence (one value drawn per call).
    """

    def __init__(self, short_size: int | Sequence[int], max_size: int, p: float = 1.0) -> None:
        super().__init__(max_size=short_size, p=p)
        self.max_longest = max_size

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("max_size", "max_longest")

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        scale = super().get_params_dependent_on_data(params, data)["scale"]
        scale = min(scale, self.max_longest / max(height, width))
        return {"scale": scale}


def ssd_photometric_distortion(p: float = 0.5) -> A.RandomOrder:
    """SSD's photometric distortions, each applied with probability ``p``, in random order.

    Brightness is additive (+-32 grey levels, as in the SSD code), contrast and
    saturation multiplicative in ``[0.5, 1.5]``, hue shifted by up to 18 degrees.
    """
    return A.RandomOrder(
        [
            A.RandomBrightnessContrast(
                brightness_limit=32 / 255, contrast_limit=0, brightness_by_max=True, p=p
            ),
            A.ColorJitter(brightness=0, contrast=(0.5, 1.5), saturation=0, hue=0, p=p),
            A.ColorJitter(brightness=0, contrast=0, saturation=(0.5, 1.5), hue=0, p=p),
            A.ColorJitter(brightness=0, contrast=0, saturation=0, hue=18 / 360, p=p),
        ],
        n=4,
    )


class DetectionTransform:
    """Callable ``t(image, boxes, labels, ignore_boxes) -> dict`` around an ``A.Compose``.

    Args:
        compose: the albumentations pipeline; it must be built with
            ``BboxParams(format="pascal_voc", label_fields=["labels"])``.
        min_box_size: final boxes narrower or lower than this (pixels) are dropped.

    Extra albumentations targets (e.g. ``masks=[...]``) can be passed as keywords and
    go through the same geometry (the tests use this to check box/pixel consistency).
    """

    def __init__(self, compose: A.Compose, min_box_size: float = 1.0) -> None:
        self.compose = compose
        self.min_box_size = min_box_size
        self.set_random_seed(getattr(compose, "seed", None))

    def set_random_seed(self, seed: int | None) -> None:
        """Give the whole pipeline one fresh generator pair seeded with ``seed`` (None = OS entropy).

        All steps share the pair, so their draws are independent of each other yet the
        next call is reproducible. ``build_dataloader`` calls this before every sample.
        """
        self.compose.set_random_state(np.random.default_rng(seed), random.Random(seed))

    def __repr__(self) -> str:
        return f"DetectionTransform({self.compose!r})"

    def __call__(
        self,
        image: np.ndarray,
        boxes: np.ndarray,
        labels: np.ndarray,
        ignore_boxes: np.ndarray | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """Transform one sample.

        Args:
            image: uint8 ``[H, W, 3]`` RGB.
            boxes: float32 ``[N, 4]`` xyxy pixels.
            labels: int64 ``[N]``.
            ignore_boxes: float32 ``[M, 4]`` xyxy pixels, or None.
            **extra: other albumentations targets (e.g. ``masks=[...]``), returned as-is
                transformed.

        Returns:
            dict with ``image`` uint8 ``[H', W', 3]``, ``boxes`` float32 ``[N', 4]``,
            ``labels`` int64 ``[N']``, ``ignore_boxes`` float32 ``[M', 4]`` (plus the
            ``extra`` keys).
        """
        if (
            not isinstance(image, np.ndarray)
            or image.ndim != 3
            or image.shape[2] != 3
            or image.dtype != np.uint8
        ):
            got = f"{type(image).__name__} {getattr(image, 'dtype', '')} {getattr(image, 'shape', '')}"
            raise DataError(f"transform: expected a uint8 [H, W, 3] RGB numpy image, got {got}")
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if len(labels) != len(boxes):
            raise DataError(f"transform: {len(boxes)} boxes but {len(labels)} labels")
        ignore = (
            np.zeros((0, 4), np.float32) if ignore_boxes is None else np.asarray(ignore_boxes, np.float32)
        )
        ignore = ignore.reshape(-1, 4)
        all_boxes = np.concatenate([boxes, ignore], axis=0)
        all_labels = np.concatenate([labels, np.full(len(ignore), _IGNORE, np.int64)])
        out = self.compose(image=image, bboxes=all_boxes, labels=all_labels, **extra)
        out_boxes = np.asarray(out.pop("bboxes"), dtype=np.float32).reshape(-1, 4)
        out_labels = np.asarray(out.pop("labels"), dtype=np.int64).reshape(-1)
        height, width = out["image"].shape[:2]
        out_boxes[:, 0::2] = out_boxes[:, 0::2].clip(0, width)
        out_boxes[:, 1::2] = out_boxes[:, 1::2].clip(0, height)
        size_ok = (out_boxes[:, 2] - out_boxes[:, 0] >= self.min_box_size) & (
            out_boxes[:, 3] - out_boxes[:, 1] >= self.min_box_size
        )
        is_ignore = out_labels == _IGNORE
        out["boxes"] = out_boxes[size_ok & ~is_ignore]
        out["labels"] = out_labels[size_ok & ~is_ignore]
        out["ignore_boxes"] = out_boxes[size_ok & is_ignore]
        return out


def _bbox_params(min_box_size: float) -> A.BboxParams:
    return A.BboxParams(
        format="pascal_voc",
        label_fields=["labels"],
        min_width=min_box_size,
        min_height=min_box_size,
        clip=True,
        filter_invalid_bboxes=True,
    )


def _square_resize(image_size: int) -> A.Resize:
    return A.Resize(height=image_size, width=image_size, interpolation=cv2.INTER_LINEAR)


def _preset_pipeline(
    preset: str,
    image_size: int | Sequence[int],
    *,
    max_size: int = 1333,
    square: bool | None = None,
    mean: Sequence[float] = IMAGENET_MEAN_255,
    zoom_out_max_scale: float = 4.0,
    zoom_out_p: float = 0.5,
    min_ious: Sequence[float | None] = SSD_MIN_IOUS,
    crop_trials: int = 40,
    photometric_p: float = 0.5,
    flip_p: float = 0.5,
    min_box_size: float = 1.0,
    seed: int | None = None,
) -> DetectionTransform:
    """The built-in augmentation presets (see the module docstring for what each one does);
    reached through :data:`TRANSFORM_PRESETS` / :func:`build_transforms`.

    Args:
        preset: ``"ssd"``, ``"retinanet"`` or ``"eval"``.
        image_size: square side (``ssd``, ``square=True``) or shorter side
            (``retinanet`` / ``eval`` with ``square=False``); a sequence of shorter
            sides gives multi-scale training (``retinanet`` only).
        max_size: cap on the longer side for the shorter-side resize.
        square: fixed square output; default False for ``retinanet``, True for
            ``eval`` (the SSD geometry; pass False to evaluate RetinaNet-style).
        mean: RGB 0..255 fill of the zoom-out canvas.
        zoom_out_max_scale, zoom_out_p: SSD zoom-out canvas ratio and probability.
        min_ious: SSD crop thresholds (``None`` = no crop), see :class:`MinIoURandomCrop`.
        crop_trials: candidate patches per threshold draw.
        photometric_p: probability of each photometric distortion (SSD).
        flip_p: horizontal flip probability.
        min_box_size: boxes smaller than this many pixels in width or height after a
            step are dropped as degenerate.
        seed: seeds the pipeline (reproducible direct calls); loaders from
            ``build_dataloader`` reseed it before every sample from ``(seed, epoch, index)``.

    Returns:
        a :class:`DetectionTransform`.
    """
    sizes = [image_size] if isinstance(image_size, int) else list(image_size)
    if not sizes or any(not isinstance(s, int) or s <= 0 for s in sizes):
        raise ConfigError(f"transform image_size must be a positive int (or ints), got {image_size!r}")
    square = resizes_to_square(preset, square)
    if preset == "ssd" and not square:
        raise OptionError(
            "square", "must be true (or unset) for the ssd preset: it resizes to a fixed square"
        )
    if (square or preset == "eval") and len(sizes) != 1:
        raise ConfigError(f"preset {preset!r} (square={square}) takes one image_size, got {image_size!r}")
    resize: A.BasicTransform
    if square:
        resize = _square_resize(sizes[0])
    else:
        resize = ResizeShortestEdge(sizes[0] if len(sizes) == 1 else sizes, max_size=max_size)

    steps: list[A.BasicTransform | A.BaseCompose]
    if preset == "ssd":
        steps = [
            ssd_photometric_distortion(photometric_p),
            ZoomOut(max_scale=zoom_out_max_scale, fill=tuple(float(m) for m in mean), p=zoom_out_p),
            MinIoURandomCrop(min_ious=min_ious, trials=crop_trials, ignore_label=_IGNORE),
            A.HorizontalFlip(p=flip_p),
            resize,
        ]
    elif preset == "retinanet":
        steps = [resize, A.HorizontalFlip(p=flip_p)]
    else:
        steps = [resize]
    compose = A.Compose(steps, bbox_params=_bbox_params(min_box_size), seed=seed)
    return DetectionTransform(compose, min_box_size=min_box_size)


#: name -> preset builder ``(image_size, **options) -> DetectionTransform``
#: (``data.train_transform``; its keyword signature is the schema of ``data.transform_options``).
TRANSFORM_PRESETS = ComponentTable(
    "transform preset",
    {name: functools.partial(_preset_pipeline, name) for name in ("ssd", "retinanet", "eval")},
    passed=("image_size",),
)


def build_transforms(preset: str, image_size: int | Sequence[int], **options: Any) -> DetectionTransform:
    """The :data:`TRANSFORM_PRESETS` entry ``preset`` at ``image_size`` with keyword ``options``
    (``max_size``, ``square``, ``flip_p`` ... for the built-in presets; see
    :func:`_preset_pipeline`).

    Raises:
        ConfigError: an unknown preset or option ("did you mean"), a wrong type, a bad value.
    """
    return TRANSFORM_PRESETS.build(
        preset, options, key="data.transform_options", name_key="data.train_transform", image_size=image_size
    )
