"""Byte-level BPE tokenizers: training, encoding, decoding, and file formats."""

from lmforge.tokenizer.formats import load_gpt2
from lmforge.tokenizer.tokenizer import Tokenizer

__all__ = ["Tokenizer", "load_gpt2"]
