"""detmine.criterion against torchvision's SSD and RetinaNet loss code, plus bad input."""

import math
from types import SimpleNamespace

import pytest
import torch
from torchvision.models.detection._utils import BoxCoder as TVBoxCoder
from torchvision.models.detection._utils import Matcher as TVMatcher
from torchvision.models.detection._utils import SSDMatcher
from torchvision.models.detection.retinanet import RetinaNetClassificationHead, RetinaNetRegressionHead
from torchvision.models.detection.ssd import SSD
from torchvision.ops import box_iou

from detmine.box_coder import BoxCoder
from detmine.criterion import Criterion, build_criterion
from detmine.errors import ConfigError, DataError, NonFiniteError
from detmine.losses import SmoothL1Loss, SoftmaxCrossEntropy
from detmine.matching import Matcher
from detmine.structures import HeadOutputs

SSD_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
RETINA_WEIGHTS = (1.0, 1.0, 1.0, 1.0)


def random_boxes(n, gen, size=128.0, min_wh=4.0):
    xy = torch.rand(n, 2, generator=gen) * size * 0.8
    wh = torch.rand(n, 2, generator=gen) * size / 3 + min_wh
    return torch.cat([xy, xy + wh], dim=1)


def make_targets(gen, counts, num_classes, ignore=None):
    targets = []
    for i, n in enumerate(counts):
        ign = torch.zeros(0, 4) if ignore is None else ignore[i]
        targets.append(
            {
                "boxes": random_boxes(n, gen),
                "labels": torch.randint(1, num_classes + 1, (n,), generator=gen),
                "ignore_boxes": ign,
                "image_id": i,
                "orig_size": (128, 128),
                "input_size": (128, 128),
            }
        )
    return targets


def head_outputs(logits, deltas, anchors, activation="softmax"):
    return HeadOutputs(logits, deltas, anchors, cls_activation=activation, level_counts=(len(anchors),))


def make_outputs(gen, num_images, anchors, columns, requires_grad=True, activation="softmax"):
    logits = torch.randn(num_images, len(anchors), columns, generator=gen) * 2
    deltas = torch.randn(num_images, len(anchors), 4, generator=gen) * 0.5
    logits, deltas = logits.requires_grad_(requires_grad), deltas.requires_grad_(requires_grad)
    return head_outputs(logits, deltas, anchors, activation)


def softmax_criterion(miner, **settings):
    """A Criterion with the SSD matcher, softmax CE and smooth-L1 (the parts built by hand)."""
    return Criterion(
        matcher=Matcher.ssd(),
        box_coder=BoxCoder(SSD_WEIGHTS),
        miner=miner,
        cls_loss=SoftmaxCrossEntropy(),
        box_loss=SmoothL1Loss(),
        **settings,
    )


def tv_matched_idxs(matcher, anchors, targets):
    """torchvision's per-image matching loop (empty images -> all -1), as in SSD / RetinaNet."""
    out = []
    for t in targets:
        if t["boxes"].numel() == 0:
            out.append(torch.full((len(anchors),), -1, dtype=torch.int64))
        else:
            out.append(matcher(box_iou(t["boxes"], anchors)))
    return out


def ssd_criterion(**mining):
    return build_criterion(
        "softmax",
        BoxCoder(SSD_WEIGHTS),
        matching={"preset": "ssd"},
        loss={},
        mining={"type": "ssd", "ssd": {"min_negatives": 0, **mining}},
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ssd_path_equals_torchvision_ssd_compute_loss(seed):
    gen = torch.Generator().manual_seed(seed)
    num_classes = 5
    anchors = random_boxes(400, gen)
    targets = make_targets(gen, [3, 0, 6, 1], num_classes)  # image 1 has no objects
    outputs = make_outputs(gen, 4, anchors, num_classes + 1)
    losses, record = ssd_criterion()(outputs, targets)

    tv_targets = [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets]
    matched = tv_matched_idxs(SSDMatcher(0.5), anchors, targets)
    logits = outputs.cls_logits.detach().clone().requires_grad_(True)
    deltas = outputs.box_deltas.detach().clone().requires_grad_(True)
    ref = SSD.compute_loss(
        SimpleNamespace(box_coder=TVBoxCoder(SSD_WEIGHTS), neg_to_pos_ratio=3),
        tv_targets,
        {"cls_logits": logits, "bbox_regression": deltas},
        [anchors] * 4,
        matched,
    )
    torch.testing.assert_close(losses["cls"], ref["classification"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(losses["box"], ref["bbox_regression"], rtol=1e-5, atol=1e-6)
    ours_grads = torch.autograd.grad(losses["cls"] + losses["box"], [outputs.cls_logits, outputs.box_deltas])
    ref_grads = torch.autograd.grad(ref["classification"] + ref["bbox_regression"], [logits, deltas])
    for a, b in zip(ours_grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert record.positives.sum() > 0
    # torchvision (and min_negatives=0) drop the background-only image entirely.
    assert not record.selected[1].any()
    assert record.counts()["mined_negatives"].tolist() == [3 * int(n) for n in record.counts()["positives"]]


def focal_setup(seed, counts, same_targets=False):
    gen = torch.Generator().manual_seed(seed)
    num_classes = 4
    anchors = random_boxes(500, gen, min_wh=8.0)
    targets = make_targets(gen, counts, num_classes)
    if same_targets:  # every image has the same boxes -> the same number of positives
        targets = [{**targets[0], "image_id": i} for i in range(len(counts))]
    outputs = make_outputs(gen, len(counts), anchors, num_classes, activation="sigmoid")
    criterion = build_criterion(
        "sigmoid", BoxCoder(RETINA_WEIGHTS), matching={"preset": "retinanet"}, loss={}, mining={"type": "all"}
    )
    tv_targets = [
        {"boxes": t["boxes"], "labels": t["labels"] - 1} for t in targets
    ]  # torchvision: column index
    matched = tv_matched_idxs(TVMatcher(0.5, 0.4, True), anchors, targets)
    head = RetinaNetClassificationHead(in_channels=8, num_anchors=1, num_classes=num_classes)
    reg_head = RetinaNetRegressionHead(in_channels=8, num_anchors=1)  # l1 loss, RetinaNet's default
    return anchors, targets, outputs, criterion, tv_targets, matched, head, reg_head


@pytest.mark.parametrize("seed", [0, 1])
def test_focal_path_equals_torchvision_retinanet_when_positives_are_equal(seed):
    anchors, targets, outputs, criterion, tv_targets, matched, head, reg_head = focal_setup(
        seed, [4, 4, 4], same_targets=True
    )
    losses, _ = criterion(outputs, targets)
    head_outputs = {"cls_logits": outputs.cls_logits, "bbox_regression": outputs.box_deltas}
    ref_cls = head.compute_loss(tv_targets, head_outputs, matched)
    ref_box = reg_head.compute_loss(tv_targets, head_outputs, [anchors] * 3, matched)
    torch.testing.assert_close(losses["cls"], ref_cls, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(losses["box"], ref_box, rtol=1e-5, atol=1e-6)
    g_ours = torch.autograd.grad(losses["cls"], outputs.cls_logits, retain_graph=True)[0]
    g_ref = torch.autograd.grad(ref_cls, outputs.cls_logits)[0]
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-5, atol=1e-7)


def test_focal_path_normalisation_differs_from_torchvision_by_per_image_weights():
    anchors, targets, outputs, criterion, tv_targets, matched, head, _ = focal_setup(3, [1, 6, 0, 3])
    losses, record = criterion(outputs, targets)
    ref = head.compute_loss(tv_targets, {"cls_logits": outputs.cls_logits}, matched)
    per_image = torch.where(record.selected, record.cls_loss, 0.0).sum(1)  # L_b
    num_pos = record.counts()["positives"].float()
    assert len(set(num_pos.tolist())) > 1, "the test needs unequal positive counts"
    # ours: sum_b L_b / max(1, sum_b P_b); torchvision: mean_b L_b / max(1, P_b)
    torch.testing.assert_close(losses["cls"].detach(), per_image.sum() / num_pos.sum().clamp(min=1))
    torch.testing.assert_close(ref.detach(), (per_image / num_pos.clamp(min=1)).mean(), rtol=1e-5, atol=1e-6)
    assert not torch.isclose(losses["cls"].detach(), ref.detach())


def test_ignore_band_and_regions_do_not_count():
    gen = torch.Generator().manual_seed(4)
    anchors = random_boxes(300, gen)
    ignore = [torch.tensor([[0.0, 0, 64, 64]]), torch.zeros(0, 4)]
    targets = make_targets(gen, [2, 2], 3, ignore=ignore)
    outputs = make_outputs(gen, 2, anchors, 3, activation="sigmoid")
    criterion = build_criterion(
        "sigmoid", BoxCoder(), matching={"preset": "retinanet"}, loss={}, mining={"type": "all"}
    )
    losses, record = criterion(outputs, targets)
    assert record.ignored.any()
    assert not (record.selected & record.ignored).any()
    assert (record.cls_loss[record.ignored] == 0).all()
    (grad,) = torch.autograd.grad(losses["cls"], outputs.cls_logits)
    assert (grad[record.ignored] == 0).all()


def test_background_only_images_contribute_with_min_negatives():
    gen = torch.Generator().manual_seed(5)
    anchors = random_boxes(200, gen)
    targets = make_targets(gen, [0, 0], 3)
    outputs = make_outputs(gen, 2, anchors, 4)
    losses, record = ssd_criterion()(outputs, targets)
    assert losses["cls"].item() == 0.0 and losses["box"].item() == 0.0
    (losses["cls"] + losses["box"]).backward()  # still differentiable
    losses, record = ssd_criterion(min_negatives=7)(outputs, targets)
    assert record.selected.sum(1).tolist() == [7, 7]
    top = record.cls_loss.topk(7, dim=1).values.sum()
    torch.testing.assert_close(losses["cls"].detach(), top)  # normaliser max(1, 0) = 1


def test_all_ignore_image_and_single_anchor():
    anchors = torch.tensor([[10.0, 10, 50, 50]])
    targets = make_targets(
        torch.Generator().manual_seed(0),
        [0, 0],
        2,
        ignore=[torch.tensor([[0.0, 0, 128, 128]]), torch.zeros(0, 4)],
    )
    targets[1]["boxes"] = torch.tensor([[12.0, 12, 50, 50]])
    targets[1]["labels"] = torch.tensor([2])
    gen = torch.Generator().manual_seed(1)
    for activation, columns in (("softmax", 3), ("sigmoid", 2)):
        outputs = make_outputs(gen, 2, anchors, columns, activation=activation)
        criterion = build_criterion(activation, BoxCoder(), matching={}, loss={}, mining={"type": "all"})
        losses, record = criterion(outputs, targets)
        assert record.labels.tolist() == [[-1], [2]]
        assert record.selected.tolist() == [[False], [True]]
        assert torch.isfinite(losses["cls"]) and torch.isfinite(losses["box"]) and losses["box"] > 0
        torch.testing.assert_close(losses["cls"].detach(), record.cls_loss[1, 0])


@pytest.mark.parametrize("tensor", ["cls_logits", "box_deltas"])
def test_non_finite_outputs_raise(tensor):
    gen = torch.Generator().manual_seed(6)
    anchors = random_boxes(50, gen)
    targets = make_targets(gen, [1, 1, 1, 2], 3)
    outputs = make_outputs(gen, 4, anchors, 4, requires_grad=False)
    getattr(outputs, tensor)[3, 17, 0] = float("nan") if tensor == "cls_logits" else float("inf")
    kind = "NaN" if tensor == "cls_logits" else "Inf"
    with pytest.raises(NonFiniteError, match=f"{tensor} contains {kind} at image 3, anchor 17"):
        ssd_criterion()(outputs, targets)


def test_bad_targets_raise_data_error():
    gen = torch.Generator().manual_seed(7)
    anchors = random_boxes(50, gen)
    targets = make_targets(gen, [2], 3)
    outputs = make_outputs(gen, 1, anchors, 4)
    targets[0]["labels"] = torch.tensor([1, 4])
    with pytest.raises(DataError, match=r"label 4 is outside 1\.\.3"):
        ssd_criterion()(outputs, targets)
    targets[0]["labels"] = torch.tensor([1, 2])
    targets[0]["boxes"][1] = torch.tensor([50.0, 50, 10, 10])
    with pytest.raises(DataError, match="target 0: box 1"):
        ssd_criterion()(outputs, targets)


def test_boxes_outside_image_are_harmless():
    gen = torch.Generator().manual_seed(8)
    anchors = random_boxes(100, gen)
    targets = make_targets(gen, [2], 3)
    targets[0]["boxes"][1] = torch.tensor([1000.0, 1000, 1010, 1010])
    outputs = make_outputs(gen, 1, anchors, 4)
    losses, record = ssd_criterion()(outputs, targets)
    assert torch.isfinite(losses["cls"]) and torch.isfinite(losses["box"])
    assert not (record.matched_gt[record.positives] == 1).any()


class SpyMiner:
    normalize_by = "positives"

    def __init__(self, box_source):
        self.box_source = box_source
        self.boxes = "not called"

    def __call__(self, cls_loss, labels, boxes):
        assert not cls_loss.requires_grad
        self.boxes = boxes
        return labels >= 0


@pytest.mark.parametrize("box_source", ["predictions", "anchors", None])
def test_miner_gets_the_boxes_it_asks_for(box_source):
    gen = torch.Generator().manual_seed(9)
    anchors = random_boxes(60, gen)
    targets = make_targets(gen, [2, 1], 3)
    outputs = make_outputs(gen, 2, anchors, 4)
    coder = BoxCoder(SSD_WEIGHTS)
    spy = SpyMiner(box_source)
    softmax_criterion(spy)(outputs, targets)
    if box_source == "predictions":
        assert not spy.boxes.requires_grad
        torch.testing.assert_close(spy.boxes, coder.decode(outputs.box_deltas.detach(), anchors))
    elif box_source == "anchors":
        assert spy.boxes.shape == (2, 60, 4)
        torch.testing.assert_close(spy.boxes[0], anchors)
        torch.testing.assert_close(spy.boxes[1], anchors)
    else:
        assert spy.boxes is None


def test_unknown_box_source_is_a_config_error():
    with pytest.raises(ConfigError, match="box_source"):
        softmax_criterion(SpyMiner("rois"))


class FixedCountMiner:
    """Selects the first ``k`` non-ignored anchors of each image (independent of the loss)."""

    box_source = None

    def __init__(self, k, normalize_by):
        self.k, self.normalize_by = k, normalize_by

    def __call__(self, cls_loss, labels, boxes):
        eligible = labels >= 0
        return eligible & (eligible.cumsum(1) <= self.k)


def _one_image_with(num_objects, gen):
    """One 128 px image with ``num_objects`` boxes and a head whose per-anchor loss is the same
    for every object count (all-zero logits: CE = log(K + 1) on every anchor)."""
    anchors = torch.stack(
        torch.meshgrid(torch.arange(0, 128, 8.0), torch.arange(0, 128, 8.0), indexing="ij"), -1
    ).reshape(-1, 2)
    anchors = torch.cat([anchors, anchors + 16], 1)
    targets = [
        {
            "boxes": anchors[torch.randperm(len(anchors), generator=gen)[:num_objects]].clone(),
            "labels": torch.ones(num_objects, dtype=torch.int64),
            "ignore_boxes": torch.zeros((0, 4)),
        }
    ]
    logits = torch.zeros(1, len(anchors), 4, requires_grad=True)
    outputs = head_outputs(logits, torch.zeros(1, len(anchors), 4), anchors)
    return outputs, anchors, targets


@pytest.mark.parametrize("miner_type", ["ohem", "random"])
def test_ohem_and_random_loss_scale_does_not_depend_on_the_object_count(miner_type):
    gen = torch.Generator().manual_seed(21)
    values = []
    for num_objects in (1, 25):
        outputs, anchors, targets = _one_image_with(num_objects, gen)
        criterion = build_criterion(
            "softmax",
            BoxCoder(SSD_WEIGHTS),
            matching={},
            loss={},
            mining={"type": miner_type, miner_type: {"batch_size_per_image": 64}},
        )
        assert criterion.normalize_by == "selected"
        losses, record = criterion(outputs, targets)
        assert int(record.selected.sum()) == 64
        values.append(float(losses["cls"].detach()))
    # every anchor's CE is log(4): the mean over the selected examples, whatever the count
    assert values == pytest.approx([math.log(4.0)] * 2, rel=1e-5)


def test_background_only_batch_is_averaged_over_the_selected_examples():
    gen = torch.Generator().manual_seed(22)
    outputs, anchors, targets = _one_image_with(0, gen)
    miner = FixedCountMiner(50, "selected")
    losses, _ = softmax_criterion(miner)(outputs, targets)
    assert float(losses["cls"].detach()) == pytest.approx(math.log(4.0), rel=1e-5)  # not 50 x log 4
    assert float(losses["box"]) == 0.0


@pytest.mark.parametrize("normalize_by", ["positives", "selected"])
def test_normalize_by_divides_the_selected_loss_by_that_count(normalize_by):
    gen = torch.Generator().manual_seed(23)
    anchors = random_boxes(200, gen)
    targets = make_targets(gen, [3, 2], 3)
    outputs = make_outputs(gen, 2, anchors, 4)
    miner = FixedCountMiner(40, normalize_by)
    criterion = softmax_criterion(miner)
    losses, record = criterion(outputs, targets)
    labels = record.labels
    per_anchor = torch.nn.functional.cross_entropy(
        outputs.cls_logits.reshape(-1, 4), labels.clamp(min=0).reshape(-1), reduction="none"
    ).reshape(labels.shape)
    num_pos = max(1, int((labels > 0).sum()))
    count = num_pos if normalize_by == "positives" else int(record.selected.sum())
    torch.testing.assert_close(losses["cls"], per_anchor[record.selected].sum() / count)
    # the box loss is divided by the positives either way
    other = softmax_criterion(FixedCountMiner(40, "positives"))
    torch.testing.assert_close(losses["box"], other(outputs, targets)[0]["box"])


def test_ema_applies_to_the_selected_count():
    gen = torch.Generator().manual_seed(24)
    anchors = random_boxes(200, gen)
    targets = make_targets(gen, [3, 2], 3)
    outputs = make_outputs(gen, 2, anchors, 4)
    batch = softmax_criterion(FixedCountMiner(40, "selected"))
    ema = softmax_criterion(FixedCountMiner(40, "selected"), normalizer="ema")
    ref, _ = batch(outputs, targets)
    losses, _ = ema(outputs, targets)
    expected = 0.9 * 100.0 + 0.1 * 80.0
    assert ema.count_ema.item() == pytest.approx(expected)
    torch.testing.assert_close(losses["cls"], ref["cls"] * 80.0 / expected)
    torch.testing.assert_close(losses["box"], ref["box"])


def test_ohem_miner_runs_through_the_criterion():
    gen = torch.Generator().manual_seed(10)
    anchors = random_boxes(300, gen)
    targets = make_targets(gen, [3, 0], 3)
    outputs = make_outputs(gen, 2, anchors, 4)
    criterion = build_criterion(
        "softmax",
        BoxCoder(SSD_WEIGHTS),
        matching={},
        loss={},
        mining={"type": "ohem", "ohem": {"batch_size_per_image": 16, "pre_nms_topk": 64}},
    )
    losses, record = criterion(outputs, targets)
    assert record.selected.sum(1).tolist() == [16, 16]
    (losses["cls"] + losses["box"]).backward()


def test_ema_normaliser():
    anchors, targets, outputs, _, _, _, _, _ = focal_setup(11, [2, 3])
    criterion = build_criterion(
        "sigmoid", BoxCoder(), matching={}, loss={"normalizer": "ema"}, mining={"type": "all"}
    )
    batch = build_criterion("sigmoid", BoxCoder(), matching={}, loss={}, mining={"type": "all"})
    ref, record = batch(outputs, targets)
    num_pos = float(record.positives.sum())
    losses, _ = criterion(outputs, targets)
    ema = 0.9 * 100.0 + 0.1 * num_pos
    assert criterion.count_ema.item() == pytest.approx(ema)
    torch.testing.assert_close(losses["cls"], ref["cls"] * num_pos / ema)
    assert "count_ema" in criterion.state_dict()
    criterion.eval()  # evaluation: batch count, EMA untouched
    losses, _ = criterion(outputs, targets)
    torch.testing.assert_close(losses["cls"], ref["cls"])
    assert criterion.count_ema.item() == pytest.approx(ema)


def test_giou_box_weight_and_class_weights_options():
    anchors, targets, outputs, _, _, _, _, _ = focal_setup(12, [2, 3])
    plain = build_criterion("sigmoid", BoxCoder(), matching={}, loss={"box": "giou"}, mining={"type": "all"})
    class_weights = [0.5, 1.0, 2.0, 4.0]
    alpha = [0.1, 0.25, 0.5, 0.75]
    weighted = build_criterion(
        "sigmoid",
        BoxCoder(),
        matching={},
        loss={"box": "giou", "box_weight": 2.0, "focal": {"class_weights": class_weights, "alpha": alpha}},
        mining={"type": "all"},
    )
    a, _ = plain(outputs, targets)
    b, record = weighted(outputs, targets)
    torch.testing.assert_close(b["box"], 2.0 * a["box"])
    # Reference from the focal paper's definition, per class column:
    # FL = -alpha_t (1 - p_t)^gamma log(p_t), times the column's class weight.
    labels = record.labels
    p = outputs.cls_logits.sigmoid()
    onehot = torch.zeros_like(p)
    onehot[labels > 0, labels[labels > 0] - 1] = 1.0
    p_t = torch.where(onehot > 0, p, 1 - p)
    a_t = torch.where(onehot > 0, torch.tensor(alpha), 1 - torch.tensor(alpha))
    per_column = -a_t * (1 - p_t) ** 2 * torch.log(p_t.clamp(min=1e-30)) * torch.tensor(class_weights)
    per_anchor = per_column.sum(-1) * (labels >= 0)
    expected = per_anchor.sum() / max(1, int((labels > 0).sum()))
    torch.testing.assert_close(b["cls"], expected, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(b["cls"], a["cls"])


def test_softmax_class_weights_scale_each_anchor_by_its_target_class():
    gen = torch.Generator().manual_seed(13)
    anchors = random_boxes(300, gen)
    targets = make_targets(gen, [3, 2], 3)
    outputs = make_outputs(gen, 2, anchors, 4)
    weights = [0.2, 1.0, 3.0, 5.0]  # background first
    criterion = build_criterion(
        "softmax",
        BoxCoder(SSD_WEIGHTS),
        matching={},
        loss={"softmax_ce": {"class_weights": weights}},
        mining={"type": "all"},
    )
    losses, record = criterion(outputs, targets)
    labels = record.labels
    ce = torch.nn.functional.cross_entropy(
        outputs.cls_logits.reshape(-1, 4), labels.clamp(min=0).reshape(-1), reduction="none"
    ).reshape(labels.shape)
    w = torch.tensor(weights)[labels.clamp(min=0)] * (labels >= 0)
    expected = (ce * w).sum() / max(1, int((labels > 0).sum()))
    torch.testing.assert_close(losses["cls"], expected, rtol=1e-5, atol=1e-6)


def test_low_precision_head_outputs_give_float32_losses():
    anchors, targets, outputs, criterion, _, _, _, _ = focal_setup(13, [2, 3])
    ref, _ = criterion(outputs, targets)
    half = head_outputs(
        outputs.cls_logits.detach().bfloat16().requires_grad_(True),
        outputs.box_deltas.detach().bfloat16().requires_grad_(True),
        anchors,
        "sigmoid",
    )
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        losses, record = criterion(half, targets)
    assert losses["cls"].dtype == torch.float32 and record.cls_loss.dtype == torch.float32
    torch.testing.assert_close(losses["cls"], ref["cls"], rtol=2e-2, atol=1e-3)
    torch.testing.assert_close(losses["box"], ref["box"], rtol=2e-2, atol=1e-3)
    (losses["cls"] + losses["box"]).backward()
    assert half.cls_logits.grad.dtype == torch.bfloat16 and torch.isfinite(half.cls_logits.grad.float()).all()


def test_finite_check_is_exact_for_large_and_half_precision_values():
    from detmine.criterion import check_finite

    check_finite(torch.full((4, 1000, 10), 3e38), "cls_logits")  # the sum overflows, values are finite
    check_finite(torch.full((4, 10000, 10), 60000.0, dtype=torch.float16), "cls_logits")
    x = torch.zeros(2, 5, 3, dtype=torch.float16)
    x[1, 4, 2] = float("-inf")
    with pytest.raises(NonFiniteError, match="cls_logits contains Inf at image 1, anchor 4"):
        check_finite(x, "cls_logits")
