"""Multi-token prediction: the loss against a hand-built float64 reference (targets shifted by
hand from the raw token sequence), gradient flow into the shared embedding and head, off at
inference, config checks."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from model_testing import rms_norm64, tiny_config, tiny_model, tokens

from lmforge.model import Transformer


def _mtp_reference(
    model: Transformer, full: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Main CE and each depth's CE, from the raw sequence ``full`` (``(batch, T + 1)``).

    Depth k at position i reads h_i^{k-1} and token ``full[i + k]`` and predicts
    ``full[i + k + 1]`` (DeepSeek-V3 eqs. 21–24), for i = 0 … T − 1 − k.
    """
    idx = full[:, :-1]
    t = idx.shape[1]
    with torch.no_grad():
        _, states = model.forward_hidden(idx, return_hidden_states=True)
    assert states is not None and model.mtp is not None
    head, emb = model.head_weight.double(), model.tok_embeddings.weight.double()
    main_logits = rms_norm64(states[-1], model.norm.weight, model.norm.eps) @ head.T
    main_ce = F.cross_entropy(main_logits.flatten(0, 1), full[:, 1:].flatten())
    h, ces = states[-1].double(), []
    for k in range(1, model.config.mtp_depth + 1):
        module = model.mtp.depth(k)
        n = t - k  # positions i with a token i + k + 1 in the window
        ahead = torch.stack([full[:, i + k] for i in range(n)], dim=1)
        target = torch.stack([full[:, i + k + 1] for i in range(n)], dim=1)
        merged = torch.cat(
            [
                rms_norm64(h[:, :n], module.hidden_norm.weight, module.hidden_norm.eps),
                rms_norm64(emb[ahead], module.embed_norm.weight, module.embed_norm.eps),
            ],
            dim=-1,
        )
        with torch.no_grad():
            h = module.block(merged @ module.proj.weight.double().T, model.rope)
        logits = rms_norm64(h, module.norm.weight, module.norm.eps) @ head.T
        ces.append(F.cross_entropy(logits.flatten(0, 1), target.flatten()))
    return main_ce, ces


@pytest.mark.parametrize(
    "kw",
    [dict(mtp_depth=1), dict(mtp_depth=3, tie_embeddings=True), dict(mtp_depth=2, attention="mla")],
    ids=["depth1", "depth3_tied", "depth2_mla"],
)
def test_loss_equals_hand_built_reference(kw: dict[str, Any]) -> None:
    model = tiny_model(mtp_weight=0.25, **kw)
    full = tokens((3, 17))
    main_ce, ces = _mtp_reference(model, full)
    with torch.no_grad():
        out = model(full[:, :-1], full[:, 1:])
        chunked = model(full[:, :-1], full[:, 1:], return_logits=False)
    expected = main_ce + 0.25 * torch.stack(ces).mean()
    for o in (out, chunked):
        assert o.loss is not None
        torch.testing.assert_close(o.loss, expected, rtol=1e-6, atol=1e-8)
        torch.testing.assert_close(o.losses["ce"], main_ce, rtol=1e-6, atol=1e-8)
        assert sorted(o.losses) == ["ce", *[f"mtp_{k}" for k in range(1, kw["mtp_depth"] + 1)]]
        for k, ce in enumerate(ces, start=1):
            torch.testing.assert_close(o.losses[f"mtp_{k}"], ce, rtol=1e-6, atol=1e-8)


def test_ignored_targets_are_left_out_of_the_mtp_loss() -> None:
    model = tiny_model(mtp_depth=1)
    full = tokens((2, 13))
    targets = full[:, 1:].clone()
    targets[:, 5:] = -100
    with torch.no_grad():
        out = model(full[:, :-1], targets)
    # Depth 1 at position i predicts targets[:, i + 1]: kept for i = 0 … 3, as in a window
    # of 5 tokens (causal attention: the later positions change nothing before them).
    with torch.no_grad():
        kept = model(full[:, :5], full[:, 1:6]).losses["mtp_1"]
    torch.testing.assert_close(out.losses["mtp_1"], kept, rtol=1e-10, atol=1e-12)


def test_gradient_flows_to_the_shared_embedding_and_head() -> None:
    model = tiny_model(mtp_depth=2).train()
    full = tokens((2, 10), vocab=30)  # ids < 30: the other embedding rows must stay untouched
    idx, targets = full[:, :-1], full[:, 1:]
    _, states = model.forward_hidden(idx, return_hidden_states=True)
    assert states is not None
    mtp_loss, _ = model._mtp_loss(states[-1].detach(), idx, targets)  # MTP's own path only
    mtp_loss.backward()
    emb_grad = model.tok_embeddings.weight.grad
    assert emb_grad is not None and model.output is not None
    rows = emb_grad.abs().sum(-1) > 0
    assert torch.equal(rows.nonzero().flatten(), idx[:, 1:].unique())  # tokens read ahead
    assert model.output.weight.grad is not None and model.output.weight.grad.abs().sum() > 0
    missing = [n for n, p in model.mtp.named_parameters() if p.grad is None or not p.grad.any()]  # type: ignore[union-attr]
    assert missing == []
    assert all(p.grad is None for p in model.layers.parameters())  # the trunk was detached


def test_mtp_loss_reaches_the_trunk_with_its_weight() -> None:
    grads = []
    for weight in (0.0, 0.5):
        model = tiny_model(mtp_depth=1, mtp_weight=weight).train()
        full = tokens((2, 10))
        model(full[:, :-1], full[:, 1:]).loss.backward()  # type: ignore[union-attr]
        grads.append(model.layers[0].attention.wq.weight.grad.clone())  # type: ignore[union-attr]
    assert not torch.allclose(grads[0], grads[1])


def test_activation_checkpointing_gives_the_same_loss_and_gradients() -> None:
    results = []
    for ckpt in (False, True):
        model = tiny_model(mtp_depth=2, activation_checkpointing=ckpt).train()
        full = tokens((2, 12))
        out = model(full[:, :-1], full[:, 1:])
        out.loss.backward()  # type: ignore[union-attr]
        results.append((out.loss, [p.grad for p in model.mtp.parameters()]))  # type: ignore[union-attr]
    torch.testing.assert_close(results[0][0], results[1][0])
    for a, b in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(a, b)


def test_off_at_inference_and_for_one_token_windows() -> None:
    with_mtp = tiny_model(mtp_depth=2)
    plain = tiny_model(seed=1)
    plain.load_state_dict(
        {k: v for k, v in with_mtp.state_dict().items() if not k.startswith("mtp.")}
    )
    seq = tokens((2, 9))
    with torch.no_grad():
        out = with_mtp(seq)
        assert out.loss is None and out.losses == {}
        torch.testing.assert_close(out.logits, plain(seq).logits, rtol=0, atol=0)
        one = with_mtp(seq[:, :1], seq[:, 1:2])
        assert one.loss is not None and sorted(one.losses) == ["ce"]
        torch.testing.assert_close(one.loss, plain(seq[:, :1], seq[:, 1:2]).loss)
        two = with_mtp(seq[:, :2], seq[:, 1:3])  # depth 1 has one position, depth 2 none
        assert sorted(two.losses) == ["ce", "mtp_1"]


def test_parameter_names_and_kinds() -> None:
    model = tiny_model(mtp_depth=2)
    kinds = model.param_kinds()
    assert kinds["mtp.depths.1.proj.weight"] == "matrix"
    assert kinds["mtp.depths.0.hidden_norm.weight"] == "norm"
    assert kinds["mtp.depths.0.block.attention.wq.weight"] == "matrix"
    assert model.mtp.depth(2).block.attention.layer_idx == 3  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(mtp_depth=-1), "mtp_depth"),
        (dict(mtp_depth=1.5), "mtp_depth"),
        (dict(mtp_depth=32), "mtp_depth"),
        (dict(mtp_weight=-0.1), "mtp_weight"),
        (dict(mtp_weight=float("inf")), "mtp_weight"),
    ],
)
def test_config_refuses_bad_mtp(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)
