"""The ``ohem`` miner: online hard example mining (Shrivastava et al. 2016) for dense heads.

Every non-ignored anchor is scored by its (detached) classification loss; NMS
over its box (the anchor, or its decoded prediction: ``nms_boxes``) with the
loss as score removes near duplicates, and the
``batch_size_per_image`` highest-loss survivors of each image count. This is
the one-stage adaptation the focal-loss paper (Lin et al. 2017, sec. 5.1 and
Table 1d) compares against.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from detmine.errors import ConfigError, OptionError
from detmine.mining._common import check_count, check_fraction, check_miner_inputs

#: Valid values of ``OHEMMiner(nms_boxes=...)``.
NMS_BOXES = ("anchors", "predictions")


class OHEMMiner:
    """Per image the ``batch_size_per_image`` highest-loss anchors surviving NMS.

    Steps, batched over the images (one ``batched_nms`` call per round, with the
    image index as the category; no Python loop over images):

    1. candidates: the ``pre_nms_topk`` highest-loss non-ignored anchors of each
       image;
    2. NMS over the candidates' boxes at ``nms_iou`` (suppress IoU > ``nms_iou``)
       with the loss as score, positives and negatives together (as in the OHEM
       paper);
    3. keep the highest-loss survivors: exactly ``min(batch_size_per_image,
       survivors)`` of them.

    With ``pos_fraction`` (the focal paper's "OHEM 1:3" is ``pos_fraction=0.25``)
    positives and negatives are two pools, sampled like Faster R-CNN's balanced
    sampler: each pool has its own ``pre_nms_topk`` candidates (so low-loss
    positives still reach their quota) and its own NMS (a positive never
    suppresses a negative: they are different examples, not duplicates); the
    ``min(floor(pos_fraction * batch_size_per_image), surviving positives)``
    hardest positives are kept and the hardest surviving negatives fill the rest.
    The selection equals this rule applied to the NMS over each whole pool (of
    ``pre_nms_topk`` candidates).

    Defaults: ``batch_size_per_image=128`` -- the OHEM paper's ROI budget and the
    batch size of the best OHEM setting the focal paper reports on a dense
    detector (Table 1d: batch 128, NMS 0.5, 32.8 AP on R101-FPN); ``nms_iou=0.7``
    -- the OHEM paper (0.5, the focal paper's best, is worth trying);
    ``pre_nms_topk=1024`` caps the candidates: NMS first runs over the top
    ``2 x batch_size_per_image`` of them and reaches further only for images where
    too few survive (exact either way, see :meth:`_nms_survivors`).

    Which boxes NMS runs over is the ``nms_boxes`` option, exposed to the
    criterion as the instance attribute ``box_source`` (equal to ``nms_boxes``):
    ``"anchors"`` (default) -- the anchors themselves, the dense analogue of the
    paper's RoIs (the OHEM paper runs NMS over the RoIs that were scored), and
    cheaper (no decoding); ``"predictions"`` -- the decoded predicted boxes. Note
    that the box regression is trained on positives only, so a negative's
    predicted box is never trained: its shape is whatever the regressor outputs
    for background, and NMS over it suppresses by untrained geometry.

    The classification loss of the selection is divided by the number of
    selected anchors (``normalize_by = "selected"``): the average over the
    minibatch of selected RoIs, as in Fast R-CNN and the OHEM paper.

    Call: ``miner(cls_loss [B, A], labels [B, A], boxes [B, A, 4]) -> bool [B, A]``;
    ``boxes`` are those named by ``box_source``; ``boxes=None`` raises
    :class:`ConfigError`.

    Args:
        batch_size_per_image: anchors kept per image.
        nms_iou: IoU above which a lower-loss candidate is suppressed (1.0 = no NMS).
        pos_fraction: ``None`` (positives and negatives ranked together) or the
            maximal share of positives in ``(0, 1]``.
        pre_nms_topk: at most this many candidates per image (per pool with
            ``pos_fraction``) reach NMS; ``>= batch_size_per_image``.
        nms_boxes: ``"anchors"`` or ``"predictions"``: the boxes NMS runs over
            (see above); becomes ``box_source``.
    """

    box_source: str
    normalize_by: str = "selected"
    #: where the options live in the config; the component table sets it when it builds one.
    config_key: str = ""

    def __init__(
        self,
        *,
        batch_size_per_image: int = 128,
        nms_iou: float = 0.7,
        pos_fraction: float | None = None,
        pre_nms_topk: int = 1024,
        nms_boxes: Literal["anchors", "predictions"] = "anchors",
    ) -> None:
        check_count("batch_size_per_image", batch_size_per_image, 1)
        check_fraction("nms_iou", nms_iou, low_open=True)
        check_fraction("pos_fraction", pos_fraction, low_open=True, allow_none=True)
        check_count("pre_nms_topk", pre_nms_topk, 1)
        if pre_nms_topk < batch_size_per_image:
            raise OptionError(
                "pre_nms_topk",
                f"must be >= batch_size_per_image ({batch_size_per_image}), got {pre_nms_topk}",
            )
        if nms_boxes not in NMS_BOXES:
            raise OptionError(
                "nms_boxes", f"must be one of {', '.join(repr(v) for v in NMS_BOXES)}, got {nms_boxes!r}"
            )
        self.batch_size_per_image = batch_size_per_image
        self.nms_iou = float(nms_iou)
        self.pos_fraction = None if pos_fraction is None else float(pos_fraction)
        self.pre_nms_topk = pre_nms_topk
        self.nms_boxes = nms_boxes
        self.box_source = nms_boxes

    def _quotas(self, survivors: Tensor) -> Tensor:
        """``[B, G]`` int64: how many survivors of each pool are taken, given the
        per-pool survivor counts ``survivors [B, G]`` (``G`` = 1 or 2 pools) of the
        whole pools."""
        if self.pos_fraction is None:
            return torch.full_like(survivors, self.batch_size_per_image)
        num_pos = survivors[:, :1].clamp(max=int(self.pos_fraction * self.batch_size_per_image))
        return torch.cat([num_pos, self.batch_size_per_image - num_pos], dim=1)

    def _targets(self, found: Tensor) -> Tensor:
        """``[B, G]`` int64: the largest quota each pool may still need, given the
        survivors ``found [B, G]`` so far (a lower bound of the whole pools' counts).

        Unlike :meth:`_quotas` this does not clamp a pool's own quota to what it
        has found: the positive pool needs ``floor(pos_fraction * batch)`` survivors
        (it is short while it has fewer and is not exhausted); the negative pool
        needs ``batch - min(found positives, that)``, which can only shrink as more
        positives are found, so it bounds the final negative quota from above.
        """
        if self.pos_fraction is None:
            return torch.full_like(found, self.batch_size_per_image)
        max_pos = int(self.pos_fraction * self.batch_size_per_image)
        num_pos = found[:, :1].clamp(max=max_pos)
        return torch.cat([torch.full_like(num_pos, max_pos), self.batch_size_per_image - num_pos], dim=1)

    def _candidates(self, loss: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Top-loss candidates of each pool: ``(loss, anchor index, valid)``, each ``[B, G, C]``.

        One pool (all non-ignored anchors) or, with ``pos_fraction``, two (positives,
        negatives). Columns are in decreasing loss order; ``valid`` is False on
        padding (images with fewer eligible anchors than ``C``).
        """
        k = min(self.pre_nms_topk, labels.shape[1])
        pools = [labels >= 0] if self.pos_fraction is None else [labels > 0, labels == 0]
        values, indices, valid = [], [], []
        for eligible in pools:  # one or two pools, not a loop over images
            v, i = loss.masked_fill(~eligible, float("-inf")).topk(k, dim=1)
            values.append(v)
            indices.append(i)
            valid.append(eligible.gather(1, i))
        return torch.stack(values, 1), torch.stack(indices, 1), torch.stack(valid, 1)

    def _nms_survivors(self, loss: Tensor, boxes: Tensor, valid: Tensor) -> Tensor:
        """``[B, G, C]`` bool: the candidates kept by NMS, among the columns the selection needs.

        NMS runs per image and pool (one ``batched_nms`` call, category = image x pool).
        Greedy NMS visits boxes in decreasing loss order, so whether a candidate
        survives depends only on the higher-loss ones: NMS over the first ``n``
        columns gives exactly the full NMS's survivors among those columns (up to
        exactly equal losses straddling the prefix boundary). Hence it
        starts with ``2 x batch_size_per_image`` columns and doubles the prefix only
        for the images that have not found enough survivors yet (NMS cost grows
        quadratically with the number of boxes). An image is done when each of its
        pools is exhausted or has found its largest possible quota
        (:meth:`_targets`), so the survivors :meth:`_quotas` takes all lie in the prefix.
        """
        num_images, num_pools, num_cand = loss.shape
        survived = torch.zeros_like(valid)
        rows = torch.arange(num_images, device=loss.device)
        pool = torch.arange(num_pools, device=loss.device)
        prefix = min(2 * self.batch_size_per_image, num_cand)
        while True:
            sub_valid = valid[rows, :, :prefix]
            r, g, c = sub_valid.nonzero(as_tuple=True)
            image = rows[r]
            keep = batched_nms(
                boxes[image, g, c], loss[image, g, c], image * num_pools + pool[g], self.nms_iou
            )
            sub_survived = torch.zeros_like(sub_valid)
            sub_survived[r[keep], g[keep], c[keep]] = True
            survived[rows, :, :prefix] = sub_survived
            if prefix == num_cand:
                return survived
            found = sub_survived.sum(dim=2)
            exhausted = ~valid[rows, :, prefix:].any(dim=2)
            enough = ((found >= self._targets(found)) | exhausted).all(dim=1)
            rows = rows[~enough]
            if len(rows) == 0:
                return survived
            prefix = min(2 * prefix, num_cand)

    def __call__(self, cls_loss: Tensor, labels: Tensor, boxes: Tensor | None) -> Tensor:
        if boxes is None:
            raise ConfigError(
                f"the ohem miner runs NMS over boxes ({self.config_key or 'OHEMMiner'}.nms_boxes={self.box_source!r}), "
                "but the criterion passed boxes=None"
            )
        num_images, num_anchors = check_miner_inputs("ohem", cls_loss, labels, boxes)
        loss, index, valid = self._candidates(cls_loss.detach().float(), labels)
        cand_boxes = boxes.detach().float()[
            torch.arange(num_images, device=labels.device)[:, None, None], index
        ]
        survived = self._nms_survivors(loss, cand_boxes, valid)
        # Columns are in decreasing-loss order, so the running count of survivors is each
        # survivor's rank (from 1) among the survivors of its image and pool.
        quota = self._quotas(survived.sum(dim=2))
        take = survived & (survived.cumsum(dim=2) <= quota[..., None])
        selected = torch.zeros((num_images, num_anchors), dtype=torch.bool, device=labels.device)
        # index_put, not scatter: padding columns of the two pools may repeat an anchor index.
        selected[take.nonzero(as_tuple=True)[0], index[take]] = True
        return selected

    def __repr__(self) -> str:
        return (
            f"OHEMMiner(batch_size_per_image={self.batch_size_per_image}, nms_iou={self.nms_iou}, "
            f"pos_fraction={self.pos_fraction}, pre_nms_topk={self.pre_nms_topk}, "
            f"nms_boxes={self.nms_boxes!r})"
        )
