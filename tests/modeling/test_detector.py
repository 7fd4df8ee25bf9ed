"""DenseDetector and the named builders: shapes, modes, predict against torchvision's post-processing."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torchvision.models.detection as tvd
from torch import nn
from torchvision.models.detection import _utils as tv_utils
from torchvision.models.detection.retinanet import RetinaNet

from detmine.box_coder import BoxCoder
from detmine.data.loader import collate
from detmine.errors import ConfigError
from detmine.modeling import MODELS, DenseDetector, build_model, model_options
from detmine.structures import HeadOutputs

# name -> (input size for the test, classifier columns for K = 3)
BUILDERS = {
    "retinanet_tiny_fpn": (64, 3),
    "ssdlite_tiny": (64, 4),
    "retinanet_resnet18_fpn": (64, 3),
    "retinanet_resnet50_fpn": (64, 3),
    "ssdlite320_mobilenet_v3": (128, 4),
    "ssd300_vgg16": (300, 4),
}


# name -> (size_divisible, anchor strides of the RetinaNet levels or None for default boxes)
GEOMETRY = {
    "retinanet_tiny_fpn": (32, [8, 16, 32, 64, 128]),
    "ssdlite_tiny": (1, None),
    "retinanet_resnet18_fpn": (32, [8, 16, 32, 64, 128]),
    "retinanet_resnet50_fpn": (32, [8, 16, 32, 64, 128]),
    "ssdlite320_mobilenet_v3": (1, None),
    "ssd300_vgg16": (1, None),
}
IMAGENET_PAD = (0.485 * 255, 0.456 * 255, 0.406 * 255)


def _images(batch, size, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, size, size), generator=g, dtype=torch.uint8)


def test_builder_table_is_complete():
    assert set(BUILDERS) == set(MODELS) == set(GEOMETRY)


def _collated(images, size_divisible):
    """The batch the loader makes of these images for a model that needs ``size_divisible``."""
    return collate([(image, {"image_id": i}) for i, image in enumerate(images)], size_divisible)[0]


@pytest.mark.parametrize("name", list(BUILDERS))
def test_every_builder_gives_head_outputs(name):
    size, columns = BUILDERS[name]
    torch.manual_seed(0)
    model = build_model(name, 3)
    batch = 1 if name == "ssd300_vgg16" else 2
    size_divisible, strides = GEOMETRY[name]
    assert model.size_divisible == size_divisible and type(model.size_divisible) is int
    assert getattr(model.anchor_generator, "strides", None) == strides
    assert model.pad_value == pytest.approx(IMAGENET_PAD) and len(model.pad_value) == 3
    images = _collated(_images(batch, size), model.size_divisible)
    assert images.shape[-2:] == (size, size)
    out = model(images)
    assert isinstance(out, HeadOutputs)
    num_anchors = out.anchors.shape[0]
    assert out.cls_logits.shape == (batch, num_anchors, columns)
    assert out.box_deltas.shape == (batch, num_anchors, 4)
    assert out.anchors.dtype == torch.float32
    assert sum(out.level_counts) == num_anchors and isinstance(out.level_counts, tuple)
    assert not hasattr(model, "last_level_counts")  # head facts travel with the outputs
    assert model.num_classes == 3 == out.num_classes
    assert model.cls_activation == out.cls_activation == ("softmax" if columns == 4 else "sigmoid")
    assert model.cls_activation == model.head.cls_activation
    assert isinstance(model.box_coder, BoxCoder)
    assert model.box_coder.weights == ((10.0, 10.0, 5.0, 5.0) if columns == 4 else (1.0, 1.0, 1.0, 1.0))
    if name == "ssd300_vgg16":
        assert num_anchors == 8732


def test_fixed_size_ssd_batches_keep_their_size_and_torchvision_anchor_counts():
    """Padded to 32, SSD300 would see 320 px and 9590 boxes, SSDlite320 at 300 px 3234 for 3000."""
    torch.manual_seed(0)
    ours = build_model("ssdlite320_mobilenet_v3", 3).eval()
    ref = tvd.ssdlite320_mobilenet_v3_large(weights_backbone=None, num_classes=4).eval()
    images = _collated(_images(1, 320), ours.size_divisible)
    with torch.no_grad():
        out = ours(images)
        maps = list(ref.backbone(ours.normalize(images)).values())
    ref_count = sum(
        f.shape[-2] * f.shape[-1] * n
        for f, n in zip(maps, ref.anchor_generator.num_anchors_per_location(), strict=True)
    )
    assert out.anchors.shape[0] == ref_count == 3234

    def cells(size, stride):  # stride-2 padded convs: each halves the map, rounding up
        for _ in range(stride.bit_length() - 1):
            size = -(-size // 2)
        return size * size

    for name, size, strides in [
        ("ssdlite320_mobilenet_v3", 300, (16, 32, 64, 128, 256, 512)),
        ("ssdlite_tiny", 250, (8, 16, 32, 64, 128, 256)),
    ]:
        count = 6 * sum(cells(size, s) for s in strides)
        model = build_model(name, 3).eval()
        images = _collated(_images(1, size), model.size_divisible)
        assert images.shape[-2:] == (size, size)
        with torch.no_grad():
            assert model(images).anchors.shape[0] == count, name


def test_pad_value_normalises_to_zero():
    model = build_model("ssdlite_tiny", 2)
    pixel = torch.tensor(model.pad_value).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    torch.testing.assert_close(model.normalize(pixel), torch.zeros(1, 3, 2, 2), atol=1e-6, rtol=0)


def test_retinanet_anchors_use_true_strides_on_inputs_not_divisible_by_128():
    """96x160 (multiples of 32): P6 is 2x3 cells, P7 1x2 -- their anchors sit at 64 / 128 px steps."""
    model = build_model("retinanet_tiny_fpn", 2).eval()
    images = _collated(_images(1, 160)[..., :96, :], model.size_divisible)
    assert images.shape[-2:] == (96, 160)
    with torch.no_grad():
        out = model(images)
    cells = [(-(-96 // s), -(-160 // s)) for s in (8, 16, 32, 64, 128)]
    assert out.level_counts == tuple(h * w * 9 for h, w in cells)
    for (fh, fw), stride, level in zip(
        cells, (8, 16, 32, 64, 128), out.anchors.split(out.level_counts), strict=True
    ):
        centres = ((level[:, :2] + level[:, 2:]) / 2).view(fh, fw, 9, 2)[:, :, 4]
        ys, xs = torch.meshgrid(torch.arange(fh) * stride, torch.arange(fw) * stride, indexing="ij")
        torch.testing.assert_close(centres, torch.stack((xs, ys), dim=-1).float())


def test_predict_accepts_the_four_postprocess_options():
    model = build_model("retinanet_tiny_fpn", 2).eval()
    options = dict(score_thresh=0.0, topk_candidates=5, nms_thresh=0.3, detections_per_img=3)
    (det,) = model.predict(_images(1, 64), **options)
    assert 0 < len(det["scores"]) <= 3
    with pytest.raises(TypeError):
        model.predict(_images(1, 64), score_threshold=0.1)


def test_architectures_match_torchvision_parameter_counts():
    def count(m):
        return sum(p.numel() for p in m.parameters())

    # torchvision's num_classes counts the background; its RetinaNet keeps a column for it too.
    pairs = [
        (
            build_model("ssdlite320_mobilenet_v3", 90),
            tvd.ssdlite320_mobilenet_v3_large(weights_backbone=None),
        ),
        (build_model("retinanet_resnet50_fpn", 91), tvd.retinanet_resnet50_fpn(weights_backbone=None)),
    ]
    for ours, ref in pairs:
        assert count(ours) == count(ref)


def test_tiny_models_are_small():
    for name in ("retinanet_tiny_fpn", "ssdlite_tiny"):
        params = sum(p.numel() for p in build_model(name, 6).parameters())
        assert params < 2e6, (name, params)


def test_same_return_type_in_train_and_eval_and_uint8_equals_float():
    torch.manual_seed(0)
    model = build_model("retinanet_tiny_fpn", 2)
    images = _images(2, 64)
    train_out = model.train()(images)
    assert train_out.cls_logits.requires_grad
    model.eval()
    eval_out = model(images)
    assert type(train_out) is type(eval_out) is HeadOutputs
    assert eval_out.cls_logits.shape == train_out.cls_logits.shape
    torch.testing.assert_close(model(images.float()).cls_logits, eval_out.cls_logits)
    torch.testing.assert_close(eval_out.anchors, train_out.anchors)


def test_normalisation_is_imagenet_mean_std():
    model = build_model("retinanet_tiny_fpn", 2)
    pixel = torch.tensor([124.0, 116.0, 104.0]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    expected = (pixel / 255 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]
    ).view(1, 3, 1, 1)
    torch.testing.assert_close(model.normalize(pixel), expected)
    # uint8 batches: exactly x * 1 / (255 std) - mean / std, channels-last for the convolutions.
    images = torch.randint(
        0, 256, (2, 3, 9, 7), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    scale = 1.0 / (255.0 * torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
    shift = -torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) / torch.tensor([0.229, 0.224, 0.225]).view(
        1, 3, 1, 1
    )
    normalised = model.normalize(images)
    assert normalised.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(normalised, images.float() * scale + shift)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        model(torch.zeros(3, 64, 64))


class _FixedHead(nn.Module):
    def __init__(self, logits, deltas):
        super().__init__()
        self.logits, self.deltas = logits, deltas

    def forward(self, features):
        return self.logits, self.deltas


def _with_head(name, num_classes, size, fill, batch=1):
    model = build_model(name, num_classes).eval()
    with torch.no_grad():
        out = model(_images(batch, size))
    logits = torch.full_like(out.cls_logits, fill)
    deltas = torch.zeros_like(out.box_deltas)
    model.head = _FixedHead(logits, deltas)
    return model, out.anchors, logits, deltas


def test_predict_decodes_clips_and_scales_to_the_original_image():
    model, anchors, logits, deltas = _with_head("retinanet_tiny_fpn", 3, 64, -20.0)
    j = 4 * 8 * 9 + 6 * 9 + 4  # level 0, y = 4, x = 6, anchor type 4
    logits[0, j, 2] = 5.0  # class index 2 -> label 3
    deltas[0, j, 0] = 0.5  # shift right by half the anchor width
    (det,) = model.predict(_images(1, 64), input_sizes=[(48, 52)], orig_sizes=[(96, 26)])
    x1, y1, x2, y2 = anchors[j].tolist()
    shift = 0.5 * (x2 - x1)
    expected = torch.tensor(
        [max(x1 + shift, 0) * 0.5, max(y1, 0) * 2, min(x2 + shift, 52) * 0.5, min(y2, 48) * 2]
    )
    assert det["labels"].tolist() == [3]
    torch.testing.assert_close(det["scores"], torch.tensor([1 / (1 + math.exp(-5.0))]))
    torch.testing.assert_close(det["boxes"], expected.unsqueeze(0))


def test_softmax_predict_skips_background_column():
    model, anchors, logits, _ = _with_head("ssdlite_tiny", 3, 64, 0.0)
    logits[..., 0] = 10.0  # background wins everywhere ...
    logits[0, 7, 2] = 30.0  # ... except anchor 7: class 2
    (det,) = model.predict(_images(1, 64))
    assert det["labels"].tolist() == [2]
    assert det["scores"].item() == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(det["boxes"][0], anchors[7].clamp(0, 64))


def test_empty_predictions_have_the_right_shapes():
    model, *_ = _with_head("retinanet_tiny_fpn", 3, 64, -20.0, batch=2)
    for det in model.predict(_images(2, 64)):
        assert det["boxes"].shape == (0, 4) and det["boxes"].dtype == torch.float32
        assert det["scores"].shape == (0,)
        assert det["labels"].shape == (0,) and det["labels"].dtype == torch.int64


def _torchvision_postprocess(out, counts, image_size, **params):
    fake = SimpleNamespace(box_coder=tv_utils.BoxCoder(weights=(1.0, 1.0, 1.0, 1.0)), **params)
    split = {
        "cls_logits": list(out.cls_logits.split(counts, dim=1)),
        "bbox_regression": list(out.box_deltas.split(counts, dim=1)),
    }
    anchors = [list(out.anchors.split(counts))] * out.cls_logits.shape[0]
    return RetinaNet.postprocess_detections(fake, split, anchors, [image_size] * out.cls_logits.shape[0])


@pytest.mark.parametrize("topk, thresh, per_img", [(1000, 0.05, 100), (7, 0.3, 100), (50, 0.2, 5)])
def test_predict_equals_torchvision_retinanet_postprocess(topk, thresh, per_img):
    torch.manual_seed(0)
    model = build_model("retinanet_tiny_fpn", 4).eval()
    images = _images(3, 64)
    with torch.no_grad():
        out = model(images)
    g = torch.Generator().manual_seed(1)
    out = HeadOutputs(
        cls_logits=torch.randn(out.cls_logits.shape, generator=g) * 2 - 2,
        box_deltas=torch.randn(out.box_deltas.shape, generator=g) * 0.3,
        anchors=out.anchors,
        cls_activation=out.cls_activation,
        level_counts=out.level_counts,
    )
    counts = list(out.level_counts)
    params = dict(score_thresh=thresh, topk_candidates=topk, nms_thresh=0.5, detections_per_img=per_img)
    ours = model.postprocess(out, image_shape=(64, 64), level_counts=counts, **params)
    ref = _torchvision_postprocess(out, counts, (64, 64), **params)
    if topk == 7:  # the level split comes from the outputs by default
        torch.testing.assert_close(
            model.postprocess(out, image_shape=(64, 64), **params)[0]["scores"], ours[0]["scores"]
        )
    for a, b in zip(ours, ref, strict=True):
        assert len(a["scores"]) > 0
        assert len(a["scores"]) <= per_img and (a["scores"] > thresh).all()
        torch.testing.assert_close(a["boxes"], b["boxes"])
        torch.testing.assert_close(a["scores"], b["scores"])
        assert a["labels"].tolist() == (b["labels"] + 1).tolist()


def test_top_k_is_per_level_and_batched_predict_equals_single():
    model, _, logits, _ = _with_head("retinanet_tiny_fpn", 2, 64, 3.0)
    (det,) = model.predict(_images(1, 64), topk_candidates=1, nms_thresh=1.0)
    assert len(det["scores"]) == len(model(_images(1, 64)).level_counts) == 5

    torch.manual_seed(0)
    model = build_model("ssdlite_tiny", 3).eval()
    images = _images(2, 64, seed=3)
    both = model.predict(images, score_thresh=0.1)
    for i in range(2):
        (single,) = model.predict(images[i : i + 1], score_thresh=0.1)
        torch.testing.assert_close(both[i]["boxes"], single["boxes"], atol=1e-4, rtol=1e-4)
        assert both[i]["labels"].tolist() == single["labels"].tolist()
        assert ((single["labels"] >= 1) & (single["labels"] <= 3)).all()


def test_the_activation_is_the_heads_and_travels_with_the_outputs():
    model = build_model("ssdlite_tiny", 2)
    parts = dict(
        backbone=model.backbone,
        neck=model.neck,
        head=model.head,
        anchor_generator=model.anchor_generator,
        num_classes=2,
        box_coder=model.box_coder,
        image_size=64,
        size_divisible=1,
    )
    assert DenseDetector(**parts).cls_activation == "softmax"  # declared by SSDLiteHead
    with pytest.raises(ValueError, match="contradicts the head's 'softmax'"):
        DenseDetector(**parts, cls_activation="sigmoid")
    with pytest.raises(ValueError, match="cls_activation must be one of 'softmax', 'sigmoid'"):
        DenseDetector(**{**parts, "head": _FixedHead(None, None)}, cls_activation="tanh")


def test_build_model_errors_name_the_valid_choices():
    with pytest.raises(
        ConfigError, match="config key 'model.name' is 'yolo'; valid: 'ssd300_vgg16', .*'ssdlite_tiny'"
    ):
        build_model("yolo", 3)
    with pytest.raises(
        ConfigError,
        match=r"unknown config key 'model\.options\.fpn_chanels' for retinanet_tiny_fpn; "
        r"did you mean 'model\.options\.fpn_channels'\? valid options: .*fpn_channels",
    ):
        build_model("retinanet_tiny_fpn", 3, fpn_chanels=32)
    with pytest.raises(ConfigError, match="num_classes must be a positive integer"):
        build_model("ssdlite_tiny", 0)
    with pytest.raises(ConfigError, match="anchor_sizes needs 5 entries"):
        build_model("retinanet_tiny_fpn", 3, anchor_sizes=(16, 32))
    assert "weights" in model_options("ssd300_vgg16")
    model = build_model("retinanet_tiny_fpn", 3, fpn_channels=32, head_convs=1, group_norm=True)
    assert len(model.head.cls_tower) == 1


def test_boxes_outside_the_image_and_huge_deltas_are_clipped_per_image():
    model, anchors, logits, deltas = _with_head("retinanet_tiny_fpn", 2, 64, -20.0, batch=2)
    logits[:, 0, 0] = 5.0  # the top-left anchor crosses the border
    logits[:, -1, 1] = 5.0  # the largest anchor covers far more than the image
    deltas[:, -1] = torch.tensor([3.0, -3.0, 50.0, 50.0])  # wild prediction: dw, dh clamped by the coder
    dets = model.predict(_images(2, 64), input_sizes=[(64, 64), (40, 30)])
    for det, (h, w) in zip(dets, [(64, 64), (40, 30)], strict=True):
        assert len(det["boxes"]) == 2 and torch.isfinite(det["boxes"]).all()
        assert (det["boxes"] >= 0).all()
        assert (det["boxes"][:, 0::2] <= w).all() and (det["boxes"][:, 1::2] <= h).all()
    torch.testing.assert_close(
        dets[1]["boxes"][dets[1]["labels"] == 2], torch.tensor([[0.0, 0.0, 30.0, 40.0]])
    )


def test_single_anchor_small_and_non_square_inputs():
    model = build_model("retinanet_tiny_fpn", 2).eval()
    out = model(_images(1, 32))  # P5..P7 are 1x1 maps
    assert out.anchors.shape[0] == 4 * 4 * 9 + 2 * 2 * 9 + 3 * 9
    out = model(torch.randint(0, 256, (1, 3, 64, 96), dtype=torch.uint8))
    assert out.cls_logits.shape[1] == out.anchors.shape[0]
    single = HeadOutputs(
        cls_logits=torch.tensor([[[4.0, -4.0]]]),
        box_deltas=torch.zeros(1, 1, 4),
        anchors=torch.tensor([[8.0, 8, 24, 40]]),
        cls_activation="sigmoid",
        level_counts=(1,),
    )
    (det,) = model.postprocess(single, image_shape=(32, 32))
    assert det["labels"].tolist() == [1] and det["boxes"].tolist() == [[8.0, 8.0, 24.0, 32.0]]
    assert model.predict(_images(0, 64)) == []


_RENAMES = {
    "retinanet_resnet50_fpn": [
        ("neck.fpn.", "backbone.fpn."),
        ("head.cls_tower.", "head.classification_head.conv."),
        ("head.reg_tower.", "head.regression_head.conv."),
        ("head.cls_logits.", "head.classification_head.cls_logits."),
        ("head.box_deltas.", "head.regression_head.bbox_reg."),
    ],
    "ssd300_vgg16": [
        ("backbone.conv4_3.", "backbone.features."),
        ("backbone.l2norm.weight", "backbone.scale_weight"),
        ("backbone.fc7.", "backbone.extra.0."),
        ("neck.extra.0.", "backbone.extra.1."),
        ("neck.extra.1.", "backbone.extra.2."),
        ("neck.extra.2.", "backbone.extra.3."),
        ("neck.extra.3.", "backbone.extra.4."),
        ("head.cls.", "head.classification_head.module_list."),
        ("head.reg.", "head.regression_head.module_list."),
    ],
    "ssdlite320_mobilenet_v3": [
        ("neck.extra.", "backbone.extra."),
        ("head.cls.", "head.classification_head.module_list."),
        ("head.reg.", "head.regression_head.module_list."),
    ],
}


@pytest.mark.parametrize(
    "name, reference, num_classes",
    [
        ("retinanet_resnet50_fpn", lambda: tvd.retinanet_resnet50_fpn(weights_backbone=None), 91),
        ("ssdlite320_mobilenet_v3", lambda: tvd.ssdlite320_mobilenet_v3_large(weights_backbone=None), 90),
        ("ssd300_vgg16", lambda: tvd.ssd300_vgg16(weights_backbone=None), 90),
    ],
)
def test_forward_equals_torchvision_with_the_same_weights(name, reference, num_classes):
    torch.manual_seed(0)
    ours, ref = build_model(name, num_classes).eval(), reference().eval()
    ref_state = ref.state_dict()

    def ref_key(key):
        for mine, theirs in _RENAMES[name]:
            if key.startswith(mine):
                return theirs + key[len(mine) :]
        return key

    ours.load_state_dict({k: ref_state[ref_key(k)] for k in ours.state_dict()})
    images = _images(1, 300) if name == "ssd300_vgg16" else _images(2, 128)
    with torch.no_grad():
        out = ours(images)
        features = list(ref.backbone(ours.normalize(images)).values())
        head = ref.head(features)
    torch.testing.assert_close(out.cls_logits, head["cls_logits"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.box_deltas, head["bbox_regression"], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    ("name", "sizes"),
    [
        ("retinanet_tiny_fpn", [(128, 128), (96, 160), (160, 96)]),
        ("ssdlite_tiny", [(128, 128)]),
        ("ssd300_vgg16", [(300, 300)]),
    ],
)
def test_anchors_for_equals_the_forward_anchors(name, sizes):
    from detmine.modeling import build_model

    model = build_model(name, 3).eval()
    for size in sizes:
        with torch.no_grad():
            expected = model(torch.zeros(1, 3, *size)).anchors
        model.train()  # as the builder has it when the criterion asks for the anchor counts
        assert torch.equal(model.anchors_for(size), expected), (name, size)
        assert model.training  # the mode is given back
        model.eval()
