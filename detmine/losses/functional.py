"""The fused per-anchor classification losses (the functions behind ``detmine.losses.CLS_LOSSES``).

They return one value per anchor, ``[B, A]``, so a miner can
rank anchors and the criterion can sum whichever it selects. Ignored anchors
(label ``-1``) get loss 0 and no gradient.

Both are custom autograd functions with analytic gradients, equal to the
reference (``F.cross_entropy``; ``torchvision.ops.sigmoid_focal_loss`` on one-hot
targets) in values and gradients to float32 rounding (tested):

- softmax CE is ``logsumexp(x) - x[label]``: forward reads the logits once and
  writes no ``[B, A, K + 1]`` log-probabilities; backward computes the softmax
  gradient only for the anchors the miner selected;
- the sigmoid losses (focal, alpha-balanced CE) never build the one-hot target
  tensor: the loss of a negative column (target 0) is computed densely,
  ``(1 - alpha) * p**gamma * softplus(x)``, and only the one positive column per
  foreground anchor is replaced by ``alpha * (1 - p)**gamma * softplus(-x)``; the
  gradient is produced in the same pass, sharing ``sigmoid`` / ``softplus``.

On the CPU both go through the logits in L2-sized chunks of rows (no logits-sized
intermediate, whose first-touch page faults cost more than the arithmetic) and write
their gradient into :data:`~detmine.losses._cpu.GRADIENT_BUFFER`, memory reused from
the previous step (see :mod:`detmine.losses._cpu`). bench/loss_side.py measures the
effect against torchvision's loss code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable
from torchvision.ops import sigmoid_focal_loss as _tv_sigmoid_focal_loss

from detmine.losses._cpu import CHUNK_ELEMENTS, GRADIENT_BUFFER, row_logsumexp_and_pick

__all__ = [
    "softmax_cross_entropy",
    "sigmoid_focal_loss",
    "focal_loss_per_anchor",
    "balanced_cross_entropy_per_anchor",
]


def _rows_with_gradient(grad_out: Tensor) -> Tensor | None:
    """Flat indices ``[N]`` of the anchors whose incoming gradient is non-zero, or ``None``
    when more than a quarter are (then the dense computation is cheaper). With a miner most
    anchors get exactly zero gradient, and their ``[K]`` columns need no work in backward."""
    rows = grad_out.reshape(-1).nonzero().squeeze(1)
    return None if rows.numel() > grad_out.numel() // 4 else rows


class _SoftmaxCrossEntropy(torch.autograd.Function):
    """Per-anchor softmax CE, ``logsumexp(x) - x[label]``.

    Forward reads the logits once (:func:`~detmine.losses._cpu.row_logsumexp_and_pick` on the
    CPU) and writes nothing of their size but, when a gradient will be needed, zeros into
    the gradient buffer taken from :data:`~detmine.losses._cpu.GRADIENT_BUFFER` (memory
    already mapped after the first step), overlapped with the ``exp`` -- or, when the buffer
    comes back untouched from the last step's sparse backward, only the rows that backward
    wrote. Backward recomputes
    ``softmax = exp(x - lse)`` from the saved ``lse [B, A]`` only for the anchors with a
    non-zero incoming gradient (with a miner, a few percent of them) and copies those rows
    into that buffer. A second backward through a retained graph takes a new buffer."""

    @staticmethod
    def forward(ctx, logits: Tensor, labels: Tensor, weight: Tensor | None, need_grad: bool) -> Tensor:
        logits = logits.contiguous()  # flat row indexing below; a no-op for a head's output
        grad, zeroed = None, False
        if need_grad:
            grad, zeroed = GRADIENT_BUFFER.take_zeros(tuple(logits.shape), logits.dtype, logits.device)
        lse, target_logit = row_logsumexp_and_pick(logits, labels.clamp(min=0), zero=None if zeroed else grad)
        if grad is not None:
            GRADIENT_BUFFER.note_zeros(grad)
        loss = lse - target_logit
        if weight is not None:
            loss.mul_(weight[labels.clamp(min=0)])
        loss.masked_fill_(labels < 0, 0.0)
        ctx.save_for_backward(logits, labels, lse, weight)
        ctx.grad = grad  # zeros, for the first backward
        return loss

    @staticmethod
    @once_differentiable  # the gradient is written into a buffer: no graph of it
    def backward(ctx, grad_out: Tensor):
        logits, labels, lse, weight = ctx.saved_tensors
        grad, ctx.grad = ctx.grad, None
        zeroed = grad is not None
        if grad is None:
            grad = GRADIENT_BUFFER.take(tuple(logits.shape), logits.dtype, logits.device)
        scale = grad_out.masked_fill(labels < 0, 0.0)
        if weight is not None:
            scale = scale * weight[labels.clamp(min=0)]
        rows = _rows_with_gradient(scale)
        if rows is None:  # dense: softmax * g, minus g at the target column
            torch.sub(logits, lse.unsqueeze(-1), out=grad).exp_().mul_(scale.unsqueeze(-1))
            grad.scatter_add_(-1, labels.clamp(min=0).unsqueeze(-1), -scale.unsqueeze(-1))
        else:
            cols = logits.shape[-1]
            sub = _softmax_grad_rows(
                logits.view(-1, cols), labels.reshape(-1), lse.view(-1), scale.view(-1), rows
            )
            clean = zeroed and GRADIENT_BUFFER.is_zeros(grad)
            (grad if zeroed else grad.zero_()).view(-1, cols).index_copy_(0, rows, sub)
            if clean:  # the next step's buffer then zeros these rows only
                GRADIENT_BUFFER.note_rows(grad, rows)
        return grad, None, None, None


def _softmax_grad_rows(logits: Tensor, labels: Tensor, lse: Tensor, scale: Tensor, rows: Tensor) -> Tensor:
    """``scale * (softmax - one_hot(label))`` of the flat ``rows [N]`` of ``logits [R, C]``
    (with ``labels``, ``lse``, ``scale`` ``[R]``): ``[N, C]``."""
    g = scale[rows].unsqueeze(-1)
    sub = logits.index_select(0, rows).sub_(lse[rows].unsqueeze(-1)).exp_().mul_(g)
    return sub.scatter_add_(-1, labels[rows].unsqueeze(-1), -g)


def softmax_cross_entropy(logits: Tensor, labels: Tensor, class_weights: Tensor | None = None) -> Tensor:
    """Softmax cross-entropy per anchor (SSD).

    Equal to ``F.cross_entropy(..., reduction="none", ignore_index=-1, weight=class_weights)``
    (tested, values and gradients), computed by a custom autograd function that keeps
    no ``[B, A, K + 1]`` log-probabilities for backward and, when a miner leaves most
    anchors out, computes the softmax gradient of the selected anchors only.

    Args:
        logits: ``[B, A, K + 1]``, column 0 = background.
        labels: ``[B, A]`` int64 in ``-1..K``.
        class_weights: optional ``[K + 1]`` weight of each target class
            (background included), multiplying that anchor's loss.

    Returns:
        ``[B, A]`` loss, 0 where ``labels == -1``.
    """
    if class_weights is not None:
        class_weights = class_weights.to(device=logits.device, dtype=logits.dtype)
    # ctx.needs_input_grad is True even under no_grad: decide here (validation needs no buffer)
    need_grad = torch.is_grad_enabled() and logits.requires_grad
    return _SoftmaxCrossEntropy.apply(logits, labels, class_weights, need_grad)


def sigmoid_focal_loss(
    inputs: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2, reduction: str = "none"
) -> Tensor:
    """Sigmoid focal loss with ``torchvision.ops.sigmoid_focal_loss``'s signature and values.

    This is torchvision's composite implementation, re-exported so that there is one
    name for it in the package (arbitrary, possibly soft, targets). The detection
    path uses :func:`focal_loss_per_anchor`, the fused version specialised to one-hot
    targets built from labels, which is where the time and memory go.
    """
    return _tv_sigmoid_focal_loss(inputs, targets, alpha=alpha, gamma=gamma, reduction=reduction)


def _column_weights(
    alpha: float | Tensor, class_weights: Tensor | None, logits: Tensor
) -> tuple[Tensor, Tensor]:
    """Per-column weights ``[K]`` of negative (target 0) and positive (target 1) terms."""
    num_classes = logits.shape[-1]
    alpha_t = torch.as_tensor(alpha, dtype=logits.dtype, device=logits.device)
    if alpha_t.ndim == 0:
        alpha_t = alpha_t.expand(num_classes)
    if alpha_t.shape != (num_classes,):
        raise ValueError(
            f"alpha must be a float or have {num_classes} values (one per class), got shape {tuple(alpha_t.shape)}"
        )
    if not isinstance(alpha, Tensor) and bool(((alpha_t < 0) | (alpha_t > 1)).any()):
        # tensors are not checked here: that would cost a device sync every step
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    w_neg, w_pos = 1.0 - alpha_t, alpha_t
    if class_weights is not None:
        cw = torch.as_tensor(class_weights, dtype=logits.dtype, device=logits.device)
        if cw.shape != (num_classes,):
            raise ValueError(
                f"class_weights must have {num_classes} values (one per class), got {tuple(cw.shape)}"
            )
        w_neg, w_pos = w_neg * cw, w_pos * cw
    return w_neg.contiguous(), w_pos.contiguous()


def _positive_term(x: Tensor, gamma: float) -> Tensor:
    """``(1 - p)**gamma * softplus(-x)``: focal loss of a logit whose target is 1."""
    out = F.softplus(-x)
    if gamma != 0:
        out = out * torch.sigmoid(-x).pow(gamma)
    return out


def _positive_grad(x: Tensor, gamma: float) -> Tensor:
    """d/dx of :func:`_positive_term`: ``-(1 - p)**gamma * (gamma * p * softplus(-x) + 1 - p)``."""
    q = torch.sigmoid(-x)  # 1 - p
    if gamma == 0:
        return -q
    return -(q.pow(gamma) * (gamma * (1.0 - q) * F.softplus(-x) + q))


def _focal_dense(
    logits: Tensor, labels: Tensor, w_neg: Tensor, w_pos: Tensor, gamma: float, need_grad: bool
) -> tuple[Tensor, Tensor | None]:
    """Per-row focal loss ``[N]`` of ``logits [N, K]`` and, if ``need_grad``, ``d loss / d x``
    ``[N, K]``, with whole-tensor operations (the GPU path; on the CPU the rows that
    :func:`_focal_chunked` cannot take)::

        p = sigmoid(x);  loss = w * p^g * softplus(x)         (in the softplus buffer)
        grad = w * p^(g+1) + g * (1 - p) * loss               (in the p^g buffer)

    then the one positive column per foreground row is overwritten. Ignored rows are not
    masked here.
    """
    p = torch.sigmoid(logits)
    loss = F.softplus(logits)
    p_gamma = None if gamma == 0 else (p * p if gamma == 2 else p.pow(gamma))
    if p_gamma is not None:
        loss.mul_(p_gamma)
    loss.mul_(w_neg)
    grad = None
    if need_grad:
        if p_gamma is None:
            grad = p.mul_(w_neg)
        else:
            grad = p_gamma.mul_(p).mul_(w_neg).add_(loss, alpha=gamma).addcmul_(p, loss, value=-gamma)
    pos_rows = (labels > 0).nonzero().squeeze(1)
    pos_c = labels[pos_rows] - 1
    x_pos = logits[pos_rows, pos_c]
    loss[pos_rows, pos_c] = _positive_term(x_pos, gamma) * w_pos[pos_c]
    if grad is not None:
        grad[pos_rows, pos_c] = _positive_grad(x_pos, gamma) * w_pos[pos_c]
    return loss.sum(dim=-1), grad


def _focal_chunked(
    logits: Tensor, labels: Tensor, w_neg: Tensor, w_pos: Tensor, gamma: float, grad: Tensor | None
) -> Tensor:
    """:func:`_focal_dense` on the CPU: per-row loss ``[N]`` of ``logits [N, K]``, with the
    gradient written into ``grad [N, K]`` when given.

    Rows go through in chunks of about 1 MB, so every intermediate (``p``, ``softplus``,
    ``p^g``) lives in three small reused buffers (L2-resident, never page-faulted) and the
    logits are read once; the per-row sum is a matrix-vector product with ``w_neg``. The
    positive column of each foreground row is zeroed before that sum, then its own term is
    added. ``softplus(x) = log1p(exp(x))`` overflows beyond ``x ~ 88`` (float32): such
    rows, non-finite at the end, are recomputed with :func:`_focal_dense`.
    """
    rows, cols = logits.shape
    pos_rows = (labels > 0).nonzero().squeeze(1)
    pos_c = labels[pos_rows] - 1
    x_pos = logits[pos_rows, pos_c]
    pos_elems = pos_rows * cols + pos_c
    step = max(1, CHUNK_ELEMENTS // cols)
    starts = list(range(0, rows, step))
    # positives of chunk i: pos_elems[cuts[i]:cuts[i + 1]] (nonzero() is sorted)
    cuts = torch.searchsorted(pos_rows, torch.tensor([*starts, rows])).tolist()
    p_buf, term_buf, pg_buf = (torch.empty(min(step, rows), cols, dtype=logits.dtype) for _ in range(3))
    out = torch.empty(rows, dtype=logits.dtype)
    for i, start in enumerate(starts):
        x = logits[start : start + step]
        n = x.shape[0]
        p = torch.sigmoid(x, out=p_buf[:n])
        term = torch.exp(x, out=term_buf[:n]).log1p_()  # softplus(x)
        if gamma != 0:
            pg = torch.mul(p, p, out=pg_buf[:n]) if gamma == 2 else torch.pow(p, gamma, out=pg_buf[:n])
            term.mul_(pg)
        if grad is not None:
            g = grad[start : start + n]
            if gamma == 0:
                torch.mul(p, w_neg, out=g)
            else:
                torch.mul(pg, p, out=g).add_(term, alpha=gamma).addcmul_(p, term, value=-gamma).mul_(w_neg)
        if cuts[i + 1] > cuts[i]:
            term.view(-1).index_fill_(0, pos_elems[cuts[i] : cuts[i + 1]] - start * cols, 0.0)
        torch.mv(term, w_neg, out=out[start : start + n])
    out.index_add_(0, pos_rows, _positive_term(x_pos, gamma) * w_pos[pos_c])
    if grad is not None:
        grad.view(-1)[pos_elems] = _positive_grad(x_pos, gamma) * w_pos[pos_c]
    redo = (~torch.isfinite(out)).nonzero().squeeze(1)
    if redo.numel():
        redo_loss, redo_grad = _focal_dense(logits[redo], labels[redo], w_neg, w_pos, gamma, grad is not None)
        out[redo] = redo_loss
        if grad is not None and redo_grad is not None:
            grad[redo] = redo_grad
    return out


def _focal_forward(
    logits: Tensor, labels: Tensor, w_neg: Tensor, w_pos: Tensor, gamma: float, need_grad: bool
) -> tuple[Tensor, Tensor | None]:
    """Per-anchor focal loss ``[B, A]`` (0 where ``labels == -1``) of ``logits [B, A, K]`` and,
    if ``need_grad``, ``d loss / d logits [B, A, K]``: chunked on the CPU
    (:func:`_focal_chunked`, the gradient in :data:`~detmine.losses._cpu.GRADIENT_BUFFER`),
    whole-tensor elsewhere (:func:`_focal_dense`)."""
    cols = logits.shape[-1]
    x, flat_labels = logits.detach().reshape(-1, cols), labels.reshape(-1)
    if logits.device.type == "cpu":
        grad = GRADIENT_BUFFER.take(tuple(logits.shape), logits.dtype, logits.device) if need_grad else None
        out = _focal_chunked(
            x, flat_labels, w_neg, w_pos, gamma, None if grad is None else grad.view(-1, cols)
        )
    else:
        out, grad = _focal_dense(x, flat_labels, w_neg, w_pos, gamma, need_grad)
        grad = None if grad is None else grad.view(logits.shape)
    out = out.view(labels.shape).masked_fill_(labels < 0, 0.0)
    return out, grad


class _PerAnchorSigmoidFocal(torch.autograd.Function):
    """Forward computes the loss and, when the logits need a gradient, the full
    ``d loss / d x`` in the same pass (sharing ``sigmoid`` and ``softplus``, the
    expensive parts); backward only scales it, in place. A second backward through
    a retained graph recomputes it the same way (so results are reproducible)."""

    @staticmethod
    def forward(
        ctx, logits: Tensor, labels: Tensor, w_neg: Tensor, w_pos: Tensor, gamma: float, need_grad: bool
    ) -> Tensor:
        out, ctx.grad = _focal_forward(logits, labels, w_neg, w_pos, gamma, need_grad)
        ctx.save_for_backward(logits, labels, w_neg, w_pos)
        ctx.gamma = gamma
        return out

    @staticmethod
    @once_differentiable  # the gradient is written into a buffer: no graph of it
    def backward(ctx, grad_out: Tensor):
        logits, labels, w_neg, w_pos = ctx.saved_tensors
        grad, ctx.grad = ctx.grad, None
        if grad is None:  # second backward of a retained graph
            _, grad = _focal_forward(logits, labels, w_neg, w_pos, ctx.gamma, True)
        scale = grad_out.masked_fill(labels < 0, 0.0).unsqueeze(-1)
        return grad.mul_(scale), None, None, None, None, None


def focal_loss_per_anchor(
    logits: Tensor,
    labels: Tensor,
    alpha: float | Tensor = 0.25,
    gamma: float = 2.0,
    class_weights: Tensor | None = None,
) -> Tensor:
    """Sigmoid focal loss summed over classes, per anchor (RetinaNet).

    Equivalent to ``sigmoid_focal_loss(logits, one_hot(labels), alpha, gamma).sum(-1)``
    where background rows of the one-hot target are all zeros (label ``k`` sets
    column ``k - 1``), with ignored anchors set to 0 -- without building the
    one-hot tensor.

    Args:
        logits: ``[B, A, K]`` (no background column).
        labels: ``[B, A]`` int64 in ``-1..K``.
        alpha: weight of the positive term (negatives get ``1 - alpha``); a float
            or ``[K]`` per-class values. ``-1`` is not supported (use 0.5 and
            scale instead).
        gamma: focusing exponent, ``>= 0``; 0 gives alpha-balanced BCE.
        class_weights: optional ``[K]`` multiplier of every term of column ``k``.

    Returns:
        ``[B, A]`` loss, 0 where ``labels == -1``.
    """
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    w_neg, w_pos = _column_weights(alpha, class_weights, logits)
    # ctx.needs_input_grad is True even under no_grad: decide here (validation skips the gradient)
    need_grad = torch.is_grad_enabled() and logits.requires_grad
    return _PerAnchorSigmoidFocal.apply(logits, labels, w_neg, w_pos, float(gamma), need_grad)


def balanced_cross_entropy_per_anchor(
    logits: Tensor, labels: Tensor, alpha: float | Tensor = 0.25, class_weights: Tensor | None = None
) -> Tensor:
    """Alpha-balanced sigmoid BCE per anchor (the focal paper's baseline): focal with ``gamma = 0``.

    Shapes as :func:`focal_loss_per_anchor`.
    """
    return focal_loss_per_anchor(logits, labels, alpha=alpha, gamma=0.0, class_weights=class_weights)
