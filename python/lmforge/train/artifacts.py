"""Using what a run left behind: a trained model from a run directory or checkpoint, and text
sampled from it.

A path may name a run directory (its newest ``ckpt-STEP/``), a checkpoint folder, or the
checkpoint file inside one. A sharded (DCP) checkpoint, written by FSDP runs, is read whole
into the one process (:func:`lmforge.train.dcp_checkpoint.load_weights`); its
``trainer_state.pt`` stands for the folder. The model config comes from the ``config.json``
beside the checkpoint, and the tokenizer from the run directory's ``tokenizer.json`` when there
is one.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from lmforge.model import ModelConfig, Transformer, build_model
from lmforge.train.checkpoint import load_checkpoint
from lmforge.train.dcp_checkpoint import STATE_FILE, is_dcp, load_weights
from lmforge.train.run_dir import CHECKPOINT_FILE, RunDir

if TYPE_CHECKING:
    from lmforge.tokenizer import Tokenizer

__all__ = ["TrainedModel", "find_checkpoint", "generate_text", "load_trained"]


@dataclass
class TrainedModel:
    """A model restored from a checkpoint, with what is needed to use it."""

    model: Transformer
    config: ModelConfig
    tokenizer: Tokenizer | None
    step: int
    checkpoint: Path


def find_checkpoint(path: str | os.PathLike[str]) -> Path:
    """The checkpoint file that ``path`` (run dir, checkpoint folder or file) refers to:
    ``checkpoint.pt``, or a sharded checkpoint's ``trainer_state.pt``.

    Raises:
        FileNotFoundError: nothing there, or a run directory without checkpoints.
    """
    p = Path(path)
    if p.is_file():
        return p
    if (p / CHECKPOINT_FILE).is_file():
        return p / CHECKPOINT_FILE
    if is_dcp(p):
        return p / STATE_FILE
    if p.is_dir():
        latest = RunDir(p).latest()
        if latest is not None:
            return find_checkpoint(latest)
        raise FileNotFoundError(f"{p} holds no checkpoint (no ckpt-STEP/ folders)")
    raise FileNotFoundError(f"{p}: no such run directory or checkpoint")


def load_trained(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> TrainedModel:
    """Rebuild the model saved at ``path`` and load its weights.

    Raises:
        FileNotFoundError: no checkpoint or no ``config.json`` beside it.
        lmforge.train.checkpoint.CheckpointError: a corrupt checkpoint.
    """
    ckpt = find_checkpoint(path)
    config_path = ckpt.parent / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} (the model config) is missing beside {ckpt}")
    config = ModelConfig.load(config_path)
    model = build_model(config)
    if ckpt.name == STATE_FILE and is_dcp(ckpt.parent):
        step = load_weights(ckpt.parent, model)
    else:
        step = load_checkpoint(ckpt, model, None, map_location="cpu", restore_rng=False)
    model.to(device).eval()
    tokenizer = None
    for candidate in (ckpt.parent / "tokenizer.json", ckpt.parent.parent / "tokenizer.json"):
        if candidate.is_file():
            from lmforge.tokenizer import Tokenizer

            tokenizer = Tokenizer.load(candidate)
            break
    return TrainedModel(model, config, tokenizer, step, ckpt)


def generate_text(
    model: Transformer,
    tokenizer: Tokenizer,
    prompt: str,
    max_new_tokens: int,
    *,
    num_samples: int = 1,
    temperature: float = 0.8,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    autocast_dtype: torch.dtype | None = None,
    speculative: bool = False,
) -> list[str]:
    """Continue ``prompt`` ``num_samples`` times; each text includes the prompt.

    Generation stops at the model's ``eot_id`` or after ``max_new_tokens`` (fewer when the
    context would overflow). ``speculative`` drafts with the model's MTP modules (greedy only;
    see :func:`lmforge.model.generate.generate`).

    Raises:
        ValueError: an empty prompt, a prompt as long as the context, or ``num_samples < 1``.
    """
    from lmforge.model.generate import generate

    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    ids = tokenizer.encode(prompt)
    context = model.config.context_length
    if not ids:
        raise ValueError("the prompt is empty: give at least one token of text")
    if len(ids) >= context:
        raise ValueError(
            f"the prompt is {len(ids)} tokens but the model's context is {context}: shorten it"
        )
    device = model.head_weight.device
    idx = torch.tensor([ids] * num_samples, device=device)
    autocast = (
        torch.autocast(device.type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else contextlib.nullcontext()
    )
    with autocast:
        out = generate(
            model,
            idx,
            min(max_new_tokens, context - len(ids)),
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            eot_id=model.config.eot_id,
            generator=generator,
            speculative=speculative,
        )
    texts = []
    for row in out.tolist():
        new = row[len(ids) :]
        if model.config.eot_id in new:  # finished rows are padded with end-of-text ids
            new = new[: new.index(model.config.eot_id)]
        texts.append(tokenizer.decode(ids + new, errors="replace"))
    return texts
