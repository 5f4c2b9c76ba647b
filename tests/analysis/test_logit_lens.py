"""The logit lens: its last row is the model's own prediction, its numbers are probabilities
sorted as promised, its embedding row is the head applied to the embedding, and its table and
heatmap render."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lmforge.analysis import format_table, logit_lens, save_heatmap, token_label
from lmforge.model import ModelConfig, Transformer

VOCAB = 67


def tiny_model(seed: int = 0, **overrides: object) -> Transformer:
    """A random two-layer float32 model with random norm gains (so the norm is not a no-op)."""
    torch.manual_seed(seed)
    base: dict[str, object] = dict(
        vocab_size=VOCAB, context_length=32, d_model=32, n_layers=2, n_heads=4
    )
    model = Transformer(ModelConfig(**{**base, **overrides}))  # type: ignore[arg-type]
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return model.eval()


MODEL = tiny_model(seed=3)


def random_ids(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n,), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "overrides",
    [{}, {"logit_softcap": 5.0}, {"parallel_block": True}, {"tie_embeddings": True}],
    ids=["plain", "softcap", "parallel", "tied"],
)
def test_last_layer_is_the_models_own_prediction(overrides: dict[str, object]) -> None:
    model, ids = tiny_model(**overrides), random_ids(20)
    lens = logit_lens(model, ids, top_k=7)
    with torch.no_grad():
        probs = torch.softmax(model(ids[None]).logits[0], dim=-1)
    top_probs, top_ids = probs.topk(7, dim=-1)
    torch.testing.assert_close(lens.top_probs[-1], top_probs, rtol=1e-6, atol=1e-7)
    assert torch.equal(lens.top_ids[-1], top_ids)
    target = probs[:-1].gather(-1, ids[1:, None]).squeeze(-1)
    torch.testing.assert_close(lens.target_probs[-1, :-1], target, rtol=1e-6, atol=1e-7)


def test_embedding_row_is_the_head_applied_to_the_embedding() -> None:
    model, ids = tiny_model(), random_ids(12)
    lens = logit_lens(model, ids, top_k=3)
    with torch.no_grad():
        probs = torch.softmax(model.logits(model.norm(model.tok_embeddings(ids))), dim=-1)
    torch.testing.assert_close(lens.top_probs[0], probs.topk(3, dim=-1).values)


def test_shapes_and_names() -> None:
    model = tiny_model()
    lens = logit_lens(model, random_ids(10).tolist(), top_k=4)
    assert lens.top_ids.shape == lens.top_probs.shape == (3, 10, 4)
    assert lens.target_probs.shape == lens.target_ranks.shape == (3, 10)
    assert lens.layer_names == ("embed", "block 1", "block 2")
    assert (lens.n_layers, lens.n_positions) == (3, 10)
    assert lens.top_ids.dtype == torch.int64 and lens.top_probs.dtype == torch.float32
    assert torch.isnan(lens.target_probs[:, -1]).all() and (lens.target_ranks[:, -1] == -1).all()
    assert torch.equal(logit_lens(model, random_ids(10)[None], top_k=4).top_ids, lens.top_ids)


@given(
    ids=st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=32),
    top_k=st.integers(1, VOCAB),
)
def test_probabilities_are_sorted_bounded_and_consistent(ids: list[int], top_k: int) -> None:
    lens = logit_lens(MODEL, ids, top_k=top_k)
    p = lens.top_probs
    assert ((p >= 0) & (p <= 1)).all()
    assert (p.sum(-1) <= 1 + 1e-5).all()
    assert (p[..., :-1] >= p[..., 1:]).all()
    assert len(set(lens.top_ids[0, 0].tolist())) == top_k
    if len(ids) > 1:
        target, ranks = torch.tensor(ids[1:]), lens.target_ranks[:, :-1]
        assert ((ranks >= 0) & (ranks < VOCAB)).all()
        assert (ranks[lens.top_ids[:, :-1, 0] == target] == 0).all()
        assert (lens.target_probs[:, :-1] <= lens.top_probs[:, :-1, 0] + 1e-6).all()


def test_with_the_whole_vocabulary_the_target_sits_at_its_rank() -> None:
    ids = random_ids(16, seed=5)
    lens = logit_lens(MODEL, ids, top_k=VOCAB)
    torch.testing.assert_close(lens.top_probs.sum(-1), torch.ones(3, 16))
    for layer in range(3):
        for t in range(15):
            rank = int(lens.target_ranks[layer, t])
            assert int(lens.top_ids[layer, t, rank]) == int(ids[t + 1])
            assert math.isclose(
                float(lens.top_probs[layer, t, rank]), float(lens.target_probs[layer, t])
            )


@pytest.mark.parametrize(
    ("ids", "top_k", "match"),
    [
        ([], 5, "empty"),
        (list(range(33)), 5, "context is 32"),
        ([1, 2, 3], 0, "top_k"),
        ([1, 2, 3], VOCAB + 1, "top_k"),
        ([1, VOCAB], 5, r"\[0, 67\)"),
        ([[1, 2], [3, 4]], 5, "one sequence"),
        ([0.5, 1.5], 5, "one sequence"),
    ],
)
def test_errors(ids: list[int], top_k: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        logit_lens(MODEL, torch.tensor(ids) if ids else ids, top_k=top_k)


def test_lens_of_the_trained_model_sharpens_with_depth(trained_stories) -> None:
    tok = trained_stories.tokenizer
    ids = tok.encode(" ".join(trained_stories.paragraphs[:3]))[:64]
    lens = logit_lens(trained_stories.model, ids, top_k=5)
    mean_logp = lens.target_probs[:, :-1].log().mean(-1)
    assert mean_logp[-1] > mean_logp[0] + 0.5, mean_logp


def test_format_table(trained_stories) -> None:
    tok = trained_stories.tokenizer
    ids = tok.encode("Once upon a time, the little rabbit")
    lens = logit_lens(trained_stories.model, ids, top_k=3)
    table = format_table(lens, tok)
    assert table.count("\n\n") == len(ids) - 1
    first = table.split("\n\n")[0].splitlines()
    assert first[0] == f"[0] {token_label(tok, ids[0])} -> next {token_label(tok, ids[1])}"
    assert first[1].split() == ["layer", "p(next)", "rank", "top-3"]
    assert [line.split()[0] for line in first[2:]] == ["embed", "block", "block"]
    assert f"{float(lens.target_probs[2, 0]):.4f}" in first[4]
    last = format_table(lens, tok, positions=[-1])
    assert "(end of the text)" in last and "\n\n" not in last
    with pytest.raises(ValueError, match="out of range"):
        format_table(lens, tok, positions=[len(ids)])


def test_token_label(trained_stories) -> None:
    tok = trained_stories.tokenizer
    assert token_label(tok, tok.encode(" the")[0]) == "' the'"
    assert token_label(tok, tok.encode("\n")[0]) == "'\\n'"
    assert token_label(tok, tok.encode(" the")[0], max_chars=3) == "' …"


def test_save_heatmap_writes_a_png(trained_stories, tmp_path) -> None:
    tok = trained_stories.tokenizer
    lens = logit_lens(trained_stories.model, tok.encode("Once upon a time, there was"), top_k=2)
    out = save_heatmap(lens, tok, tmp_path / "plots" / "lens.png")
    assert out == tmp_path / "plots" / "lens.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    narrow = save_heatmap(lens, tok, tmp_path / "narrow.png", max_positions=3, title="t")
    assert 0 < narrow.stat().st_size < out.stat().st_size
    with pytest.raises(ValueError, match="max_positions"):
        save_heatmap(lens, tok, tmp_path / "x.png", max_positions=0)
