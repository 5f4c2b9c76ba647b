"""Loading what a run left behind: a trained model from a run directory or checkpoint.

A path may name a run directory (its newest ``ckpt-STEP/``), a checkpoint folder, or the
checkpoint file inside one. The model config comes from the ``config.json`` beside the
checkpoint, and the tokenizer from the run directory's ``tokenizer.json`` when there is one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from lmforge.model import ModelConfig, Transformer
from lmforge.train.checkpoint import load_checkpoint
from lmforge.train.run_dir import RunDir

if TYPE_CHECKING:
    from lmforge.tokenizer import Tokenizer

__all__ = ["TrainedModel", "find_checkpoint", "load_trained"]

CHECKPOINT_FILE = "checkpoint.pt"


@dataclass
class TrainedModel:
    """A model restored from a checkpoint, with what is needed to use it."""

    model: Transformer
    config: ModelConfig
    tokenizer: Tokenizer | None
    step: int
    checkpoint: Path


def find_checkpoint(path: str | os.PathLike[str]) -> Path:
    """The checkpoint file that ``path`` (run dir, checkpoint folder or file) refers to.

    Raises:
        FileNotFoundError: nothing there, or a run directory without checkpoints.
    """
    p = Path(path)
    if p.is_file():
        return p
    if (p / CHECKPOINT_FILE).is_file():
        return p / CHECKPOINT_FILE
    if p.is_dir():
        latest = RunDir(p).latest()
        if latest is not None:
            return latest / CHECKPOINT_FILE
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
    model = Transformer(config)
    step = load_checkpoint(ckpt, model, None, map_location="cpu", restore_rng=False)
    model.to(device).eval()
    tokenizer = None
    for candidate in (ckpt.parent / "tokenizer.json", ckpt.parent.parent / "tokenizer.json"):
        if candidate.is_file():
            from lmforge.tokenizer import Tokenizer

            tokenizer = Tokenizer.load(candidate)
            break
    return TrainedModel(model, config, tokenizer, step, ckpt)
