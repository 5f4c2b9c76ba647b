"""Self-speculative greedy decoding with the model's own MTP modules (DeepSeek-V3 §2.2, §5.4.3).

A model trained with multi-token prediction (:mod:`lmforge.model.mtp`) can guess the tokens
after the next one without another pass of the main model: MTP depth ``k`` reads the main
model's state and the tokens so far and proposes token ``+k+1``. Each round drafts up to
``mtp_depth`` tokens with the MTP modules, then runs the main model **once** over the last
accepted token and the drafts (Leviathan et al. 2023; Stern et al. 2018 for draft heads): the
drafts that equal the main model's own greedy choice are kept, plus the main model's token
after the last kept one, so every round yields between 1 and ``mtp_depth + 1`` tokens and the
output is the main model's greedy output exactly.

Bookkeeping. After a round with ``n + 1`` accepted tokens ``s_0 … s_n``, the main cache holds
positions ``0 … n−1`` and depth ``k``'s cache holds the positions whose inputs are all accepted,
``0 … n−k``; the residual streams ``h^k`` at those positions are kept. A round then

1. extends each depth's cache over its newly accepted positions;
2. drafts: ``d_1`` from depth 1 at position ``n−1``; ``d_k`` from depth ``k`` after running its
   ``k−1`` draft positions ``n−k+1 … n−1`` (which read ``d_1 … d_{k−1}``), whose cache entries
   are then rolled back (:meth:`~lmforge.model.kv_cache.KVCache.truncate`);
3. verifies ``[s_n, d_1, …, d_m]`` with the main model, keeps the agreeing prefix and the
   main model's next token, and rolls the main cache back to the accepted length.

Sequences are decoded one at a time (acceptance lengths differ between rows and a cache has
one fill level), which keeps every row's output identical to plain greedy decoding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lmforge.model.kv_cache import KVCache
from lmforge.model.transformer import Transformer

__all__ = ["SpeculativeStats", "speculative_generate"]


@dataclass
class SpeculativeStats:
    """Counts of one :func:`speculative_generate` call, summed over the rows.

    Attributes:
        main_forwards: forward passes of the main model (each prefill included).
        drafted: draft tokens proposed by the MTP modules.
        accepted: draft tokens the main model agreed with.
        generated: tokens emitted (before end-of-text padding).
    """

    main_forwards: int = 0
    drafted: int = 0
    accepted: int = 0
    generated: int = 0

    @property
    def acceptance_rate(self) -> float:
        """Accepted over drafted (0 when nothing was drafted)."""
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def tokens_per_forward(self) -> float:
        """Tokens emitted per forward pass of the main model."""
        return self.generated / self.main_forwards if self.main_forwards else 0.0


class _Row:
    """The state of one sequence: tokens, caches, the residual streams of every depth."""

    def __init__(self, model: Transformer, prompt: Tensor, total: int) -> None:
        cfg = model.config
        self.model, self.depth = model, cfg.mtp_depth
        self.seq = prompt.new_zeros((1, total))
        self.seq[:, : prompt.shape[1]] = prompt
        self.caches = [KVCache.for_model(cfg, 1, max_len=total) for _ in range(self.depth + 1)]
        self.states: list[Tensor | None] = [None] * (self.depth + 1)  # (1, total, d) each
        self.filled = [0] * (self.depth + 1)  # positions of h^k kept (= cache fill for k >= 1)

    def _store(self, k: int, start: int, h: Tensor) -> None:
        buf = self.states[k]
        if buf is None:
            buf = self.states[k] = h.new_zeros((1, self.seq.shape[1], h.shape[-1]))
        buf[:, start : start + h.shape[1]] = h
        self.filled[k] = start + h.shape[1]

    def main(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Run the main model on ``tokens`` after the cache: (pre-norm states, greedy ids)."""
        hidden, states = self.model.forward_hidden(
            tokens, kv_cache=self.caches[0], return_hidden_states=True
        )
        assert states is not None
        return states[-1], self.model.logits(hidden).argmax(-1)

    def mtp(self, k: int, hidden: Tensor, start: int, ahead: Tensor) -> Tensor:
        """Depth ``k`` at positions ``start …`` (its cache's fill) reading tokens ``ahead``."""
        model, cache = self.model, self.caches[k]
        assert model.mtp is not None and cache.pos == start
        mask, is_causal = cache.attention_mask(self.seq[:, start : start + hidden.shape[1]])
        module = model.mtp.depth(k)
        out = module(hidden, model.tok_embeddings(ahead), model.rope, mask, is_causal, cache)
        cache.advance(hidden.shape[1])
        return out

    def draft_token(self, k: int, h: Tensor) -> Tensor:
        """Depth ``k``'s greedy guess from its state ``h`` ``(1, 1, d)``: ``(1, 1)`` ids."""
        assert self.model.mtp is not None
        return self.model.logits(self.model.mtp.depth(k).norm(h)).argmax(-1)

    def catch_up(self, n: int) -> None:
        """Extend every depth over its positions ``filled … n−k``, all inputs accepted."""
        for k in range(1, self.depth + 1):
            start, end = self.filled[k], n - k + 1
            prev = self.states[k - 1]
            if end <= start or prev is None:
                continue
            ahead = self.seq[:, start + k : end + k]
            self._store(k, start, self.mtp(k, prev[:, start:end], start, ahead))

    def drafts(self, n: int, count: int) -> list[Tensor]:
        """``count`` draft tokens for positions ``n+1 …`` (see the module docstring)."""
        h1 = self.states[1]
        assert h1 is not None and self.filled[1] == n
        drafts = [self.draft_token(1, h1[:, n - 1 : n])]
        outs = h1[:, :0]  # depth k−1's outputs at its draft positions
        for k in range(2, count + 1):
            # Depth k's draft positions: from its cache fill (n−k+1, or 0 early on) to n−1.
            first = self.filled[k]
            prev = self.states[k - 1]
            kept = prev[:, first : self.filled[k - 1]] if prev is not None else outs[:, :0]
            ahead = torch.cat(drafts[first + k - n - 1 :], dim=1)  # tokens first+k … n+k−1
            outs = self.mtp(k, torch.cat([kept, outs], dim=1), first, ahead)
            self.caches[k].truncate(first)
            drafts.append(self.draft_token(k, outs[:, -1:]))
        return drafts


def _ended(tokens: Tensor, eot_id: int | None) -> bool:
    return eot_id is not None and bool((tokens == eot_id).any())


def _decode_row(
    model: Transformer, prompt: Tensor, max_new_tokens: int, eot_id: int | None,
    stats: SpeculativeStats,
) -> Tensor:  # fmt: skip
    """One prompt ``(1, P)`` → ``(P + max_new_tokens,)`` ids."""
    p = prompt.shape[1]
    total = p + max_new_tokens
    row = _Row(model, prompt, total)
    hidden, greedy = row.main(prompt)
    stats.main_forwards += 1
    row._store(0, 0, hidden)
    row.seq[:, p] = greedy[:, -1]
    accepted = p + 1  # s_0 … s_n with n = accepted − 1
    while accepted < total and not _ended(row.seq[0, p:accepted], eot_id):
        n = accepted - 1
        row.catch_up(n)
        count = min(model.config.mtp_depth, total - accepted - 1)  # no use drafting past the end
        drafts = row.drafts(n, count) if count > 0 else []
        block = torch.cat([row.seq[:, n : n + 1], *drafts], dim=1)
        hidden, greedy = row.main(block)
        stats.main_forwards += 1
        stats.drafted += len(drafts)
        m = 0
        while m < len(drafts) and int(drafts[m]) == int(greedy[0, m]):
            m += 1
        stats.accepted += m
        row.seq[:, accepted : accepted + m + 1] = greedy[:, : m + 1]
        row._store(0, n, hidden[:, : m + 1])
        row.caches[0].truncate(n + m + 1)
        accepted += m + 1
    out = row.seq[0]
    if eot_id is not None:
        hits = (out[p:accepted] == eot_id).nonzero()
        if len(hits):
            accepted = p + int(hits[0]) + 1
        out[accepted:] = eot_id
    stats.generated += accepted - p
    return out


@torch.no_grad()
def speculative_generate(
    model: Transformer,
    idx: Tensor,
    max_new_tokens: int,
    *,
    eot_id: int | None = None,
) -> tuple[Tensor, SpeculativeStats]:
    """Greedy decoding drafted by the MTP modules and verified by the main model.

    Args:
        model: a model with ``mtp_depth >= 1``.
        idx: int64 ``(batch, seq)`` prompts of equal length.
        max_new_tokens: tokens to append.
        eot_id: a row that emits this id stops; its remaining columns are ``eot_id``.

    Returns:
        ``(tokens, stats)``: the same ``(batch, seq + max_new_tokens)`` tensor as
        ``generate(model, idx, max_new_tokens, temperature=0, eot_id=eot_id)``, and the
        :class:`SpeculativeStats`.

    Raises:
        ValueError: the model has no MTP modules, or the arguments are those ``generate``
            refuses.
    """
    from lmforge.model.generate import _check_generate  # generate dispatches here

    _check_generate(model, idx, max_new_tokens, eot_id)
    if model.mtp is None:
        raise ValueError(
            "speculative decoding drafts with the MTP modules: the model needs mtp_depth >= 1"
        )
    stats = SpeculativeStats()
    if max_new_tokens == 0:
        return idx.clone(), stats
    rows = [
        _decode_row(model, idx[i : i + 1], max_new_tokens, eot_id, stats) for i in range(len(idx))
    ]
    return torch.stack(rows), stats
