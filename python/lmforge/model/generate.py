"""Autoregressive generation with a KV cache: ``generate`` and ``sample_next``.

Design choices:

* **Prefill, then one token per step**: the prompt runs through the model once, filling the
  :class:`~lmforge.model.kv_cache.KVCache`; each following step feeds only the newest token.
  Only the last position's logits are computed.
* **Sampling** (``sample_next``): temperature, then top-k (Fan et al. 2018), then top-p /
  nucleus (Holtzman et al. 2020) — the order Hugging Face ``generate`` applies them.
  ``temperature == 0`` is greedy (argmax) and ignores top-k/top-p. Top-p keeps the smallest set
  of most likely tokens whose probability sums to at least ``p`` (always at least one token).
* **Stopping**: a sequence that emits ``eot_id`` is finished; the others go on, and finished
  rows are padded with ``eot_id``, so the result always has ``prompt + max_new_tokens``
  columns. Generation stops early once every row is finished (one host sync per step,
  acceptable outside training).
* **Limits are checked up front**: the prompt plus ``max_new_tokens`` must fit in
  ``context_length`` (RoPE tables and training both end there).
* **Self-speculative decoding** (``speculative=True``, greedy only): a model trained with
  multi-token prediction drafts tokens with its MTP modules and verifies them with one main
  forward (:mod:`lmforge.model.speculative`); the output equals plain greedy decoding.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lmforge.model.kv_cache import KVCache
from lmforge.model.moe import warn_if_noncausal
from lmforge.model.transformer import Transformer

__all__ = ["generate", "sample_next"]


def _check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise ValueError(f"temperature must be a number >= 0, got {temperature!r}")
    if not (temperature >= 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be None or an integer >= 1, got {top_k!r}")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise ValueError(f"top_p must be None or a number in (0, 1], got {top_p!r}")


def _top_p_filter(logits: Tensor, top_p: float) -> Tensor:
    """Set to -inf every logit outside the smallest top set with probability >= ``top_p``."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # probability of the tokens ranked above
    sorted_logits = sorted_logits.masked_fill(mass_before >= top_p, float("-inf"))
    return torch.empty_like(logits).scatter_(-1, order, sorted_logits)


def sample_next(
    logits: Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw one token id per row of ``logits``.

    Args:
        logits: ``(batch, vocab)`` next-token logits.
        temperature: divides the logits; 0 means greedy (argmax).
        top_k: keep only the ``k`` most likely tokens (ties at the k-th value are kept).
        top_p: keep the smallest set of most likely tokens with total probability >= ``p``.
        generator: the random generator (on ``logits``' device) for reproducible sampling.

    Returns:
        int64 ``(batch,)`` token ids.

    Raises:
        ValueError: on a negative temperature, ``top_k < 1`` or ``top_p`` outside (0, 1].
    """
    _check_sampling(temperature, top_k, top_p)
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        logits = _top_p_filter(logits, top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _check_generate(model: Transformer, idx: Tensor, max_new_tokens: int, eot_id: int | None):
    cfg = model.config
    if not cfg.causal:
        raise ValueError(
            "a bidirectional encoder (model.causal=false, trained with objective=mlm) cannot "
            "generate text: it predicts masked tokens, not the next one"
        )
    if idx.ndim != 2 or idx.dtype.is_floating_point or idx.dtype == torch.bool:
        raise ValueError(
            f"idx must be an integer (batch, seq) tensor (use idx[None] for one prompt), "
            f"got {idx.dtype} {tuple(idx.shape)}"
        )
    if idx.shape[0] < 1 or idx.shape[1] < 1:
        raise ValueError(f"idx must hold at least one prompt token, got shape {tuple(idx.shape)}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int):
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if idx.shape[1] + max_new_tokens > cfg.context_length:
        raise ValueError(
            f"prompt ({idx.shape[1]} tokens) + max_new_tokens ({max_new_tokens}) exceeds the "
            f"model's context_length ({cfg.context_length}); shorten the prompt or generate less"
        )
    if eot_id is not None and not (isinstance(eot_id, int) and 0 <= eot_id < cfg.vocab_size):
        raise ValueError(f"eot_id must be an id in [0, {cfg.vocab_size}), got {eot_id!r}")
    warn_if_noncausal(cfg.moe)  # expert-choice routing sees other tokens in training


@torch.no_grad()
def generate(
    model: Transformer,
    idx: Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eot_id: int | None = None,
    generator: torch.Generator | None = None,
    speculative: bool = False,
) -> Tensor:
    """Continue each prompt by up to ``max_new_tokens`` sampled tokens.

    Args:
        model: the language model (its mode is left as it is; it has no dropout).
        idx: int64 ``(batch, seq)`` prompts of equal length.
        max_new_tokens: tokens to append.
        temperature: sampling temperature; 0 is greedy.
        top_k: see :func:`sample_next`.
        top_p: see :func:`sample_next`.
        eot_id: a row that emits this id stops; its remaining columns are ``eot_id``.
        generator: random generator for reproducible sampling.
        speculative: draft with the model's MTP modules and verify with the main model
            (:func:`~lmforge.model.speculative.speculative_generate`); needs
            ``temperature=0`` and a model with ``mtp_depth >= 1``.

    Returns:
        int64 ``(batch, seq + max_new_tokens)``: the prompts followed by the new tokens.

    Raises:
        ValueError: on a malformed prompt, prompt + ``max_new_tokens`` > ``context_length``,
            bad sampling arguments, or ``speculative`` without greedy decoding or MTP modules.
    """
    _check_generate(model, idx, max_new_tokens, eot_id)
    _check_sampling(temperature, top_k, top_p)
    if speculative:
        if temperature != 0:
            raise ValueError(
                f"speculative decoding is greedy: pass temperature=0 (got {temperature})"
            )
        from lmforge.model.speculative import speculative_generate  # it imports this module

        return speculative_generate(model, idx, max_new_tokens, eot_id=eot_id)[0]
    batch, prompt_len = idx.shape
    out = idx.new_full((batch, prompt_len + max_new_tokens), 0 if eot_id is None else eot_id)
    out[:, :prompt_len] = idx
    if max_new_tokens == 0:
        return out
    cache = KVCache.for_model(model.config, batch, max_len=prompt_len + max_new_tokens)
    hidden, _ = model.forward_hidden(idx, kv_cache=cache)
    logits = model.logits(hidden[:, -1])
    finished = torch.zeros(batch, dtype=torch.bool, device=idx.device)
    for step in range(max_new_tokens):
        token = sample_next(logits, temperature, top_k, top_p, generator)
        if eot_id is not None:
            token = torch.where(finished, eot_id, token)
            finished |= token == eot_id
        out[:, prompt_len + step] = token
        if step + 1 == max_new_tokens or (eot_id is not None and bool(finished.all())):
            break
        hidden, _ = model.forward_hidden(token.unsqueeze(-1), kv_cache=cache)
        logits = model.logits(hidden[:, -1])
    return out
