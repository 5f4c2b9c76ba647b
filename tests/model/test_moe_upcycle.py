"""Upcycling: with full copies and gates summing to 1 the MoE model's step-0 loss is the dense
model's; sliced fine-grained experts add up to the dense MLP when every slice is chosen."""

from __future__ import annotations

import pytest
import torch
from model_testing import tiny_model, tokens

from lmforge.model.moe import MoE, MoEConfig, upcycle

IDX, TGT = tokens((3, 16)), tokens((3, 16), seed=2)


@pytest.mark.parametrize(
    "moe",
    [
        MoEConfig(n_routed_experts=4, top_k=2, aux_loss_weight=0.0),
        MoEConfig(
            n_routed_experts=8,
            top_k=3,
            router="sigmoid",
            first_dense_layers=1,
            seq_aux_loss_weight=0.0,
            bias_update_rate=0.0,
        ),
        MoEConfig(n_routed_experts=4, top_k=2, router="hash"),
    ],  # fmt: skip
    ids=["token_choice", "sigmoid", "hash"],
)
def test_full_copies_give_the_dense_loss(moe: MoEConfig) -> None:
    dense = tiny_model()
    model = upcycle(dense, moe)
    assert model.config.moe == moe and sum(isinstance(b.mlp, MoE) for b in model.layers) >= 1
    want, got = dense(IDX, TGT), model(IDX, TGT)
    torch.testing.assert_close(got.loss, want.loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got.logits, want.logits, rtol=1e-10, atol=1e-10)
    assert got.loss is not None and got.losses.keys() == {"ce"}


def test_with_balance_losses_the_cross_entropy_still_matches() -> None:
    dense = tiny_model()
    model = upcycle(dense, MoEConfig(n_routed_experts=4, z_loss_weight=1e-3))
    got, want = model(IDX, TGT), dense(IDX, TGT)
    torch.testing.assert_close(got.losses["ce"], want.losses["ce"], rtol=1e-12, atol=1e-12)
    assert got.loss > want.loss  # the aux and z terms come on top


def test_every_weight_outside_the_moe_mlps_is_copied() -> None:
    dense = tiny_model(n_layers=3)
    model = upcycle(dense, MoEConfig(n_routed_experts=4, first_dense_layers=1, moe_every=2))
    dense_state, moe_state = dense.state_dict(), model.state_dict()
    for name, value in dense_state.items():
        if name.startswith("layers.1.mlp."):
            assert name not in moe_state
        else:
            assert torch.equal(moe_state[name], value), name
    experts = model.layers[1].mlp.experts
    for e in range(4):
        assert torch.equal(experts.w2[e], dense_state["layers.1.mlp.w2.weight"])


def test_sliced_experts_sum_to_the_dense_mlp() -> None:
    """E = m slices of d_ff / m, all chosen (hash, top_k = m), gates 1/m · route_scale m = 1."""
    dense = tiny_model(d_ff=64)
    moe = MoEConfig(n_routed_experts=4, top_k=4, expert_d_ff=16, route_scale=4.0, router="hash")
    model = upcycle(dense, moe)
    torch.testing.assert_close(model(IDX).logits, dense(IDX).logits, rtol=1e-10, atol=1e-10)
    w1 = model.layers[0].mlp.experts.w1
    torch.testing.assert_close(w1.flatten(0, 1), dense.layers[0].mlp.w1.weight)


def test_sliced_experts_in_general_are_not_the_dense_model() -> None:
    dense = tiny_model(d_ff=64)
    moe = MoEConfig(n_routed_experts=8, top_k=2, expert_d_ff=16, n_shared_experts=2)
    model = upcycle(dense, moe)
    shared = model.layers[0].mlp.shared
    assert shared is not None and shared.w1.weight.shape == (32, 32)
    torch.testing.assert_close(shared.w1.weight, dense.layers[0].mlp.w1.weight[:32])
    assert not torch.allclose(model(IDX).logits, dense(IDX).logits)


def test_errors() -> None:
    dense = tiny_model(d_ff=64)
    with pytest.raises(ValueError, match="must equal the dense d_ff"):
        upcycle(dense, MoEConfig(n_routed_experts=4, expert_d_ff=24))
    moe = upcycle(dense, MoEConfig(n_routed_experts=4))
    with pytest.raises(ValueError, match="dense model"):
        upcycle(moe, MoEConfig(n_routed_experts=4))
