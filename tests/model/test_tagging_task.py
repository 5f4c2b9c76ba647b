"""A tiny encoder learns BIO named-entity tagging of a synthetic grammar (CPU, a few seconds).

Sentences come from templates with person (PER) and place (LOC) names of one or two words;
``Paris``, ``Jordan`` and ``Victoria`` are both first names and places, so only the context
(before *and* after the word) tells their tag. The whole path is exercised: a tokenizer trained
with the encoder specials, words → text → tokens with offsets → first-sub-token labels,
``[CLS] … [SEP]`` inputs padded under an attention mask, and :class:`TokenClassifier`.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
import torch

from lmforge import Tokenizer
from lmforge.data import BIOScheme, join_words, pad_sequences, word_labels_to_tokens
from lmforge.model import Encoder, ModelConfig, TokenClassifier
from lmforge.optim import AdamW
from lmforge.tokenizer import ENCODER_SPECIAL_TOKENS, EncoderSpecials

FIRST = ["Alice", "Bob", "Carol", "Dmitri", "Paris", "Jordan", "Victoria", "Oluwaseun"]
LAST = ["Smith", "Nakamura", "Okafor", "Berg"]
PLACES = ["Paris", "Jordan", "Victoria", "London", "Kyoto", "Lagos", "New York", "San Jose"]
AMBIGUOUS = {"Paris", "Jordan", "Victoria"}
TEMPLATES = [
    "PER visited LOC .",
    "PER met PER in LOC .",
    "yesterday PER flew from LOC to LOC .",
    "the weather in LOC was cold , said PER .",
    "LOC is far from LOC .",
]
SCHEME = BIOScheme(("PER", "LOC"))


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Matmuls of 64-wide models: threads cost more than they save (and the CPU is shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _entity(kind: str, rng: random.Random) -> list[str]:
    if kind == "PER":
        return [rng.choice(FIRST)] + ([rng.choice(LAST)] if rng.random() < 0.5 else [])
    return rng.choice(PLACES).split()


def sentence(rng: random.Random) -> tuple[list[str], list[str]]:
    """Words and their BIO tags."""
    words, tags = [], []
    for slot in rng.choice(TEMPLATES).split():
        if slot in ("PER", "LOC"):
            name = _entity(slot, rng)
            words += name
            tags += [f"B-{slot}"] + [f"I-{slot}"] * (len(name) - 1)
        else:
            words.append(slot)
            tags.append("O")
    return words, tags


def encode(tok: Tokenizer, data: list[tuple[list[str], list[str]]]):  # type: ignore[no-untyped-def]
    """Padded ``[CLS] … [SEP]`` ids, attention mask and token labels (-100 off first pieces)."""
    specials = EncoderSpecials.of(tok)
    rows, label_rows = [], []
    for words, tags in data:
        text, spans = join_words(words)
        ids, offsets = tok.encode_with_offsets(text)
        labels = word_labels_to_tokens(offsets, spans, [SCHEME.id(t) for t in tags])
        rows.append(specials.wrap(ids))
        label_rows.append(specials.wrap(labels, fill=-100))
    ids, mask = pad_sequences(rows, specials.pad_id)
    labels, _ = pad_sequences(label_rows, -100)
    return ids, mask, labels


def test_tiny_encoder_learns_bio_tagging(one_thread: None) -> None:
    rng = random.Random(0)
    train = [sentence(rng) for _ in range(2000)]
    test = [sentence(rng) for _ in range(300)]
    corpus = (" ".join(words) for words, _ in train)
    specials = ("<|endoftext|>", *ENCODER_SPECIAL_TOKENS)
    tok = Tokenizer.train(corpus, 300, special_tokens=specials, progress=False)
    x, mask, y = encode(tok, train)
    x_test, mask_test, y_test = encode(tok, test)
    assert (y != -100).sum() < (mask.sum() - 2 * len(train))  # some words were split

    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=320, context_length=64, d_model=64, n_layers=2, n_heads=4, causal=False
    )
    model = TokenClassifier(Encoder(config), SCHEME.num_labels)
    optimizer = AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    gen = torch.Generator().manual_seed(0)
    first_loss, steps = None, 150
    for step in range(steps):
        for group in optimizer.param_groups:  # linear decay to 0
            group["lr"] = 3e-3 * (1 - step / steps)
        rows = torch.randint(0, len(train), (32,), generator=gen)
        out = model(x[rows], y[rows], attention_mask=mask[rows])
        assert out.loss is not None
        first_loss = first_loss if first_loss is not None else out.loss.item()
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()

    model.eval()
    with torch.no_grad():
        out = model(x_test, y_test, attention_mask=mask_test)
    assert out.logits is not None and out.loss is not None
    pred = out.logits.argmax(-1)
    labelled = y_test != -100
    accuracy = (pred[labelled] == y_test[labelled]).double().mean().item()
    # the ambiguous first names / places: right only by reading the context
    ambiguous_ids = {i for w in AMBIGUOUS for i in tok.encode(" " + w)[:1]}
    is_ambiguous = labelled & torch.isin(x_test, torch.tensor(sorted(ambiguous_ids)))
    ambiguous_accuracy = (pred[is_ambiguous] == y_test[is_ambiguous]).double().mean().item()
    assert out.loss.item() < first_loss / 20, (first_loss, out.loss.item())
    assert accuracy > 0.99, accuracy
    assert is_ambiguous.sum() > 50 and ambiguous_accuracy > 0.97, ambiguous_accuracy
