"""``DenseDetector``: backbone -> neck -> head + anchors, and batched post-processing.

The model never computes a loss and returns the same :class:`~detmine.structures.HeadOutputs` in
train and eval mode; the criterion (``detmine.criterion``) is a separate module, so validation loss
and training-time predictions cost nothing extra.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms

from detmine.modeling.anchors import _CachedAnchors
from detmine.structures import Detections, HeadOutputs, check_activation

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

SizesArg = Sequence[Sequence[int]] | Tensor | None

#: Where :meth:`DenseDetector.postprocess` takes its pre-NMS top-k: ``"level"`` -- per image and
#: pyramid level over all (anchor, class) pairs (torchvision's RetinaNet); ``"class"`` -- per
#: image and class over all anchors of the image (SSD, torchvision's SSD).
TOPK_RULES = ("level", "class")


def _sizes(sizes: SizesArg, batch: int, default: tuple[int, int], device: torch.device) -> Tensor:
    """``[B, 2]`` float ``(h, w)`` per image from a list of pairs / tensor / None (= default)."""
    if sizes is None:
        return torch.tensor([default] * batch, dtype=torch.float32, device=device)
    out = torch.as_tensor([list(map(float, s)) for s in sizes] if not isinstance(sizes, Tensor) else sizes)
    out = out.to(device=device, dtype=torch.float32).reshape(-1, 2)
    if out.shape[0] != batch:
        raise ValueError(f"got {out.shape[0]} sizes for a batch of {batch} images")
    return out


def _per_class(thresholds: Sequence[float], num_classes: int, device: torch.device) -> Tensor:
    """``thresholds`` as a float32 ``[K]`` tensor, or a ``ValueError`` when there are not ``K``."""
    values = torch.as_tensor(list(thresholds), dtype=torch.float32, device=device)
    if values.shape != (num_classes,):
        raise ValueError(f"class_thresholds needs {num_classes} values (one per class), got {len(values)}")
    return values


def _topk_per_level(scores: Tensor, level_counts: Sequence[int], k: int) -> tuple[Tensor, Tensor, Tensor]:
    """RetinaNet's candidates: per image and level, the ``k`` best (anchor, class) pairs.

    Args:
        scores: ``[B, A, K]`` class probabilities; ``level_counts`` sum to ``A``.

    Returns:
        ``scores [B, C]``, ``anchor_idx [B, C]`` in ``0..A-1``, ``labels [B, C]`` in ``1..K``.
    """
    batch, _, num_classes = scores.shape
    cand_scores, cand_idx = [], []
    start = 0
    for count in level_counts:
        flat = scores[:, start : start + count].reshape(batch, -1)
        top, idx = flat.topk(min(k, flat.shape[1]), dim=1)
        cand_scores.append(top)
        cand_idx.append(idx + start * num_classes)
        start += count
    flat_idx = torch.cat(cand_idx, dim=1)
    anchor_idx = torch.div(flat_idx, num_classes, rounding_mode="floor")
    return torch.cat(cand_scores, dim=1), anchor_idx, flat_idx % num_classes + 1


def _topk_per_class(scores: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """SSD's candidates: per image and class, the ``k`` best anchors of the whole image.

    Args:
        scores: ``[B, A, K]`` class probabilities.

    Returns:
        ``scores [B, C]``, ``anchor_idx [B, C]`` in ``0..A-1``, ``labels [B, C]`` in ``1..K``,
        ``C = K * min(k, A)``, class-major.
    """
    batch, num_anchors, num_classes = scores.shape
    top, anchor_idx = scores.transpose(1, 2).topk(min(k, num_anchors), dim=2)  # [B, K, k]
    labels = torch.arange(1, num_classes + 1, device=scores.device).view(1, -1, 1).expand_as(anchor_idx)
    return top.reshape(batch, -1), anchor_idx.reshape(batch, -1), labels.reshape(batch, -1)


class DenseDetector(nn.Module):
    """A one-stage dense detector (SSD, SSDlite, RetinaNet).

    Args:
        backbone: ``x [B, 3, H, W] -> list[Tensor]`` (see :mod:`detmine.modeling.backbones`).
        neck: ``list[Tensor] -> list[Tensor]`` or None.
        head: ``list[Tensor] -> (cls_logits [B, A, K'], box_deltas [B, A, 4])``; its
            ``cls_activation`` attribute declares what its columns mean.
        anchor_generator: a :mod:`detmine.modeling.anchors` generator with one level per map.
        num_classes: K, the number of object classes (labels 1..K).
        cls_activation: ``"softmax"`` (K' = K + 1, column 0 background) or ``"sigmoid"`` (K' = K),
            a key of :data:`detmine.structures.CLS_ACTIVATIONS`; default: the head's
            ``cls_activation`` (given both, they must agree).
        box_coder: a ``detmine.box_coder.BoxCoder`` used to decode ``box_deltas`` in :meth:`predict`.
        image_size: the square input size the recipe was designed for (used by builders / configs,
            not enforced: any size that the backbone can process works).
        size_divisible: the input height and width must be multiples of this for the network's
            maps to line up (batches are padded up to it; see :attr:`size_divisible`). 1 for
            fixed-size SSD models (SSD300 sees 300 px, not 320); the stride of the coarsest map an
            FPN merges top-down (32, C5) for RetinaNet.
        image_mean, image_std: per-channel normalisation for images in 0..1.
        channels_last: run the network on channels-last (NHWC) tensors; 2-4x faster convs on CPU
            with oneDNN and faster on GPU tensor cores. Outputs are the same values.
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        neck: nn.Module | None,
        head: nn.Module,
        anchor_generator: _CachedAnchors,
        num_classes: int,
        cls_activation: str | None = None,
        box_coder,
        image_size: int,
        size_divisible: int,
        image_mean: Sequence[float] = IMAGENET_MEAN,
        image_std: Sequence[float] = IMAGENET_STD,
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        declared = getattr(head, "cls_activation", None)
        if cls_activation is None:
            cls_activation = declared
        elif declared is not None and declared != cls_activation:
            raise ValueError(f"cls_activation {cls_activation!r} contradicts the head's {declared!r}")
        check_activation(cls_activation)
        if isinstance(size_divisible, bool) or not isinstance(size_divisible, int) or size_divisible < 1:
            raise ValueError(f"size_divisible must be a positive integer, got {size_divisible!r}")
        if len(image_mean) != 3 or len(image_std) != 3:
            raise ValueError(f"image_mean and image_std need 3 entries, got {image_mean}, {image_std}")
        self.backbone = backbone
        self.neck = neck
        self.head = head
        self.anchor_generator = anchor_generator
        self.num_classes = num_classes
        #: the head's activation, which every ``HeadOutputs`` carries (builders read it here).
        self.cls_activation = cls_activation
        self.box_coder = box_coder
        self.image_size = image_size
        #: batches are padded so that height and width are multiples of this (the loader's
        #: ``size_divisible``).
        self.size_divisible = size_divisible
        #: per-channel normalisation mean and std for images in 0..1.
        self.image_mean = tuple(float(m) for m in image_mean)
        self.image_std = tuple(float(v) for v in image_std)
        self.channels_last = channels_last
        # Folded so that normalise(x in 0..255) = (x / 255 - mean) / std = x * scale + shift.
        std = torch.tensor(image_std, dtype=torch.float32)
        self.register_buffer("_scale", (1.0 / (255.0 * std)).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_shift", (-torch.tensor(image_mean) / std).view(1, 3, 1, 1), persistent=False)

    @property
    def pad_value(self) -> tuple[float, float, float]:
        """The normalisation mean in 0..255 pixel units, ``(R, G, B)``: padding a batch with it
        gives padded pixels the value 0 after :meth:`normalize` (ImageNet: 123.675, 116.28,
        103.53)."""
        return tuple(255.0 * m for m in self.image_mean)

    def normalize(self, images: Tensor) -> Tensor:
        """uint8 or float ``[B, 3, H, W]`` in 0..255 -> float normalised with ``image_mean`` / ``image_std``."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got shape {tuple(images.shape)}")
        x = images.float() if not torch.is_floating_point(images) else images
        x = x * self._scale.to(x.dtype) + self._shift.to(x.dtype)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def forward(self, images: Tensor) -> HeadOutputs:
        """``images [B, 3, H, W]`` uint8/float 0..255 -> ``HeadOutputs`` (same in train and eval).

        ``cls_logits [B, A, K']``, ``box_deltas [B, A, 4]``, ``anchors [A, 4]`` float32 xyxy in
        input pixels of the padded batch, ``cls_activation`` and ``level_counts`` (anchors per
        pyramid level).
        """
        features = self._features(images)
        cls_logits, box_deltas = self.head(features)
        anchors, counts = self.anchor_generator(
            [f.shape[-2:] for f in features], images.shape[-2:], device=images.device, dtype=torch.float32
        )
        if anchors.shape[0] != cls_logits.shape[1]:
            raise RuntimeError(
                f"head predicts {cls_logits.shape[1]} anchors but the generator made {anchors.shape[0]}: "
                "anchors per location of head and generator disagree"
            )
        return HeadOutputs(
            cls_logits=cls_logits,
            box_deltas=box_deltas,
            anchors=anchors,
            cls_activation=self.cls_activation,
            level_counts=tuple(counts),
        )

    def feature_sizes(self, input_size: Sequence[int]) -> list[tuple[int, int]]:
        """``(H_l, W_l)`` of each map the head sees for a padded input of ``input_size = (H, W)``,
        computed without running the network: the backbone and neck are traced on shape-only
        (fake) tensors; where that is not supported, one forward of a blank image instead."""
        height, width = int(input_size[0]), int(input_size[1])
        was_training = self.training
        self.eval()  # BatchNorm in training mode refuses the 1x1 maps of one image (and would update its statistics)
        try:
            try:
                from torch._subclasses.fake_tensor import FakeTensorMode

                with FakeTensorMode(allow_non_fake_inputs=True), torch.no_grad():
                    maps = self._features(torch.empty(1, 3, height, width))
            except Exception:  # noqa: BLE001 -- an op without a fake kernel: run it for real
                with torch.no_grad():
                    param = next(self.parameters(), None)
                    device = param.device if param is not None else torch.device("cpu")
                    maps = self._features(torch.zeros(1, 3, height, width, device=device))
            return [(int(f.shape[-2]), int(f.shape[-1])) for f in maps]
        finally:
            self.train(was_training)

    def _features(self, images: Tensor) -> list[Tensor]:
        features = self.backbone(self.normalize(images))
        return self.neck(features) if self.neck is not None else features

    def anchors_for(self, input_size: Sequence[int]) -> Tensor:
        """``anchors [A, 4]`` float32 xyxy (CPU) of a padded input of ``input_size = (H, W)``, as
        :meth:`forward` makes them, without a forward pass (the data analysis and the anchor
        counts of :mod:`detmine.analysis` use it)."""
        size = (int(input_size[0]), int(input_size[1]))
        anchors, _ = self.anchor_generator(self.feature_sizes(size), size, device="cpu")
        return anchors

    @torch.no_grad()
    def predict(
        self,
        images: Tensor,
        input_sizes: SizesArg = None,
        orig_sizes: SizesArg = None,
        *,
        score_thresh: float = 0.05,
        topk_candidates: int = 1000,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
        topk_per: str = "level",
        class_thresholds: Sequence[float] | None = None,
    ) -> list[Detections]:
        """Forward + :meth:`postprocess` without gradients. See :meth:`postprocess` for the arguments."""
        outputs = self(images)
        return self.postprocess(
            outputs,
            image_shape=tuple(images.shape[-2:]),
            input_sizes=input_sizes,
            orig_sizes=orig_sizes,
            score_thresh=score_thresh,
            topk_candidates=topk_candidates,
            nms_thresh=nms_thresh,
            detections_per_img=detections_per_img,
            topk_per=topk_per,
            class_thresholds=class_thresholds,
        )

    @torch.no_grad()
    def postprocess(
        self,
        outputs: HeadOutputs,
        *,
        image_shape: tuple[int, int],
        input_sizes: SizesArg = None,
        orig_sizes: SizesArg = None,
        level_counts: Sequence[int] | None = None,
        score_thresh: float = 0.05,
        topk_candidates: int = 1000,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
        topk_per: str = "level",
        class_thresholds: Sequence[float] | None = None,
    ) -> list[Detections]:
        """Decode, threshold, pre-NMS top-k, batched NMS, map boxes to the original images.

        Per image, the candidates are the scores above ``score_thresh`` among the
        ``topk_candidates`` best of each group that ``topk_per`` names (:data:`TOPK_RULES`):

        - ``"level"`` (torchvision's ``RetinaNet.postprocess_detections``): per pyramid level,
          over all (anchor, class) pairs of the level;
        - ``"class"`` (SSD, torchvision's ``SSD.postprocess_detections``): per class, over all
          anchors of the image, so one class covering a level cannot crowd out another's.

        Candidates are decoded, clipped to the image's ``input_size`` and NMS'ed per class at
        ``nms_thresh``; the ``detections_per_img`` best survive. Softmax scores skip the
        background column (``outputs.class_scores()``), sigmoid scores are one per class.

        Args:
            outputs: the forward's ``HeadOutputs`` for a batch of B images.
            image_shape: ``(H, W)`` of the padded batch.
            input_sizes: ``(h, w)`` per image before padding (default ``image_shape``).
            orig_sizes: ``(h, w)`` per image on disk (default ``input_sizes``); boxes are scaled
                by ``orig / input`` per axis.
            level_counts: anchors per pyramid level, overriding ``outputs.level_counts``; counts
                that do not add up to ``A`` mean all anchors as one level (top-k over the image).
                Unused by ``topk_per="class"``.
            topk_per: ``"level"`` or ``"class"``; anything else is a ``ValueError``.
            class_thresholds: per-class operating thresholds (``K`` scores, class ``k`` at
                ``k - 1``; the ``thresholds`` evaluation view chooses them): after NMS a
                detection of class ``k`` is kept only when its score reaches its class's
                threshold (before the ``detections_per_img`` cut). None: ``score_thresh`` only.

        Returns:
            One ``Detections`` per image: ``boxes [D, 4]`` float32 xyxy in original pixels,
            ``scores [D]``, ``labels [D]`` int64 in 1..K, sorted by decreasing score.
        """
        if topk_per not in TOPK_RULES:
            raise ValueError(f"topk_per must be one of {', '.join(map(repr, TOPK_RULES))}, got {topk_per!r}")
        logits, deltas, anchors = outputs.cls_logits, outputs.box_deltas, outputs.anchors
        batch, num_anchors = logits.shape[:2]
        if batch == 0:
            return []
        device = logits.device
        scores = outputs.class_scores()  # [B, A, K]
        num_classes = scores.shape[-1]
        if topk_per == "class":
            top_scores, anchor_idx, labels = _topk_per_class(scores, topk_candidates)  # [B, C] each
        else:
            if level_counts is None:
                level_counts = outputs.level_counts
            if sum(level_counts) != num_anchors:
                level_counts = [num_anchors]
            top_scores, anchor_idx, labels = _topk_per_level(scores, level_counts, topk_candidates)

        picked = deltas.float().gather(1, anchor_idx.unsqueeze(-1).expand(-1, -1, 4))
        boxes = self.box_coder.decode(picked, anchors[anchor_idx])  # [B, C, 4]
        in_sizes = _sizes(input_sizes, batch, image_shape, device)
        limits = in_sizes.flip(-1).repeat(1, 2).unsqueeze(1)  # [B, 1, 4] = (w, h, w, h)
        boxes = torch.minimum(boxes.clamp(min=0), limits)
        scale = _sizes(orig_sizes, batch, image_shape, device) / in_sizes if orig_sizes is not None else None

        image_of, cand = (top_scores > score_thresh).nonzero(as_tuple=True)
        boxes, top_scores, labels = boxes[image_of, cand], top_scores[image_of, cand], labels[image_of, cand]
        keep = batched_nms(boxes, top_scores, image_of * (num_classes + 1) + labels, nms_thresh)
        if class_thresholds is not None:
            keep = keep[
                top_scores[keep] >= _per_class(class_thresholds, num_classes, device)[labels[keep] - 1]
            ]
        results: list[Detections] = []
        kept_image = image_of[keep]
        for b in range(batch):
            k = keep[kept_image == b][:detections_per_img]
            out_boxes = boxes[k]
            if scale is not None:
                out_boxes = out_boxes * scale[b].flip(-1).repeat(2)
            results.append(Detections(boxes=out_boxes, scores=top_scores[k], labels=labels[k]))
        return results
