"""Generation: sample_next on its own, the KV cache against the uncached forward, generate()."""

from __future__ import annotations

import pytest
import torch
from model_testing import VARIANTS, tiny_model, tokens

from lmforge.model.generate import generate, sample_next
from lmforge.model.kv_cache import KVCache

LOGITS = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.05, 0.15, 0.3, 0.5]]))


def _support(logits: torch.Tensor, n: int = 400, **kw: object) -> list[set[int]]:
    gen = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_next(logits, generator=gen, **kw) for _ in range(n)])  # type: ignore[arg-type]
    return [set(draws[:, row].tolist()) for row in range(logits.shape[0])]


def test_greedy_and_top_k_1_are_argmax() -> None:
    logits = torch.randn(5, 30)
    assert torch.equal(sample_next(logits, temperature=0.0), logits.argmax(-1))
    assert torch.equal(sample_next(logits, top_k=1), logits.argmax(-1))


def test_top_k_keeps_k() -> None:
    assert _support(LOGITS, top_k=2) == [{0, 1}, {2, 3}]
    assert _support(LOGITS, top_k=10) == [{0, 1, 2, 3}, {0, 1, 2, 3}]


@pytest.mark.parametrize(
    "p,expected",
    [(0.5, [{0}, {3}]), (0.79, [{0, 1}, {3, 2}]), (0.81, [{0, 1, 2}, {1, 2, 3}]), (1.0, None)],
)
def test_top_p_keeps_smallest_set_reaching_p(p: float, expected: list[set[int]] | None) -> None:
    want = expected or [{0, 1, 2, 3}, {0, 1, 2, 3}]
    assert _support(LOGITS, top_p=p) == want


def test_sampling_follows_the_distribution_and_generator() -> None:
    gen = torch.Generator().manual_seed(0)
    draws = sample_next(LOGITS[:1].expand(20000, 4), generator=gen)
    freq = torch.bincount(draws, minlength=4) / 20000
    torch.testing.assert_close(freq, LOGITS[0].exp(), rtol=0, atol=0.015)
    a = sample_next(LOGITS, generator=torch.Generator().manual_seed(7), temperature=2.0)
    b = sample_next(LOGITS, generator=torch.Generator().manual_seed(7), temperature=2.0)
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    "kw",
    [
        dict(temperature=-1.0),
        dict(temperature=float("nan")),
        dict(top_k=0),
        dict(top_p=0.0),
        dict(top_p=1.5),
    ],  # fmt: skip
)
def test_sample_next_rejects_bad_arguments(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        sample_next(LOGITS, **kw)  # type: ignore[arg-type]


def _cached_logits(model, seq: torch.Tensor, prefill: int, step: int) -> torch.Tensor:  # type: ignore[no-untyped-def]
    cache = KVCache.for_model(model.config, seq.shape[0])
    out = [model(seq[:, :prefill], kv_cache=cache).logits]
    for start in range(prefill, seq.shape[1], step):
        out.append(model(seq[:, start : start + step], kv_cache=cache).logits)
    return torch.cat(out, dim=1)


@pytest.mark.parametrize("variant", [*VARIANTS, "doc_mask"])
def test_cache_matches_uncached_forward_at_every_step(variant: str) -> None:
    kw = dict(document_mask=True, eot_id=0, n_kv_heads=2) if variant == "doc_mask" else {}
    model = tiny_model(**{**VARIANTS.get(variant, {}), **kw})
    seq = tokens((3, 24), vocab=8 if variant == "doc_mask" else 67)  # many EOTs
    with torch.no_grad():
        full = model(seq).logits
        one_by_one = _cached_logits(model, seq, prefill=5, step=1)
        chunks = _cached_logits(model, seq, prefill=1, step=4)
    torch.testing.assert_close(one_by_one, full, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(chunks, full, rtol=1e-9, atol=1e-9)


def test_cache_errors() -> None:
    model = tiny_model()
    cache = KVCache.for_model(model.config, 2, max_len=6)
    with torch.no_grad():
        model(tokens((2, 4)), kv_cache=cache)
        with pytest.raises(ValueError, match="full"):
            model(tokens((2, 3)), kv_cache=cache)
    assert cache.pos == 4
    cache.reset()
    assert cache.pos == 0
    with pytest.raises(ValueError, match="context_length"):
        KVCache.for_model(model.config, 1, max_len=33)
    with pytest.raises(ValueError, match="positive"):
        KVCache(n_layers=1, batch_size=0, n_kv_heads=1, head_dim=2, max_len=4)
    with pytest.raises(ValueError, match="do not fit"):
        cache.update(0, torch.zeros(1, 4, 1, 8), torch.zeros(1, 4, 1, 8))


def test_greedy_generate_equals_argmax_loop_without_cache() -> None:
    model = tiny_model(n_kv_heads=2, qk_norm=True)
    prompt = tokens((2, 5))
    out = generate(model, prompt, 10, temperature=0.0)
    seq = prompt
    with torch.no_grad():
        for _ in range(10):
            seq = torch.cat([seq, model(seq).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, seq)


def test_generate_stops_rows_at_eot_and_pads() -> None:
    model = tiny_model()
    prompt = tokens((4, 3))
    free = generate(model, prompt, 12, temperature=0.0)
    eot = int(free[0, 6])  # a token row 0 emits greedily
    out = generate(model, prompt, 12, temperature=0.0, eot_id=eot)
    assert out.shape == (4, 15)
    for row in range(4):
        new = free[row, 3:].tolist()
        stop = new.index(eot) if eot in new else len(new)
        assert out[row, 3 : 3 + stop + 1].tolist() == new[: stop + 1]
        assert (out[row, 3 + stop :] == eot).all()


def test_generate_sampling_is_reproducible() -> None:
    model = tiny_model(dtype=torch.float32)
    prompt = tokens((2, 4))
    kw = dict(temperature=0.9, top_k=20, top_p=0.9)
    a = generate(model, prompt, 8, generator=torch.Generator().manual_seed(3), **kw)  # type: ignore[arg-type]
    b = generate(model, prompt, 8, generator=torch.Generator().manual_seed(3), **kw)  # type: ignore[arg-type]
    assert torch.equal(a, b) and torch.equal(a[:, :4], prompt)
    assert torch.equal(generate(model, prompt, 0), prompt)


@pytest.mark.parametrize(
    "args,kw,match",
    [
        ((tokens((1, 30)), 3), {}, "context_length"),
        ((tokens((5,)), 3), {}, "idx"),
        ((tokens((1, 3)).double(), 3), {}, "integer"),
        ((tokens((1, 3)), -1), {}, "max_new_tokens"),
        ((tokens((1, 3)), 2), dict(eot_id=67), "eot_id"),
        ((tokens((1, 3)), 2), dict(temperature=-0.5), "temperature"),
        ((tokens((1, 3)), 2), dict(top_k=0), "top_k"),
        ((tokens((1, 3)), 2), dict(top_p=2.0), "top_p"),
    ],
)
def test_generate_rejects_bad_arguments(args: tuple, kw: dict, match: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValueError, match=match):
        generate(tiny_model(), *args, **kw)
