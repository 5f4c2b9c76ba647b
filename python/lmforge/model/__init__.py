"""Transformer language models: config, building blocks, the model, generation.

The public face is :class:`Transformer` (built from a :class:`ModelConfig`), which returns a
:class:`ModelOutput`, and :func:`generate`; :class:`Encoder` is the bidirectional variant
(``causal=False``) with :class:`SequenceClassifier` and :class:`TokenClassifier` heads, and
:func:`build_model` picks the class a config describes. The building blocks are usable on their
own.
"""

from lmforge.model.attention import CausalSelfAttention, attend, repeat_kv
from lmforge.model.config import ModelConfig, default_d_ff, pad_vocab_size
from lmforge.model.encoder import Encoder, build_model
from lmforge.model.export import export_hf_llama, export_safetensors, load_safetensors
from lmforge.model.functional import cross_entropy, scaled_dot_product_attention, softcap, softmax
from lmforge.model.generate import generate, sample_next
from lmforge.model.heads import SequenceClassifier, TokenClassifier
from lmforge.model.kv_cache import KVCache
from lmforge.model.layers import Embedding, Linear, RMSNorm, SwiGLU
from lmforge.model.loss import HeadLoss, lm_head_loss, loss_from_logits
from lmforge.model.masks import document_causal_mask, document_ids, key_padding_mask
from lmforge.model.mla import LatentKVCache, MLAConfig, MultiHeadLatentAttention
from lmforge.model.mtp import MTPModule, MultiTokenPrediction
from lmforge.model.rope import RotaryEmbedding, apply_rotary
from lmforge.model.speculative import SpeculativeStats, speculative_generate
from lmforge.model.transformer import Block, ModelOutput, Transformer

__all__ = [
    "Block",
    "CausalSelfAttention",
    "Embedding",
    "Encoder",
    "HeadLoss",
    "KVCache",
    "LatentKVCache",
    "Linear",
    "MLAConfig",
    "MTPModule",
    "ModelConfig",
    "ModelOutput",
    "MultiHeadLatentAttention",
    "MultiTokenPrediction",
    "RMSNorm",
    "RotaryEmbedding",
    "SpeculativeStats",
    "SequenceClassifier",
    "SwiGLU",
    "TokenClassifier",
    "Transformer",
    "apply_rotary",
    "attend",
    "build_model",
    "cross_entropy",
    "default_d_ff",
    "document_causal_mask",
    "document_ids",
    "export_hf_llama",
    "export_safetensors",
    "generate",
    "key_padding_mask",
    "lm_head_loss",
    "load_safetensors",
    "loss_from_logits",
    "pad_vocab_size",
    "repeat_kv",
    "sample_next",
    "scaled_dot_product_attention",
    "softcap",
    "softmax",
    "speculative_generate",
]
