"""Miners: which anchors' classification loss counts.

Every miner is a small callable with one signature (see docs/architecture.md)::

    miner(cls_loss [B, A], labels [B, A], boxes [B, A, 4] | None) -> bool [B, A]

It ranks on ``cls_loss.detach()`` and never selects an ignored anchor (label -1).

Two attributes on every miner tell the criterion what the miner needs:

``box_source``: ``None`` | ``"anchors"`` | ``"predictions"``
    Which boxes to pass as ``boxes``. ``None``: the miner takes no boxes (it
    accepts and ignores them; ``all``, ``ssd``, ``random``, ``soft``, ``pool``).
    ``"anchors"``: the anchors, expanded to ``[B, A, 4]``. ``"predictions"``: the
    decoded predicted boxes, detached. ``ohem`` (NMS) sets it per instance from its ``nms_boxes``
    option (default ``"anchors"``) and raises :class:`~detmine.errors.ConfigError`
    when given ``boxes=None``.
``normalize_by``: ``"positives"`` | ``"selected"``
    What the summed classification loss of the selected anchors is divided by:
    the number of positive anchors (``all``, ``ssd``, ``soft``, ``pool``: the SSD
    and focal-loss papers) or the number of selected anchors (``ohem``, ``random``:
    the Fast R-CNN / OHEM average over the minibatch of selected examples). The
    criterion applies it (at least 1, batch or EMA count, averaged under DDP);
    the miner only declares it.

A miner that draws random numbers (``random``, ``soft``, ``pool``) takes them from a
:class:`~detmine.mining.stream.RandomStream` (option ``seed``; ``None``: torch's global RNG):
its ``state_dict`` / ``load_state_dict`` / ``train`` reach the stream, and the criterion
saves that state in its own (a resumed run continues the stream).

Build one with :func:`build_miner`; ``mining.type: ohem`` and ``build_miner("ohem")`` name
the same class through :data:`MINERS`, and a miner's options are its constructor's keyword
arguments (the config's ``mining.<type>.*``), checked by :mod:`detmine.components`. A new
miner is one file plus one table line (or ``MINERS["mine"] = MyMiner`` from outside).
"""

from __future__ import annotations

from typing import Any

from detmine.components import ComponentTable
from detmine.mining._common import BOX_SOURCES, NORMALIZE_BY
from detmine.mining.all_anchors import AllAnchorsMiner
from detmine.mining.ohem import OHEMMiner
from detmine.mining.pool import PoolMiner
from detmine.mining.random_sampling import RandomMiner
from detmine.mining.record import Miner, MiningRecord
from detmine.mining.soft import SoftMiner
from detmine.mining.ssd import SSDMiner
from detmine.mining.stream import RandomStream

#: name -> miner class (``mining.type``; options under ``mining.<name>``).
MINERS = ComponentTable(
    "miner",
    {
        "all": AllAnchorsMiner,
        "ssd": SSDMiner,
        "ohem": OHEMMiner,
        "random": RandomMiner,
        "soft": SoftMiner,
        "pool": PoolMiner,
    },
    provided=("facts",),
)


def build_miner(type: str, **options: Any) -> Miner:
    """Build the miner named ``type`` (one of :data:`MINERS`) with keyword ``options``.

    Raises:
        ConfigError: unknown type or option (one line, "did you mean", the valid ones), or a
            bad value (naming ``mining.<type>.<option>``).
    """
    return MINERS.build(type, options, key=f"mining.{type}", name_key="mining.type")


__all__ = [
    "BOX_SOURCES",
    "MINERS",
    "NORMALIZE_BY",
    "AllAnchorsMiner",
    "Miner",
    "MiningRecord",
    "OHEMMiner",
    "PoolMiner",
    "RandomMiner",
    "RandomStream",
    "SSDMiner",
    "SoftMiner",
    "build_miner",
]
