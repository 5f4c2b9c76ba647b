"""Embeddings from an encoder: ``[CLS] text [SEP]`` under a padding mask, ``"cls"`` pooling."""

from __future__ import annotations

import pytest
import torch

from lmforge import Tokenizer
from lmforge.analysis import embed_texts, pool_states, token_states
from lmforge.model import Encoder, ModelConfig
from lmforge.tokenizer import ENCODER_SPECIAL_TOKENS, EncoderSpecials

TEXTS = [
    "Once upon a time there was a rabbit.",
    "It hopped.",
    "The garden was full of lettuces and the old man was angry about it all day long.",
]


@pytest.fixture(scope="module")
def setup() -> tuple[Encoder, Tokenizer]:
    specials = ("<|endoftext|>", *ENCODER_SPECIAL_TOKENS)
    tok = Tokenizer.train(iter(TEXTS * 5), 300, special_tokens=specials, progress=False)
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=320, context_length=24, d_model=32, n_layers=2, n_heads=4, causal=False
    )
    return Encoder(config).double().eval(), tok


def _alone(model: Encoder, tok: Tokenizer, text: str) -> torch.Tensor:
    """Residual stream after the last block of ``[CLS] text [SEP]`` run alone (truncated)."""
    ids = EncoderSpecials.of(tok).wrap(tok.encode(text)[: model.config.context_length - 2])
    _, states = model.forward_hidden(torch.tensor([ids]), return_hidden_states=True)
    assert states is not None
    return states[-1][0].float()


def test_cls_and_mean_pooling_equal_each_text_alone(setup) -> None:
    model, tok = setup
    for pooling in ("cls", "mean"):
        batch = embed_texts(model, tok, TEXTS, pooling=pooling)  # type: ignore[arg-type]
        for i, text in enumerate(TEXTS):
            alone = _alone(model, tok, text)
            expected = alone[0] if pooling == "cls" else alone.mean(0)
            torch.testing.assert_close(batch[i], expected, rtol=1e-5, atol=1e-5)


def test_token_states_of_an_encoder(setup) -> None:
    model, tok = setup
    sp = EncoderSpecials.of(tok)
    states = token_states(model, tok, TEXTS)
    assert states.has_cls and (states.token_ids[:, 0] == sp.cls_id).all()
    lengths = states.mask.sum(1)
    assert lengths.max() == model.config.context_length  # the long text: truncated, + 2
    for row, n in zip(states.token_ids, lengths.tolist(), strict=True):
        assert row[n - 1] == sp.sep_id and (row[n:] == sp.pad_id).all()
    torch.testing.assert_close(pool_states(states, "cls"), states.states[:, 0])


def test_a_tokenizer_without_the_specials_is_refused(setup) -> None:
    model, _ = setup
    plain = Tokenizer.train(iter(TEXTS * 5), 280, progress=False)
    with pytest.raises(ValueError, match=r"no \[CLS\]"):
        embed_texts(model, plain, TEXTS, pooling="cls")
