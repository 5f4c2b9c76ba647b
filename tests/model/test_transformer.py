"""The Transformer: the model–trainer contract, names and kinds, masks, checkpointing, training."""

from __future__ import annotations

import math

import pytest
import torch
from model_testing import TINY, VARIANTS, tiny_config, tiny_model, tokens
from torch import nn

from lmforge.model.transformer import ModelOutput, Transformer


def _names(**overrides: object) -> list[str]:
    return [n for n, _ in Transformer(tiny_config(n_layers=1, **overrides)).named_parameters()]


def test_parameter_names() -> None:
    layer = [
        "layers.0.attention_norm.weight",
        *[f"layers.0.attention.{w}.weight" for w in ("wq", "wk", "wv", "wo")],
        "layers.0.mlp_norm.weight",
        *[f"layers.0.mlp.{w}.weight" for w in ("w1", "w3", "w2")],
    ]
    assert _names() == ["tok_embeddings.weight", *layer, "norm.weight", "output.weight"]
    qk = _names(qk_norm=True)
    assert {"layers.0.attention.q_norm.weight", "layers.0.attention.k_norm.weight"} < set(qk)
    assert "output.weight" not in _names(tie_embeddings=True)
    assert "layers.0.mlp_norm.weight" not in _names(parallel_block=True)


@pytest.mark.parametrize("tied", [False, True])
def test_param_kinds(tied: bool) -> None:
    model = Transformer(tiny_config(qk_norm=True, tie_embeddings=tied))
    kinds = model.param_kinds()
    assert list(kinds) == [n for n, _ in model.named_parameters()]
    params = dict(model.named_parameters())
    for name, kind in kinds.items():
        if kind == "matrix":
            assert params[name].ndim == 2 and name.startswith("layers.")
        elif kind == "norm":
            assert params[name].ndim == 1 and name.endswith("norm.weight")
    assert kinds["tok_embeddings.weight"] == "embedding"
    assert ("output.weight" in kinds) != tied
    assert list(kinds.values()).count("head") == (0 if tied else 1)


def test_param_kinds_refuses_an_undeclared_module() -> None:
    model = Transformer(tiny_config())
    model.extra = nn.Linear(2, 2)  # a torch module without param_kind
    with pytest.raises(TypeError, match="param_kind"):
        model.param_kinds()


def test_after_optimizer_step_reaches_every_submodule_hook_once() -> None:
    class Balancer(nn.Module):
        calls = 0

        def after_optimizer_step(self) -> None:
            self.calls += 1

    model = Transformer(tiny_config())
    a, b = Balancer(), Balancer()
    model.layers[0].mlp.balancer = a  # type: ignore[union-attr]
    model.layers[1].balancer = b  # type: ignore[union-attr]
    model.after_optimizer_step()
    model.after_optimizer_step()
    assert (a.calls, b.calls) == (2, 2)


def test_num_params() -> None:
    model = Transformer(tiny_config())
    total = sum(p.numel() for p in model.parameters())
    emb = TINY["vocab_size"] * TINY["d_model"]
    assert model.num_params() == total
    assert model.num_params(non_embedding=True) == total - emb
    tied = Transformer(tiny_config(tie_embeddings=True))
    assert tied.num_params() == total - emb == tied.num_params(non_embedding=True)


def test_init_scales_residual_projections() -> None:
    torch.manual_seed(0)
    model = Transformer(tiny_config(d_model=256, n_heads=4, n_layers=8, d_ff=512))
    base = 1 / math.sqrt(256)
    out_scale = 1 / math.sqrt(2 * 8)
    attn, mlp = model.layers[0].attention, model.layers[0].mlp
    std = {name: lin.weight.std().item() for name, lin in (("wq", attn.wq), ("wo", attn.wo))}
    # a normal truncated at ±3σ has std 0.987σ
    assert std["wq"] == pytest.approx(0.987 * base, rel=0.03)
    assert std["wo"] == pytest.approx(0.987 * base * out_scale, rel=0.03)
    w2_std = mlp.w2.weight.std().item()
    assert w2_std == pytest.approx(0.987 / math.sqrt(512) * out_scale, rel=0.03)


def test_meta_device_build_then_reset() -> None:
    model = Transformer(tiny_config(), device="meta")
    model.to_empty(device="cpu")
    model.reset_parameters()
    torch.testing.assert_close(model.rope.cos[:, 0], torch.cos(torch.arange(32.0)))
    out = model(tokens((2, 8)), tokens((2, 8), seed=2))
    assert out.loss is not None and torch.isfinite(out.loss)


def test_output_contract() -> None:
    model = tiny_model(dtype=torch.float32, qk_norm=True, z_loss=1e-3, logit_softcap=20.0)
    idx, tgt = tokens((2, 10)), tokens((2, 10), seed=2)
    tgt[0, :3] = -100
    out = model(idx, tgt)
    assert isinstance(out, ModelOutput)
    assert out.logits is not None and out.logits.shape == (2, 10, TINY["vocab_size"])
    assert out.logits.dtype == torch.float32 and out.loss is not None and out.loss.requires_grad
    assert set(out.losses) == {"ce", "z_loss"}
    torch.testing.assert_close(out.loss.detach(), out.losses["ce"] + out.losses["z_loss"])
    assert {
        "logits/max_abs",
        "logits/max_abs_raw",
        "z/mean_logsumexp",
        "attn/qk_logit_bound",
    } <= set(out.metrics)
    for v in [*out.losses.values(), *out.metrics.values()]:
        assert v.ndim == 0 and not v.requires_grad
    chunked = model(idx, tgt, return_logits=False)
    assert chunked.logits is None and chunked.hidden_states is None
    torch.testing.assert_close(chunked.loss, out.loss)
    assert set(chunked.metrics) == set(out.metrics)
    plain = tiny_model(dtype=torch.float32)(idx, tgt)
    assert set(plain.losses) == {"ce"} and "attn/qk_logit_bound" not in plain.metrics
    infer = model(idx)
    assert infer.loss is None and infer.losses == {}
    torch.testing.assert_close(infer.logits, out.logits)


def test_chunked_loss_gradients_equal_full() -> None:
    grads = []
    for return_logits in (True, False):
        model = tiny_model(z_loss=1e-3, logit_softcap=5.0, tie_embeddings=True)
        model.loss_chunk_size = 7
        out = model(tokens((2, 12)), tokens((2, 12), seed=2), return_logits=return_logits)
        out.loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, msg=name)


def test_hidden_states_for_the_logit_lens() -> None:
    model = tiny_model()
    out = model(tokens((1, 6)), return_hidden_states=True)
    assert out.hidden_states is not None and len(out.hidden_states) == TINY["n_layers"] + 1
    torch.testing.assert_close(model.tok_embeddings(tokens((1, 6))), out.hidden_states[0])
    torch.testing.assert_close(model.logits(model.norm(out.hidden_states[-1])), out.logits)


def test_forward_errors() -> None:
    model = tiny_model()
    idx = tokens((2, 8))
    with pytest.raises(ValueError, match="integer"):
        model(idx.double())
    with pytest.raises(ValueError, match="integer"):
        model(idx[0])
    with pytest.raises(ValueError, match="context_length"):
        model(tokens((1, 33)))
    with pytest.raises(ValueError, match="shape"):
        model(idx, idx[:, :-1])
    with pytest.raises(ValueError, match="needs targets"):
        model(idx, return_logits=False)
    with pytest.raises(ValueError, match="document_mask needs eot_id"):
        Transformer(tiny_config(document_mask=True))


@pytest.mark.parametrize("variant", ["mha", "gqa", "parallel"])
def test_document_mask_isolates_documents(variant: str) -> None:
    eot = 0
    model = tiny_model(document_mask=True, eot_id=eot, **VARIANTS[variant])
    doc1, doc2 = tokens((1, 9), seed=3).clamp(min=1), tokens((1, 12), seed=4).clamp(min=1)
    eot_t = torch.tensor([[eot]])
    packed = torch.cat([doc1, eot_t, doc2], dim=1)
    perturbed = torch.cat([tokens((1, 9), seed=5).clamp(min=1), eot_t, doc2], dim=1)
    with torch.no_grad():
        a, b = model(packed).logits, model(perturbed).logits
        alone = model(doc2).logits
    assert a is not None and b is not None and alone is not None
    torch.testing.assert_close(a[:, 10:], b[:, 10:], rtol=0, atol=1e-12)
    assert not torch.allclose(a[:, 9], b[:, 9])  # the EOT belongs to document 1
    # RoPE is relative, so document 2 in a packed window == document 2 alone
    torch.testing.assert_close(a[:, 10:], alone, rtol=1e-6, atol=1e-6)  # float32 tables
    unmasked = tiny_model(**VARIANTS[variant])
    with torch.no_grad():
        c, d = unmasked(packed).logits, unmasked(perturbed).logits
    assert c is not None and d is not None and not torch.allclose(c[:, 10:], d[:, 10:])


def test_activation_checkpointing_gives_equal_gradients() -> None:
    grads = []
    for ckpt in (False, True):
        model = tiny_model(activation_checkpointing=ckpt, n_kv_heads=2, qk_norm=True).train()
        out = model(tokens((2, 10)), tokens((2, 10), seed=2))
        out.loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=0, atol=1e-12, msg=name)


def test_bf16_autocast_forward() -> None:
    model = tiny_model(dtype=torch.float32, n_kv_heads=2)
    idx, tgt = tokens((2, 16)), tokens((2, 16), seed=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(idx, tgt, return_logits=False)
        full = model(idx, tgt)
    assert out.loss.dtype == torch.float32 and full.logits.dtype == torch.float32
    ref = model(idx, tgt).loss
    torch.testing.assert_close(out.loss, ref, rtol=2e-2, atol=2e-2)


def test_loss_falls_on_a_repeated_pattern() -> None:
    torch.manual_seed(0)
    model = Transformer(tiny_config(n_kv_heads=2, qk_norm=True, z_loss=1e-4)).train()
    pattern = torch.tensor([3, 14, 15, 9, 26, 5, 35, 8] * 5)
    x, y = pattern[:-1][None, :32].repeat(4, 1), pattern[1:][None, :32].repeat(4, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(50):
        out = model(x, y, return_logits=False)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        model.after_optimizer_step()
        losses.append(out.losses["ce"].item())
    assert losses[0] > 3.5 and losses[-1] < 0.2 * losses[0]
