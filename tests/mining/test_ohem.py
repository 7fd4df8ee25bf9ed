"""OHEM miner: exact selection against a per-image torchvision.ops.nms reference, and its properties."""

import pytest
import torch
from torchvision.ops import box_iou, nms

import detmine.mining.ohem as ohem_module
from detmine.errors import ConfigError
from detmine.mining import OHEMMiner, build_miner


def _problem(batch: int, num_anchors: int, seed: int):
    """Clustered boxes (so NMS suppresses a lot), distinct losses, labels in {-1, 0, 1..3}."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.rand(batch, num_anchors, 2, generator=g) * 120
    sizes = torch.rand(batch, num_anchors, 2, generator=g) * 30 + 10
    boxes = torch.cat([centers - sizes / 2, centers + sizes / 2], dim=-1)
    loss = torch.rand(batch, num_anchors, generator=g)
    labels = torch.randint(-1, 1, (batch, num_anchors), generator=g)  # ignore / background
    labels[torch.rand(batch, num_anchors, generator=g) < 0.15] = 2  # ~15% positives
    return loss, labels, boxes


def _survivors(loss_b, boxes_b, candidates, iou):
    """Anchor indices of the candidates kept by torchvision's nms, in decreasing loss order."""
    keep = nms(boxes_b[candidates], loss_b[candidates], iou)
    return candidates[keep]


def _as_set(mask_row):
    return set(mask_row.nonzero().flatten().tolist())


@pytest.mark.parametrize("pre_nms_topk", [10_000, 200])
def test_equals_top_of_nms_survivors(pre_nms_topk):
    loss, labels, boxes = _problem(4, 600, seed=0)
    labels[3] = -1  # an all-ignore image selects nothing
    miner = OHEMMiner(batch_size_per_image=64, nms_iou=0.5, pre_nms_topk=pre_nms_topk)
    selected = miner(loss, labels, boxes)
    for b in range(4):
        eligible = (labels[b] >= 0).nonzero().flatten()
        candidates = eligible[loss[b, eligible].argsort(descending=True)[:pre_nms_topk]]
        survivors = _survivors(loss[b], boxes[b], candidates, 0.5)
        # exact count = min(batch_size_per_image, survivors), and they are the top of the survivors
        assert selected[b].sum().item() == min(64, len(survivors))
        assert _as_set(selected[b]) == set(survivors[:64].tolist())
        # the property: every selected anchor has loss >= every unselected NMS survivor
        rest = survivors[~selected[b, survivors]]
        if selected[b].any() and len(rest):
            assert loss[b][selected[b]].min() >= loss[b, rest].max()
    assert not selected[3].any()


def test_no_two_selected_boxes_overlap_above_nms_iou_and_no_ignored():
    loss, labels, boxes = _problem(3, 500, seed=1)
    for iou in (0.3, 0.7):
        selected = OHEMMiner(batch_size_per_image=100, nms_iou=iou)(loss, labels, boxes)
        assert not (selected & (labels < 0)).any()
        for b in range(3):
            ious = box_iou(boxes[b][selected[b]], boxes[b][selected[b]])
            ious.fill_diagonal_(0)
            assert ious.max() <= iou


@pytest.mark.parametrize("pos_fraction", [None, 0.25])
def test_growing_nms_prefix_equals_full_nms(pos_fraction, monkeypatch):
    # image 0: clusters of 6 identical boxes, so the first 2 x batch candidates hold too
    # few survivors and the NMS prefix must grow; image 1: disjoint boxes, done at once.
    g = torch.Generator().manual_seed(5)
    num_anchors, batch_size = 1200, 40
    corner = (torch.arange(num_anchors) // 6).float()[:, None] * 30
    boxes = torch.cat(
        [corner, torch.zeros(num_anchors, 1), corner + 20, torch.full((num_anchors, 1), 20.0)], 1
    )
    boxes = torch.stack([boxes, boxes.clone()])
    boxes[1, :, 0::2] = torch.arange(num_anchors).float()[:, None] * 50 + torch.tensor([0.0, 20.0])
    cluster_loss = torch.rand(2, num_anchors // 6, generator=g).repeat_interleave(6, dim=1)
    loss = cluster_loss + 1e-3 * torch.rand(2, num_anchors, generator=g)  # hard clusters: 6 duplicates
    labels = torch.zeros(2, num_anchors, dtype=torch.long)
    labels[:, torch.randperm(num_anchors, generator=g)[:300]] = 1
    labels[:, :5] = -1
    miner = OHEMMiner(
        batch_size_per_image=batch_size, nms_iou=0.5, pos_fraction=pos_fraction, pre_nms_topk=2000
    )
    calls, original_nms = [], ohem_module.batched_nms

    def counting_nms(boxes, scores, idxs, iou):
        calls.append(idxs.unique().tolist())  # NMS categories: image * pools + pool
        return original_nms(boxes, scores, idxs, iou)

    monkeypatch.setattr(ohem_module, "batched_nms", counting_nms)
    selected = miner(loss, labels, boxes)
    num_pools = 1 if pos_fraction is None else 2
    assert len(calls) > 1  # the prefix grew ...
    assert all(max(c) < num_pools for c in calls[1:])  # ... for image 0 only
    for b in range(2):
        if pos_fraction is None:
            survivors = _survivors(loss[b], boxes[b], (labels[b] >= 0).nonzero().flatten(), 0.5)
            expected = set(survivors[:batch_size].tolist())
        else:
            pos = _survivors(loss[b], boxes[b], (labels[b] > 0).nonzero().flatten(), 0.5)
            neg = _survivors(loss[b], boxes[b], (labels[b] == 0).nonzero().flatten(), 0.5)
            expected = set(pos[:10].tolist()) | set(neg[: batch_size - min(10, len(pos))].tolist())
        assert _as_set(selected[b]) == expected
        assert len(expected) == batch_size


def test_few_survivors_gives_fewer_than_batch():
    labels = torch.zeros(2, 50, dtype=torch.long)
    boxes = torch.tensor([10.0, 10.0, 50.0, 50.0]).repeat(2, 50, 1)  # all identical: one survivor
    boxes[1, 25:] += 200  # image 1: two separate clusters -> two survivors
    loss = torch.rand(2, 50)
    selected = OHEMMiner(batch_size_per_image=16, pre_nms_topk=50)(loss, labels, boxes)
    assert selected.sum(1).tolist() == [1, 2]
    assert selected[0, loss[0].argmax()]


def test_images_do_not_suppress_each_other():
    loss, labels, boxes = _problem(3, 300, seed=2)
    miner = OHEMMiner(batch_size_per_image=32, nms_iou=0.5)
    together = miner(loss, labels, boxes)
    for b in range(3):
        alone = miner(loss[b : b + 1], labels[b : b + 1], boxes[b : b + 1])
        assert torch.equal(together[b], alone[0])


@pytest.mark.parametrize("batch_size", [40, 400])
def test_pos_fraction_caps_positives_and_fills_with_negatives(batch_size):
    loss, labels, boxes = _problem(3, 600, seed=3)
    labels[2, labels[2] > 0] = 0  # image without positives: all negatives
    miner = OHEMMiner(batch_size_per_image=batch_size, nms_iou=0.6, pos_fraction=0.25, pre_nms_topk=600)
    selected = miner(loss, labels, boxes)
    max_pos = int(0.25 * batch_size)
    for b in range(3):
        # two pools, each with its own NMS
        pos = _survivors(loss[b], boxes[b], (labels[b] > 0).nonzero().flatten(), 0.6)
        neg = _survivors(loss[b], boxes[b], (labels[b] == 0).nonzero().flatten(), 0.6)
        n_pos = min(max_pos, len(pos))
        n_neg = min(batch_size - n_pos, len(neg))
        assert (selected[b] & (labels[b] > 0)).sum().item() == n_pos
        assert (selected[b] & (labels[b] == 0)).sum().item() == n_neg
        assert _as_set(selected[b]) == set(pos[:n_pos].tolist()) | set(neg[:n_neg].tolist())
    assert (selected[0] & (labels[0] > 0)).sum() <= max_pos


def test_low_loss_positives_still_fill_the_positive_quota():
    # positives have the lowest losses: with pos_fraction they are still candidates
    labels = torch.zeros(1, 400, dtype=torch.long)
    labels[0, :20] = 1
    loss = torch.rand(1, 400) + 1.0
    loss[0, :20] = torch.rand(20) * 0.1
    boxes = torch.cat([torch.arange(400.0)[:, None] * 100, torch.zeros(400, 1)], 1).repeat(1, 2)
    boxes[:, 2:] += 50  # disjoint boxes: NMS keeps all
    selected = OHEMMiner(batch_size_per_image=32, pos_fraction=0.25, pre_nms_topk=64)(
        loss, labels, boxes[None]
    )
    assert (selected & (labels > 0)).sum().item() == 8
    assert selected.sum().item() == 32


@pytest.mark.parametrize("nms_boxes", ["anchors", "predictions"])
def test_box_source_is_nms_boxes_and_boxes_are_required(nms_boxes):
    miner = OHEMMiner(nms_boxes=nms_boxes)
    assert miner.box_source == miner.nms_boxes == nms_boxes
    assert miner.normalize_by == "selected"
    assert nms_boxes in repr(miner)
    with pytest.raises(ConfigError, match=f"ohem.*boxes.*{nms_boxes}.*boxes=None"):
        miner(torch.rand(1, 5), torch.zeros(1, 5, dtype=torch.long), None)


def test_bad_nms_boxes_is_a_config_error():
    with pytest.raises(ConfigError, match=r"mining\.ohem\.nms_boxes.*'anchors', 'predictions'.*'decoded'"):
        build_miner("ohem", nms_boxes="decoded")
    with pytest.raises(
        ConfigError, match=r"^nms_boxes must be one of 'anchors', 'predictions', got 'decoded'"
    ):
        OHEMMiner(nms_boxes="decoded")


def _brute_force(loss, labels, boxes, batch_size, iou, pos_fraction, pre_nms_topk):
    """The OHEM rule written out per image with torchvision.ops.nms over each whole pool.

    Independent of the miner's code: per image, each pool's ``pre_nms_topk`` highest-loss
    anchors, full NMS over them, then ``min(floor(pos_fraction * batch), positives kept)``
    positives and the hardest negatives to fill ``batch`` (one pool of all non-ignored
    anchors and the ``batch`` hardest survivors without ``pos_fraction``).
    """
    selected = torch.zeros_like(labels, dtype=torch.bool)
    for b in range(labels.shape[0]):
        if pos_fraction is None:
            pools, quotas = [labels[b] >= 0], [batch_size]
        else:
            pools = [labels[b] > 0, labels[b] == 0]
            quotas = [int(pos_fraction * batch_size), None]
        taken = 0
        for eligible, quota in zip(pools, quotas, strict=True):
            members = eligible.nonzero().flatten()
            candidates = members[loss[b, members].argsort(descending=True)[:pre_nms_topk]]
            survivors = candidates[nms(boxes[b, candidates], loss[b, candidates], iou)]
            count = min(batch_size - taken if quota is None else quota, len(survivors))
            selected[b, survivors[:count]] = True
            taken += count
    return selected


def _crowded_positives(num_images: int, seed: int):
    """Per image: 300 near-identical positives on one object with the highest losses,
    then 40 distinct lower-loss positives, then 900 scattered negatives (some overlapping)."""
    g = torch.Generator().manual_seed(seed)
    loss, labels, boxes = [], [], []
    for _ in range(num_images):
        crowd = torch.tensor([100.0, 100.0, 200.0, 200.0]) + torch.rand(300, 4, generator=g)  # IoU > 0.95
        step = torch.arange(40.0)[:, None] * 60
        distinct = torch.cat([step + 1000, torch.zeros(40, 1), step + 1040, torch.full((40, 1), 40.0)], 1)
        corner = torch.rand(900, 2, generator=g) * 800
        negatives = torch.cat([corner, corner + torch.rand(900, 2, generator=g) * 40 + 10], 1)
        boxes.append(torch.cat([crowd, distinct, negatives]))
        loss.append(
            torch.cat(
                [
                    3 + torch.rand(300, generator=g),  # the crowd: the hardest positives
                    1 + torch.rand(40, generator=g),
                    torch.rand(900, generator=g) * 4,  # negatives: any loss
                ]
            )
        )
        label = torch.zeros(1240, dtype=torch.long)
        label[:340] = 1
        labels.append(label)
    return torch.stack(loss), torch.stack(labels), torch.stack(boxes)


@pytest.mark.parametrize("pre_nms_topk", [10_000, 700])
@pytest.mark.parametrize("batch_size", [64, 128])
def test_pos_fraction_fills_its_quota_when_duplicates_crowd_one_object(batch_size, pre_nms_topk):
    # The first 2 x batch positive candidates all lie on one object: one survives there,
    # so the positive pool must reach further for the quota instead of ceding it to negatives.
    loss, labels, boxes = _crowded_positives(2, seed=7)
    labels[1, 300:340] = -1  # image 1: only the crowd -> one positive, negatives fill the rest
    miner = OHEMMiner(
        batch_size_per_image=batch_size, nms_iou=0.7, pos_fraction=0.25, pre_nms_topk=pre_nms_topk
    )
    selected = miner(loss, labels, boxes)
    expected = _brute_force(loss, labels, boxes, batch_size, 0.7, 0.25, pre_nms_topk)
    assert torch.equal(selected, expected)
    assert (selected & (labels > 0)).sum(1).tolist() == [batch_size // 4, 1]
    assert selected.sum(1).tolist() == [batch_size, batch_size]


@pytest.mark.parametrize("pos_fraction", [None, 0.25, 0.5])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_brute_force_on_random_data_with_duplicates(seed, pos_fraction, monkeypatch):
    rounds, original_nms = [], ohem_module.batched_nms

    def counting_nms(*args):
        rounds[-1] += 1
        return original_nms(*args)

    monkeypatch.setattr(ohem_module, "batched_nms", counting_nms)
    g = torch.Generator().manual_seed(seed)
    num_images, num_anchors = 3, 900
    loss, labels, boxes = _problem(num_images, num_anchors, seed=10 + seed)
    # duplicates crowd the top of each pool: 40 random anchors become the hardest, and a
    # third of the anchors copy one of them (box with a small jitter, label, a slightly
    # lower loss), so the first candidates of a pool hold few NMS survivors
    perm = torch.randperm(num_anchors, generator=g)
    sources, copies = perm[:40], perm[40 : 40 + num_anchors // 3]
    loss[:, sources] += 1.0
    source_of = sources[torch.randint(0, len(sources), (len(copies),), generator=g)]
    boxes[:, copies] = boxes[:, source_of] + torch.rand(num_images, len(copies), 4, generator=g)
    labels[:, copies] = labels[:, source_of]
    loss[:, copies] = loss[:, source_of] * (1 - 0.05 * torch.rand(num_images, len(copies), generator=g))
    loss = loss.argsort(dim=1).argsort(dim=1).float() / num_anchors  # ranks: distinct per image
    for batch_size, iou, pre_nms_topk in [(32, 0.5, 1024), (100, 0.7, 1024), (64, 0.3, 150)]:
        miner = OHEMMiner(
            batch_size_per_image=batch_size, nms_iou=iou, pos_fraction=pos_fraction, pre_nms_topk=pre_nms_topk
        )
        expected = _brute_force(loss, labels, boxes, batch_size, iou, pos_fraction, pre_nms_topk)
        rounds.append(0)
        assert torch.equal(miner(loss, labels, boxes), expected), (batch_size, iou, pre_nms_topk)
    assert max(rounds) > 1  # the NMS prefix grew in at least one case: not only the first round


def test_ranks_on_detached_loss():
    loss, labels, boxes = _problem(2, 100, seed=4)
    loss.requires_grad_()
    selected = OHEMMiner(batch_size_per_image=8)(loss * 1, labels, boxes.requires_grad_())
    assert not selected.requires_grad and selected.dtype == torch.bool
