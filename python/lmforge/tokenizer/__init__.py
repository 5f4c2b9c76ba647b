"""Byte-level BPE tokenizers: training, encoding, decoding, and file formats."""

from lmforge.tokenizer.encoder_specials import (
    ENCODER_SPECIAL_TOKENS,
    EncoderSpecials,
    with_special_tokens,
)
from lmforge.tokenizer.formats import load_gpt2
from lmforge.tokenizer.formats_hf import load_hf, save_hf
from lmforge.tokenizer.formats_tiktoken import load_tiktoken, save_tiktoken, to_tiktoken
from lmforge.tokenizer.stream import StreamDecoder
from lmforge.tokenizer.tokenizer import Tokenizer

__all__ = [
    "ENCODER_SPECIAL_TOKENS",
    "EncoderSpecials",
    "StreamDecoder",
    "Tokenizer",
    "load_gpt2",
    "load_hf",
    "load_tiktoken",
    "save_hf",
    "save_tiktoken",
    "to_tiktoken",
    "with_special_tokens",
]
