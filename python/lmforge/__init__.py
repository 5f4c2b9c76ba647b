"""lmforge: train byte-level BPE tokenizers and Transformer language models from scratch.

The tokenizer core is Rust (``lmforge._bpe``, private); the public face is :class:`Tokenizer`.
"""

from lmforge._bpe import EmptyCorpusError, InvalidUtf8Error, TokenizerFileError
from lmforge.tokenizer import Tokenizer

__all__ = [
    "EmptyCorpusError",
    "InvalidUtf8Error",
    "Tokenizer",
    "TokenizerFileError",
    "__version__",
]

__version__ = "0.1.0"
