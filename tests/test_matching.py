"""detmine.matching against torchvision's Matcher / SSDMatcher, image by image."""

import pytest
import torch
from torchvision.models.detection._utils import Matcher as TVMatcher
from torchvision.models.detection._utils import SSDMatcher
from torchvision.ops import box_iou

from detmine import matching
from detmine.errors import DataError
from detmine.matching import Matcher, _padding_groups, batched_box_iou, pad_targets


def random_boxes(n: int, gen: torch.Generator, size: float = 120.0) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=gen) * size
    wh = torch.rand(n, 2, generator=gen) * size / 2 + 2.0
    return torch.cat([xy, xy + wh], dim=1)


def target(boxes, labels=None, ignore=None):
    boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    if labels is None:
        labels = torch.arange(1, len(boxes) + 1)
    ignore = (
        torch.zeros(0, 4) if ignore is None else torch.as_tensor(ignore, dtype=torch.float32).reshape(-1, 4)
    )
    return {"boxes": boxes, "labels": torch.as_tensor(labels, dtype=torch.int64), "ignore_boxes": ignore}


def reference_labels(tv_matcher, t, anchors):
    """torchvision's matched indices turned into our label convention."""
    if len(t["boxes"]) == 0:
        return torch.zeros(len(anchors), dtype=torch.int64), None
    idx = tv_matcher(box_iou(t["boxes"], anchors))
    labels = torch.where(idx >= 0, t["labels"][idx.clamp(min=0)], torch.where(idx == -2, -1, 0))
    return labels, idx


def make_batch(gen, counts):
    return [target(random_boxes(n, gen), torch.randint(1, 6, (n,), generator=gen)) for n in counts]


def assert_equal_to_reference(matcher, tv_matcher, anchors, targets):
    result = matcher.match_targets(anchors, targets)
    assert result.labels.shape == result.matched_gt.shape == (len(targets), len(anchors))
    for i, t in enumerate(targets):
        labels, idx = reference_labels(tv_matcher, t, anchors)
        assert torch.equal(result.labels[i], labels), f"image {i}"
        if idx is not None:
            assert torch.equal(result.matched_gt[i][idx >= 0], idx[idx >= 0])
    return result


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batched_iou_equals_box_iou(seed):
    gen = torch.Generator().manual_seed(seed)
    anchors = random_boxes(300, gen)
    boxes = random_boxes(12, gen).view(3, 4, 4)
    iou = batched_box_iou(boxes, anchors)
    for b in range(3):
        assert torch.equal(iou[b], box_iou(boxes[b], anchors))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_retinanet_equals_torchvision_matcher(seed):
    gen = torch.Generator().manual_seed(seed)
    anchors = random_boxes(600, gen)
    targets = make_batch(gen, [3, 0, 9, 1, 5])
    result = assert_equal_to_reference(Matcher.retinanet(), TVMatcher(0.5, 0.4, True), anchors, targets)
    assert (result.labels == -1).any() and (result.labels > 0).any()


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_ssd_equals_torchvision_ssd_matcher(seed):
    gen = torch.Generator().manual_seed(seed)
    anchors = random_boxes(600, gen)
    targets = make_batch(gen, [4, 0, 7, 1])
    result = assert_equal_to_reference(Matcher.ssd(), SSDMatcher(0.5), anchors, targets)
    assert not (result.labels == -1).any()


def test_low_quality_ties_keep_every_best_anchor():
    # Two identical anchors both have the (low) best IoU with the small box: both become positive.
    anchors = torch.tensor([[0.0, 0, 40, 40], [0, 0, 40, 40], [60, 60, 100, 100], [50, 0, 90, 40]])
    gt = target([[5.0, 5, 15, 15], [62, 62, 98, 98]], [3, 2])
    assert_equal_to_reference(Matcher.retinanet(), TVMatcher(0.5, 0.4, True), anchors, [gt])
    labels = Matcher.retinanet().match_targets(anchors, [gt]).labels[0]
    assert labels.tolist() == [3, 3, 2, 0]
    # Without low-quality matches the small box matches nothing.
    plain = Matcher(fg_iou_thresh=0.5, bg_iou_thresh=0.4).match_targets(anchors, [gt]).labels[0]
    assert plain.tolist() == [0, 0, 2, 0]


def test_ssd_forced_match_shared_anchor_goes_to_later_gt():
    anchors = torch.tensor([[0.0, 0, 40, 40], [100, 100, 140, 140]])
    # Both boxes' best anchor is anchor 0, neither reaches 0.5 IoU: torchvision gives it to the last GT.
    gt = target([[0.0, 0, 10, 10], [0, 0, 12, 12]], [1, 2])
    result = assert_equal_to_reference(Matcher.ssd(), SSDMatcher(0.5), anchors, [gt])
    assert result.labels[0].tolist() == [2, 0]
    assert result.matched_gt[0, 0] == 1


def test_ssd_forced_match_takes_the_first_of_tied_best_anchors():
    # Anchors 1 and 3 are the same box, both the small box's best (IoU < 0.5): like torchvision's
    # max over anchors, only the first of them is forced.
    anchors = torch.tensor([[60.0, 60, 100, 100], [0, 0, 40, 40], [200, 200, 240, 240], [0, 0, 40, 40]])
    gt = target([[5.0, 5, 15, 15], [62, 62, 98, 98]], [3, 1])
    result = assert_equal_to_reference(Matcher.ssd(), SSDMatcher(0.5), anchors, [gt])
    assert result.labels[0].tolist() == [1, 3, 0, 0]
    # A box that overlaps no anchor forces none (torchvision would force anchor 0 at IoU 0).
    lonely = target([[5.0, 5, 15, 15], [300, 300, 310, 310]], [3, 1])
    assert Matcher.ssd().match_targets(anchors, [lonely]).labels[0].tolist() == [0, 3, 0, 0]


def test_ignore_band():
    anchors = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]])
    # IoU(anchor, box) = 45/100... choose a box giving IoU 0.45 with anchor 0
    gt = target([[0.0, 0, 10, 4.5]], [1])
    labels = Matcher(fg_iou_thresh=0.5, bg_iou_thresh=0.4).match_targets(anchors, [gt]).labels[0]
    assert labels.tolist() == [-1, -1, 0]


def test_ignore_regions():
    anchors = torch.tensor(
        [
            [0.0, 0, 10, 10],  # inside the crowd region -> ignore
            [8.0, 0, 18, 10],  # 20 % inside -> stays background
            [100, 100, 110, 110],  # positive, also inside the crowd region -> stays positive
            [200, 200, 210, 210],  # far away -> background
        ]
    )
    t = target([[100.0, 100, 110, 110]], [4], ignore=[[0.0, 0, 10, 10], [95, 95, 120, 120]])
    labels = Matcher.retinanet().match_targets(anchors, [t]).labels[0]
    assert labels.tolist() == [-1, 0, 4, 0]
    padded_other = target([[200.0, 200, 210, 210]], [1])  # second image without ignore regions
    labels = Matcher.ssd().match_targets(anchors, [t, padded_other]).labels
    assert labels.tolist() == [[-1, 0, 4, 0], [0, 0, 0, 1]]


def test_empty_ground_truth_is_background():
    gen = torch.Generator().manual_seed(0)
    anchors = random_boxes(50, gen)
    for matcher in (Matcher.ssd(), Matcher.retinanet()):
        result = matcher.match_targets(anchors, [target([]), target([])])
        assert result.labels.shape == (2, 50) and (result.labels == 0).all()


def test_all_ignore_image():
    gen = torch.Generator().manual_seed(0)
    anchors = random_boxes(50, gen)
    t = target([], ignore=[[-10.0, -10, 500, 500]])
    labels = Matcher.retinanet().match_targets(anchors, [t, target([])]).labels
    assert (labels[0] == -1).all() and (labels[1] == 0).all()


def test_single_anchor():
    anchors = torch.tensor([[0.0, 0, 10, 10]])
    for matcher, ref in ((Matcher.ssd(), SSDMatcher(0.5)), (Matcher.retinanet(), TVMatcher(0.5, 0.4, True))):
        targets = [
            target([[1.0, 1, 9, 9], [2, 2, 6, 6]], [1, 2]),
            target([[8.0, 8, 30, 30]], [3]),
            target([]),
        ]
        result = matcher.match_targets(anchors, targets)
        for i in range(2):
            assert torch.equal(result.labels[i], reference_labels(ref, targets[i], anchors)[0])
        assert result.labels[2].tolist() == [0]


def test_box_outside_image_matches_nothing():
    anchors = torch.tensor([[0.0, 0, 10, 10], [10, 10, 20, 20]])
    t = target([[0.0, 0, 10, 10], [500, 500, 520, 520]], [2, 1])
    for matcher in (Matcher.ssd(), Matcher.retinanet()):
        labels = matcher.match_targets(anchors, [t]).labels[0]
        assert labels.tolist() == [2, 0]
    # Documented difference: torchvision's SSDMatcher would force anchor 0 onto the
    # outside box (best IoU 0), overriding the real match.
    idx = SSDMatcher(0.5)(box_iou(t["boxes"], anchors))
    assert idx.tolist() == [1, -1]


def test_malformed_boxes_raise_data_error():
    with pytest.raises(DataError, match="target 1: box 0"):
        pad_targets([target([[0.0, 0, 5, 5]]), target([[10.0, 0, 5, 5]])])
    with pytest.raises(DataError, match="ignore box"):
        pad_targets([target([], ignore=[[0.0, float("nan"), 5, 5]])])


def test_presets_and_threshold_validation():
    ssd, retina = Matcher.ssd(), Matcher.retinanet()
    assert (ssd.fg_iou_thresh, ssd.bg_iou_thresh, ssd.force_best_match, ssd.allow_low_quality) == (
        0.5,
        0.5,
        True,
        False,
    )
    assert (retina.fg_iou_thresh, retina.bg_iou_thresh, retina.allow_low_quality) == (0.5, 0.4, True)
    assert Matcher.retinanet(bg_iou_thresh=0.3).bg_iou_thresh == 0.3
    with pytest.raises(ValueError, match="bg_iou_thresh"):
        Matcher(fg_iou_thresh=0.4, bg_iou_thresh=0.5)


def test_padding_groups():
    assert _padding_groups([3, 0, 9, 1, 5]) == [([2, 4], 9), ([0], 3), ([3], 1)]
    # at most three groups: the last one takes the rest
    assert _padding_groups([40, 20, 10, 5, 2, 1]) == [([0], 40), ([1], 20), ([2, 3, 4, 5], 10)]
    assert _padding_groups([0, 0]) == []


@pytest.mark.parametrize("counts", [[30, 1, 0, 2, 14, 7, 3], [1, 1, 1], [0, 25]])
def test_crowded_batches_equal_torchvision(counts):
    gen = torch.Generator().manual_seed(sum(counts))
    anchors = random_boxes(400, gen)
    targets = make_batch(gen, counts)
    assert_equal_to_reference(Matcher.ssd(), SSDMatcher(0.5), anchors, targets)
    assert_equal_to_reference(Matcher.retinanet(), TVMatcher(0.5, 0.4, True), anchors, targets)


@pytest.mark.parametrize("chunk_elements", [1, 50, 1 << 18])
def test_chunked_iou_reduction_equals_torchvision(monkeypatch, chunk_elements):
    """The IoU is reduced one chunk of anchors at a time: chunks of one anchor (ties between
    anchors in different chunks), odd sizes and one chunk give torchvision's matches."""
    monkeypatch.setattr(matching, "_IOU_CHUNK_ELEMENTS", chunk_elements)
    monkeypatch.setattr(matching, "_MIN_CHUNK_ANCHORS", 1)
    gen = torch.Generator().manual_seed(7)
    anchors = random_boxes(300, gen)
    anchors = torch.cat([anchors, anchors[::7]])  # repeated anchors: tied best anchors across chunks
    # one image per padding group, and groups of several images padded to their largest
    for counts in ([5, 0, 11, 2], [9, 8, 11, 7]):
        targets = make_batch(gen, counts)
        assert_equal_to_reference(Matcher.ssd(), SSDMatcher(0.5), anchors, targets)
        assert_equal_to_reference(Matcher.retinanet(), TVMatcher(0.5, 0.4, True), anchors, targets)
    test_ssd_forced_match_takes_the_first_of_tied_best_anchors()
    test_low_quality_ties_keep_every_best_anchor()
