"""Byte-level BPE tokenizers: training, encoding, decoding, and file formats."""

from lmforge.tokenizer.formats import load_gpt2
from lmforge.tokenizer.formats_hf import load_hf, save_hf
from lmforge.tokenizer.formats_tiktoken import load_tiktoken, save_tiktoken, to_tiktoken
from lmforge.tokenizer.stream import StreamDecoder
from lmforge.tokenizer.tokenizer import Tokenizer

__all__ = [
    "StreamDecoder",
    "Tokenizer",
    "load_gpt2",
    "load_hf",
    "load_tiktoken",
    "save_hf",
    "save_tiktoken",
    "to_tiktoken",
]
