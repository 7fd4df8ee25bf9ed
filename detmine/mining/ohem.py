"""The ``ohem`` miner: online hard example mining (Shrivastava et al. 2016) for dense heads.

Every non-ignored anchor is scored by its (detached) classification loss; NMS
over the anchors' boxes with the loss as score removes near duplicates, and the
``batch_size_per_image`` highest-loss survivors of each image count. This is
the one-stage adaptation the focal-loss paper (Lin et al. 2017, sec. 5.1 and
Table 1d) compares against.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from detmine.errors import ConfigError
from detmine.mining.all_anchors import check_miner_inputs


class OHEMMiner:
    """Per image the ``batch_size_per_image`` highest-loss anchors surviving NMS.

    Steps, batched over the images (one ``batched_nms`` call with the image index
    as the category, no Python loop over images here):

    1. candidates: the ``pre_nms_topk`` highest-loss non-ignored anchors of each
       image (with ``pos_fraction``: that many positives and that many negatives,
       so that low-loss positives still reach the quota);
    2. NMS over the candidates' boxes at ``nms_iou`` (suppress IoU > ``nms_iou``),
       score = loss, positives and negatives together;
    3. keep the highest-loss survivors: ``min(batch_size_per_image, survivors)``
       of them; with ``pos_fraction`` at most ``floor(pos_fraction *
       batch_size_per_image)`` positives and negatives fill the rest (the focal
       paper's "OHEM 1:3" is ``pos_fraction=0.25``).

    Defaults: ``batch_size_per_image=128`` -- the OHEM paper's ROI budget and the
    batch size of the best OHEM setting the focal paper reports on a dense
    detector (Table 1d: batch 128, NMS 0.5, 32.8 AP on R101-FPN); ``nms_iou=0.7``
    -- the OHEM paper (0.5, the focal paper's best, is worth trying);
    ``pre_nms_topk=1024`` bounds
    the NMS cost (a few ms on CPU per batch) while leaving enough candidates that
    NMS at 0.7 rarely leaves fewer than 128.

    Which boxes are passed is the criterion's choice: the anchors themselves or
    the decoded predictions (the OHEM paper uses the ROI boxes that were scored).

    Call: ``miner(cls_loss [B, A], labels [B, A], boxes [B, A, 4]) -> bool [B, A]``;
    ``needs_boxes = True``: ``boxes=None`` raises :class:`ConfigError`.

    Args:
        batch_size_per_image: anchors kept per image.
        nms_iou: IoU above which a lower-loss candidate is suppressed (1.0 = no NMS).
        pos_fraction: ``None`` (positives and negatives ranked together) or the
            maximal share of positives in ``(0, 1]``.
        pre_nms_topk: candidates per image (per kind with ``pos_fraction``) fed
            to NMS; ``>= batch_size_per_image``.
    """

    needs_boxes: bool = True

    def __init__(
        self,
        *,
        batch_size_per_image: int = 128,
        nms_iou: float = 0.7,
        pos_fraction: float | None = None,
        pre_nms_topk: int = 1024,
    ) -> None:
        if isinstance(batch_size_per_image, bool) or not isinstance(batch_size_per_image, int):
            raise ConfigError(f"mining.batch_size_per_image must be an integer, got {batch_size_per_image!r}")
        if batch_size_per_image < 1:
            raise ConfigError(f"mining.batch_size_per_image must be >= 1, got {batch_size_per_image}")
        if isinstance(nms_iou, bool) or not isinstance(nms_iou, (int, float)) or not 0.0 < nms_iou <= 1.0:
            raise ConfigError(f"mining.nms_iou must be a number in (0, 1], got {nms_iou!r}")
        if pos_fraction is not None and (
            isinstance(pos_fraction, bool)
            or not isinstance(pos_fraction, (int, float))
            or not 0.0 < pos_fraction <= 1.0
        ):
            raise ConfigError(f"mining.pos_fraction must be null or a number in (0, 1], got {pos_fraction!r}")
        if isinstance(pre_nms_topk, bool) or not isinstance(pre_nms_topk, int):
            raise ConfigError(f"mining.pre_nms_topk must be an integer, got {pre_nms_topk!r}")
        if pre_nms_topk < batch_size_per_image:
            raise ConfigError(
                f"mining.pre_nms_topk must be >= mining.batch_size_per_image ({batch_size_per_image}), "
                f"got {pre_nms_topk}"
            )
        self.batch_size_per_image = batch_size_per_image
        self.nms_iou = float(nms_iou)
        self.pos_fraction = None if pos_fraction is None else float(pos_fraction)
        self.pre_nms_topk = pre_nms_topk

    def _candidates(self, loss: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Top-loss candidates per image: ``(loss [B, C], anchor index [B, C], valid [B, C])``.

        Within each kind (all, or positives then negatives) the columns are in
        decreasing loss order; ``valid`` is False on padding (images with fewer
        eligible anchors than the budget).
        """
        k = min(self.pre_nms_topk, labels.shape[1])
        kinds = [labels >= 0] if self.pos_fraction is None else [labels > 0, labels == 0]
        values, indices, valid = [], [], []
        for eligible in kinds:  # one or two kinds, never a loop over images
            v, i = loss.masked_fill(~eligible, float("-inf")).topk(k, dim=1)
            values.append(v)
            indices.append(i)
            valid.append(eligible.gather(1, i))
        return torch.cat(values, 1), torch.cat(indices, 1), torch.cat(valid, 1)

    def __call__(self, cls_loss: Tensor, labels: Tensor, boxes: Tensor | None) -> Tensor:
        if boxes is None:
            raise ConfigError(
                "mining.type 'ohem' runs NMS over the anchors' boxes, but the criterion passed boxes=None "
                "(OHEMMiner.needs_boxes is True)"
            )
        num_images, num_anchors = check_miner_inputs("ohem", cls_loss, labels, boxes)
        device = labels.device
        loss = cls_loss.detach().float()
        cand_loss, cand_index, cand_valid = self._candidates(loss, labels)
        num_cand = cand_index.shape[1]

        image = torch.arange(num_images, device=device)[:, None].expand(num_images, num_cand)
        flat = cand_valid.flatten().nonzero().squeeze(1)
        flat_image = image.flatten()[flat]
        flat_anchor = cand_index.flatten()[flat]
        flat_boxes = boxes.detach()[flat_image, flat_anchor].float()
        keep = batched_nms(flat_boxes, cand_loss.flatten()[flat], flat_image, self.nms_iou)
        survived = torch.zeros(num_images * num_cand, dtype=torch.bool, device=device)
        survived[flat[keep]] = True
        survived = survived.view(num_images, num_cand)

        # Candidates of one kind are in decreasing-loss order, so a cumulative count of
        # survivors is each survivor's rank among the survivors of its image (and kind).
        if self.pos_fraction is None:
            rank = survived.cumsum(dim=1) - 1
            take = survived & (rank < self.batch_size_per_image)
        else:
            cand_label = labels.gather(1, cand_index)
            pos = survived & (cand_label > 0)
            neg = survived & (cand_label == 0)
            max_pos = int(self.pos_fraction * self.batch_size_per_image)
            num_pos = pos.sum(dim=1, keepdim=True).clamp(max=max_pos)
            num_neg = self.batch_size_per_image - num_pos
            take = (pos & (pos.cumsum(dim=1) <= num_pos)) | (neg & (neg.cumsum(dim=1) <= num_neg))

        selected = torch.zeros((num_images, num_anchors), dtype=torch.bool, device=device)
        # index_put (not scatter): with pos_fraction, padding columns may repeat an anchor index.
        selected[image[take], cand_index[take]] = True
        return selected

    def __repr__(self) -> str:
        return (
            f"OHEMMiner(batch_size_per_image={self.batch_size_per_image}, nms_iou={self.nms_iou}, "
            f"pos_fraction={self.pos_fraction}, pre_nms_topk={self.pre_nms_topk})"
        )
