"""The LM loss: chunked fused head == full logits (values and gradients), z-loss, softcap."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lmforge.model.functional import softcap
from lmforge.model.loss import lm_head_loss, loss_from_logits


def _inputs(rows: int = 13, d: int = 8, vocab: int = 21, seed: int = 0, scale: float = 1.0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(rows, d, generator=gen, dtype=torch.float64) * scale
    weight = torch.randn(vocab, d, generator=gen, dtype=torch.float64)
    targets = torch.randint(0, vocab, (rows,), generator=gen)
    targets[[1, 5]] = -100
    return hidden.requires_grad_(), weight.requires_grad_(), targets


def _full(hidden, weight, targets, z_loss=0.0, cap=None):  # type: ignore[no-untyped-def]
    logits = hidden @ weight.T
    if cap is not None:
        logits = softcap(logits, cap)
    return loss_from_logits(logits, targets, z_loss=z_loss)


def test_loss_from_logits_is_cross_entropy() -> None:
    hidden, weight, targets = _inputs()
    logits = hidden @ weight.T
    out = loss_from_logits(logits, targets)
    torch.testing.assert_close(out.loss, F.cross_entropy(logits, targets, ignore_index=-100))
    torch.testing.assert_close(out.ce, out.loss.detach())
    assert out.z_loss == 0 and not out.ce.requires_grad


def test_z_loss_value() -> None:
    hidden, weight, targets = _inputs()
    logits = hidden @ weight.T
    out = loss_from_logits(logits, targets, z_loss=1e-2)
    valid = targets != -100
    lse = torch.logsumexp(logits, -1)[valid]
    torch.testing.assert_close(out.z_loss, 1e-2 * lse.square().mean().detach())
    torch.testing.assert_close(out.loss, out.ce + out.z_loss)
    torch.testing.assert_close(out.metrics["z/mean_logsumexp"], lse.mean().detach())


@pytest.mark.parametrize("chunk_size", [None, 1, 4, 13, 100])
@pytest.mark.parametrize("z_loss,cap", [(0.0, None), (1e-2, None), (1e-3, 2.5)])
def test_chunked_equals_full_values_and_grads(chunk_size, z_loss, cap) -> None:  # type: ignore[no-untyped-def]
    hidden, weight, targets = _inputs(scale=2.0)
    full = _full(hidden, weight, targets, z_loss, cap)
    gh_ref, gw_ref = torch.autograd.grad(full.loss * 3.0, (hidden, weight))
    ours = lm_head_loss(hidden, weight, targets, z_loss=z_loss, softcap=cap, chunk_size=chunk_size)
    torch.testing.assert_close(ours.loss, full.loss)
    torch.testing.assert_close(ours.ce, full.ce)
    torch.testing.assert_close(ours.z_loss, full.z_loss)
    for key, value in full.metrics.items():
        torch.testing.assert_close(ours.metrics[key], value)
    gh, gw = torch.autograd.grad(ours.loss * 3.0, (hidden, weight))  # upstream grad is scaled
    torch.testing.assert_close(gh, gh_ref)
    torch.testing.assert_close(gw, gw_ref)


def test_chunked_with_batch_dims_and_only_one_input_needing_grad() -> None:
    hidden, weight, targets = _inputs(rows=12)
    h3, t3 = hidden.detach().view(3, 4, 8), targets.view(3, 4)
    ours = lm_head_loss(h3, weight, t3, chunk_size=5)
    (gw,) = torch.autograd.grad(ours.loss, (weight,))
    (gw_ref,) = torch.autograd.grad(_full(h3, weight, t3).loss, (weight,))
    torch.testing.assert_close(gw, gw_ref)


def test_softcap_metric_reports_raw_logits() -> None:
    hidden, weight, targets = _inputs(scale=50.0)
    out = lm_head_loss(hidden, weight, targets, softcap=5.0, chunk_size=4)
    raw = (hidden @ weight.T).abs().max()
    torch.testing.assert_close(out.metrics["logits/max_abs_raw"], raw.detach())
    assert out.metrics["logits/max_abs"] <= 5.0 < out.metrics["logits/max_abs_raw"]


def test_no_grad_path_and_all_ignored_batch() -> None:
    hidden, weight, targets = _inputs()
    with torch.no_grad():
        ours = lm_head_loss(hidden, weight, targets, chunk_size=3)
    assert not ours.loss.requires_grad
    torch.testing.assert_close(ours.loss, _full(hidden, weight, targets).loss.detach())
    ignored = torch.full_like(targets, -100)
    out = lm_head_loss(hidden, weight, ignored, chunk_size=3)
    assert out.loss == 0
    gh, gw = torch.autograd.grad(out.loss, (hidden, weight))
    assert not gh.any() and not gw.any()


def test_huge_logits_stay_finite() -> None:
    hidden, weight, targets = _inputs()
    hidden32, weight32 = hidden.detach().float(), weight.detach().float()
    logits = (hidden32 @ weight32.T) * 1000
    out = loss_from_logits(logits, targets, z_loss=1e-4)
    assert torch.isfinite(out.loss)
    torch.testing.assert_close(out.ce, F.cross_entropy(logits, targets))
    chunked = lm_head_loss(hidden32 * 1000, weight32.requires_grad_(), targets, chunk_size=4)
    assert torch.isfinite(chunked.loss)
    chunked.loss.backward()
    assert weight32.grad is not None and torch.isfinite(weight32.grad).all()


def test_bf16_autocast_chunked_close_to_full() -> None:
    hidden, weight, targets = _inputs(rows=64, d=32, vocab=50)
    hidden, weight = hidden.detach().float(), weight.detach().float().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        full = loss_from_logits(F.linear(hidden, weight), targets)
        ours = lm_head_loss(hidden, weight, targets, chunk_size=16)
    assert ours.loss.dtype == torch.float32
    torch.testing.assert_close(ours.loss, full.loss, rtol=1e-3, atol=1e-3)
    (gw,) = torch.autograd.grad(ours.loss, (weight,))
    (gw_ref,) = torch.autograd.grad(full.loss, (weight,))
    assert gw.dtype == torch.float32
    torch.testing.assert_close(gw, gw_ref, rtol=2e-2, atol=2e-3)


def test_errors() -> None:
    hidden, weight, targets = _inputs()
    with pytest.raises(ValueError, match="chunk_size"):
        lm_head_loss(hidden, weight, targets, chunk_size=0)
    with pytest.raises(ValueError, match="match"):
        lm_head_loss(hidden, weight, targets[:-1])
    with pytest.raises(ValueError, match="integer"):
        loss_from_logits(hidden @ weight.T, targets.double())


@pytest.mark.parametrize("chunk_size", [None, 1, 4])
def test_accuracy_counts_argmax_hits_over_targets(chunk_size: int | None) -> None:
    hidden, weight, targets = _inputs(rows=40, vocab=5, scale=3.0)
    logits = hidden @ weight.T
    targets[::3] = logits.argmax(-1)[::3]  # about a third right for sure, some others by chance
    keep = targets != -100
    expected = (logits.argmax(-1)[keep] == targets[keep]).double().mean()
    fused = lm_head_loss(hidden, weight, targets, chunk_size=chunk_size, accuracy=True)
    torch.testing.assert_close(fused.metrics["accuracy"], expected)
    dense = loss_from_logits(logits, targets, accuracy=True)
    torch.testing.assert_close(dense.metrics["accuracy"], expected)
    assert "accuracy" not in lm_head_loss(hidden, weight, targets).metrics
    fused.loss.backward()  # the extra output does not disturb the gradients
    assert hidden.grad is not None and weight.grad is not None
