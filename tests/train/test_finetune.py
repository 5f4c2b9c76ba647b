"""LoRA fine-tuning on a real token file: the loss falls, the base model does not move."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from lmforge.data import TokenFile
from lmforge.model import ModelConfig, Transformer
from lmforge.model.lora import LoRAConfig, apply_lora, lora_state_dict, trainable_parameters
from lmforge.optim import AdamW
from lmforge.train.finetune import finetune

TARGETS = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # Tiny matmuls on a loaded 2-core CI box: OpenMP's second thread costs 100x in spin-waits.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _model(seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    config = ModelConfig(vocab_size=512, context_length=64, d_model=64, n_layers=2, n_heads=4)
    return Transformer(config)


def test_finetune_lowers_loss_and_keeps_base_weights(stories_data: dict[str, Path]) -> None:
    tokens = TokenFile.open(stories_data["train"]).tokens
    model = apply_lora(_model(), LoRAConfig(rank=8, alpha=16.0, targets=TARGETS))
    base = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}
    losses = finetune(model, tokens, steps=30, batch_size=4, lr=1e-2, context_length=32)
    assert len(losses) == 30, losses
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.3, losses
    for n, p in model.named_parameters():
        if "lora_" not in n:
            assert torch.equal(p, base[n]), n
    assert all(lora_state_dict(model)[n].abs().sum() > 0 for n in lora_state_dict(model))


def test_finetune_is_seeded_and_optimizes_only_adapters(
    stories_data: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = TokenFile.open(stories_data["train"]).tokens
    seen: list[int] = []
    init = AdamW.__init__

    def spy(self: AdamW, params: list[torch.nn.Parameter], *args: object, **kw: object) -> None:
        params = list(params)
        seen.append(sum(p.numel() for p in params))
        init(self, params, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(AdamW, "__init__", spy)
    runs = []
    for _ in range(2):
        model = apply_lora(_model(), LoRAConfig(rank=2, dropout=0.1))
        runs.append(finetune(model, tokens, steps=3, batch_size=2, lr=1e-3, context_length=32))
    assert runs[0] == runs[1]
    assert seen == [trainable_parameters(model)] * 2
    assert trainable_parameters(model) == 2 * 2 * (2 * (64 + 64))  # wq, wv per layer, r = 2


def test_finetune_errors(stories_data: dict[str, Path]) -> None:
    tokens = TokenFile.open(stories_data["train"]).tokens
    model = _model()
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        finetune(model, tokens, steps=1, batch_size=1, lr=1e-3)
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        finetune(model, tokens, steps=0, batch_size=1, lr=1e-3)
    with pytest.raises(ValueError, match="lr must be"):
        finetune(model, tokens, steps=1, batch_size=1, lr=float("nan"))
