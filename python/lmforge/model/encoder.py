"""``Encoder``: the Transformer's blocks with bidirectional attention, for masked language models.

A BERT-style encoder (Devlin et al. 2019, "BERT: Pre-training of Deep Bidirectional Transformers
for Language Understanding") built from the decoder's own parts. It is a
:class:`~lmforge.model.transformer.Transformer` whose config says ``causal=False``: the same
embedding, blocks, final norm and head, the same parameter names (so checkpoints, safetensors,
LoRA, quantisation and the optimiser's parameter kinds work unchanged), and one difference: no
causal mask. The fine-tuning heads that read it are in :mod:`lmforge.model.heads`.

Design choices:

* **No causal mask**: every token attends to every real token of its sequence, through
  ``F.scaled_dot_product_attention(is_causal=False)`` (flash attention when nothing is padded).
* **Padding with a key-padding mask.** A batch of unequal lengths is padded (on the right, by
  convention; :func:`lmforge.data.pad_sequences`) and ``attention_mask`` (True at real tokens)
  becomes a boolean ``(batch, 1, 1, seq)`` mask: no query attends to a padded key, so a real
  token's output is that of the sequence run alone. Positions come from RoPE, which makes
  scores depend on relative positions only, so even left padding leaves real tokens unchanged.
  Padded positions' own outputs are meaningless, and their targets are ignored.
* **Document masking** (``model.document_mask``): a token attends only to its own document
  (bidirectionally; an end-of-text token belongs to the document it ends), as a boolean mask
  on every device.
* **The MLM head is the decoder's LM head**: final RMSNorm, then the untied (or tied) output
  matrix. BERT and RoBERTa put a dense + GELU + LayerNorm transform before the decoder; leaving
  it out keeps the encoder's parameters exactly the decoder's, which the accounting, export and
  checkpoint code already know. Targets are the original tokens at the masked positions and
  ``-100`` elsewhere (:mod:`lmforge.data.mlm`); the loss is the chunked fused head loss over
  every position (static shapes, so ``torch.compile`` traces one graph; a gather of the masked
  rows would save head FLOPs at the cost of data-dependent shapes), and the MLM accuracy comes
  from the same chunks.
* **No segment (token-type) embeddings.** RoBERTa (Liu et al. 2019) dropped next-sentence
  prediction, the objective they were trained for; a pair ``[CLS] a [SEP] b [SEP]`` is told
  apart by its ``[SEP]`` and by relative positions.
* **No KV cache and no generation**: an encoder reads the whole sequence at once.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lmforge.model.config import ModelConfig
from lmforge.model.kv_cache import KVCache
from lmforge.model.masks import document_ids, document_mask, key_padding_mask
from lmforge.model.transformer import ModelOutput, Transformer

__all__ = ["Encoder", "build_model"]


def _refuse_cache(kv_cache: KVCache | None) -> None:
    if kv_cache is not None:
        raise ValueError(
            "an Encoder has no KV cache: it reads the whole sequence at once and cannot generate"
        )


def _check_attention_mask(idx: Tensor, attention_mask: Tensor | None) -> None:
    if attention_mask is None:
        return
    if attention_mask.dtype != torch.bool or attention_mask.shape != idx.shape:
        raise ValueError(
            f"attention_mask must be a boolean tensor of idx's shape {tuple(idx.shape)} "
            f"(True at real tokens), got {attention_mask.dtype} {tuple(attention_mask.shape)}"
        )


class Encoder(Transformer):
    """A bidirectional Transformer encoder with a masked-LM head.

    Args:
        config: the architecture; ``causal`` must be ``False``.
        device: where to allocate parameters.
        dtype: the parameters' dtype.

    Raises:
        ValueError: a causal config, or ``document_mask`` without ``eot_id``.

    Example::

        enc = Encoder(ModelConfig(vocab_size=512, context_length=128, d_model=64, n_layers=2,
                                  n_heads=4, causal=False))
        out = enc(ids, labels, attention_mask=ids != pad_id)   # labels: -100 where unmasked
        out.loss.backward(); out.metrics["accuracy"]
    """

    def __init__(
        self,
        config: ModelConfig,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if config.causal:
            raise ValueError(
                "an Encoder needs a bidirectional config: set model.causal=false "
                "(ModelConfig(..., causal=False))"
            )
        super().__init__(config, device=device, dtype=dtype)

    def attention_mask(self, idx: Tensor, attention_mask: Tensor | None = None) -> Tensor | None:
        """The boolean mask every layer uses (``None``: full attention).

        Args:
            idx: ``(batch, seq)`` token ids (document ids come from them).
            attention_mask: boolean ``(batch, seq)``, True at real tokens, or ``None``.

        Returns:
            ``None``, or boolean ``(batch, 1, 1 or seq, seq)``, True = may attend.
        """
        _check_attention_mask(idx, attention_mask)
        mask = None if attention_mask is None else key_padding_mask(attention_mask)
        if self.config.document_mask:
            assert self.config.eot_id is not None
            same = document_mask(document_ids(idx, self.config.eot_id))
            mask = same if mask is None else same & mask
        return mask

    def forward_hidden(
        self,
        idx: Tensor,
        *,
        attention_mask: Tensor | None = None,
        kv_cache: KVCache | None = None,
        return_hidden_states: bool = False,
    ) -> tuple[Tensor, list[Tensor] | None]:
        """Run the blocks bidirectionally: the final normalised hidden states.

        Args:
            idx: int64 ``(batch, seq)`` token ids.
            attention_mask: boolean ``(batch, seq)``, True at real tokens (``None``: none
                padded).
            kv_cache: must be ``None`` (an encoder has no cache).
            return_hidden_states: also return the residual stream after the embedding and after
                each block.

        Returns:
            ``(hidden, hidden_states)`` as :meth:`Transformer.forward_hidden`.

        Raises:
            ValueError: a KV cache, or a malformed ``attention_mask``.
        """
        _refuse_cache(kv_cache)
        mask = self.attention_mask(idx, attention_mask)
        return self._run_layers(idx, mask, False, None, return_hidden_states)

    def forward(
        self,
        idx: Tensor,
        targets: Tensor | None = None,
        *,
        attention_mask: Tensor | None = None,
        return_logits: bool = True,
        return_hidden_states: bool = False,
        kv_cache: KVCache | None = None,
    ) -> ModelOutput:
        """MLM logits and, given targets, the masked-LM loss and accuracy.

        Args:
            idx: int64 ``(batch, seq)`` token ids, some replaced by ``[MASK]`` or random ids.
            targets: int64 ``(batch, seq)``: the original token where a loss is wanted,
                ``-100`` elsewhere; padded positions are ignored whatever they hold.
            attention_mask: boolean ``(batch, seq)``, True at real tokens.
            return_logits: with ``False`` (needs ``targets``) the loss is computed in chunks
                without materialising ``(batch, seq, vocab)`` logits.
            return_hidden_states: fill :attr:`ModelOutput.hidden_states`.
            kv_cache: must be ``None``.

        Returns:
            A :class:`ModelOutput`; with targets, ``metrics["accuracy"]`` is the share of
            targets predicted exactly (argmax).

        Raises:
            ValueError: malformed inputs, a sequence longer than ``context_length``, or a KV
                cache.
        """
        _refuse_cache(kv_cache)
        self._check_inputs(idx, targets, return_logits, False)
        hidden, states = self.forward_hidden(
            idx, attention_mask=attention_mask, return_hidden_states=return_hidden_states
        )
        if targets is not None and attention_mask is not None:
            targets = targets.masked_fill(~attention_mask, -100)
        return self._output(hidden, states, targets, return_logits, accuracy=targets is not None)


def build_model(
    config: ModelConfig,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Transformer:
    """The model a config describes: a :class:`Transformer`, or an :class:`Encoder` when
    ``config.causal`` is ``False``.

    Args:
        config: the architecture.
        device: where to allocate parameters.
        dtype: the parameters' dtype.

    Returns:
        The model, freshly initialised.
    """
    cls = Transformer if config.causal else Encoder
    return cls(config, device=device, dtype=dtype)
