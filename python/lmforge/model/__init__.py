"""Transformer language models: config, building blocks, the model, generation."""

from lmforge.model.config import ModelConfig, default_d_ff, pad_vocab_size

__all__ = ["ModelConfig", "default_d_ff", "pad_vocab_size"]
