"""detmine.losses against torchvision / torch.nn.functional references (values and gradients)."""

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection._utils import BoxCoder as TVBoxCoder
from torchvision.models.detection._utils import _box_loss
from torchvision.ops import sigmoid_focal_loss as tv_focal

from detmine.box_coder import BoxCoder
from detmine.components import check_component
from detmine.errors import ConfigError
from detmine.losses import (
    BOX_LOSSES,
    CLS_LOSSES,
    BalancedCrossEntropy,
    FocalLoss,
    SmoothL1Loss,
    SoftmaxCrossEntropy,
    balanced_cross_entropy_per_anchor,
    focal_loss_per_anchor,
    sigmoid_focal_loss,
    softmax_cross_entropy,
)


def random_labels(gen, shape, num_classes, p_pos=0.2, p_ignore=0.1):
    u = torch.rand(shape, generator=gen)
    labels = torch.randint(1, num_classes + 1, shape, generator=gen)
    labels = torch.where(u < p_pos, labels, 0)
    return torch.where(u > 1 - p_ignore, -1, labels)


def one_hot(labels, num_classes, dtype=torch.float32):
    """RetinaNet's target: one column per class, background rows all zero."""
    t = torch.zeros(*labels.shape, num_classes, dtype=dtype)
    pos = labels > 0
    t[pos, labels[pos] - 1] = 1.0
    return t


def reference_focal(logits, labels, alpha=0.25, gamma=2.0):
    loss = tv_focal(logits, one_hot(labels, logits.shape[-1], logits.dtype), alpha=alpha, gamma=gamma).sum(-1)
    return loss * (labels >= 0)


def values_and_grad(fn, logits, weight):
    x = logits.clone().requires_grad_(True)
    out = fn(x)
    (grad,) = torch.autograd.grad((out * weight).sum(), x)
    return out.detach(), grad


@pytest.mark.parametrize("gamma", [2.0, 1.5, 0.0, 3.0])
@pytest.mark.parametrize("alpha", [0.25, 0.6])
def test_focal_per_anchor_equals_torchvision(gamma, alpha):
    gen = torch.Generator().manual_seed(int(gamma * 10 + alpha * 100))
    logits = torch.randn(3, 200, 7, generator=gen) * 4
    logits[0, :5] = 30.0  # saturated logits on positives and negatives
    logits[1, :5] = -30.0
    labels = random_labels(gen, (3, 200), 7)
    weight = torch.rand(3, 200, generator=gen)
    ours, g_ours = values_and_grad(lambda x: focal_loss_per_anchor(x, labels, alpha, gamma), logits, weight)
    ref, g_ref = values_and_grad(lambda x: reference_focal(x, labels, alpha, gamma), logits, weight)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-5, atol=1e-6)
    assert (ours[labels < 0] == 0).all()
    assert (g_ours[labels < 0] == 0).all()


def test_focal_per_anchor_gradcheck():
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(2, 6, 3, generator=gen, dtype=torch.float64) * 2).requires_grad_(True)
    labels = torch.tensor([[0, 1, 2, 3, -1, 0], [3, 0, 0, -1, 1, 2]])
    for gamma in (2.0, 1.5, 0.0):
        assert torch.autograd.gradcheck(
            lambda x, g=gamma: focal_loss_per_anchor(x, labels, 0.25, g), (logits,)
        )


def test_per_class_alpha_and_weights():
    gen = torch.Generator().manual_seed(1)
    num_classes = 4
    logits = torch.randn(2, 50, num_classes, generator=gen) * 3
    labels = random_labels(gen, (2, 50), num_classes)
    alpha = torch.tensor([0.1, 0.25, 0.5, 0.9])
    weights = torch.tensor([1.0, 2.0, 0.5, 3.0])
    targets = one_hot(labels, num_classes)
    # Reference: torchvision's focal term without alpha, then the class-wise alpha_t and weights.
    raw = tv_focal(logits, targets, alpha=-1, gamma=2.0)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    ref = (raw * alpha_t * weights).sum(-1) * (labels >= 0)
    ours = focal_loss_per_anchor(logits, labels, alpha=alpha, gamma=2.0, class_weights=weights)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    # A scalar alpha equals the same alpha repeated per class.
    torch.testing.assert_close(
        focal_loss_per_anchor(logits, labels, alpha=torch.full((num_classes,), 0.3)),
        focal_loss_per_anchor(logits, labels, alpha=0.3),
    )
    with pytest.raises(ValueError, match="one per class"):
        focal_loss_per_anchor(logits, labels, alpha=torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        focal_loss_per_anchor(logits, labels, alpha=1.5)


def test_balanced_ce_is_alpha_weighted_bce():
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 40, 5, generator=gen) * 3
    labels = random_labels(gen, (2, 40), 5)
    targets = one_hot(labels, 5)
    weight = 0.25 * targets + 0.75 * (1 - targets)
    ref = F.binary_cross_entropy_with_logits(logits, targets, weight=weight, reduction="none").sum(-1) * (
        labels >= 0
    )
    weights_out = torch.rand(2, 40, generator=gen)
    ours, g_ours = values_and_grad(
        lambda x: balanced_cross_entropy_per_anchor(x, labels, 0.25), logits, weights_out
    )
    _, g_ref = values_and_grad(
        lambda x: (
            F.binary_cross_entropy_with_logits(x, targets, weight=weight, reduction="none").sum(-1)
            * (labels >= 0)
        ),
        logits,
        weights_out,
    )
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_sigmoid_focal_loss_keeps_torchvision_signature(reduction):
    import inspect

    def names_and_defaults(fn):
        return [(n, p.default) for n, p in inspect.signature(fn).parameters.items()]

    assert names_and_defaults(sigmoid_focal_loss) == names_and_defaults(tv_focal)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(10, 3, generator=gen) * 3
    t = (torch.rand(10, 3, generator=gen) > 0.7).float()
    # The paper's definition (Lin et al. 2017, eq. 5), written out independently:
    # FL(p_t) = -alpha_t (1 - p_t)^gamma log(p_t).
    p = torch.sigmoid(x.double())
    p_t = torch.where(t > 0, p, 1 - p)
    alpha_t = torch.where(t > 0, 0.3, 0.7)
    ref = -alpha_t * (1 - p_t) ** 1.0 * torch.log(p_t)
    ref = {"none": ref, "sum": ref.sum(), "mean": ref.mean()}[reduction].float()
    torch.testing.assert_close(sigmoid_focal_loss(x, t, alpha=0.3, gamma=1.0, reduction=reduction), ref)


@pytest.mark.parametrize("sparse", [False, True])
def test_softmax_cross_entropy_equals_torch(sparse):
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 30, 6, generator=gen) * 3
    labels = random_labels(gen, (2, 30), 5)
    weight = torch.rand(2, 30, generator=gen)
    if sparse:  # like a miner: most anchors get no gradient -> the sparse backward path
        weight = weight * (torch.rand(2, 30, generator=gen) < 0.1)
        assert 0 < int((weight != 0).sum()) < 15

    def reference(x, class_weights=None):
        flat = F.cross_entropy(
            x.reshape(-1, 6), labels.reshape(-1), weight=class_weights, ignore_index=-1, reduction="none"
        )
        return flat.view(2, 30)

    ours, g_ours = values_and_grad(lambda x: softmax_cross_entropy(x, labels), logits, weight)
    ref, g_ref = values_and_grad(reference, logits, weight)
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(g_ours, g_ref)
    assert (ours[labels < 0] == 0).all() and (g_ours[labels < 0] == 0).all()
    class_weights = torch.tensor([0.5, 1, 2, 3, 4, 5.0])
    ours, g_ours = values_and_grad(lambda x: softmax_cross_entropy(x, labels, class_weights), logits, weight)
    ref, g_ref = values_and_grad(lambda x: reference(x, class_weights), logits, weight)
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(g_ours, g_ref)


def test_softmax_cross_entropy_gradcheck():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 4, generator=gen, dtype=torch.float64).requires_grad_(True)
    labels = torch.tensor([[0, 1, 2, 3, -1], [3, 0, 0, -1, 1]])
    assert torch.autograd.gradcheck(lambda x: softmax_cross_entropy(x, labels), (logits,))


def test_focal_gradient_with_mostly_zero_incoming_gradient():
    gen = torch.Generator().manual_seed(6)
    logits = torch.randn(2, 100, 5, generator=gen) * 3
    labels = random_labels(gen, (2, 100), 5)
    weight = torch.rand(2, 100, generator=gen) * (torch.rand(2, 100, generator=gen) < 0.1)
    ours, g_ours = values_and_grad(lambda x: focal_loss_per_anchor(x, labels), logits, weight)
    _, g_ref = values_and_grad(lambda x: reference_focal(x, labels), logits, weight)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-5, atol=1e-7)
    assert (g_ours[weight == 0] == 0).all()


@pytest.mark.parametrize("kind", ["smooth_l1", "l1", "giou"])
@pytest.mark.parametrize("weights", [(10.0, 10.0, 5.0, 5.0), (1.0, 1.0, 1.0, 1.0)])
def test_box_losses_equal_torchvision(kind, weights):
    gen = torch.Generator().manual_seed(5)
    xy = torch.rand(40, 2, generator=gen) * 100
    anchors = torch.cat([xy, xy + torch.rand(40, 2, generator=gen) * 50 + 5], 1)
    gt = anchors + torch.randn(40, 4, generator=gen) * 3
    gt[:, 2:] = torch.maximum(gt[:, 2:], gt[:, :2] + 1)
    deltas = torch.randn(40, 4, generator=gen) * 0.3
    ours, g_ours = values_and_grad(
        lambda d: BOX_LOSSES[kind]()(d, gt, anchors, BoxCoder(weights)), deltas, torch.tensor(1.0)
    )
    ref, g_ref = values_and_grad(
        lambda d: _box_loss(kind, TVBoxCoder(weights), anchors, gt, d), deltas, torch.tensor(1.0)
    )
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-5, atol=1e-5)


def test_box_loss_beta_and_empty():
    coder = BoxCoder((1, 1, 1, 1))
    anchors = torch.tensor([[0.0, 0, 10, 10]])
    gt = torch.tensor([[1.0, 1, 11, 11]])
    d = torch.zeros(1, 4)
    target = coder.encode(gt, anchors)
    expected = F.smooth_l1_loss(d, target, beta=0.05, reduction="sum")
    torch.testing.assert_close(SmoothL1Loss(beta=0.05)(d, gt, anchors, coder), expected)
    for kind in ("smooth_l1", "l1", "giou"):
        empty = torch.zeros(0, 4, requires_grad=True)
        loss = BOX_LOSSES[kind]()(empty, torch.zeros(0, 4), torch.zeros(0, 4), coder)
        assert loss.item() == 0.0
        loss.backward()
    with pytest.raises(ConfigError, match="valid: 'smooth_l1', 'l1', 'giou'"):
        check_component(BOX_LOSSES, "iou", {}, "loss", field="box")
    with pytest.raises(ConfigError, match=r"loss\.smooth_l1\.beta must be >= 0"):
        BOX_LOSSES.build("smooth_l1", {"beta": -1.0}, key="loss.smooth_l1")
    # the component names only its option; the table names the key it was registered under
    with pytest.raises(ConfigError, match=r"^beta must be >= 0"):
        SmoothL1Loss(beta=-1.0)


def test_focal_under_no_grad_matches_and_skips_the_gradient():
    gen = torch.Generator().manual_seed(7)
    logits = (torch.randn(2, 30, 4, generator=gen) * 3).requires_grad_(True)
    labels = random_labels(gen, (2, 30), 4)
    with torch.no_grad():
        loss = focal_loss_per_anchor(logits, labels)
    assert not loss.requires_grad
    torch.testing.assert_close(loss, focal_loss_per_anchor(logits, labels).detach())


def test_cls_loss_table_fits_each_loss_to_its_head_and_equals_the_functions():
    assert {name: cls.activation for name, cls in CLS_LOSSES.items()} == {
        "softmax_ce": "softmax",
        "focal": "sigmoid",
        "balanced_ce": "sigmoid",
        "logit_adjusted_ce": "softmax",
        "logit_adjusted_focal": "sigmoid",
        "asymmetric": "sigmoid",
        "ghm_c": "sigmoid",
    }
    assert list(BOX_LOSSES) == ["smooth_l1", "l1", "giou"]
    gen = torch.Generator().manual_seed(8)
    labels = random_labels(gen, (2, 40), 3)
    sigmoid_logits = torch.randn(2, 40, 3, generator=gen) * 2
    softmax_logits = torch.randn(2, 40, 4, generator=gen) * 2
    alpha, weights = [0.1, 0.5, 0.9], [1.0, 2.0, 0.5]
    focal = FocalLoss(alpha=alpha, gamma=1.5, class_weights=weights)(sigmoid_logits, labels)
    expected = focal_loss_per_anchor(
        sigmoid_logits, labels, alpha=torch.tensor(alpha), gamma=1.5, class_weights=torch.tensor(weights)
    )
    assert torch.equal(focal, expected)
    bce = BalancedCrossEntropy(alpha=0.3)(sigmoid_logits, labels)
    assert torch.equal(
        bce, balanced_cross_entropy_per_anchor(sigmoid_logits, labels, alpha=torch.tensor(0.3))
    )
    ce = SoftmaxCrossEntropy(class_weights=[0.5, 1, 2, 3])(softmax_logits, labels)
    assert torch.equal(ce, softmax_cross_entropy(softmax_logits, labels, torch.tensor([0.5, 1, 2, 3])))
    with pytest.raises(
        ConfigError, match=r"loss\.softmax_ce\.class_weights has 3 values but the softmax head has 4"
    ):
        CLS_LOSSES.build("softmax_ce", {"class_weights": [1, 2, 3]}, key="loss.softmax_ce")(
            softmax_logits, labels
        )
    with pytest.raises(
        ConfigError, match=r"^SoftmaxCrossEntropy\.class_weights has 3 values but the softmax head has 4"
    ):
        SoftmaxCrossEntropy(class_weights=[1, 2, 3])(softmax_logits, labels)
    with pytest.raises(ConfigError, match=r"loss\.balanced_ce\.alpha must lie in \[0, 1\]"):
        CLS_LOSSES.build("balanced_ce", {"alpha": [0.5, -0.1, 0.2]}, key="loss.balanced_ce")
    with pytest.raises(ConfigError, match=r"loss\.focal\.gamma must be >= 0"):
        CLS_LOSSES.build("focal", {"gamma": -0.5}, key="loss.focal")
    # registered under another name, a subclass's messages name that name's key
    with pytest.raises(ConfigError, match=r"^loss\.my_focal\.gamma must be >= 0"):
        CLS_LOSSES.build("focal", {"gamma": -0.5}, key="loss.my_focal")
    # class weights and alpha are non-persistent buffers: they follow .to() and stay out of checkpoints
    loss = FocalLoss(alpha=alpha, class_weights=weights)
    assert dict(loss.state_dict()) == {}
    assert loss.to(torch.float64).alpha.dtype == torch.float64
