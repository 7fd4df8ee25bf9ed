"""``DenseDetector.postprocess`` against torchvision's own ``postprocess_detections``.

Both pre-NMS top-k rules (``eval.postprocess.topk_per``) are compared with the torchvision
method that defines them, fed the same head outputs and anchors:

- ``"level"``: ``RetinaNet.postprocess_detections`` (per level, over all (anchor, class) pairs);
- ``"class"``: ``SSD.postprocess_detections`` (per class, over all anchors of the image).

torchvision's RetinaNet applies a sigmoid and its SSD a softmax (column 0 background). A head of
the other activation is fed to them through logits that give the same class scores:
``logit(p)`` for RetinaNet, and for SSD ``log p`` with a background column that makes every
anchor's softmax sum ``C``, so SSD sees ``p / C`` -- the same order, hence the same survivors.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torchvision.models.detection import _utils as tv_utils
from torchvision.models.detection.retinanet import RetinaNet
from torchvision.models.detection.ssd import SSD

from detmine.config import load_config
from detmine.errors import ConfigError
from detmine.modeling import build_model
from detmine.structures import HeadOutputs

ROOT = Path(__file__).resolve().parents[2]

#: the box-coder weights of the two families (SSD's variances 0.1 / 0.2; RetinaNet's ones).
CODER_WEIGHTS = {"softmax": (10.0, 10.0, 5.0, 5.0), "sigmoid": (1.0, 1.0, 1.0, 1.0)}
MODEL_OF = {"softmax": "ssdlite_tiny", "sigmoid": "retinanet_tiny_fpn"}


def _model(activation: str, num_classes: int):
    model = build_model(MODEL_OF[activation], num_classes).eval()
    assert model.cls_activation == activation
    assert model.box_coder.weights == CODER_WEIGHTS[activation]
    return model


def _class_scores(out: HeadOutputs) -> torch.Tensor:
    """``[B, A, K]`` probabilities, computed here (not by the code under test)."""
    logits = out.cls_logits.double()
    return logits.softmax(-1)[..., 1:] if out.cls_activation == "softmax" else logits.sigmoid()


def _fake(activation: str, **params):
    coder = tv_utils.BoxCoder(weights=CODER_WEIGHTS[activation])
    return SimpleNamespace(box_coder=coder, **params)


def _torchvision_level(out: HeadOutputs, sizes, **params):
    """torchvision's RetinaNet post-processing; labels shifted to 1..K."""
    p = _class_scores(out).clamp(1e-12, 1 - 1e-12)
    logits = p.logit() if out.cls_activation == "softmax" else out.cls_logits
    counts = list(out.level_counts)
    split = {
        "cls_logits": list(logits.float().split(counts, dim=1)),
        "bbox_regression": list(out.box_deltas.split(counts, dim=1)),
    }
    anchors = [list(out.anchors.split(counts))] * len(sizes)
    dets = RetinaNet.postprocess_detections(_fake(out.cls_activation, **params), split, anchors, sizes)
    return [{**d, "labels": d["labels"] + 1} for d in dets]


def _torchvision_class(out: HeadOutputs, sizes, *, score_thresh, **params):
    """torchvision's SSD post-processing; scores mapped back to the head's own scale."""
    scale = 1.0
    logits = out.cls_logits
    if out.cls_activation == "sigmoid":
        p = _class_scores(out).clamp_min(1e-30)
        scale = p.shape[-1] + 1.0  # > sum of the K sigmoids: the background keeps a share
        background = (scale - p.sum(-1, keepdim=True)).log()
        logits = torch.cat([background, p.log()], dim=-1).float()
    head = {"cls_logits": logits, "bbox_regression": out.box_deltas}
    fake = _fake(out.cls_activation, score_thresh=score_thresh / scale, **params)
    dets = SSD.postprocess_detections(fake, head, [out.anchors] * len(sizes), sizes)
    return [{**d, "scores": d["scores"] * scale} for d in dets]


REFERENCE = {"level": _torchvision_level, "class": _torchvision_class}


def _assert_same(ours, ref) -> None:
    assert len(ours) == len(ref)
    for a, b in zip(ours, ref, strict=True):
        assert a["labels"].tolist() == b["labels"].tolist()
        torch.testing.assert_close(a["scores"], b["scores"].float(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(a["boxes"], b["boxes"], rtol=1e-5, atol=1e-4)


def _grid(side: int, cell: int) -> torch.Tensor:
    """``[(side / cell)^2, 4]`` xyxy squares of ``cell`` px tiling a ``side`` px image."""
    ys, xs = torch.meshgrid(torch.arange(0, side, cell), torch.arange(0, side, cell), indexing="ij")
    corners = torch.stack([xs, ys], dim=-1).reshape(-1, 2).float()
    return torch.cat([corners, corners + cell], dim=1)


SMALL = 210  # the anchor of level 0 that holds the small object of class 2


def _one_class_covers_a_level(activation: str) -> HeadOutputs:
    """Two levels on a 160 px image: 400 anchors of 8 px, 25 of 32 px. Class 1 scores high on
    every anchor of level 0 (distinct values, > 0.98), a small object of class 2 sits at anchor
    ``SMALL`` (~0.73, below every class-1 score there); level 1 is background."""
    g = torch.Generator().manual_seed(0)
    anchors = torch.cat([_grid(160, 8), _grid(160, 32)])
    columns = 3 + (activation == "softmax")
    off = -8.0 if activation == "sigmoid" else 0.0
    logits = torch.full((1, len(anchors), columns), off)
    first = 1 if activation == "softmax" else 0  # the column of class 1
    logits[0, :400, first] = 5.0 + 0.01 * torch.randperm(400, generator=g)  # no near-ties
    logits[0, SMALL, first] = 4.0 if activation == "softmax" else -0.5
    logits[0, SMALL, first + 1] = 6.0 if activation == "softmax" else 1.0
    if activation == "softmax":
        logits[0, 400:, 0] = 8.0
    deltas = 0.05 * torch.randn(1, len(anchors), 4, generator=g)
    return HeadOutputs(logits, deltas, anchors, cls_activation=activation, level_counts=(400, 25))


SSD_PARAMS = dict(score_thresh=0.01, topk_candidates=100, nms_thresh=0.45, detections_per_img=200)


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
@pytest.mark.parametrize("rule", ["level", "class"])
def test_one_class_covering_a_level_keeps_a_small_object_only_per_class(activation, rule):
    out = _one_class_covers_a_level(activation)
    model = _model(activation, 3)
    (ours,) = model.postprocess(out, image_shape=(160, 160), topk_per=rule, **SSD_PARAMS)
    (ref,) = REFERENCE[rule](out, [(160, 160)], **SSD_PARAMS)
    _assert_same([ours], [ref])
    small = ours["labels"] == 2
    if rule == "class":  # torchvision's SSD keeps it: it is class 2's best anchor
        assert small.sum().item() == 1
        p = _class_scores(out)[0, SMALL, 1].item()
        assert ours["scores"][small].item() == pytest.approx(p, rel=1e-5)
        assert (ours["labels"] == 1).sum().item() == 100
    else:  # torchvision's RetinaNet drops it: level 0's 100 candidates are all class 1
        assert small.sum().item() == 0 and len(ours["labels"]) == 100


def _random_outputs(activation: str, num_classes: int, batch: int, seed: int) -> tuple[HeadOutputs, object]:
    """Random logits / deltas on a real model's multi-level anchors of a 64 px batch."""
    model = _model(activation, num_classes)
    with torch.no_grad():
        real = model(torch.zeros(batch, 3, 64, 64, dtype=torch.uint8))
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(real.cls_logits.shape, generator=g) * 2.0
    if activation == "sigmoid":
        logits -= 2.0
    out = HeadOutputs(
        logits,
        torch.randn(real.box_deltas.shape, generator=g) * 0.3,
        real.anchors,
        cls_activation=activation,
        level_counts=real.level_counts,
    )
    assert len(out.level_counts) > 1
    return out, model


CASES = [
    (0.01, 400, 0.45, 200),  # SSD's
    (0.05, 1000, 0.5, 100),  # RetinaNet's
    (0.2, 7, 0.5, 100),  # top-k much smaller than a level / the anchors
    (0.1, 30, 0.3, 5),  # detections_per_img cuts
]


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
@pytest.mark.parametrize("rule", ["level", "class"])
@pytest.mark.parametrize("thresh, topk, nms, per_img", CASES)
def test_random_heads_equal_torchvision(activation, rule, thresh, topk, nms, per_img):
    out, model = _random_outputs(activation, 4, 2, seed=topk)
    params = dict(score_thresh=thresh, topk_candidates=topk, nms_thresh=nms, detections_per_img=per_img)
    sizes = [(64, 64), (40, 52)]  # the second image is clipped to its own size
    ours = model.postprocess(out, image_shape=(64, 64), input_sizes=sizes, topk_per=rule, **params)
    ref = REFERENCE[rule](out, sizes, **params)
    _assert_same(ours, ref)
    assert all(0 < len(d["scores"]) <= per_img for d in ours)


def test_the_two_rules_differ_on_random_heads():
    """The rule matters: with a small top-k the per-class candidates are other boxes."""
    out, model = _random_outputs("softmax", 4, 1, seed=3)
    params = dict(score_thresh=0.05, topk_candidates=7, nms_thresh=0.5, detections_per_img=100)
    (level,) = model.postprocess(out, image_shape=(64, 64), topk_per="level", **params)
    (per_class,) = model.postprocess(out, image_shape=(64, 64), topk_per="class", **params)
    assert len(level["scores"]) != len(per_class["scores"])


def test_predict_passes_the_rule_and_refuses_an_unknown_one():
    model = _model("softmax", 3)
    torch.manual_seed(0)
    for param in model.head.parameters():  # the initial head ties every anchor's scores
        torch.nn.init.normal_(param, std=0.1)
    images = torch.randint(
        0, 256, (2, 3, 64, 64), generator=torch.Generator().manual_seed(0), dtype=torch.uint8
    )
    params = dict(score_thresh=0.0, topk_candidates=5, nms_thresh=0.5, detections_per_img=100)
    with torch.no_grad():
        out = model(images)
    for rule in ("level", "class"):
        ref = REFERENCE[rule](out, [(64, 64)] * 2, **params)
        _assert_same(model.predict(images, topk_per=rule, **params), ref)
    with pytest.raises(ValueError, match="topk_per must be one of 'level', 'class', got 'anchor'"):
        model.predict(images, topk_per="anchor")


# ----------------------------------------------------------------------------- the config key


def test_recipes_carry_their_reference_rule():
    """SSD recipes (softmax heads) take the top-k per class, RetinaNet ones per level."""
    seen = set()
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        cfg = load_config(path)
        rule = cfg.eval.postprocess.options()["topk_per"]
        softmax = cfg.model.name.startswith("ssd")
        assert rule == ("class" if softmax else "level"), path.name
        seen.add(rule)
    assert seen == {"level", "class"}


def test_override_sets_the_rule_and_a_bad_value_names_key_and_choices():
    cfg = load_config(ROOT / "configs" / "quickstart.yaml", ["eval.postprocess.topk_per=class"])
    assert cfg.eval.postprocess.options()["topk_per"] == "class"
    with pytest.raises(ConfigError, match=r"'eval.postprocess.topk_per' must be one of 'level', 'class'"):
        load_config(ROOT / "configs" / "quickstart.yaml", ["eval.postprocess.topk_per=anchor"])


def _evaluate_cli(tmp_path, override: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "tools" / "evaluate.py"), str(ROOT / "configs" / "quickstart_ssd.yaml"),
         str(tmp_path / "missing.pth"), override],
        cwd=tmp_path, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_cli_override_is_accepted_and_a_bad_value_is_one_line(tmp_path):
    bad = _evaluate_cli(tmp_path, "eval.postprocess.topk_per=Class")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "error: config key 'eval.postprocess.topk_per' must be one of 'level', 'class', "
        "got 'Class'; did you mean 'class'?"
    ]
    good = _evaluate_cli(tmp_path, "eval.postprocess.topk_per=level")  # gets past the config
    assert good.returncode == 2
    assert good.stderr.strip().splitlines() == [
        f"error: checkpoint {tmp_path / 'missing.pth'} does not exist"
    ]


def test_sigmoid_reference_mapping_is_exact():
    """The SSD feed of a sigmoid head: softmax of [log(C - sum p), log p] is p / C."""
    p = torch.tensor([[[0.9, 0.8, 0.05]]], dtype=torch.float64)
    logits = torch.cat([(4.0 - p.sum(-1, keepdim=True)).log(), p.log()], dim=-1)
    torch.testing.assert_close(logits.softmax(-1)[..., 1:] * 4.0, p)
    assert math.isclose(float(torch.logit(torch.tensor(0.25, dtype=torch.float64)).sigmoid()), 0.25)
