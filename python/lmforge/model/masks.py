"""Attention masks: causal, document (no attention across end-of-text), padding, KV-cache masks.

Training windows are cut from a stream of documents joined by an end-of-text (EOT) token, so one
window usually holds the end of one document and the start of the next. With
``ModelConfig.document_mask`` a token attends only to earlier tokens *of its own document*
(as in LLaMA 3 pre-training, Dubey et al. 2024, and modded-nanoGPT's FlexAttention masks).

Design choices:

* **The EOT token belongs to the document it ends**: it attends to that document and the token
  after it starts a fresh document that cannot see it. Document ids are therefore
  ``cumsum(is_eot) - is_eot`` (the number of EOTs strictly before each position). This matches
  training where the model predicts EOT from the document's text, and a new document begins
  with no context — as at the start of generation.
* **One mask per forward**, shared by every layer. On CUDA it is a FlexAttention ``BlockMask``
  (Dong et al. 2024): blocks that lie entirely inside other documents are skipped, so the
  cost falls with the number of documents. Elsewhere it is an explicit boolean
  ``(batch, 1, seq, seq)`` mask for ``F.scaled_dot_product_attention``.
* **True = may attend**, the convention of ``F.scaled_dot_product_attention``.
* **Bidirectional masks** for the encoder (:mod:`lmforge.model.encoder`): a key-padding mask
  ``(batch, 1, 1, seq)`` that hides padded keys from every query, and the document mask without
  its causal half. Padded *queries* still see the real keys, so their rows stay finite (a row
  with no key at all would be a softmax over nothing: NaN).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import cast

import torch
from torch import Tensor
from torch.nn.attention.flex_attention import BlockMask, create_block_mask

__all__ = [
    "causal_mask",
    "document_block_mask",
    "document_causal_mask",
    "document_ids",
    "document_mask",
    "key_padding_mask",
]


def document_ids(idx: Tensor, eot_id: int, first_doc: Tensor | None = None) -> Tensor:
    """The document index of every token; an EOT belongs to the document it ends.

    Args:
        idx: integer ``(batch, seq)`` token ids.
        eot_id: the end-of-text token id.
        first_doc: optional ``(batch,)`` id of the document the first token belongs to
            (the KV cache continues a stream); default 0.

    Returns:
        int32 ``(batch, seq)``, non-decreasing along ``seq``.
    """
    is_eot = (idx == eot_id).to(torch.int32)
    ids = torch.cumsum(is_eot, dim=-1, dtype=torch.int32) - is_eot
    if first_doc is not None:
        ids = ids + first_doc.to(torch.int32).unsqueeze(-1)
    return ids


def causal_mask(
    q_len: int, k_len: int, *, start: int = 0, device: torch.device | None = None
) -> Tensor:
    """Boolean ``(q_len, k_len)``: query ``i`` (at position ``start + i``) sees keys ``<= it``.

    Args:
        q_len: number of queries.
        k_len: number of keys (positions ``0 … k_len-1``).
        start: position of the first query.
        device: where to build the mask.

    Returns:
        A boolean tensor, True = may attend.
    """
    q_pos = torch.arange(start, start + q_len, device=device)
    k_pos = torch.arange(k_len, device=device)
    return q_pos.unsqueeze(-1) >= k_pos


def document_causal_mask(doc_q: Tensor, doc_k: Tensor | None = None, *, start: int = 0) -> Tensor:
    """Causal mask restricted to the same document.

    Args:
        doc_q: ``(batch, q_len)`` document ids of the queries.
        doc_k: ``(batch, k_len)`` document ids of the keys; default ``doc_q``.
        start: position of the first query among the keys (KV cache fill level).

    Returns:
        Boolean ``(batch, 1, q_len, k_len)``, True = may attend.
    """
    doc_k = doc_q if doc_k is None else doc_k
    causal = causal_mask(doc_q.shape[-1], doc_k.shape[-1], start=start, device=doc_q.device)
    same_doc = doc_q.unsqueeze(-1) == doc_k.unsqueeze(-2)
    return (same_doc & causal).unsqueeze(1)


def document_mask(doc_ids: Tensor) -> Tensor:
    """Bidirectional attention within documents: every token sees its whole document.

    Args:
        doc_ids: ``(batch, seq)`` document ids (:func:`document_ids`).

    Returns:
        Boolean ``(batch, 1, seq, seq)``, True = may attend.
    """
    return (doc_ids.unsqueeze(-1) == doc_ids.unsqueeze(-2)).unsqueeze(1)


def key_padding_mask(attention_mask: Tensor) -> Tensor:
    """The attention mask of a padded batch: no query attends to a padded key.

    Args:
        attention_mask: boolean ``(batch, seq)``, True at real tokens (each row needs one).

    Returns:
        Boolean ``(batch, 1, 1, seq)``, broadcastable over heads and queries; True = may attend.

    Raises:
        ValueError: ``attention_mask`` is not a boolean 2-D tensor.
    """
    if attention_mask.dtype != torch.bool or attention_mask.ndim != 2:
        raise ValueError(
            "attention_mask must be a boolean (batch, seq) tensor, True at real tokens; got "
            f"{attention_mask.dtype} {tuple(attention_mask.shape)}"
        )
    return attention_mask[:, None, None, :]


@functools.cache
def _compiled_create_block_mask() -> Callable[..., BlockMask]:
    return cast(Callable[..., BlockMask], torch.compile(create_block_mask))


def document_block_mask(doc_ids: Tensor, *, block_size: int = 128) -> BlockMask:
    """A FlexAttention ``BlockMask`` for causal attention within documents.

    On CUDA outside ``torch.compile`` the mask is built by a compiled ``create_block_mask``
    (eagerly it would materialise ``batch × seq × seq`` booleans); inside an outer compile it is
    traced with the model.

    Args:
        doc_ids: ``(batch, seq)`` document ids (:func:`document_ids`).
        block_size: FlexAttention's tile size (128 on current GPUs).

    Returns:
        A ``BlockMask`` for ``(batch, any heads, seq, seq)`` attention.
    """

    def mask_mod(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        return (q >= kv) & (doc_ids[b, q] == doc_ids[b, kv])

    build = create_block_mask
    if doc_ids.is_cuda and not torch.compiler.is_compiling():
        build = _compiled_create_block_mask()
    batch, seq = doc_ids.shape
    return build(mask_mod, batch, None, seq, seq, device=doc_ids.device, BLOCK_SIZE=block_size)
