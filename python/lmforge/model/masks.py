"""Attention masks: causal, document (no attention across end-of-text), and KV-cache masks.

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
