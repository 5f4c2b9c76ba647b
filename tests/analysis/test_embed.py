"""Contextual embeddings on real text: padding changes nothing, layers and poolings are what
they say, and standardisation fitted on one set of held-out paragraphs removes the anisotropy
of another (Timkey & van Schijndel 2021)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from lmforge.analysis import (
    Standardizer,
    embed_texts,
    mean_pairwise_cosine,
    pool_states,
    resolve_layer,
    token_states,
)

log = logging.getLogger(__name__)

N_SET = 200  # paragraphs in the reference set and in the evaluation set


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_standardisation_removes_the_anisotropy_of_held_out_text(
    trained_stories, pooling: str
) -> None:
    model, tok, paragraphs = (
        trained_stories.model,
        trained_stories.tokenizer,
        trained_stories.paragraphs,
    )
    assert len(paragraphs) >= 2 * N_SET
    reference, held_out = paragraphs[:N_SET], paragraphs[N_SET : 2 * N_SET]
    fit = embed_texts(model, tok, reference, pooling=pooling)  # type: ignore[arg-type]
    test = embed_texts(model, tok, held_out, pooling=pooling)  # type: ignore[arg-type]
    raw = mean_pairwise_cosine(test, n_pairs=4000, seed=0)
    standardised = mean_pairwise_cosine(Standardizer.fit(fit).transform(test), 4000, seed=0)
    logging.getLogger(__name__).info(
        "%s pooling: raw %.3f, standardised %.3f", pooling, raw, standardised
    )
    # measured (150 steps, seed 1337): mean 0.95 -> 0.02; last 0.27 -> 0.01
    assert abs(standardised) < 0.1
    if pooling == "mean":
        assert raw > 0.6
    else:
        assert raw > standardised + 0.1


def test_padding_and_batching_change_nothing(trained_stories) -> None:
    model, tok = trained_stories.model, trained_stories.tokenizer
    texts = ["Once upon a time.", trained_stories.paragraphs[0], "The end."]
    together = embed_texts(model, tok, texts, layer=1, batch_size=3)
    alone = torch.cat([embed_texts(model, tok, [t], layer=1) for t in texts])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)
    last = embed_texts(model, tok, texts, pooling="last", batch_size=2)
    last_alone = torch.cat([embed_texts(model, tok, [t], pooling="last") for t in texts])
    torch.testing.assert_close(last, last_alone, rtol=1e-5, atol=1e-5)


def test_token_states_layers_and_pooling(trained_stories) -> None:
    model, tok = trained_stories.model, trained_stories.tokenizer
    texts = ["A cat sat.", "A dog ran to the red barn and back."]
    states = token_states(model, tok, texts, layer=0)
    ids = tok.encode_batch(texts)
    assert states.layer == 0 and states.mask.sum(1).tolist() == [len(i) for i in ids]
    assert states.states.shape == (2, max(map(len, ids)), model.config.d_model)
    with torch.no_grad():
        emb = model.tok_embeddings(torch.tensor(ids[0]))
    torch.testing.assert_close(states.states[0, : len(ids[0])], emb)
    torch.testing.assert_close(pool_states(states, "mean")[0], emb.mean(0))
    torch.testing.assert_close(pool_states(states, "last")[0], emb[-1])
    n = model.config.n_layers
    minus_one = token_states(model, tok, texts, layer=-1)
    assert minus_one.layer == n
    torch.testing.assert_close(minus_one.states, token_states(model, tok, texts, layer=n).states)


def test_long_texts_are_truncated_to_the_context(trained_stories, caplog) -> None:
    model, tok = trained_stories.model, trained_stories.tokenizer
    long_text = " ".join(trained_stories.paragraphs[:5])
    assert len(tok.encode(long_text)) > model.config.context_length
    with caplog.at_level(logging.INFO, logger="lmforge.analysis.embed"):
        states = token_states(model, tok, [long_text, "Hi."])
    assert int(states.mask[0].sum()) == model.config.context_length
    assert "1 of 2 texts truncated" in caplog.text


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"pooling": "cls"}, ValueError, "no \\[CLS\\] token"),
        ({"pooling": "max"}, ValueError, "'mean' or 'last'"),
        ({"layer": 3}, ValueError, r"\[-3, 2\]"),
        ({"layer": -4}, ValueError, r"\[-3, 2\]"),
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"texts": []}, ValueError, "empty"),
        ({"texts": ["fine", ""]}, ValueError, "text 1 encodes to no tokens"),
        ({"texts": ["a", "b", ""], "batch_size": 1}, ValueError, "text 2 encodes to no tokens"),
        ({"texts": "one string"}, TypeError, "sequence of str"),
    ],
)
def test_errors(trained_stories, kwargs, error, match) -> None:
    args = {"texts": ["Once upon a time."], **kwargs}
    with pytest.raises(error, match=match):
        embed_texts(trained_stories.model, trained_stories.tokenizer, **args)


def test_resolve_layer() -> None:
    assert [resolve_layer(i, 2) for i in (0, 1, 2, -1, -2, -3)] == [0, 1, 2, 2, 1, 0]
    with pytest.raises(ValueError, match="0 = the token embedding"):
        resolve_layer(True, 2)


def test_standardizer() -> None:
    gen = torch.Generator().manual_seed(0)
    ref = torch.randn(500, 8, generator=gen) * torch.arange(1, 9) + 10
    ref[:, 3] = 7.0  # a constant dimension is centred, not divided by zero
    std = Standardizer.fit(ref)
    z = std.transform(ref)
    assert z.dtype == torch.float32 and z.shape == (500, 8)
    torch.testing.assert_close(z.mean(0), torch.zeros(8), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std(0)[[0, 1, 2, 4, 5, 6, 7]], torch.ones(7))
    assert (z[:, 3] == 0).all()
    torch.testing.assert_close(std.transform(ref.numpy()), z)
    with pytest.raises(ValueError, match="fitted on 8"):
        std.transform(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="at least 2 rows"):
        Standardizer.fit(torch.zeros(1, 8))
    with pytest.raises(ValueError, match="float \\(n, dim\\) matrix"):
        Standardizer.fit(torch.zeros(4, 8, dtype=torch.int64))


def test_mean_pairwise_cosine() -> None:
    assert mean_pairwise_cosine(torch.ones(5, 3), n_pairs=50) == pytest.approx(1.0)
    # two orthogonal rows: any pair of a row with itself would pull the mean above 0
    assert mean_pairwise_cosine(torch.eye(2), n_pairs=500) == 0.0
    gauss = np.random.default_rng(0).standard_normal((300, 64))
    assert abs(mean_pairwise_cosine(gauss, 2000, seed=1)) < 0.02
    assert mean_pairwise_cosine(gauss, 100, seed=2) == mean_pairwise_cosine(gauss, 100, seed=2)
    assert mean_pairwise_cosine(gauss + 5, 500) > 0.9  # a shared direction: anisotropy
    with pytest.raises(ValueError, match="n_pairs"):
        mean_pairwise_cosine(gauss, 0)
    with pytest.raises(ValueError, match="at least 2 rows"):
        mean_pairwise_cosine(gauss[:1])
