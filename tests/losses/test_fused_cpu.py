"""The CPU paths of the fused losses (detmine.losses._cpu): the chunked log-sum-exp, the reused
gradient buffer, and the chunked focal loss, against torch / torchvision references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss as tv_focal

import detmine.losses._cpu as cpu
from detmine.losses import focal_loss_per_anchor, softmax_cross_entropy
from detmine.losses._cpu import GradientBuffer, row_logsumexp, row_logsumexp_and_pick
from detmine.losses.functional import _column_weights, _focal_chunked, _focal_dense

CPU = torch.device("cpu")


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks of a few rows, so that small tests cross many chunk boundaries (and a ragged last one)."""
    monkeypatch.setattr(cpu, "CHUNK_ELEMENTS", 64)
    monkeypatch.setattr("detmine.losses.functional.CHUNK_ELEMENTS", 64)


def random_labels(gen: torch.Generator, shape: tuple[int, ...], num_classes: int) -> torch.Tensor:
    """Labels in ``-1..num_classes``: ~70% background, ~20% foreground, ~10% ignored."""
    u = torch.rand(shape, generator=gen)
    labels = torch.where(u < 0.2, torch.randint(1, num_classes + 1, shape, generator=gen), 0)
    return torch.where(u > 0.9, -1, labels)


def extreme_logits(gen: torch.Generator, shape: tuple[int, ...], dtype=torch.float32) -> torch.Tensor:
    """Random logits with rows the unshifted sum cannot take: overflow, underflow, a lone large value."""
    x = torch.randn(shape, generator=gen, dtype=dtype) * 4
    x[0, 0] = -200.0  # every exp underflows
    x[0, 1] = 95.0  # every exp overflows (float32)
    x[0, 2, 1] = 300.0
    x[1, 0] = -85.0  # subnormal sums
    x[1, 1, :2] = torch.tensor([60.0, -60.0], dtype=dtype)
    return x


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_row_logsumexp_equals_torch(small_chunks, dtype):
    gen = torch.Generator().manual_seed(0)
    x = extreme_logits(gen, (3, 37, 9), dtype)
    pick = torch.randint(0, 9, (3, 37), generator=gen)
    lse, picked = row_logsumexp_and_pick(x, pick)
    torch.testing.assert_close(lse, torch.logsumexp(x, -1))
    assert torch.equal(picked, x.gather(-1, pick.unsqueeze(-1)).squeeze(-1))
    assert torch.equal(row_logsumexp(x), lse)


def test_row_logsumexp_default_chunks_and_nan():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 5000, 81, generator=gen) * 5  # several default-size chunks
    torch.testing.assert_close(row_logsumexp(x), torch.logsumexp(x, -1))
    x[1, 7, 3] = float("nan")
    lse = row_logsumexp(x)
    assert torch.isnan(lse[1, 7]) and torch.isfinite(lse[1, 8])


def test_gradient_buffer_reuses_only_free_storage():
    buffer = GradientBuffer()
    first = buffer.take((4, 5), torch.float32, CPU)
    held = buffer.take((4, 5), torch.float32, CPU)
    assert held.data_ptr() != first.data_ptr()  # the first one is still alive
    ptr = first.data_ptr()
    del first, held
    again = buffer.take((2, 5), torch.float64, CPU)  # smaller, another dtype: same memory
    assert again.data_ptr() == ptr and again.shape == (2, 5) and again.is_contiguous()
    view = again[1]
    del again
    assert buffer.take((2, 5), torch.float64, CPU).data_ptr() != ptr  # a view keeps it busy
    del view
    bigger = buffer.take((100, 5), torch.float32, CPU)  # too small: a fresh one becomes the kept one
    big_ptr = bigger.data_ptr()
    del bigger
    assert buffer.take((4, 5), torch.float32, CPU).data_ptr() == big_ptr
    buffer.enabled = False
    assert buffer.take((4, 5), torch.float32, CPU).data_ptr() != big_ptr


def head_steps(monkeypatch, hook=None, anchors=(40, 40, 40, 40), fraction=0.05):
    """Softmax CE steps through a head-like module (the logits are not leaves), each with a
    different sparse gradient, against ``F.cross_entropy``; returns the buffer's rows-zeroing
    verdicts (``take_zeros``' second value) of each step."""
    buffer = GradientBuffer()
    monkeypatch.setattr("detmine.losses.functional.GRADIENT_BUFFER", buffer)
    verdicts = []
    take_zeros = buffer.take_zeros

    def spy(*args):
        out, zeroed = take_zeros(*args)
        verdicts.append(zeroed)
        return out, zeroed

    monkeypatch.setattr(buffer, "take_zeros", spy)
    gen = torch.Generator().manual_seed(5)
    head = torch.nn.Linear(6, 7)
    for step, count in enumerate(anchors):
        features = torch.randn(3, count, 6, generator=gen)
        labels = random_labels(gen, (3, count), 6)
        scale = torch.rand(3, count, generator=gen) * (torch.rand(3, count, generator=gen) < fraction)
        logits = head(features)
        if hook is not None:
            logits.register_hook(hook)
        grad_ours = torch.autograd.grad((softmax_cross_entropy(logits, labels) * scale).sum(), logits)[0]
        ref_logits = head(features)
        if hook is not None:
            ref_logits.register_hook(hook)
        grad_ref = torch.autograd.grad((reference_ce(ref_logits, labels) * scale).sum(), ref_logits)[0]
        torch.testing.assert_close(grad_ours, grad_ref, msg=f"step {step}")
        del grad_ours
    return verdicts


def test_sparse_gradient_buffer_zeros_only_the_last_rows(monkeypatch):
    """After a sparse backward the next step zeros only the rows it wrote, and the gradients
    stay equal to F.cross_entropy's step after step."""
    assert head_steps(monkeypatch) == [False, True, True, True]
    # a dense backward (most rows with gradient) leaves nothing to trust: zeroed whole each step
    assert head_steps(monkeypatch, fraction=1.0) == [False, False, False, False]
    # another shape (fewer anchors, then back): what the last step wrote says nothing, zeroed whole
    assert head_steps(monkeypatch, anchors=(40, 40, 25, 40, 40)) == [False, True, False, False, True]


def test_sparse_gradient_buffer_sees_in_place_writes(monkeypatch):
    """A consumer that writes into the handed-out gradient in place (here a hook on the
    logits, adding to every row) moves the version counter: the next step zeros the whole
    buffer, so nothing of the hook's writes leaks into its gradient."""

    def shift_in_place(grad: torch.Tensor) -> None:
        grad.add_(0.5)

    assert head_steps(monkeypatch, hook=shift_in_place) == [False, False, False, False]


def reference_ce(x: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    cols = x.shape[-1]
    flat = F.cross_entropy(
        x.reshape(-1, cols), labels.reshape(-1), weight=weight, ignore_index=-1, reduction="none"
    )
    return flat.view(labels.shape)


def loss_and_grad(fn, x: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    leaf = x.clone().requires_grad_(True)
    out = fn(leaf)
    (out * scale).sum().backward()
    return out.detach(), leaf.grad


@pytest.mark.parametrize("fraction", [1.0, 0.05])  # dense / sparse backward
def test_softmax_ce_extreme_logits_equal_torch(small_chunks, fraction):
    gen = torch.Generator().manual_seed(2)
    x = extreme_logits(gen, (3, 40, 7))
    labels = random_labels(gen, (3, 40), 6)
    labels[0, :3] = torch.tensor([0, 2, 1])  # the extreme rows count
    scale = torch.rand(3, 40, generator=gen) * (torch.rand(3, 40, generator=gen) < fraction)
    scale[0, :3] = 1.0
    weight = torch.tensor([0.5, 1.0, 2.0, 0.0, 1.5, 3.0, 1.0])
    for w in (None, weight):
        ours, g_ours = loss_and_grad(lambda t, w=w: softmax_cross_entropy(t, labels, w), x, scale)
        ref, g_ref = loss_and_grad(lambda t, w=w: reference_ce(t, labels, w), x, scale)
        torch.testing.assert_close(ours, ref)
        torch.testing.assert_close(g_ours, g_ref)
        assert (g_ours[labels < 0] == 0).all()


def test_softmax_ce_held_gradient_is_not_overwritten():
    """The gradient buffer goes to the next backward only once nobody holds the last one."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 50, 5, generator=gen)
    labels = random_labels(gen, (2, 50), 4)
    scales = [torch.rand(2, 50, generator=gen) * (torch.rand(2, 50, generator=gen) < 0.1) for _ in range(3)]
    leaf = x.clone().requires_grad_(True)
    grads = []
    for scale in scales:  # leaf.grad is kept and accumulates across the three backwards
        (softmax_cross_entropy(leaf, labels) * scale).sum().backward()
        grads.append(leaf.grad.clone())
    ref = x.clone().requires_grad_(True)
    expected = []
    for scale in scales:
        (reference_ce(ref, labels) * scale).sum().backward()
        expected.append(ref.grad.clone())
    for ours, theirs in zip(grads, expected, strict=True):
        torch.testing.assert_close(ours, theirs)
    seen: list[torch.Tensor] = []
    leaf.grad = None
    leaf.register_hook(lambda grad: seen.append(grad))  # a hook that keeps what it saw
    (softmax_cross_entropy(leaf, labels) * scales[0]).sum().backward()
    snapshot = seen[0].clone()
    leaf.grad = None
    (softmax_cross_entropy(leaf, labels) * scales[1]).sum().backward()
    assert seen[1].data_ptr() != seen[0].data_ptr()
    assert torch.equal(seen[0], snapshot)
    torch.testing.assert_close(seen[0], expected[0])
    torch.testing.assert_close(leaf.grad, expected[1] - expected[0])


def test_softmax_ce_gradcheck_sparse_float64(small_chunks):
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 9, 4, generator=gen, dtype=torch.float64).requires_grad_(True)
    labels = torch.tensor([[0, 1, 2, 3, -1, 0, 0, 1, 0], [3, 0, 0, -1, 1, 0, 2, 0, 0]])
    mask = torch.zeros(2, 9, dtype=torch.float64)
    mask[0, 1] = mask[1, 4] = mask[1, 5] = 1.0  # 3 of 18 rows: the sparse backward
    assert torch.autograd.gradcheck(lambda t: softmax_cross_entropy(t, labels) * mask, (x,))


def reference_focal(x: torch.Tensor, labels: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    """torchvision's focal loss on the one-hot target (background rows all zero), summed per row."""
    target = torch.zeros_like(x)
    pos = labels > 0
    target[pos, labels[pos] - 1] = 1.0
    loss = tv_focal(x, target, alpha=alpha, gamma=gamma).sum(-1)
    return loss * (labels >= 0)


@pytest.mark.parametrize("gamma", [2.0, 1.5, 0.0])
def test_focal_chunked_equals_torchvision(small_chunks, gamma):
    gen = torch.Generator().manual_seed(int(gamma * 10))
    x = torch.randn(3, 45, 6, generator=gen) * 4 - 2
    x[0, 0] = 95.0  # exp overflows: the row is recomputed whole-tensor
    x[0, 1] = -95.0
    x[1, 2, 3] = 40.0
    labels = random_labels(gen, (3, 45), 6)
    labels[0, :2] = torch.tensor([2, 0])
    scale = torch.rand(3, 45, generator=gen)
    ours, g_ours = loss_and_grad(lambda t: focal_loss_per_anchor(t, labels, 0.25, gamma), x, scale)
    ref, g_ref = loss_and_grad(lambda t: reference_focal(t, labels, 0.25, gamma), x, scale)
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-5, atol=1e-6)
    assert (g_ours[labels < 0] == 0).all()


def test_focal_chunked_equals_dense_with_class_weights(small_chunks):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(200, 5, generator=gen, dtype=torch.float64) * 3
    x[3] = 800.0  # float64 overflow with a zero weight (0 * inf): recomputed
    labels = random_labels(gen, (200,), 5)
    weights = torch.tensor([1.0, 0.0, 2.0, 0.5, 1.0], dtype=torch.float64)
    alpha = torch.tensor([0.1, 0.25, 0.5, 0.9, 1.0], dtype=torch.float64)
    w_neg, w_pos = _column_weights(alpha, weights, x)
    grad = torch.empty_like(x)
    loss = _focal_chunked(x, labels, w_neg, w_pos, 2.0, grad)
    ref_loss, ref_grad = _focal_dense(x, labels, w_neg, w_pos, 2.0, True)
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(grad, ref_grad)
    assert torch.isfinite(loss).all()


def test_focal_gradcheck_float64_chunked(small_chunks):
    gen = torch.Generator().manual_seed(6)
    x = (torch.randn(2, 11, 3, generator=gen, dtype=torch.float64) * 2).requires_grad_(True)
    labels = random_labels(gen, (2, 11), 3)
    assert torch.autograd.gradcheck(lambda t: focal_loss_per_anchor(t, labels, 0.25, 2.0), (x,))


@pytest.mark.parametrize("fraction", [1.0, 0.05])
def test_softmax_ce_second_backward_of_a_retained_graph(small_chunks, fraction):
    """The first backward uses the buffer zeroed in forward; a second one takes and zeroes its own."""
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(2, 30, 5, generator=gen).requires_grad_(True)
    labels = random_labels(gen, (2, 30), 4)
    scales = [
        torch.rand(2, 30, generator=gen) * (torch.rand(2, 30, generator=gen) < fraction) for _ in range(2)
    ]
    loss = softmax_cross_entropy(x, labels)
    (first,) = torch.autograd.grad((loss * scales[0]).sum(), x, retain_graph=True)
    first = first.clone()
    (second,) = torch.autograd.grad((loss * scales[1]).sum(), x)  # other rows than the first
    for ours, scale in zip((first, second), scales, strict=True):
        _, expected = loss_and_grad(lambda t: reference_ce(t, labels), x.detach(), scale)
        torch.testing.assert_close(ours, expected)


def test_row_logsumexp_zeroes_the_given_buffer(small_chunks):
    x = torch.randn(4, 25, 6)
    zero = torch.full_like(x, 7.0)
    lse, _ = row_logsumexp_and_pick(x, torch.zeros(4, 25, dtype=torch.long), zero=zero)
    assert (zero == 0).all()
    torch.testing.assert_close(lse, torch.logsumexp(x, -1))
