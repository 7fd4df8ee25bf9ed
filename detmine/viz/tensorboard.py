"""TensorBoard views of what the miner chose during training, and of evaluation.

:class:`MiningVisualizer` is called by the trainer every step; it does nothing
(no tensor work, no host sync) unless ``period > 0 and iteration % period == 0``.
When it logs, it writes (``<p>`` is the prefix, ``"mining"`` by default):

Images (one per image of the batch, the first ``num_images``), HWC RGB, long side >= 512:
    ``<p>/images/<i>``  left, the input image with ground truth (green), positive anchors
        (blue), the ``top_k`` highest-loss mined negatives coloured by loss rank
        (dark red = hardest -> pale yellow), ignored anchors (thin grey), labels that never
        overlap; right, the heat map of the counted negatives' loss per anchor location
        (``heat_map``: merged over the levels, per level, or off); below, a legend whose
        caption says where the negatives' loss goes (:func:`detmine.viz.captions.mining_caption`:
        with the ``all`` miner the share held by the top 1% / 10% of the negatives, with a
        real miner how many it kept and the share of the negatives' loss they hold).

Histograms (over every anchor of the batch):
    ``<p>/hist/neg_loss_all``    per-anchor classification loss of all negatives
    ``<p>/hist/neg_loss_mined``  ... of the mined (selected) negatives
    ``<p>/hist/fg_score``        foreground score of all non-ignored anchors
    ``<p>/hist/fg_score_pos``    ... of positive anchors
    ``<p>/hist/fg_score_neg``    ... of negative anchors
    Foreground score (``HeadOutputs.foreground_scores``): softmax heads
    ``1 - p(background)``, sigmoid heads the largest class probability. A
    histogram with no values is not written.

Scalars:
    ``<p>/pos_per_image``          mean number of positive anchors per image
    ``<p>/neg_selected_per_image`` mean number of mined negatives per image
    ``<p>/ignored_per_image``      mean number of ignored anchors per image
    ``<p>/neg_loss_share``         share of the counted classification loss that
                                   comes from negatives (0 when nothing counted)
    ``<p>/neg_loss_mean_mined``    mean loss of the mined negatives
    ``<p>/neg_loss_mean_unmined``  mean loss of the negatives left out (only
                                   written when there are any: not for ``all``)
    ``<p>/bg_only_neg_share``      share of the mined negatives that come from
                                   background-only images (no ground-truth box)

The evaluation's pictures (COCO table, per-class AP, precision-recall curves) are
:func:`detmine.evaluation.report.log_evaluation`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, get_args

import numpy as np
import torch
from torch import Tensor

from detmine.errors import ConfigError
from detmine.mining.record import MiningRecord
from detmine.periodic import is_due
from detmine.structures import HeadOutputs, Target
from detmine.viz.captions import mining_caption
from detmine.viz.heatmap import location_losses
from detmine.viz.mining_picture import HeatMode, MiningPicture, draw_mining_picture


def _background_only(targets: Sequence[Target], device: torch.device) -> Tensor:
    return torch.tensor([len(t["labels"]) == 0 for t in targets], dtype=torch.bool, device=device)


def mining_statistics(record: MiningRecord, targets: Sequence[Target]) -> dict[str, float]:
    """The scalars of one batch (see the module docstring), computed with one host sync.

    ``neg_loss_mean_mined`` / ``neg_loss_mean_unmined`` are absent when there is
    no such negative in the batch.
    """
    loss = record.cls_loss.detach().float()
    pos, neg, ign = record.positives, record.negatives, record.ignored
    mined = record.mined_negatives
    unmined = neg & ~record.selected
    num_img = max(loss.shape[0], 1)
    bg_only = _background_only(targets, loss.device)[:, None] & mined
    sel_loss = loss.masked_fill(~record.selected, 0.0).sum()
    mined_loss = loss.masked_fill(~mined, 0.0).sum()
    unmined_loss = loss.masked_fill(~unmined, 0.0).sum()
    n_mined, n_unmined = mined.sum(), unmined.sum()
    vec = torch.stack(
        [
            pos.sum().float() / num_img,
            n_mined.float() / num_img,
            ign.sum().float() / num_img,
            torch.where(sel_loss > 0, mined_loss / sel_loss.clamp_min(1e-30), torch.zeros_like(sel_loss)),
            mined_loss / n_mined.clamp_min(1),
            unmined_loss / n_unmined.clamp_min(1),
            bg_only.sum().float() / n_mined.clamp_min(1),
            n_mined.float(),
            n_unmined.float(),
        ]
    ).cpu()
    v = vec.tolist()
    stats = {
        "pos_per_image": v[0],
        "neg_selected_per_image": v[1],
        "ignored_per_image": v[2],
        "neg_loss_share": v[3],
        "bg_only_neg_share": v[6],
    }
    if v[7] > 0:
        stats["neg_loss_mean_mined"] = v[4]
    if v[8] > 0:
        stats["neg_loss_mean_unmined"] = v[5]
    return stats


def image_to_numpy(image: Tensor, size: tuple[int, int] | None = None) -> np.ndarray:
    """``[3, H, W]`` uint8 (or float 0..255) tensor -> ``[h, w, 3]`` uint8 RGB numpy,
    cropped to ``size = (h, w)`` (the input size before batch padding)."""
    if size is not None:
        image = image[:, : int(size[0]), : int(size[1])]
    if image.dtype != torch.uint8:
        image = image.detach().float().clamp(0, 255).round().to(torch.uint8)
    return np.ascontiguousarray(image.permute(1, 2, 0).cpu().numpy())


def render_mining_picture(
    image: Tensor,
    target: Target,
    anchors: Tensor,
    record: MiningRecord,
    index: int,
    *,
    top_k: int = 20,
    class_names: Sequence[str] | None = None,
    max_ignored: int = 200,
    min_long_side: int = 512,
    level_counts: Sequence[int] | None = None,
    heat_map: HeatMode = "merged",
) -> MiningPicture:
    """Draw what the miner chose on image ``index`` of a batch (see
    :func:`detmine.viz.mining_picture.draw_mining_picture`): the boxes beside the heat map of
    the counted negatives' loss, captioned by :func:`detmine.viz.captions.mining_caption`.

    Args:
        image: ``[3, H, W]`` the padded batch image; cropped to ``target["input_size"]``.
        target: its ground truth (network-input pixels).
        anchors: ``[A, 4]`` anchors of the batch.
        record: the batch's :class:`MiningRecord`.
        top_k: how many of the highest-loss mined negatives to draw.
        max_ignored: at most this many ignored anchors are drawn (evenly
            subsampled: thousands of grey boxes would hide the picture).
        min_long_side: upscale smaller images (longer side) before drawing.
        level_counts: anchors per pyramid level (``HeadOutputs.level_counts``); ``None``: the
            anchors are one level.
        heat_map: ``"merged"``, ``"levels"`` (one heat panel per level) or ``"off"``.

    Returns:
        The :class:`MiningPicture` (its ``image``: ``[H', W', 3]`` uint8 RGB).
    """
    labels = record.labels[index]
    neg_idx, neg_loss = record.top_negatives(index, top_k, mined_only=True)
    pos_idx = torch.nonzero(labels > 0).squeeze(1)
    ign_idx = torch.nonzero(labels < 0).squeeze(1)
    n_ign = int(ign_idx.numel())
    if n_ign > max_ignored:
        ign_idx = ign_idx[torch.linspace(0, n_ign - 1, max_ignored, device=ign_idx.device).long()]
    header = mining_caption(
        labels, record.selected[index], record.cls_loss[index],
        image_id=target.get("image_id", index), shown=len(neg_idx),
    )  # fmt: skip
    levels = None
    if heat_map != "off":
        levels = location_losses(anchors, level_counts, record.cls_loss[index], record.mined_negatives[index])
    size = target.get("input_size")
    return draw_mining_picture(
        image_to_numpy(image, size),
        gt_boxes=target["boxes"].detach().cpu().numpy(),
        gt_labels=target["labels"].detach().cpu().tolist(),
        positive_boxes=anchors[pos_idx].detach().cpu().numpy(),
        negative_boxes=anchors[neg_idx].detach().cpu().numpy(),
        negative_losses=neg_loss.detach().float().cpu().tolist(),
        ignored_boxes=anchors[ign_idx].detach().cpu().numpy(),
        ignore_regions=target["ignore_boxes"].detach().cpu().numpy() if "ignore_boxes" in target else None,
        class_names=class_names,
        header=header,
        min_long_side=min_long_side,
        heat=levels,
        heat_mode=heat_map,
    )


def render_mining_image(*args: Any, **kwargs: Any) -> np.ndarray:
    """:func:`render_mining_picture`'s image alone (``[H', W', 3]`` uint8 RGB)."""
    return render_mining_picture(*args, **kwargs).image


class MiningVisualizer:
    """Logs pictures, histograms and scalars of the miner's choices every ``period`` steps.

    Args:
        writer: a ``torch.utils.tensorboard.SummaryWriter`` (``None`` = off, e.g.
            on non-main distributed ranks).
        period: log when ``iteration % period == 0``; ``0`` turns it off.
        num_images: how many images of the batch get a picture.
        top_k: mined negatives drawn per image (hardest first).
        class_names: ``K`` names (index k-1 is class k) for the GT labels.
        max_ignored: ignored anchors drawn per image at most.
        min_long_side: small images are upscaled to this longer side before drawing.
        heat_map: the heat map of the counted negatives' loss beside the boxes:
            ``"merged"`` (the pyramid levels summed), ``"levels"`` (one panel per level) or
            ``"off"``.
        prefix: tag prefix.
    """

    def __init__(
        self,
        writer: Any,
        period: int,
        num_images: int = 4,
        top_k: int = 20,
        class_names: Sequence[str] | None = None,
        *,
        max_ignored: int = 200,
        min_long_side: int = 512,
        heat_map: HeatMode = "merged",
        prefix: str = "mining",
    ) -> None:
        for name, value in (("period", period), ("num_images", num_images), ("top_k", top_k)):
            if not isinstance(value, int) or value < 0:
                raise ConfigError(f"vis.{name} must be an integer >= 0, got {value!r}")
        self.writer = writer
        self.period = period
        self.num_images = num_images
        self.top_k = top_k
        self.class_names = list(class_names) if class_names else None
        self.max_ignored = max_ignored
        if heat_map not in get_args(HeatMode):
            raise ConfigError(f"vis.heat_map must be one of {list(get_args(HeatMode))}, got {heat_map!r}")
        self.min_long_side = min_long_side
        self.heat_map = heat_map
        self.prefix = prefix

    @property
    def enabled(self) -> bool:
        return self.writer is not None and self.period > 0

    def should_log(self, iteration: int) -> bool:
        """On the period (:func:`detmine.periodic.is_due`) and with somewhere to write."""
        return self.writer is not None and is_due(iteration, self.period)

    def maybe_log(
        self,
        iteration: int,
        images: Tensor,
        targets: Sequence[Target],
        outputs: HeadOutputs,
        record: MiningRecord,
    ) -> bool:
        """Log if ``iteration`` is on the period; returns whether it logged.

        Args:
            images: ``[B, 3, H, W]`` uint8 batch as fed to the model.
            targets: ``B`` targets (network-input pixels).
            outputs: the model's :class:`HeadOutputs` (``anchors [A, 4]``; its
                ``cls_activation`` says how to read the logits).
            record: the criterion's :class:`MiningRecord`.
        """
        if not self.should_log(iteration):
            return False
        self.log(iteration, images, targets, outputs, record)
        return True

    @torch.no_grad()
    def log(
        self,
        iteration: int,
        images: Tensor,
        targets: Sequence[Target],
        outputs: HeadOutputs,
        record: MiningRecord,
    ) -> None:
        """Write everything listed in the module docstring at step ``iteration``."""
        w, p = self.writer, self.prefix
        for key, value in mining_statistics(record, targets).items():
            w.add_scalar(f"{p}/{key}", value, iteration)
        loss = record.cls_loss.detach().float()
        self._hist(f"{p}/hist/neg_loss_all", loss[record.negatives], iteration)
        self._hist(f"{p}/hist/neg_loss_mined", loss[record.mined_negatives], iteration)
        fg = outputs.foreground_scores()
        self._hist(f"{p}/hist/fg_score", fg[~record.ignored], iteration)
        self._hist(f"{p}/hist/fg_score_pos", fg[record.positives], iteration)
        self._hist(f"{p}/hist/fg_score_neg", fg[record.negatives], iteration)
        for i in range(min(self.num_images, images.shape[0])):
            picture = render_mining_image(
                images[i],
                targets[i],
                outputs.anchors,
                record,
                i,
                top_k=self.top_k,
                class_names=self.class_names,
                max_ignored=self.max_ignored,
                min_long_side=self.min_long_side,
                level_counts=outputs.level_counts,
                heat_map=self.heat_map,
            )
            w.add_image(f"{p}/images/{i}", picture, iteration, dataformats="HWC")

    def _hist(self, tag: str, values: Tensor, step: int) -> None:
        if values.numel() > 0:
            self.writer.add_histogram(tag, values.cpu(), step)
