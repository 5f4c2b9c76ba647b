"""The MoE MLP inside the Transformer: equal to the expert loop, losses and metrics through
``ModelOutput``, one compiled graph, activation checkpointing, the bias hook, optimizer kinds,
cached generation and export."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from model_testing import tiny_model, tokens

from lmforge.model.export import export_hf_llama, export_safetensors, load_safetensors
from lmforge.model.generate import generate
from lmforge.model.kv_cache import KVCache
from lmforge.model.moe import MoE, reference_moe
from lmforge.optim import OptimConfig, build_optimizer

VARIANTS: dict[str, dict[str, Any]] = {
    "token_choice": dict(n_routed_experts=4, z_loss_weight=1e-3),
    "sigmoid_shared_capacity": dict(
        n_routed_experts=6,
        top_k=3,
        router="sigmoid",
        n_shared_experts=1,
        capacity_factor=1.0,
        n_expert_groups=2,
        device_loss_weight=0.05,
        expert_d_ff=24,
    ),  # fmt: skip
    "sigmoid_batch_cap": dict(n_routed_experts=4, router="sigmoid", batch_load_cap=1.1),
    "expert_choice": dict(n_routed_experts=4, router="expert_choice", z_loss_weight=1e-3),
    "hash": dict(n_routed_experts=4, router="hash", aux_loss_weight=0.0, top_k=1),
}
IDX, TGT = tokens((2, 12)), tokens((2, 12), seed=2)


def moe_model(variant: str, **overrides: Any):
    return tiny_model(moe=VARIANTS[variant], **overrides)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_moe_layer_equals_the_expert_loop(variant: str) -> None:
    model = moe_model(variant)
    layer = model.layers[1].mlp
    assert isinstance(layer, MoE)
    x = torch.randn(2, 12, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    flat = x.reshape(-1, 32)
    routing = layer.router(flat, IDX.reshape(-1))
    ex = layer.experts
    capacity = layer.moe.capacity(flat.shape[0]) if variant == "sigmoid_shared_capacity" else None
    want = reference_moe(flat, *routing.assignments(), ex.w1, ex.w3, ex.w2, capacity=capacity)
    if layer.shared is not None:
        want = want + layer.shared(flat)
    torch.testing.assert_close(layer(x, IDX).reshape(-1, 32), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_loss_is_ce_plus_balance_losses_and_metrics_are_logged(variant: str) -> None:
    model = moe_model(variant, n_layers=3).train()
    moe = model.config.moe
    assert moe is not None
    out = model(IDX, TGT, return_logits=False)
    parts = {k: v for k, v in out.losses.items() if k.startswith("moe_")}
    weighted = [f for f in ("aux_loss", "device_loss", "seq_aux_loss", "z_loss")
                if getattr(moe, f + "_weight") > 0]  # fmt: skip
    assert len(parts) == len(weighted)
    torch.testing.assert_close(out.loss, out.losses["ce"] + sum(parts.values(), torch.zeros(())))
    for i in range(3):
        shares = out.metrics[f"moe/L{i}/load"]
        assert shares.shape == (moe.n_routed_experts,)
        torch.testing.assert_close(shares.sum(), torch.tensor(1.0))
        ratio = out.metrics[f"moe/L{i}/max_load_ratio"]
        assert ratio >= 1.0
        assert math.isclose(ratio.item(), shares.max().item() * len(shares), rel_tol=1e-6)
        if variant != "hash":
            entropy = out.metrics[f"moe/L{i}/router_entropy"].item()
            assert 0 < entropy <= math.log(moe.n_routed_experts) + 1e-9
    assert out.metrics["moe/max_load_ratio"] == max(
        out.metrics[f"moe/L{i}/max_load_ratio"] for i in range(3)
    )
    assert all(not v.requires_grad and v.ndim <= 1 for v in out.metrics.values())


def test_dense_first_layers_and_interleaving() -> None:
    model = tiny_model(n_layers=4, moe=dict(n_routed_experts=4, first_dense_layers=1, moe_every=2))
    assert [isinstance(b.mlp, MoE) for b in model.layers] == [False, True, False, True]
    out = model(IDX, TGT)
    assert {k.split("/")[1] for k in out.metrics if k.startswith("moe/L")} == {"L1", "L3"}
    assert model.num_params() == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_one_compiled_graph(variant: str) -> None:
    torch._dynamo.reset()
    model = moe_model(variant).train()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    out = compiled(IDX, TGT, return_logits=False)
    out.loss.backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    ref = model(IDX, TGT, return_logits=False)
    ref.loss.backward()
    torch.testing.assert_close(out.loss, ref.loss)
    assert out.metrics.keys() == ref.metrics.keys()
    for name, p in model.named_parameters():
        torch.testing.assert_close(got[name], p.grad, msg=name)


def test_activation_checkpointing_keeps_the_balance_gradients() -> None:
    plain = moe_model("sigmoid_shared_capacity").train()
    ckpt = moe_model("sigmoid_shared_capacity", activation_checkpointing=True).train()
    for model in (plain, ckpt):
        model(IDX, TGT, return_logits=False).loss.backward()
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        assert a.grad is not None and b.grad is not None
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-12, msg=name)
    router = plain.layers[0].mlp.router
    assert router.weight.grad is not None and router.weight.grad.abs().sum() > 0


def test_bias_moves_only_after_training_steps() -> None:
    model = tiny_model(moe=dict(n_routed_experts=4, router="sigmoid")).train()
    router = model.layers[0].mlp.router
    assert "layers.0.mlp.router.expert_bias" in model.state_dict()
    assert "layers.0.mlp.router.expert_load" not in model.state_dict()
    with torch.no_grad():
        model(IDX, TGT)  # evaluation-style passes do not count
    model.eval()
    model(IDX, TGT)
    model.after_optimizer_step()
    assert torch.equal(router.expert_bias, torch.zeros(4, dtype=router.expert_bias.dtype))
    model.train()
    model(IDX, TGT).loss.backward()
    load = router.expert_load.clone()
    model.after_optimizer_step()
    want = router.bias_update_rate * torch.sign(load.double().mean() - load.double())
    torch.testing.assert_close(router.expert_bias, want.to(router.expert_bias.dtype))
    assert router.expert_load.sum() == 0


def test_param_kinds_and_muon_on_stacked_experts() -> None:
    model = moe_model("sigmoid_shared_capacity").float()
    kinds = model.param_kinds()
    assert kinds["layers.0.mlp.experts.w13"] == "expert_pair"
    assert kinds["layers.0.mlp.experts.w2"] == "expert"
    assert kinds["layers.0.mlp.router.weight"] == "other"
    assert kinds["layers.0.mlp.shared.w1.weight"] == "matrix"
    opt = build_optimizer(
        [(p, kinds[n]) for n, p in model.named_parameters()], OptimConfig(name="muon")
    )
    muon_params = {id(p) for g in opt.param_groups if g["use_muon"] for p in g["params"]}
    assert id(model.layers[0].mlp.experts.w2) in muon_params
    (pair,) = [g for g in opt.param_groups if g.get("row_blocks") == 2]
    assert pair["use_muon"] and [id(p) for p in pair["params"]] == [
        id(m.mlp.experts.w13) for m in model.layers
    ]
    assert id(model.layers[0].mlp.router.weight) not in muon_params
    model(IDX, TGT).loss.backward()
    before = model.layers[0].mlp.experts.w1.detach().clone()
    opt.step()
    assert not torch.equal(before, model.layers[0].mlp.experts.w1)


def test_cached_generation_equals_uncached_for_token_choice() -> None:
    """Token-choice routing looks at one token at a time, so the KV cache changes nothing."""
    model = moe_model("token_choice")
    prompt = tokens((2, 4))
    cached = generate(model, prompt, 6, temperature=0.0)
    seq = prompt
    for _ in range(6):
        logits = model(seq).logits
        assert logits is not None
        seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(cached, seq)
    cache = KVCache.for_model(model.config, 2, max_len=10)
    step_logits = model(prompt, kv_cache=cache).logits
    assert step_logits is not None and not any(
        m.stats for m in model.modules() if isinstance(m, MoE)
    )


def test_expert_choice_generation_warns() -> None:
    with pytest.warns(UserWarning, match="expert-choice"):
        generate(moe_model("expert_choice"), tokens((1, 3)), 2, temperature=0.0)


def test_export(tmp_path: Path) -> None:
    model = tiny_model(moe=dict(n_routed_experts=4, router="sigmoid")).train()
    model(IDX, TGT).loss.backward()
    model.after_optimizer_step()
    export_safetensors(model, tmp_path / "st")
    back = load_safetensors(tmp_path / "st")
    torch.testing.assert_close(
        back.layers[0].mlp.router.expert_bias, model.layers[0].mlp.router.expert_bias
    )
    torch.testing.assert_close(back(IDX).logits, model.eval()(IDX).logits)
    with pytest.raises(ValueError, match="moe="):
        export_hf_llama(model, tmp_path / "hf")


def test_state_dict_with_separate_w1_w3_loads_stacked() -> None:
    """Checkpoints written before ``w1`` and ``w3`` became one ``w13`` parameter still load,
    through ``load_state_dict`` and through the checkpoint reader."""
    from lmforge.train.checkpoint import _load_model

    model = moe_model("sigmoid_shared_capacity").float()
    state = model.state_dict()
    legacy = dict(state)
    for key in [k for k in state if k.endswith("experts.w13")]:
        w1, w3 = legacy.pop(key).chunk(2, dim=1)
        legacy[key[:-1]], legacy[key[:-2] + "3"] = w1.clone(), w3.clone()
    for load in (
        lambda m, s: m.load_state_dict(s),
        lambda m, s: _load_model(m, s, "a legacy checkpoint"),
    ):
        fresh = moe_model("sigmoid_shared_capacity").float()
        with torch.no_grad():
            for p in fresh.parameters():
                p.zero_()
        load(fresh, dict(legacy))
        for key, value in fresh.state_dict().items():
            assert torch.equal(value, state[key]), key


def test_grouped_experts_alone_load_separate_w1_w3() -> None:
    from lmforge.model.moe.experts import GroupedExperts

    experts = GroupedExperts(3, 8, 6)
    w1, w3 = (t.clone() for t in experts.w13.detach().chunk(2, dim=1))
    legacy = {"w1": w1, "w3": w3, "w2": experts.w2.detach().clone()}
    fresh = GroupedExperts(3, 8, 6)
    fresh.load_state_dict(legacy)
    assert torch.equal(fresh.w1, w1) and torch.equal(fresh.w3, w3)
