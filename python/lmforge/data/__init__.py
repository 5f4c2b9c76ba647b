"""Training data: token files written by the tokenizer, and the batches training reads from them.

``token_file`` is the on-disk format; ``training_file`` opens one for a given model;
``batches`` gathers ``(x, y)`` windows; ``sampler`` decides, reproducibly and resumably, which
windows each rank trains on; ``mixture`` does the same over several token files with sampling
weights; ``validation`` yields the fixed windows losses are measured on. For the bidirectional
encoder: ``mlm`` masks windows for masked language modelling, ``padding`` pads sequences of
unequal length with their attention mask, ``tagging`` carries word-level BIO tags to tokens.

The names from modules that need torch are imported on first use (PEP 562 ``__getattr__``), so
the tokenizer, which writes token files through ``token_file``, does not pay torch's import
time (a second or two) for ``lmforge tokenizer encode``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from lmforge.data.token_file import (
    TokenFile,
    TokenFileError,
    TokenFileHeader,
    dtype_for,
    header_path,
    write_header,
)

if TYPE_CHECKING:
    from lmforge.data.batches import as_token_array, batch_from_starts, count_starts, get_batch
    from lmforge.data.device import resolve_device
    from lmforge.data.mixture import (
        MixtureSampler,
        MixtureStarts,
        gather_mixture_batch,
        gather_mixture_windows,
        mixture_weights,
    )
    from lmforge.data.mlm import IGNORE_INDEX, MLMMasking, mask_tokens, mlm_batch, mlm_windows
    from lmforge.data.padding import pad_sequences
    from lmforge.data.sampler import WindowSampler
    from lmforge.data.tagging import BIOScheme, join_words, word_labels_to_tokens
    from lmforge.data.training_file import open_training_file
    from lmforge.data.validation import ValidationBatches, validation_batches

_LAZY = {
    "as_token_array": "batches",
    "batch_from_starts": "batches",
    "count_starts": "batches",
    "get_batch": "batches",
    "resolve_device": "device",
    "MixtureSampler": "mixture",
    "MixtureStarts": "mixture",
    "gather_mixture_batch": "mixture",
    "gather_mixture_windows": "mixture",
    "mixture_weights": "mixture",
    "IGNORE_INDEX": "mlm",
    "MLMMasking": "mlm",
    "mask_tokens": "mlm",
    "mlm_batch": "mlm",
    "mlm_windows": "mlm",
    "pad_sequences": "padding",
    "BIOScheme": "tagging",
    "join_words": "tagging",
    "word_labels_to_tokens": "tagging",
    "WindowSampler": "sampler",
    "open_training_file": "training_file",
    "ValidationBatches": "validation",
    "validation_batches": "validation",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f"lmforge.data.{_LAZY[name]}"), name)
        globals()[name] = value  # later lookups skip __getattr__
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "IGNORE_INDEX",
    "BIOScheme",
    "MLMMasking",
    "MixtureSampler",
    "MixtureStarts",
    "TokenFile",
    "TokenFileError",
    "TokenFileHeader",
    "ValidationBatches",
    "WindowSampler",
    "as_token_array",
    "batch_from_starts",
    "count_starts",
    "dtype_for",
    "gather_mixture_batch",
    "gather_mixture_windows",
    "get_batch",
    "header_path",
    "join_words",
    "mask_tokens",
    "mixture_weights",
    "mlm_batch",
    "mlm_windows",
    "open_training_file",
    "pad_sequences",
    "resolve_device",
    "validation_batches",
    "word_labels_to_tokens",
    "write_header",
]
