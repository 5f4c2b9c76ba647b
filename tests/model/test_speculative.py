"""Self-speculative decoding with the MTP modules: identical to plain greedy decoding; the
cached drafts equal drafts recomputed without caches; acceptance bookkeeping."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from model_testing import tiny_model, tokens

from lmforge.model import speculative
from lmforge.model.generate import generate
from lmforge.model.speculative import speculative_generate

CASES: dict[str, dict[str, Any]] = {
    "mha_depth1": dict(mtp_depth=1),
    "mha_depth3": dict(mtp_depth=3, n_kv_heads=2),
    "mla_depth2": dict(mtp_depth=2, attention="mla"),
    "mla_doc_mask": dict(mtp_depth=2, attention="mla", document_mask=True, eot_id=0),
}


def reference_drafts(model: Any, accepted: torch.Tensor, drafts: list[int]) -> list[int]:
    """The drafts recomputed without any cache from the tokens ``accepted`` (``s_0 … s_n``).

    Depth k's draft is its prediction at position n − 1 after reading the drafts before it:
    run the main model and every depth on ``[s_0 … s_n, d_1 … d_{D-1}]`` in one uncached pass.
    """
    n = accepted.shape[1] - 1
    x = torch.cat([accepted, torch.tensor([drafts[:-1]], dtype=torch.long)], dim=1)
    _, states = model.forward_hidden(x, return_hidden_states=True)
    outs = model.mtp(states[-1], x, model.tok_embeddings, model.rope,
                     lambda w: model._attention_mask(w, None))  # fmt: skip
    return [int(model.logits(outs[k][:, n - 1]).argmax(-1)) for k in range(len(drafts))]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("prompt_len", [1, 4])
def test_equals_plain_greedy_and_drafts_equal_uncached(
    case: str, prompt_len: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Drafts are computed through the caches as they are, checked against an uncached
    recomputation, then replaced by a schedule of right and wrong guesses so that rounds
    accept 0 … D drafts (a random model's own guesses are almost never right)."""
    model = tiny_model(**CASES[case])
    vocab = 8 if "doc" in case else 67
    prompt = tokens((2, prompt_len), vocab=vocab, seed=prompt_len)
    plain = generate(model, prompt, 16, temperature=0.0)
    depth, rounds = model.config.mtp_depth, {"n": 0, "drafted": 0, "right": 0}
    original = speculative._Row.drafts

    def checked(self: Any, n: int, count: int) -> list[torch.Tensor]:
        drafts = original(self, n, count)
        got = [int(d) for d in drafts]
        assert got == reference_drafts(model, self.seq[:, : n + 1], got)
        row = 0 if torch.equal(self.seq[0, :prompt_len], prompt[0]) else 1
        truth = plain[row, n + 1 : n + 1 + count].tolist()
        right = rounds["n"] % (depth + 1)  # accept this many, then guess wrong
        rounds["n"] += 1
        rounds["drafted"] += count
        rounds["right"] += min(right, count)
        guesses = [t if i < right else (t + 1) % vocab for i, t in enumerate(truth)]
        return [torch.tensor([[g]]) for g in guesses]

    monkeypatch.setattr(speculative._Row, "drafts", checked)
    out, stats = speculative_generate(model, prompt, 16)
    assert torch.equal(out, plain)
    assert (stats.drafted, stats.accepted) == (rounds["drafted"], rounds["right"])
    assert 0 < stats.accepted < stats.drafted
    assert stats.generated == 2 * 16


@pytest.mark.parametrize("case", CASES)
def test_own_drafts_give_plain_greedy(case: str) -> None:
    model = tiny_model(**CASES[case])
    prompt = tokens((3, 3), vocab=8 if "doc" in case else 67)
    plain = generate(model, prompt, 12, temperature=0.0)
    assert torch.equal(generate(model, prompt, 12, temperature=0.0, speculative=True), plain)


def test_stops_at_end_of_text_like_plain_greedy() -> None:
    model = tiny_model(mtp_depth=2)
    prompt = tokens((2, 3))
    free = generate(model, prompt, 12, temperature=0.0)
    eot = int(free[0, 7])  # a token row 0 emits: it stops there and pads with it
    plain = generate(model, prompt, 12, temperature=0.0, eot_id=eot)
    out, stats = speculative_generate(model, prompt, 12, eot_id=eot)
    assert torch.equal(out, plain)
    assert (out[0, 7:] == eot).all()
    first = [int((row[3:] == eot).nonzero()[0]) + 1 if (row[3:] == eot).any() else 12
             for row in plain]  # fmt: skip
    assert stats.generated == sum(first)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_all_accepted_when_every_guess_is_right(depth: int) -> None:
    """With a zero LM head every logit ties and argmax is token 0 for the main model and every
    MTP depth alike: every draft is accepted, so each round yields depth + 1 tokens."""
    model = tiny_model(mtp_depth=depth)
    assert model.output is not None
    with torch.no_grad():
        model.output.weight.zero_()
    prompt = tokens((1, 2))
    out, stats = speculative_generate(model, prompt, 13)
    assert torch.equal(out, generate(model, prompt, 13, temperature=0.0))
    assert stats.acceptance_rate == 1.0
    assert stats.main_forwards == 1 + math.ceil((13 - 1) / (depth + 1))
    assert stats.tokens_per_forward == 13 / stats.main_forwards


def test_refusals() -> None:
    prompt = tokens((1, 3))
    with pytest.raises(ValueError, match="mtp_depth"):
        speculative_generate(tiny_model(), prompt, 4)
    with pytest.raises(ValueError, match="temperature=0"):
        generate(tiny_model(mtp_depth=1), prompt, 4, temperature=0.8, speculative=True)
    with pytest.raises(ValueError, match="context_length"):
        speculative_generate(tiny_model(mtp_depth=1), prompt, 40)
    out, stats = speculative_generate(tiny_model(mtp_depth=1), prompt, 0)
    assert torch.equal(out, prompt) and stats.main_forwards == 0
