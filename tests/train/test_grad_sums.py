"""``Float32GradSums``: micro-batch gradients of bf16 weights add up in float32, rounded once
before the last backward pass adds its own; the trainer uses it with ``grad_accum > 1``."""

from __future__ import annotations

import pytest
import torch
from test_trainer import tiny_config, train_losses

from lmforge.accounting import count_params, estimate_training_memory
from lmforge.train.grad_sums import Float32GradSums
from lmforge.train.runtime import run_memory_estimate
from lmforge.train.trainer import Trainer

N_MICRO = 16


def _micro_batches():
    gen = torch.Generator().manual_seed(0)
    # inputs of varied scale, so that the partial sums grow past each micro-batch's gradient
    return [torch.randn(8, 32, generator=gen) * (1 + k % 5) for k in range(N_MICRO)]


def _weight() -> torch.Tensor:
    w = torch.randn(24, 32, generator=torch.Generator().manual_seed(1)).bfloat16()
    return w.requires_grad_()


def _backward(w: torch.Tensor, x: torch.Tensor) -> None:
    (x.bfloat16() @ w.t()).float().square().mean().backward()


def test_sums_are_rounded_once_then_the_last_gradient_is_added():
    w, xs = _weight(), _micro_batches()
    each = []
    for x in xs:  # every micro-batch's own bf16 gradient
        _backward(w, x)
        each.append(w.grad.clone())
        w.grad = None
    sums = Float32GradSums([w])
    for k, x in enumerate(xs):
        if k == N_MICRO - 1:
            sums.restore()
        _backward(w, x)
        if k < N_MICRO - 1:
            sums.collect()
            assert w.grad is None
    partial = torch.stack([g.float() for g in each[:-1]]).sum(0)
    assert torch.equal(w.grad, partial.bfloat16() + each[-1])
    # closer to the exact sum than autograd's accumulation in bf16
    exact = torch.stack([g.double() for g in each]).sum(0)
    naive = each[0].clone()
    for g in each[1:]:
        naive += g
    ours = (w.grad.double() - exact).abs().sum()
    assert ours < 0.7 * (naive.double() - exact).abs().sum()  # 20.0 against 36.8


def test_float32_weights_are_left_to_autograd():
    w32 = torch.randn(4, 4, requires_grad=True)
    frozen = torch.randn(4, 4).bfloat16()  # not trainable
    sums = Float32GradSums([w32, frozen])
    assert not sums and sums.params == []


def test_a_weight_without_a_gradient_keeps_none_and_a_new_step_starts_afresh():
    w = _weight()
    sums = Float32GradSums([w])
    sums.collect()  # no gradient yet: nothing held
    sums.restore()
    assert w.grad is None
    xs = _micro_batches()
    for step in range(2):  # the second step's sum must not carry the first's
        _backward(w, xs[step])
        sums.collect()
        sums.restore()
        _backward(w, xs[step + 2])
        got = w.grad.clone()
        w.grad = None
        _backward(w, xs[step])
        first = w.grad.float()
        w.grad = None
        _backward(w, xs[step + 2])
        assert torch.equal(got, first.bfloat16() + w.grad)
        w.grad = None


def test_trainer_collects_after_each_micro_batch_and_restores_before_the_last(
    stories_data, tmp_path, monkeypatch
):
    """The order in the trainer's step, with ``grad_accum = 3``: forward, collect (the
    gradients leave ``.grad``), forward, collect, restore (they come back), forward."""
    events: list[str] = []
    collect, restore = Float32GradSums.collect, Float32GradSums.restore

    def spy(name, method):  # type: ignore[no-untyped-def]
        def run(self):  # type: ignore[no-untyped-def]
            method(self)
            grads = [p.grad is not None for p in self.params]
            events.append(f"{name}:{'grads' if all(grads) else 'none' if not any(grads) else '?'}")

        return run

    monkeypatch.setattr(Float32GradSums, "collect", spy("collect", collect))
    monkeypatch.setattr(Float32GradSums, "restore", spy("restore", restore))
    extra = ["train.log_interval=1", "train.eval_interval=0", "optim.warmup_iters=0"]
    extra += ["train.max_iters=2", 'train.param_dtype="bfloat16"', "train.grad_accum=3"]
    trainer = Trainer(tiny_config(stories_data, tmp_path / "run", *extra))
    forward = trainer.step_model.forward

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        events.append("forward")
        return forward(*args, **kwargs)

    monkeypatch.setattr(trainer.step_model, "forward", counted)
    trainer.fit()
    step = ["forward", "collect:none", "forward", "collect:none", "restore:grads", "forward"]
    assert [e for e in events if e == "forward" or ":" in e][: 2 * len(step)] == step * 2


def test_trainer_sums_bf16_gradients_in_float32_and_counts_them(stories_data, tmp_path, caplog):
    steps = ["train.log_interval=1", "train.eval_interval=0", "optim.warmup_iters=0"]
    steps += ["train.max_iters=10", 'train.param_dtype="bfloat16"']
    whole = Trainer(tiny_config(stories_data, tmp_path / "one", *steps)).fit().run_dir
    split = steps + ["train.batch_size=2", "train.grad_accum=4"]
    trainer = Trainer(tiny_config(stories_data, tmp_path / "four", *split))
    with caplog.at_level("WARNING", logger="lmforge.train.trainer"):
        trainer.fit()
    assert "gradients" not in caplog.text  # nothing to warn about in one process
    params = list(trainer.model.parameters())
    assert trainer.grad_sums is not None and trainer.grad_sums.params == params
    assert all(s is not None and s.dtype == torch.float32 for s in trainer.grad_sums._sums)
    # the same windows in four micro-batches of 2 as in one of 8: the same run
    a, b = train_losses(whole), train_losses(tmp_path / "four")
    for step in (1, 5, 10):
        assert b[step] == pytest.approx(a[step], abs=0.02), step
    # the memory model counts the sums, alive at every moment of the step
    cfg = trainer.config
    est = run_memory_estimate(cfg)
    assert est.inputs["grad_accum"] == 4 and est.inputs["param_dtype"] == "bf16"
    assert est.bytes("grad_sums") == 4 * count_params(cfg.model).total
    assert est.bytes("grad_sums") == sum(4 * p.numel() for p in params)
    one = estimate_training_memory(cfg.model, 2, param_dtype="bf16", compiled=cfg.train.compile)
    assert one.bytes("grad_sums") == 0
    # at the optimizer step the gradients are counted either way: the sums are the difference
    assert est.phases["optimizer"] - one.phases["optimizer"] == est.bytes("grad_sums")
