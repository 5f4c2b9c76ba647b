"""``Transformer``: the decoder-only language model, and ``ModelOutput``, what it returns.

token embedding → ``n_layers`` × :class:`Block` → final RMSNorm → LM head (LLaMA; Touvron et al.
2023), read top to bottom in :meth:`Transformer.forward_hidden`.

Design choices:

* **Pre-norm blocks** (Xiong et al. 2020): ``x + attn(norm(x))`` then ``x + mlp(norm(x))``; the
  residual stream is never normalised, so gradients reach early layers undiminished.
* **Parallel blocks** (optional; GPT-J, PaLM): ``x + attn(norm(x)) + mlp(norm(x))`` with *one*
  shared norm (``attention_norm``; there is no ``mlp_norm``), as in GPT-J and PaLM: the two
  branches read the same input, so one norm suffices and the two input matmuls could be fused.
  Such a model has no Hugging Face Llama equivalent.
* **Init**: :class:`~lmforge.model.layers.Linear` draws ``N(0, 1/fan_in)`` truncated at ±3σ;
  the residual output projections ``wo`` and ``w2`` are further scaled by ``1/sqrt(2 n_layers)``
  (GPT-2, Radford et al. 2019) so the residual stream's variance does not grow with depth at
  init (2 residual additions per block). Norm gains start at 1.
* **Document masking** (optional): see :mod:`lmforge.model.masks` — one mask is built per forward
  from the token ids and shared by all layers (a FlexAttention ``BlockMask`` on CUDA).
* **Loss** in float32 from the logits, chunked when logits are not requested
  (:mod:`lmforge.model.loss`). The number of rows per chunk is ``loss_chunk_size``.
* **Compile-friendly**: no ``.item()``, no data-dependent Python branches in the training path;
  metrics are detached tensors, so ``torch.compile(model, fullgraph=True)`` traces one graph.
* **Activation checkpointing** (optional) recomputes each block in backward
  (``torch.utils.checkpoint``, non-reentrant, Chen et al. 2016).
* **Attention kind**: ``attention = "mla"`` swaps every block's attention for multi-head latent
  attention (:mod:`lmforge.model.mla`; RoPE then rotates ``qk_rope_head_dim`` wide parts).
* **Multi-token prediction** (optional, ``mtp_depth``; :mod:`lmforge.model.mtp`): given
  targets, the MTP modules run after the main model and their weighted mean cross-entropy is
  added to the loss (``losses["mtp_k"]`` per depth); without targets they do not run.
* **Mixture of Experts** (optional, ``config.moe``): chosen blocks get an
  :class:`~lmforge.model.moe.MoE` MLP; after the blocks, :meth:`Transformer.forward` collects
  their balance losses (added to ``loss``) and metrics, and the routers' loss-free bias moves in
  :meth:`Transformer.after_optimizer_step` (:mod:`lmforge.model.moe`).

Parameter names follow Meta's LLaMA checkpoints (``tok_embeddings``, ``layers.{i}.attention.wq``,
``layers.{i}.mlp.w1``, ``norm``, ``output``), which the Hugging Face export maps one to one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention.flex_attention import BlockMask
from torch.utils.checkpoint import checkpoint

from lmforge.model.attention import CausalSelfAttention
from lmforge.model.config import ModelConfig
from lmforge.model.functional import at_least_float32, softcap
from lmforge.model.kv_cache import KVCache
from lmforge.model.layers import Embedding, Linear, RMSNorm
from lmforge.model.loss import HeadLoss, lm_head_loss, loss_from_logits
from lmforge.model.masks import document_block_mask, document_causal_mask, document_ids
from lmforge.model.mla.attention import MultiHeadLatentAttention
from lmforge.model.moe import MoE, build_mlp, collect_moe_stats
from lmforge.model.mtp import MultiTokenPrediction
from lmforge.model.rope import RotaryEmbedding

__all__ = ["Block", "ModelOutput", "Transformer", "param_kinds"]

AttentionMask = Tensor | BlockMask | None


def param_kinds(model: nn.Module) -> dict[str, str]:
    """The ``param_kind`` of the module owning each parameter of ``model``, for the optimiser.

    Args:
        model: any module whose parameter-holding submodules declare a ``param_kind``: one
            kind for all their parameters, or a dict from parameter name to kind.

    Returns:
        ``{name: kind}`` in ``named_parameters()`` order.

    Raises:
        TypeError: if a module holding parameters declares no ``param_kind``.
    """
    kinds: dict[str, str] = {}
    for mod_name, module in model.named_modules():
        for p_name, _ in module.named_parameters(recurse=False):
            kind = getattr(module, "param_kind", None)
            if isinstance(kind, dict):  # one kind per parameter name
                kind = kind.get(p_name)
            if not isinstance(kind, str):
                raise TypeError(
                    f"module {mod_name!r} ({type(module).__name__}) has parameters but no "
                    "param_kind attribute"
                )
            kinds[f"{mod_name}.{p_name}" if mod_name else p_name] = kind
    return {name: kinds[name] for name, _ in model.named_parameters()}


@dataclass
class ModelOutput:
    """What :meth:`Transformer.forward` returns.

    Attributes:
        logits: float32 ``(batch, seq, vocab_size)``, or ``None`` when ``return_logits=False``.
        loss: the scalar to back-propagate (cross-entropy + z-loss + MoE balance losses +
            ``mtp_weight`` × the mean MTP cross-entropy), ``None`` without targets.
        losses: detached named parts of ``loss``: ``"ce"`` and, when enabled, ``"z_loss"``
            (the weighted term), the MoE balance losses ``"moe_aux"``, ``"moe_device"``,
            ``"moe_seq_aux"``, ``"moe_z"`` (weighted, summed over layers) and ``"mtp_1"`` …
            ``"mtp_D"`` (each depth's unweighted cross-entropy).
        metrics: detached scalar (or, for per-expert loads, 1-D) tensors for logging (never
            synchronised inside forward).
        hidden_states: with ``return_hidden_states``, the residual stream after the embedding
            and after each block (``n_layers + 1`` tensors ``(batch, seq, d_model)``, before the
            final norm), for the logit lens; otherwise ``None``.
    """

    logits: Tensor | None
    loss: Tensor | None
    losses: dict[str, Tensor] = field(default_factory=dict)
    metrics: dict[str, Tensor] = field(default_factory=dict)
    hidden_states: list[Tensor] | None = None


class Block(nn.Module):
    """One pre-norm Transformer block (sequential or parallel; see the module docstring).

    Args:
        config: the model config.
        layer_idx: the block's index (its KV-cache slot).
        device: where to allocate the weights.
        dtype: the weights' dtype.
    """

    def __init__(
        self,
        config: ModelConfig,
        layer_idx: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        assert config.d_ff is not None
        out_scale = 1.0 / math.sqrt(2 * config.n_layers)
        d, eps = config.d_model, config.norm_eps
        self.attention_norm = RMSNorm(d, eps, device=device, dtype=dtype)
        attention_cls = MultiHeadLatentAttention if config.mla is not None else CausalSelfAttention
        self.attention: CausalSelfAttention | MultiHeadLatentAttention = attention_cls(
            config, layer_idx=layer_idx, out_init_scale=out_scale, device=device, dtype=dtype
        )
        self.mlp_norm: RMSNorm | None = None
        if not config.parallel_block:
            self.mlp_norm = RMSNorm(d, eps, device=device, dtype=dtype)
        # SwiGLU, or a Mixture-of-Experts MLP where config.moe puts one (lmforge.model.moe)
        self.mlp = build_mlp(
            config, layer_idx, out_init_scale=out_scale, device=device, dtype=dtype
        )

    def forward(
        self,
        x: Tensor,
        rope: RotaryEmbedding,
        mask: AttentionMask = None,
        is_causal: bool = True,
        kv_cache: KVCache | None = None,
        token_ids: Tensor | None = None,
    ) -> Tensor:
        """``x``: ``(batch, seq, d_model)`` residual stream → the same, updated.

        ``mask``, ``is_causal`` and ``kv_cache`` are passed to
        :meth:`CausalSelfAttention.forward`; ``token_ids`` ``(batch, seq)`` to an MoE MLP (hash
        routing reads them).
        """
        h = self.attention_norm(x)
        a = self.attention(h, rope, mask=mask, is_causal=is_causal, kv_cache=kv_cache)
        if self.mlp_norm is None:
            return x + a + self._mlp(h, token_ids)
        x = x + a
        return x + self._mlp(self.mlp_norm(x), token_ids)

    def _mlp(self, h: Tensor, token_ids: Tensor | None) -> Tensor:
        return self.mlp(h, token_ids) if isinstance(self.mlp, MoE) else self.mlp(h)


class Transformer(nn.Module):
    """A decoder-only Transformer language model.

    Args:
        config: the architecture.
        device: where to allocate parameters (``"meta"`` to defer; then ``to_empty`` and
            :meth:`reset_parameters`).
        dtype: the parameters' dtype (default float32; train in bf16 with autocast).

    Attributes:
        config: the :class:`ModelConfig` it was built from.
        loss_chunk_size: rows of logits per chunk when ``forward(..., return_logits=False)``.
    """

    def __init__(
        self,
        config: ModelConfig,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if not config.causal and type(self) is Transformer:
            raise ValueError(
                "model.causal=false is a bidirectional encoder: build lmforge.model.Encoder "
                "(lmforge.model.build_model picks the class from the config)"
            )
        if config.document_mask and config.eot_id is None:
            raise ValueError(
                "document_mask needs eot_id (the end-of-text token id): set model.eot_id, or "
                "let the trainer take it from the token file's header"
            )
        self.config = config
        self.loss_chunk_size = 4096
        d = config.d_model
        self.tok_embeddings = Embedding(
            config.vocab_size, d, init_std=config.init_std, device=device, dtype=dtype
        )
        self.layers = nn.ModuleList(
            Block(config, i, device=device, dtype=dtype) for i in range(config.n_layers)
        )
        self.norm = RMSNorm(d, config.norm_eps, device=device, dtype=dtype)
        self.output: Linear | None = None
        if not config.tie_embeddings:
            self.output = Linear(d, config.vocab_size, device=device, dtype=dtype)
            self.output.param_kind = "head"
        self.rope = RotaryEmbedding(
            config.rope_dim, config.context_length, config.rope_theta, device=device
        )
        self.mtp: MultiTokenPrediction | None = None
        if config.mtp_depth:
            self.mtp = MultiTokenPrediction(
                config,
                lambda i: Block(config, i, device=device, dtype=dtype),
                device=device,
                dtype=dtype,
            )

    @property
    def head_weight(self) -> Tensor:
        """The LM head's ``(vocab_size, d_model)`` weight (the embedding when tied)."""
        return self.tok_embeddings.weight if self.output is None else self.output.weight

    def reset_parameters(self) -> None:
        """Re-initialise every parameter and the RoPE tables (e.g. after ``to_empty``)."""
        for module in self.modules():
            reset = getattr(module, "reset_parameters", None)
            if module is not self and callable(reset):
                reset()

    def _attention_mask(self, idx: Tensor, kv_cache: KVCache | None) -> tuple[AttentionMask, bool]:
        if kv_cache is not None:
            return kv_cache.attention_mask(idx)
        if not self.config.document_mask:
            return None, True
        assert self.config.eot_id is not None
        docs = document_ids(idx, self.config.eot_id)
        if idx.is_cuda:
            return document_block_mask(docs), False
        return document_causal_mask(docs), False

    def forward_hidden(
        self,
        idx: Tensor,
        *,
        kv_cache: KVCache | None = None,
        return_hidden_states: bool = False,
    ) -> tuple[Tensor, list[Tensor] | None]:
        """Run the blocks: the final normalised hidden states (and optionally every residual).

        Args:
            idx: int64 ``(batch, seq)`` token ids.
            kv_cache: continue the sequences cached there (tokens at positions ``pos, …``);
                the cache is advanced by ``seq``.
            return_hidden_states: also return the residual stream after the embedding and after
                each block.

        Returns:
            ``(hidden, hidden_states)``: ``hidden`` is ``(batch, seq, d_model)`` after the final
            norm; ``hidden_states`` is a list of ``n_layers + 1`` tensors or ``None``.
        """
        mask, is_causal = self._attention_mask(idx, kv_cache)
        out = self._run_layers(idx, mask, is_causal, kv_cache, return_hidden_states)
        if kv_cache is not None:
            kv_cache.advance(idx.shape[1])
        return out

    def _run_layers(
        self,
        idx: Tensor,
        mask: AttentionMask,
        is_causal: bool,
        kv_cache: KVCache | None,
        return_hidden_states: bool,
    ) -> tuple[Tensor, list[Tensor] | None]:
        """Embedding → blocks (one mask for all) → final norm; see :meth:`forward_hidden`."""
        x = self.tok_embeddings(idx)
        states = [x] if return_hidden_states else None
        recompute = (
            self.config.activation_checkpointing and torch.is_grad_enabled() and kv_cache is None
        )
        for layer in self.layers:
            if recompute:
                x = checkpoint(layer, x, self.rope, mask, is_causal, None, idx, use_reentrant=False)
            else:
                x = layer(x, self.rope, mask, is_causal, kv_cache, idx)
            if states is not None:
                states.append(x)
        return self.norm(x), states

    def logits(self, hidden: Tensor) -> Tensor:
        """Float32 (soft-capped) logits ``(..., vocab_size)`` of final hidden states."""
        raw = at_least_float32(F.linear(hidden, self.head_weight))
        cap = self.config.logit_softcap
        return raw if cap is None else softcap(raw, cap)

    def _check_inputs(
        self, idx: Tensor, targets: Tensor | None, return_logits: bool, cached: bool
    ) -> None:
        if idx.ndim != 2 or idx.dtype.is_floating_point or idx.dtype == torch.bool:
            raise ValueError(
                f"idx must be an integer (batch, seq) tensor, got {idx.dtype} {tuple(idx.shape)}"
            )
        if idx.shape[1] < 1:
            raise ValueError("idx must hold at least one token per sequence")
        if not cached and idx.shape[1] > self.config.context_length:
            raise ValueError(
                f"sequence length {idx.shape[1]} exceeds context_length "
                f"{self.config.context_length}"
            )
        if targets is not None and targets.shape != idx.shape:
            raise ValueError(
                f"targets {tuple(targets.shape)} must have idx's shape {tuple(idx.shape)}"
            )
        if targets is None and not return_logits:
            raise ValueError("return_logits=False needs targets (there is nothing else to return)")

    def _layer_metrics(self) -> dict[str, Tensor]:
        if not self.config.qk_norm:
            return {}
        bounds = [cast(Block, layer).attention.qk_logit_bound() for layer in self.layers]
        return {"attn/qk_logit_bound": torch.stack([b for b in bounds if b is not None]).amax()}

    def _head_loss(
        self, hidden: Tensor, targets: Tensor, return_logits: bool, accuracy: bool = False
    ) -> tuple[Tensor | None, HeadLoss]:
        cfg = self.config
        if not return_logits:
            head = lm_head_loss(
                hidden,
                self.head_weight,
                targets,
                z_loss=cfg.z_loss,
                softcap=cfg.logit_softcap,
                chunk_size=self.loss_chunk_size,
                accuracy=accuracy,
            )
            return None, head
        raw = at_least_float32(F.linear(hidden, self.head_weight))
        logits = raw if cfg.logit_softcap is None else softcap(raw, cfg.logit_softcap)
        head = loss_from_logits(logits, targets, z_loss=cfg.z_loss, accuracy=accuracy)
        if cfg.logit_softcap is not None:
            head.metrics["logits/max_abs_raw"] = raw.detach().abs().amax()
        return logits, head

    def forward(
        self,
        idx: Tensor,
        targets: Tensor | None = None,
        *,
        return_logits: bool = True,
        return_hidden_states: bool = False,
        kv_cache: KVCache | None = None,
    ) -> ModelOutput:
        """Logits and, given targets, the loss of next-token prediction.

        Args:
            idx: int64 ``(batch, seq)`` token ids, ``seq <= context_length``.
            targets: int64 ``(batch, seq)`` next tokens; ``-100`` marks positions without a loss.
            return_logits: with ``False`` (needs ``targets``) the loss is computed chunk by chunk
                and the full ``(batch, seq, vocab)`` logits are never materialised.
            return_hidden_states: fill :attr:`ModelOutput.hidden_states`.
            kv_cache: for incremental decoding (see :mod:`lmforge.model.generate`).

        Returns:
            A :class:`ModelOutput`.

        Raises:
            ValueError: on malformed ``idx``/``targets``, a sequence longer than
                ``context_length``, or ``return_logits=False`` without targets.
        """
        self._check_inputs(idx, targets, return_logits, kv_cache is not None)
        run_mtp = self.mtp is not None and targets is not None and kv_cache is None
        hidden, states = self.forward_hidden(
            idx, kv_cache=kv_cache, return_hidden_states=return_hidden_states or run_mtp
        )
        residual = states[-1] if run_mtp and states is not None else None
        states = states if return_hidden_states else None
        mtp_inputs = None if residual is None else (residual, idx)
        return self._output(hidden, states, targets, return_logits, mtp_inputs=mtp_inputs)

    def _output(
        self,
        hidden: Tensor,
        states: list[Tensor] | None,
        targets: Tensor | None,
        return_logits: bool,
        accuracy: bool = False,
        mtp_inputs: tuple[Tensor, Tensor] | None = None,
    ) -> ModelOutput:
        """The head's logits and loss of the final hidden states, as a :class:`ModelOutput`
        (``mtp_inputs``: the last residual and the token ids, for the MTP loss)."""
        metrics = self._layer_metrics()
        if targets is None:
            collect_moe_stats(self, with_losses=False)  # clears the routers' stats
            all_logits = self.logits(hidden)
            metrics["logits/max_abs"] = all_logits.detach().abs().amax()
            return ModelOutput(logits=all_logits, loss=None, metrics=metrics, hidden_states=states)
        logits, head = self._head_loss(hidden, targets, return_logits, accuracy)
        losses = {"ce": head.ce}
        if self.config.z_loss > 0:
            losses["z_loss"] = head.z_loss
        metrics.update(head.metrics)
        loss = head.loss
        if mtp_inputs is not None:
            mtp_loss, mtp_ces = self._mtp_loss(*mtp_inputs, targets)
            loss = loss + self.config.mtp_weight * mtp_loss
            losses.update({f"mtp_{k}": ce for k, ce in enumerate(mtp_ces, start=1)})
        # after the MTP blocks, which are MoE blocks where the layout puts one
        moe_loss, moe_losses, moe_metrics = collect_moe_stats(self)
        metrics.update(moe_metrics)
        losses.update(moe_losses)  # the MoE balance losses (lmforge.model.moe.stats)
        if moe_loss is not None:
            loss = loss + moe_loss
        return ModelOutput(
            logits=logits, loss=loss, losses=losses, metrics=metrics, hidden_states=states
        )

    def _mtp_loss(
        self, residual: Tensor, idx: Tensor, targets: Tensor
    ) -> tuple[Tensor, list[Tensor]]:
        """The mean over depths of the MTP cross-entropies, and each one (detached)."""
        assert self.mtp is not None
        recompute = self.config.activation_checkpointing and torch.is_grad_enabled()
        outs = self.mtp(
            residual,
            idx,
            self.tok_embeddings,
            self.rope,
            lambda window: self._attention_mask(window, None),
            recompute=recompute,
        )
        if not outs:  # a window of one token has nothing to predict further ahead
            return residual.new_zeros((), dtype=torch.float32), []
        heads = [
            lm_head_loss(
                h,
                self.head_weight,
                targets[:, k:],
                softcap=self.config.logit_softcap,
                chunk_size=self.loss_chunk_size,
            )
            for k, h in enumerate(outs, start=1)
        ]
        return torch.stack([h.loss for h in heads]).mean(), [h.ce for h in heads]

    def after_optimizer_step(self) -> None:
        """The hook the trainer calls after every optimizer step.

        Calls ``after_optimizer_step()`` once on every submodule that defines it (e.g. MoE
        router bias balancing). Such hooks must not call their own children's hooks.
        """
        for module in self.modules():
            if module is self:
                continue
            hook = getattr(module, "after_optimizer_step", None)
            if callable(hook):
                hook()

    def param_kinds(self) -> dict[str, str]:
        """The kind of every parameter in ``named_parameters()``, for the optimiser.

        Returns:
            ``{name: kind}`` with kind ``"embedding"`` (token embedding; also the head when tied),
            ``"head"`` (the untied LM head), ``"norm"`` (RMSNorm gains), ``"matrix"`` (2-D
            attention and MLP weights), ``"expert"`` (stacked ``(E, d_out, d_in)`` MoE expert
            weights: ``w2``), ``"expert_pair"`` (the experts' gate and up weights stacked,
            ``(E, 2·d_ff, d_model)``: ``w13``) or ``"other"`` (MoE router weights).

        Raises:
            TypeError: if a module holding parameters declares no ``param_kind``.
        """
        return param_kinds(self)

    def num_params(self, non_embedding: bool = False) -> int:
        """Number of parameters.

        Args:
            non_embedding: leave out the token-embedding table — unless it is tied to the head,
                where it does the head's matmul and is counted (what ``6 N`` FLOP counts want).

        Returns:
            The count.
        """
        total = sum(p.numel() for p in self.parameters())
        if non_embedding and self.output is not None:
            total -= self.tok_embeddings.weight.numel()
        return total
