"""Anchor coverage from one matching pass: a toy case worked by hand (and by a brute-force IoU
loop), the batched pass equal to matching each image alone, the miners' quotas equal to what
the miners select, and the real selection of a model equal to the annotation pass."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from detmine.analysis import (
    EvalGeometry,
    anchor_counts,
    count_anchor_labels,
    coverage_by_class,
    coverage_by_size,
    match_annotations,
    miner_quota,
    replay_mining,
)
from detmine.analysis.coverage import anchor_label_stats, coverage_by_side, size_index
from detmine.data._common import ImageRecord
from detmine.matching import Matcher, build_matcher, pad_targets
from detmine.mining import build_miner

ROOT = Path(__file__).resolve().parents[2]

# A 64 x 64 image and five anchors (xyxy).
ANCHORS = torch.tensor(
    [
        [0.0, 0.0, 16.0, 16.0],  # a0: IoU 256/324 = 0.79 with box 0
        [0.0, 0.0, 32.0, 32.0],  # a1: IoU 324/1024 = 0.32 with box 0 (background)
        [32.0, 32.0, 64.0, 64.0],  # a2: IoU 324/1024 = 0.32 with box 1, its best
        [40.0, 0.0, 64.0, 24.0],  # a3: overlaps nothing
        [0.0, 0.0, 18.0, 40.0],  # a4: IoU 324/720 = 0.45 with box 0: retinanet's ignore band
    ]
)
BOXES = np.array(
    [
        [0.0, 0.0, 18.0, 18.0],  # box 0: best IoU 0.79 >= 0.5
        [32.0, 32.0, 50.0, 50.0],  # box 1: best IoU 0.32 < 0.5, a low-quality / forced match only
        [20.0, 40.0, 30.0, 60.0],  # box 2: overlaps no anchor (IoU 0): unmatched whatever the matcher
    ],
    np.float32,
)


class _Identity:
    """An evaluation transform that keeps the annotated size (64 x 64 stays 64 x 64)."""

    def __call__(self, *, image, boxes, labels, ignore_boxes) -> dict[str, Any]:
        return {"image": image, "boxes": boxes, "labels": labels, "ignore_boxes": ignore_boxes}


class _Records:
    """A dataset with annotation records only (no image is ever decoded)."""

    def __init__(self, records: list[ImageRecord], class_names: list[str]) -> None:
        self.records = records
        self.class_names = class_names


def _record(i: int, boxes, labels, ignore=(), size=(64, 64)) -> ImageRecord:
    return ImageRecord(
        path=f"img{i}.jpg",
        image_id=i,
        height=size[0],
        width=size[1],
        boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
        labels=np.asarray(labels, np.int64).reshape(-1),
        ignore_boxes=np.asarray(ignore, np.float32).reshape(-1, 4),
    )


def _toy() -> _Records:
    return _Records(
        [
            _record(0, BOXES, [1, 2, 2]),
            _record(1, [], [], ignore=[[40.0, 0.0, 64.0, 24.0]]),  # a crowd region over a3
            _record(2, [], []),  # background only
        ],
        ["cat", "dog"],
    )


def _match(dataset, matcher: Matcher, anchors=ANCHORS, **options):
    return match_annotations(
        dataset,
        anchors_for=lambda size: anchors,
        matcher=matcher,
        geometry=EvalGeometry(_Identity()),
        **options,
    )


def _brute_iou(box, anchor) -> float:
    """IoU of two xyxy boxes, written out independently of the package."""
    w = max(0.0, min(box[2], anchor[2]) - max(box[0], anchor[0]))
    h = max(0.0, min(box[3], anchor[3]) - max(box[1], anchor[1]))
    inter = w * h
    union = (box[2] - box[0]) * (box[3] - box[1]) + (anchor[2] - anchor[0]) * (anchor[3] - anchor[1]) - inter
    return inter / union if union > 0 else 0.0


def test_best_iou_equals_a_brute_force_loop():
    matches = _match(_toy(), Matcher.retinanet())
    expected = [max(_brute_iou(b, a) for a in ANCHORS.tolist()) for b in BOXES.tolist()]
    np.testing.assert_allclose(matches.best_iou, expected, rtol=1e-6)
    np.testing.assert_allclose(expected, [256 / 324, 324 / 1024, 0.0])


def test_retinanet_toy_case_by_hand():
    matches = _match(_toy(), Matcher.retinanet())
    # box 0: a0 (0.79); box 1: a2 only as its low-quality match; box 2: nothing (IoU 0)
    assert matches.box_positives.tolist() == [1, 1, 0]
    assert matches.box_image.tolist() == [0, 0, 0] and matches.box_label.tolist() == [1, 2, 2]
    # image 0: a0, a2 positive; a4 in the 0.4-0.5 band ignored; a1, a3 background
    # image 1: a3 lies in the crowd region: ignored; image 2: every anchor background
    assert matches.positives.tolist() == [2, 0, 0]
    assert matches.negatives.tolist() == [2, 4, 5]
    assert matches.ignored.tolist() == [1, 1, 0]
    assert matches.labels == [11, 1, 1]  # background, cat, dog anchors over the split
    assert matches.counts().ignored == 2 and matches.counts().num_images == 3

    (row,) = coverage_by_class(matches, ["cat", "dog"])[1:]
    assert (row.name, row.boxes, row.below_fg, row.unmatched, row.unmatched_overlapping) == (
        "dog",
        2,
        2,
        1,
        0,
    )
    everything = coverage_by_size(matches)[0]
    assert (everything.boxes, everything.below_fg, everything.unmatched) == (3, 2, 1)
    assert everything.below_fg_share == pytest.approx(2 / 3) and everything.unmatched_share == pytest.approx(
        1 / 3
    )
    stats = anchor_label_stats(matches)
    assert (stats.total_positives, stats.total_negatives, stats.total_ignored) == (2, 11, 2)
    assert stats.negative_positive_ratio == pytest.approx(5.5)


def test_ssd_toy_case_by_hand():
    matches = _match(_toy(), Matcher.ssd())
    # no ignore band: a4 (0.45) is background; box 1 keeps its forced best anchor a2
    assert matches.box_positives.tolist() == [1, 1, 0]
    assert matches.positives.tolist() == [2, 0, 0]
    assert matches.negatives.tolist() == [3, 4, 5]
    assert matches.ignored.tolist() == [0, 1, 0]


def test_a_forced_match_lost_to_another_box_is_unmatched_though_overlapping():
    # both boxes have a0 as their only overlapping anchor: SSD gives it to the later box
    dataset = _Records([_record(0, [[0, 0, 6, 6], [10, 10, 16, 16]], [1, 1])], ["cat"])
    matches = _match(dataset, Matcher.ssd())
    assert matches.box_positives.tolist() == [0, 1]
    row = coverage_by_size(matches)[0]
    assert (row.unmatched, row.unmatched_overlapping) == (1, 1)


def test_sizes_follow_coco_ranges():
    area = np.array([0.0, 32**2 - 1, 32**2, 96**2 - 1, 96**2, 1e6])
    assert size_index(area).tolist() == [0, 0, 1, 1, 2, 2]
    matches = _match(_toy(), Matcher.retinanet())
    assert np.allclose(matches.box_area, [324, 324, 200])
    assert [r.name for r in coverage_by_side(matches)] == ["8-16 px", "16-32 px"]  # sides 14.1, 18, 18


def _random_dataset(seed: int = 0) -> _Records:
    """Images of three sizes, 0-12 boxes (some tiny, some crowds)."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(40):
        h, w = [(64, 64), (64, 96), (80, 48)][i % 3]
        n = int(rng.integers(0, 13)) if i % 5 else 0
        xy = rng.uniform(0, [w - 4, h - 4], (n, 2))
        wh = rng.uniform(2, 40, (n, 2))
        boxes = np.concatenate([xy, np.minimum(xy + wh, [w, h])], 1)
        ignore = boxes[:1] if i % 7 == 3 else np.zeros((0, 4))
        records.append(
            _record(
                i, boxes[1:] if len(ignore) else boxes, rng.integers(1, 4, n - len(ignore)), ignore, (h, w)
            )
        )
    return _Records(records, ["a", "b", "c"])


def _grid_anchors(size: tuple[int, int]) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(0, size[0], 8.0), torch.arange(0, size[1], 8.0), indexing="ij")
    centres = torch.stack([xs.flatten() + 4, ys.flatten() + 4], 1)
    return torch.cat([torch.cat([centres - s / 2, centres + s / 2], 1) for s in (8.0, 16.0, 32.0)])


@pytest.mark.parametrize("preset", ["ssd", "retinanet"])
def test_batched_pass_equals_each_image_alone(preset, monkeypatch):
    dataset = _random_dataset()
    matcher = build_matcher(preset)
    monkeypatch.setattr(anchor_counts, "BATCH_ELEMENTS", 4000)  # many small batches, several sizes
    matches = match_annotations(
        dataset,
        anchors_for=_grid_anchors,
        matcher=matcher,
        geometry=EvalGeometry(_Identity()),
        size_divisible=32,
    )
    best, positives, per_image = [], [], []
    for rec in dataset.records:
        anchors = _grid_anchors((-(-rec.height // 32) * 32, -(-rec.width // 32) * 32))
        target = {
            "boxes": torch.from_numpy(rec.boxes),
            "labels": torch.from_numpy(rec.labels),
            "ignore_boxes": torch.from_numpy(rec.ignore_boxes),
        }
        result = matcher(anchors, pad_targets([target]))
        labels, matched = result.labels[0], result.matched_gt[0]
        per_image.append([int((labels > 0).sum()), int((labels == 0).sum()), int((labels < 0).sum())])
        for g, box in enumerate(rec.boxes.tolist()):
            best.append(max(_brute_iou(box, a) for a in anchors.tolist()))
            positives.append(int(((labels > 0) & (matched == g)).sum()))
    np.testing.assert_allclose(matches.best_iou, best, rtol=1e-5, atol=1e-7)
    assert matches.box_positives.tolist() == positives
    assert np.stack([matches.positives, matches.negatives, matches.ignored], 1).tolist() == per_image
    counts = count_anchor_labels(
        dataset,
        anchors_for=_grid_anchors,
        matcher=matcher,
        geometry=EvalGeometry(_Identity()),
        size_divisible=32,
    )
    assert counts == matches.counts()


def _labels_for(positives: list[int], negatives: list[int], ignored: int = 3) -> torch.Tensor:
    """``[B, A]`` labels with the given positive / background anchors per image (the rest ignored)."""
    width = max(p + n for p, n in zip(positives, negatives, strict=True)) + ignored
    rows = [[1] * p + [0] * n + [-1] * (width - p - n) for p, n in zip(positives, negatives, strict=True)]
    return torch.tensor(rows)[:, torch.randperm(width, generator=torch.Generator().manual_seed(0))]


POSITIVES = [0, 1, 5, 40, 2]
NEGATIVES = [50, 2, 100, 60, 0]


@pytest.mark.parametrize(
    ("miner", "options", "expected"),
    [
        ("ssd", {"neg_pos_ratio": 3, "min_negatives": 8}, [8, 2, 15, 60, 0]),  # 3 x P, >= 8, <= N
        ("ssd", {"neg_pos_ratio": 1.5, "min_negatives": 0}, [0, 1, 7, 60, 0]),  # floor(1.5 x P)
        ("all", {}, NEGATIVES),
        ("random", {"batch_size_per_image": 16, "pos_fraction": 0.25}, [16, 2, 12, 12, 0]),  # P <= 4
        ("pool", {"neg_pos_ratio": 3, "pool_size": 10}, [0, 2, 10, 10, 0]),
    ],
)
def test_quota_equals_what_the_miner_selects(miner, options, expected):
    built = build_miner(miner, **options)
    quota = miner_quota(built, np.array(POSITIVES), np.array(NEGATIVES))
    assert quota is not None and quota.exact
    assert quota.negatives.tolist() == expected
    labels = _labels_for(POSITIVES, NEGATIVES)
    selected = built(torch.rand(labels.shape, generator=torch.Generator().manual_seed(1)), labels)
    assert ((labels == 0) & selected).sum(1).tolist() == expected
    assert ((labels > 0) & selected).sum(1).tolist() == quota.positives.tolist()


@pytest.mark.parametrize("pos_fraction", [None, 0.25])
def test_ohem_quota_bounds_what_it_selects(pos_fraction):
    miner = build_miner(
        "ohem", batch_size_per_image=16, nms_iou=1.0, pos_fraction=pos_fraction, pre_nms_topk=64
    )
    quota = miner_quota(miner, np.array(POSITIVES), np.array(NEGATIVES))
    assert quota is not None and not quota.exact
    labels = _labels_for(POSITIVES, NEGATIVES)
    boxes = torch.rand(labels.shape[1], 4).cumsum(1).expand(len(POSITIVES), -1, -1)
    selected = miner(torch.rand(labels.shape, generator=torch.Generator().manual_seed(2)), labels, boxes)
    negatives = ((labels == 0) & selected).sum(1)
    assert (negatives <= torch.from_numpy(quota.negatives)).all()
    assert (((labels > 0) & selected).sum(1) <= torch.from_numpy(quota.positives)).all()
    # without NMS suppression, exactly min(16, P + N) anchors are kept
    assert selected.sum(1).tolist() == [min(16, p + n) for p, n in zip(POSITIVES, NEGATIVES, strict=True)]
    if pos_fraction is None:
        assert quota.negatives.tolist() == [16, 2, 16, 16, 0]
    else:
        assert quota.positives.tolist() == [0, 1, 4, 4, 2] and quota.negatives.tolist() == [16, 2, 12, 12, 0]


def test_a_plugin_miner_has_no_known_quota():
    class Mine:
        box_source = None
        normalize_by = "positives"

    assert miner_quota(Mine(), np.array([1]), np.array([2])) is None


def test_replay_of_a_model_equals_the_annotation_pass(tiny_coco_root):
    """The criterion over decoded images (SSD recipe: fixed 256 square, so batch padding is each
    image's own) sees the same anchor labels as the pass over the annotations, and the ssd
    miner selects exactly its quota."""
    from detmine.config import load_config
    from detmine.data.loader import build_dataloader
    from detmine.data.transforms import build_transforms
    from detmine.engine import builders

    cfg = load_config(
        ROOT / "configs" / "quickstart_ssd.yaml",
        ["data.kind=coco", f"data.root={tiny_coco_root}", "data.num_workers=0"],
    )
    dataset = builders.build_dataset_split(cfg, "train", False)
    torch.manual_seed(0)
    model = builders.build_model_from_config(cfg, dataset.num_classes).eval()
    criterion = builders.build_criterion_from_config(cfg, model)
    transform = build_transforms("eval", cfg.data.image_size, **builders.eval_transform_options(cfg))
    matches = match_annotations(
        dataset,
        anchors_for=model.anchors_for,
        matcher=criterion.matcher,
        geometry=EvalGeometry(transform),
        size_divisible=model.size_divisible,
    )
    loader = build_dataloader(dataset, 4, train=False, num_workers=0, **builders.batch_geometry(model))
    replay = replay_mining(model, criterion, loader)
    quota = miner_quota(criterion.miner, matches.positives, matches.negatives)
    assert replay.num_images == len(dataset) == matches.num_images
    assert replay.positives.tolist() == matches.positives.tolist()
    assert replay.negatives.tolist() == matches.negatives.tolist()
    assert replay.selected_negatives.tolist() == quota.negatives.tolist()
    assert replay.selected_positives.tolist() == quota.positives.tolist()
    assert 0.0 < replay.selected_loss_share < 1.0
    assert (replay.selected_negative_loss <= replay.negative_loss + 1e-9).all()
