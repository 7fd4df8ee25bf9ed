"""The training criterion: matching, per-anchor losses, mining and normalisation.

One step, for a batch of ``B`` images with ``A`` shared anchors, ``criterion(outputs, targets)``
with the model's :class:`~detmine.structures.HeadOutputs`::

    matcher      -> labels [B, A] (-1 ignore, 0 background, 1..K), matched GT [B, A]
    cls loss     -> [B, A] per anchor (softmax CE | sigmoid focal | alpha-balanced BCE)
    miner        -> bool [B, A]: the anchors whose classification loss counts
    box loss     -> over the positive anchors (smooth-L1 | L1 on deltas, GIoU on boxes)
    losses       = {"cls": sum(cls_loss[selected]) / N, "box": box_weight * sum(box_loss) / N}

Each part is an object looked up in its table (``detmine.matching.MATCHER_PRESETS``,
``detmine.losses.CLS_LOSSES`` / ``BOX_LOSSES``, ``detmine.mining.MINERS``) by
:func:`build_criterion`; :class:`Criterion` only calls them.

**Normalisation.** The box loss is divided by ``N_pos = max(1, positive anchors in the
batch)``. The classification loss is divided by the count the miner's examples mean
(``normalize_by``, default the miner's ``normalize_by`` attribute):

- ``"positives"`` (``all`` / focal, ``ssd``): ``N_pos``, as torchvision's SSD and the
  focal-loss paper;
- ``"selected"`` (``ohem``, ``random``): the number of selected examples, the Fast R-CNN /
  OHEM average over the minibatch, so the loss scale does not depend on how many objects
  an image has (dividing OHEM's 128 examples by the positives made an image with one object
  weigh 25x more than one with 25, and divided a background-only batch by 1).

``normalizer="batch"`` uses that count in the batch; ``normalizer="ema"`` an exponential
moving average of it (detectron2's RetinaNet: ``momentum`` 0.9, starting at 100, updated in
training mode only, saved in the criterion's ``state_dict``; evaluation mode uses the batch
count so validation losses do not disturb it). The box loss's ``N_pos`` follows the same
choice when the classification count is the positives (one shared count, as before).
torchvision's RetinaNet instead divides each image's loss by that image's positives and
averages over images; the two agree when every image has the same number of positives
(tested). Under DDP training the counts are the global batch's (summed over the processes)
and the EMA is of that global count, from the same start of 100, so its state equals one
process's on the whole batch; each process divides its own sum by ``count / W`` (``W``
processes), so the average of the per-process losses -- what DDP's gradient averaging
computes -- equals the loss of the global batch, with either normaliser, at every step
(tested with two gloo processes over several steps, EMA state included).

Background-only images are fine: they have only background / ignore anchors,
and contribute to the classification loss whenever the miner selects some of
their negatives (``all``, ``ohem``, ``random``, ``ssd`` with ``min_negatives``).

The losses are computed in float32 with autocast off, whatever the head's precision.
"""

from __future__ import annotations

from detmine.criterion.build import build_criterion
from detmine.criterion.checks import check_finite, nonfinite_message
from detmine.criterion.dense import Criterion
from detmine.structures import HEAD_DEFAULTS

__all__ = ["HEAD_DEFAULTS", "Criterion", "build_criterion", "check_finite", "nonfinite_message"]
