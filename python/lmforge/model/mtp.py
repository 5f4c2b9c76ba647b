"""Multi-token prediction (MTP; DeepSeek-AI 2024, "DeepSeek-V3", §2.2).

``mtp_depth`` small modules after the main model predict the tokens 2, 3, … steps ahead, which
densifies the training signal and makes the main model plan further ahead; at inference they are
dropped, or used to draft tokens for self-speculative decoding
(:mod:`lmforge.model.speculative`).

Module ``k`` (k = 1 … D) keeps the *causal chain* of DeepSeek-V3 (unlike the parallel heads of
Gloeckle et al. 2024): at position ``i`` it combines the previous depth's representation
``h_i^{k-1}`` (the main model's for k = 1) with the embedding of token ``t_{i+k}``,

    h'_i^k = M_k [RMSNorm(h_i^{k-1}); RMSNorm(Emb(t_{i+k}))]          (eq. 21)
    h^k    = TRM_k(h'^k)                                              (eq. 22)
    P^k_{i+k+1} = OutHead(h_i^k)                                      (eq. 23)

and predicts ``t_{i+k+1}``. Over a window of T tokens depth ``k`` has ``T − k`` positions.
Its loss is the cross-entropy of those predictions (eq. 24), and the model's loss becomes
``L_main + λ · mean_k L_MTP^k`` (eq. 25, λ = ``mtp_weight``).

Design choices:

* **Shared** token embedding and output head (the main model's, tied or not): an MTP module
  owns only its two input norms, the ``2d → d`` projection ``proj`` (M_k), one Transformer
  block (the main model's kind: MHA or MLA) and the final norm before the shared head
  (DeepSeek-V3's released weights have one, ``shared_head.norm``).
* ``h^0`` is the main model's last residual stream **before** its final norm: the module
  normalises it itself (``hidden_norm``), so normalising twice would only add a gain.
* Gradients flow from the MTP loss into the main model and the shared embedding and head, as
  in DeepSeek-V3; nothing is detached.
* The block's KV-cache slot is ``n_layers + k − 1``, so one cache layout serves speculative
  decoding. The tokens a depth reads come from ``idx`` (never from ``targets``, which may hold
  ignore markers).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from lmforge.model.layers import Linear, RMSNorm
from lmforge.model.rope import RotaryEmbedding

if TYPE_CHECKING:
    from lmforge.model.config import ModelConfig
    from lmforge.model.kv_cache import KVCache

__all__ = ["MTPModule", "MultiTokenPrediction"]

#: Builds the Transformer block of depth k from its KV-cache slot (the main model's ``Block``).
BlockFactory = Callable[[int], nn.Module]
#: The attention mask of a window of token ids: ``(mask, is_causal)``.
MaskFn = Callable[[Tensor], tuple[Any, bool]]


class MTPModule(nn.Module):
    """One MTP depth: norms, projection ``2·d_model → d_model``, one block, output norm.

    Args:
        d_model: the residual width.
        norm_eps: RMSNorm epsilon.
        block: the depth's Transformer block.
        device: where to allocate the weights.
        dtype: the weights' dtype.
    """

    def __init__(
        self,
        d_model: int,
        norm_eps: float,
        block: nn.Module,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        self.hidden_norm = RMSNorm(d_model, norm_eps, **kw)
        self.embed_norm = RMSNorm(d_model, norm_eps, **kw)
        self.proj = Linear(2 * d_model, d_model, **kw)
        self.block = block
        self.norm = RMSNorm(d_model, norm_eps, **kw)

    def forward(
        self,
        hidden: Tensor,
        embedded: Tensor,
        rope: RotaryEmbedding,
        mask: Any = None,
        is_causal: bool = True,
        kv_cache: KVCache | None = None,
    ) -> Tensor:
        """``h^k`` from ``h^{k-1}`` and the embeddings of the tokens ``k`` steps ahead.

        Args:
            hidden: ``(batch, seq, d_model)`` the previous depth's residual stream.
            embedded: ``(batch, seq, d_model)`` embeddings of ``t_{i+k}`` at each position i.
            rope: the shared rotary embedding.
            mask: the block's attention mask (see ``Block.forward``).
            is_causal: apply the causal mask when ``mask`` is ``None``.
            kv_cache: for drafting (the block's slot is ``n_layers + k − 1``).

        Returns:
            ``(batch, seq, d_model)`` before the output norm :attr:`norm`.
        """
        merged = torch.cat([self.hidden_norm(hidden), self.embed_norm(embedded)], dim=-1)
        return self.block(self.proj(merged), rope, mask, is_causal, kv_cache)


class MultiTokenPrediction(nn.Module):
    """The ``mtp_depth`` sequential MTP modules (DeepSeek-V3 §2.2).

    Args:
        config: the model config (``mtp_depth``, ``d_model``, ``norm_eps``).
        make_block: builds depth k's block given its KV-cache slot ``n_layers + k − 1``.
        device: where to allocate the weights.
        dtype: the weights' dtype.

    Raises:
        ValueError: ``config.mtp_depth`` is 0.
    """

    def __init__(
        self,
        config: ModelConfig,
        make_block: BlockFactory,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if config.mtp_depth < 1:
            raise ValueError("MultiTokenPrediction needs mtp_depth >= 1")
        self.depths = nn.ModuleList(
            MTPModule(
                config.d_model,
                config.norm_eps,
                make_block(config.n_layers + k),
                device=device,
                dtype=dtype,
            )
            for k in range(config.mtp_depth)
        )

    def depth(self, k: int) -> MTPModule:
        """The module of depth ``k`` (1-based, as in the paper)."""
        return cast(MTPModule, self.depths[k - 1])

    def forward(
        self,
        hidden: Tensor,
        idx: Tensor,
        embed: nn.Module,
        rope: RotaryEmbedding,
        attention_mask: MaskFn,
        *,
        recompute: bool = False,
    ) -> list[Tensor]:
        """Run every depth on a training window; the normalised outputs, one per depth.

        Args:
            hidden: ``(batch, T, d_model)`` the main model's last residual stream (pre-norm).
            idx: ``(batch, T)`` the window's token ids.
            embed: the shared token embedding.
            rope: the shared rotary embedding.
            attention_mask: the mask of a window of ids (document masking, if on, follows the
                main model's documents at the same positions).
            recompute: activation checkpointing of each depth.

        Returns:
            For k = 1 … min(D, T − 1), ``(batch, T − k, d_model)`` normalised states; row i
            predicts token ``i + k + 1`` of the window (``targets[:, k:]``).
        """
        outs: list[Tensor] = []
        h, seq = hidden, idx.shape[1]
        for k in range(1, len(self.depths) + 1):
            if seq - k < 1:
                break
            module = self.depth(k)
            mask, is_causal = attention_mask(idx[:, : seq - k])
            emb = embed(idx[:, k:])
            if recompute:
                h = checkpoint(
                    module, h[:, : seq - k], emb, rope, mask, is_causal, use_reentrant=False
                )
            else:
                h = module(h[:, : seq - k], emb, rope, mask, is_causal)
            outs.append(module.norm(h))
        return outs
