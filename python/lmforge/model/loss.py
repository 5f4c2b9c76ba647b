"""The language-model loss: LM head → (soft-capped) logits → cross-entropy (+ z-loss).

Design choices:

* **float32 logits.** The head's matmul runs in the autocast dtype; the logits are cast to
  float32 before the softmax, so bf16 training computes the same loss as float32 training up to
  the matmul's rounding (nanoGPT, OLMo).
* **Optional soft-capping** ``c · tanh(z / c)`` of the logits (Gemma 2) and **z-loss**
  ``w · mean(logsumexp(z)²)`` (PaLM, Chowdhery et al. 2022), which keeps the softmax normaliser
  near 1 so the logits cannot drift upwards in bf16. Both are measured on the final logits.
* **Chunked, fused head + loss** (:func:`lm_head_loss`). ``tokens × vocab`` float32 logits are
  the largest activation of a small model (32 K tokens × 50 K vocab = 6.6 GB). The head is
  applied to ``chunk_size`` rows at a time, and — because the loss is the last operation — the
  gradients of the hidden states and of the head weight are computed right there, chunk by
  chunk, from ``softmax - onehot`` (the "fused linear cross-entropy" of Liger-Kernel,
  Hsu et al. 2024). Backward then only scales them, so no logits are kept and none are
  recomputed: the same FLOPs as the plain path, with one chunk of logits alive at a time. When
  no gradient is needed (evaluation) the chunks are only reduced. On a GPU the softmax,
  statistics and gradient of a chunk are one Triton kernel (:mod:`lmforge.kernels.cross_entropy`)
  that reads the low-precision logits twice instead of materialising them in float32.
* **Ignored targets** (``-100``, as in ``F.cross_entropy``) are left out of both means; a batch
  with no target at all has loss 0 rather than NaN.
* **Accuracy on request** (``accuracy=True``, the masked-LM metric): the share of targets that
  are their row's argmax, counted chunk by chunk from the logits the loss already computes.
* The named parts (``ce``, the weighted ``z_loss`` term) and the metrics are detached:
  back-propagate ``loss``. Metrics are tensors (no ``.item()``: no GPU sync, no graph break).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lmforge.kernels import use_triton
from lmforge.kernels.cross_entropy import head_cross_entropy
from lmforge.model.functional import at_least_float32
from lmforge.model.functional import softcap as apply_softcap

__all__ = ["HeadLoss", "lm_head_loss", "loss_from_logits"]


@dataclass
class HeadLoss:
    """The LM loss and its parts.

    Attributes:
        loss: scalar to back-propagate, ``ce + z_loss``.
        ce: detached mean cross-entropy over the targets not ignored.
        z_loss: detached weighted z-loss term (0 when disabled).
        metrics: detached scalars: ``logits/max_abs``, ``z/mean_logsumexp``, with soft-capping
            ``logits/max_abs_raw`` (before the cap) and, when asked for, ``accuracy`` (the share
            of targets not ignored that are their row's argmax).
    """

    loss: Tensor
    ce: Tensor
    z_loss: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)


def _check_shapes(hidden_or_logits: Tensor, targets: Tensor) -> None:
    if hidden_or_logits.shape[:-1] != targets.shape:
        raise ValueError(
            f"targets {tuple(targets.shape)} must match the leading dimensions of "
            f"{tuple(hidden_or_logits.shape)}"
        )
    if targets.dtype.is_floating_point or targets.dtype == torch.bool:
        raise ValueError(f"targets must be an integer tensor, got {targets.dtype}")


def _sums(logits: Tensor, targets: Tensor, valid: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-row log-normaliser and the sums of NLL, lse² and lse over the valid rows."""
    lse = torch.logsumexp(logits, dim=-1)  # subtracts the row max internally
    target_logit = logits.gather(-1, torch.where(valid, targets, 0).unsqueeze(-1)).squeeze(-1)
    nll = torch.where(valid, lse - target_logit, 0.0)
    lse_valid = torch.where(valid, lse, 0.0)
    return lse, nll.sum(), lse_valid.square().sum(), lse_valid.sum()


def _finish(
    ce_sum: Tensor, z_sum: Tensor, lse_sum: Tensor, n: Tensor, z_loss: float
) -> tuple[Tensor, Tensor, Tensor]:
    ce, z = ce_sum / n, z_loss * z_sum / n
    return ce + z, ce, z


def _correct(logits: Tensor, targets: Tensor, valid: Tensor) -> Tensor:
    """How many valid rows have their target as the argmax (ties: the first maximum)."""
    return ((logits.argmax(dim=-1) == targets) & valid).sum()


def loss_from_logits(
    logits: Tensor,
    targets: Tensor,
    *,
    z_loss: float = 0.0,
    ignore_index: int = -100,
    accuracy: bool = False,
) -> HeadLoss:
    """Cross-entropy (+ z-loss) of float logits, differentiable by autograd.

    Args:
        logits: ``(..., vocab)``, already soft-capped if the model caps; cast to float32.
        targets: integer ``(...)``; ``ignore_index`` marks positions without a loss.
        z_loss: weight of ``mean(logsumexp(logits)²)``.
        ignore_index: the ignored target value.
        accuracy: also report ``metrics["accuracy"]``.

    Returns:
        A :class:`HeadLoss` (without ``logits/max_abs_raw``).

    Raises:
        ValueError: on mismatched shapes or non-integer targets.
    """
    _check_shapes(logits, targets)
    logits = at_least_float32(logits).reshape(-1, logits.shape[-1])
    targets = targets.reshape(-1)
    valid = targets != ignore_index
    n = valid.sum().clamp(min=1).to(logits.dtype)
    _, ce_sum, z_sum, lse_sum = _sums(logits, targets, valid)
    loss, ce, z = _finish(ce_sum, z_sum, lse_sum, n, z_loss)
    metrics = {
        "logits/max_abs": logits.detach().abs().amax(),
        "z/mean_logsumexp": (lse_sum / n).detach(),
    }
    if accuracy:
        metrics["accuracy"] = (_correct(logits.detach(), targets, valid) / n).detach()
    return HeadLoss(loss=loss, ce=ce.detach(), z_loss=z.detach(), metrics=metrics)


def _chunk_grad(
    logits: Tensor, lse: Tensor, targets: Tensor, valid: Tensor, n: Tensor, z_loss: float
) -> Tensor:
    """d(loss)/d(logits) of one chunk: ``(p · (1 + 2 w lse) - onehot) · valid / n``."""
    probs = torch.exp(logits - lse.unsqueeze(-1))
    row_scale = torch.where(valid, 1.0 / n, 0.0)
    grad = probs * (row_scale * (1.0 + 2.0 * z_loss * lse)).unsqueeze(-1)
    safe = torch.where(valid, targets, 0).unsqueeze(-1)
    return grad.scatter_add(-1, safe, -row_scale.unsqueeze(-1))


class _FusedHeadLoss(torch.autograd.Function):
    """Head matmul + loss in row chunks, gradients computed in forward (see module docstring)."""

    @staticmethod
    def forward(
        ctx: Any,
        hidden: Tensor,
        weight: Tensor,
        targets: Tensor,
        z_loss: float,
        cap: float | None,
        chunk_size: int,
        ignore_index: int,
        need_hidden_grad: bool,
        need_weight_grad: bool,
        accuracy: bool,
    ) -> tuple[Tensor, ...]:
        valid = targets != ignore_index
        zero = at_least_float32(hidden.new_zeros(()))
        n = valid.sum().clamp(min=1).to(zero.dtype)
        # the kernel reports no argmax: the masked-LM accuracy takes the PyTorch path
        if use_triton(hidden) and hidden.shape[0] > 0 and not accuracy:
            sums, grad_hidden_t, grad_weight = _triton_head(
                hidden, weight, targets, valid, z_loss, cap, chunk_size, ignore_index,
                need_hidden_grad, need_weight_grad,
            )  # fmt: skip
            ce_sum, z_sum, lse_sum, max_abs, max_raw = sums
            correct = zero
            grad_hidden = [grad_hidden_t] if grad_hidden_t is not None else []
        else:
            sums, grad_hidden, grad_weight = _torch_chunks(
                hidden, weight, targets, valid, n, z_loss, cap, chunk_size,
                need_hidden_grad, need_weight_grad, accuracy,
            )  # fmt: skip
            ce_sum, z_sum, lse_sum, max_abs, max_raw, correct = sums
        loss, ce, z = _finish(ce_sum, z_sum, lse_sum, n, z_loss)
        ctx.save_for_backward(
            (torch.cat(grad_hidden) if len(grad_hidden) > 1 else grad_hidden[0])
            if grad_hidden
            else None,
            None if grad_weight is None else grad_weight.to(weight.dtype),
        )
        mean_lse, acc = lse_sum / n, correct / n
        ctx.mark_non_differentiable(ce, z, max_abs, max_raw, mean_lse, acc)
        return loss, ce, z, max_abs, max_raw, mean_lse, acc

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor, *_: Any) -> tuple[Tensor | None, ...]:
        grad_hidden, grad_weight = ctx.saved_tensors
        gh = None if grad_hidden is None else grad_hidden * grad_loss.to(grad_hidden.dtype)
        gw = None if grad_weight is None else grad_weight * grad_loss.to(grad_weight.dtype)
        return gh, gw, None, None, None, None, None, None, None, None


def _torch_chunks(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    valid: Tensor,
    n: Tensor,
    z_loss: float,
    cap: float | None,
    chunk_size: int,
    need_hidden_grad: bool,
    need_weight_grad: bool,
    accuracy: bool,
) -> tuple[tuple[Tensor, ...], list[Tensor], Tensor | None]:
    """The PyTorch path: per chunk the head matmul, float32 logits, their sums and gradients.

    Returns:
        ``(ce_sum, z_sum, lse_sum, max_abs, max_raw, correct)``, the hidden-state gradient
        chunks and the head-weight gradient (float32 or wider; ``None`` when not wanted).
    """
    zero = at_least_float32(hidden.new_zeros(()))
    ce_sum, z_sum, lse_sum, max_abs, max_raw, correct = zero, zero, zero, zero, zero, zero
    grad_hidden: list[Tensor] = []
    acc_dtype = torch.promote_types(weight.dtype, torch.float32)
    grad_weight = torch.zeros_like(weight, dtype=acc_dtype) if need_weight_grad else None
    weight_lp: Tensor | None = None  # the head in the gradients' dtype, cast once
    for start in range(0, hidden.shape[0], chunk_size):
        h = hidden[start : start + chunk_size]
        t, m = targets[start : start + chunk_size], valid[start : start + chunk_size]
        raw_lp = F.linear(h, weight)  # the autocast dtype
        raw = at_least_float32(raw_lp)
        logits = raw if cap is None else apply_softcap(raw, cap)
        lse, ce_c, z_c, lse_c = _sums(logits, t, m)
        ce_sum, z_sum, lse_sum = ce_sum + ce_c, z_sum + z_c, lse_sum + lse_c
        max_abs = torch.maximum(max_abs, logits.abs().amax())
        max_raw = torch.maximum(max_raw, raw.abs().amax())
        if accuracy:
            correct = correct + _correct(logits, t, m)
        if not (need_hidden_grad or need_weight_grad):
            continue
        grad = _chunk_grad(logits, lse, t, m, n, z_loss)
        if cap is not None:
            grad = grad * (1.0 - (logits / cap).square())  # d(c·tanh(x/c))/dx
        grad = grad.to(raw_lp.dtype)
        if need_hidden_grad:
            if weight_lp is None:
                weight_lp = weight.to(grad.dtype)
            grad_hidden.append((grad @ weight_lp).to(hidden.dtype))
        if grad_weight is not None:
            grad_weight += grad.t() @ h.to(grad.dtype)
    return (ce_sum, z_sum, lse_sum, max_abs, max_raw, correct), grad_hidden, grad_weight


def _triton_head(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    valid: Tensor,
    z_loss: float,
    cap: float | None,
    chunk_size: int,
    ignore_index: int,
    need_hidden_grad: bool,
    need_weight_grad: bool,
) -> tuple[tuple[Tensor, ...], Tensor | None, Tensor | None]:
    """The GPU path: :func:`lmforge.kernels.cross_entropy.head_cross_entropy` in the matmul
    dtype (the autocast dtype, or the inputs' own), the same sums and gradients."""
    dtype = hidden.dtype
    if torch.is_autocast_enabled(hidden.device.type):
        dtype = torch.get_autocast_dtype(hidden.device.type)
    stats, grad_h, grad_w = head_cross_entropy(
        hidden.to(dtype),
        weight.to(dtype),
        targets,
        float(z_loss),
        float(cap or 0.0),
        chunk_size,
        ignore_index,
        need_hidden_grad,
        need_weight_grad,
    )
    lse_v = torch.where(valid, stats[:, 0], 0.0)
    sums = (
        stats[:, 1].sum(),
        lse_v.square().sum(),
        lse_v.sum(),
        stats[:, 2].amax(),
        stats[:, 3].amax(),
    )
    grad_hidden = grad_h.to(hidden.dtype) if need_hidden_grad else None
    grad_weight = grad_w if need_weight_grad else None
    return sums, grad_hidden, grad_weight


def lm_head_loss(
    hidden: Tensor,
    head_weight: Tensor,
    targets: Tensor,
    *,
    z_loss: float = 0.0,
    softcap: float | None = None,
    chunk_size: int | None = None,
    ignore_index: int = -100,
    accuracy: bool = False,
) -> HeadLoss:
    """The LM loss from the final hidden states, without materialising all logits.

    Equal (values and gradients, up to float rounding) to
    ``loss_from_logits(softcap(hidden @ head_weightᵀ), targets)``.

    Args:
        hidden: ``(..., d_model)`` final (normalised) hidden states.
        head_weight: ``(vocab, d_model)`` the LM head (or the tied embedding).
        targets: integer ``(...)``; ``ignore_index`` marks positions without a loss.
        z_loss: weight of ``mean(logsumexp(logits)²)``.
        softcap: if set, logits are ``softcap · tanh(raw / softcap)``.
        chunk_size: rows per chunk; ``None`` means one chunk.
        ignore_index: the ignored target value.
        accuracy: also report ``metrics["accuracy"]``.

    Returns:
        A :class:`HeadLoss`.

    Raises:
        ValueError: on mismatched shapes, non-integer targets or a non-positive ``chunk_size``.
    """
    _check_shapes(hidden, targets)
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    hidden2d = hidden.reshape(-1, hidden.shape[-1])
    rows = hidden2d.shape[0]
    grad_on = torch.is_grad_enabled()
    loss, ce, z, max_abs, max_raw, mean_lse, acc = _FusedHeadLoss.apply(
        hidden2d,
        head_weight,
        targets.reshape(-1),
        float(z_loss),
        softcap,
        max(rows, 1) if chunk_size is None else chunk_size,
        ignore_index,
        grad_on and hidden.requires_grad,
        grad_on and head_weight.requires_grad,
        accuracy,
    )
    metrics = {"logits/max_abs": max_abs, "z/mean_logsumexp": mean_lse}
    if softcap is not None:
        metrics["logits/max_abs_raw"] = max_raw
    if accuracy:
        metrics["accuracy"] = acc
    return HeadLoss(loss=loss, ce=ce, z_loss=z, metrics=metrics)
