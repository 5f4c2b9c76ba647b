"""The logit lens: what the model would predict if it stopped after each layer.

:func:`logit_lens` reads the residual stream after the token embedding and after every block,
applies the model's own final norm and unembedding to it (``model.logits(model.norm(h))``), and
keeps, per layer and position, the top-k next tokens with their probabilities and the
probability and rank of the token that actually comes next. :func:`format_table` renders the
result as text; :func:`~lmforge.analysis.lens_plot.save_heatmap` draws it.

Design choices:

* **The model's own head, no trained probe.** nostalgebraist (2020, "interpreting GPT: the
  logit lens") decoded GPT-2's intermediate residual stream with its final layer norm and
  unembedding and found the prediction sharpening layer by layer. The last row is then exactly
  the model's output (tested), and no parameters are fitted. Early layers of some models speak
  another "basis" than the head, which the lens reads as noise; the tuned lens (Belrose et al.
  2023, "Eliciting latent predictions from transformers with the tuned lens") fits one affine
  map per layer to fix that, at the price of training. We keep the parameter-free lens.
* **One layer at a time.** Only ``(seq, vocab_size)`` float32 log-probabilities exist at once,
  never ``(layers, seq, vocab_size)``, so a 50k vocabulary and a long text stay in memory.
* **One sequence.** The lens is read position by position by a person; a batch would only make
  the tables wider. The rows are named ``embed``, ``block 1``, …, ``block n``.
* **Probabilities, and ranks.** The true next token's probability is the colour of the heatmap;
  its rank (0 = the top-1) tells apart "not yet found" from "found but unsure".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lmforge.model.transformer import Transformer
from lmforge.tokenizer import Tokenizer

__all__ = ["LogitLensResult", "format_table", "logit_lens", "token_label"]


@dataclass(frozen=True)
class LogitLensResult:
    """The logit lens of one sequence; every tensor is on the CPU.

    Attributes:
        input_ids: int64 ``(seq,)``, the tokens the model read.
        top_ids: int64 ``(layers, seq, k)``, the ``k`` most likely next tokens, most likely first.
        top_probs: float32 ``(layers, seq, k)``, their probabilities (non-increasing along k).
        target_probs: float32 ``(layers, seq)``, the probability of the true next token
            ``input_ids[t + 1]``; NaN at the last position, which has no next token.
        target_ranks: int64 ``(layers, seq)``, the true next token's rank (0 = the most likely);
            -1 at the last position.
        layer_names: ``layers`` row names: ``"embed"``, ``"block 1"``, …
    """

    input_ids: Tensor
    top_ids: Tensor
    top_probs: Tensor
    target_probs: Tensor
    target_ranks: Tensor
    layer_names: tuple[str, ...]

    @property
    def n_layers(self) -> int:
        """Rows: the embedding plus one per block."""
        return int(self.top_ids.shape[0])

    @property
    def n_positions(self) -> int:
        """Columns: the sequence length."""
        return int(self.top_ids.shape[1])


def _as_ids(ids: Sequence[int] | Tensor, vocab_size: int, context: int) -> Tensor:
    seq = torch.as_tensor(ids)
    if seq.numel() == 0:
        raise ValueError("ids is empty: give at least one token")
    if seq.ndim == 2 and seq.shape[0] == 1:
        seq = seq[0]
    if seq.ndim != 1 or seq.dtype.is_floating_point or seq.dtype == torch.bool:
        raise ValueError(
            f"ids must be one sequence of token ids (a list or 1-D integer tensor), got "
            f"{seq.dtype} {tuple(seq.shape)}"
        )
    if len(seq) > context:
        raise ValueError(
            f"the text is {len(seq)} tokens but the model's context is {context}: shorten it"
        )
    if int(seq.min()) < 0 or int(seq.max()) >= vocab_size:
        raise ValueError(f"token ids must lie in [0, {vocab_size}), got {seq.tolist()[:20]}")
    return seq.to(torch.int64).cpu()


def _lens_of_layer(
    model: Transformer, hidden: Tensor, targets: Tensor, top_k: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Top-k ids/probs and the targets' probs/ranks of one ``(seq, d_model)`` residual stream."""
    logp = torch.log_softmax(model.logits(model.norm(hidden)).float(), dim=-1)
    top_logp, top_ids = logp.topk(top_k, dim=-1)
    n = len(targets)  # positions that have a next token: all but the last
    target_logp = torch.full((logp.shape[0],), float("nan"), device=logp.device)
    ranks = torch.full((logp.shape[0],), -1, dtype=torch.int64, device=logp.device)
    if n:
        target_logp[:n] = logp[:n].gather(-1, targets[:, None]).squeeze(-1)
        ranks[:n] = (logp[:n] > target_logp[:n, None]).sum(-1)
    return top_ids, top_logp.exp(), target_logp.exp(), ranks


@torch.no_grad()
def logit_lens(
    model: Transformer, ids: Sequence[int] | Tensor, *, top_k: int = 5
) -> LogitLensResult:
    """Decode the residual stream after the embedding and every block with the model's head.

    Args:
        model: the language model (put it in eval mode first; ``load_trained`` does).
        ids: one sequence of token ids, at most ``context_length`` long: a list, a 1-D tensor
            or a ``(1, seq)`` tensor.
        top_k: how many most likely tokens to keep per layer and position.

    Returns:
        A :class:`LogitLensResult` with ``n_layers + 1`` rows; the last row is the model's
        own prediction.

    Raises:
        ValueError: ``ids`` empty, not one sequence, too long or out of the vocabulary; or
            ``top_k`` not in ``[1, vocab_size]``.
    """
    cfg = model.config
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= cfg.vocab_size:
        raise ValueError(f"top_k must be an int in [1, {cfg.vocab_size}], got {top_k!r}")
    seq = _as_ids(ids, cfg.vocab_size, cfg.context_length)
    device = model.head_weight.device
    _, states = model.forward_hidden(seq[None].to(device), return_hidden_states=True)
    assert states is not None
    targets = seq[1:].to(device)
    rows = [_lens_of_layer(model, h[0], targets, top_k) for h in states]
    top_ids, top_probs, target_probs, ranks = (
        torch.stack(t).cpu() for t in zip(*rows, strict=True)
    )
    names = ("embed", *(f"block {i}" for i in range(1, len(states))))
    return LogitLensResult(
        input_ids=seq,
        top_ids=top_ids,
        top_probs=top_probs.float(),
        target_probs=target_probs.float(),
        target_ranks=ranks,
        layer_names=names,
    )


def token_label(tokenizer: Tokenizer, token_id: int, max_chars: int | None = None) -> str:
    """A token as a quoted, escaped string (``' the'``, ``'\\n'``), so spaces stay visible.

    Args:
        tokenizer: the model's tokenizer.
        token_id: the id.
        max_chars: cut longer labels to this many characters, ending in ``…``.

    Returns:
        The label; a token that is part of a UTF-8 character shows U+FFFD.
    """
    label = repr(tokenizer.decode([int(token_id)], errors="replace"))
    if max_chars is not None and len(label) > max_chars:
        label = label[: max(max_chars - 1, 1)] + "…"
    return label


def _position_block(result: LogitLensResult, tokenizer: Tokenizer, t: int) -> list[str]:
    seq = result.input_ids.tolist()
    nxt = token_label(tokenizer, seq[t + 1]) if t + 1 < len(seq) else "(end of the text)"
    k = result.top_ids.shape[-1]
    width = max(len(n) for n in result.layer_names)
    lines = [
        f"[{t}] {token_label(tokenizer, seq[t])} -> next {nxt}",
        f"  {'layer':<{width}}  p(next)  rank  top-{k}",
    ]
    for layer, name in enumerate(result.layer_names):
        p, rank = float(result.target_probs[layer, t]), int(result.target_ranks[layer, t])
        p_text, rank_text = ("-", "-") if rank < 0 else (f"{p:.4f}", str(rank))
        ids, probs = result.top_ids[layer, t].tolist(), result.top_probs[layer, t].tolist()
        tops = "  ".join(
            f"{token_label(tokenizer, i, 16)} {q:.3f}" for i, q in zip(ids, probs, strict=True)
        )
        lines.append(f"  {name:<{width}}  {p_text:>7}  {rank_text:>4}  {tops}")
    return lines


def format_table(
    result: LogitLensResult, tokenizer: Tokenizer, positions: Sequence[int] | None = None
) -> str:
    """The logit lens as text: one block per position, one line per layer.

    Each block names the input token and the true next token; each line gives the true next
    token's probability and rank at that layer, then the top-k tokens with their probabilities.

    Args:
        result: what :func:`logit_lens` returned.
        tokenizer: the tokenizer of the model, to show tokens as text.
        positions: which positions to show (default: all; negatives count from the end).

    Returns:
        The table, lines joined by newlines (no trailing newline).

    Raises:
        ValueError: a position out of range.
    """
    n = result.n_positions
    chosen = range(n) if positions is None else list(positions)
    for t in chosen:
        if not -n <= t < n:
            raise ValueError(f"position {t} is out of range for a {n}-token text")
    blocks = ["\n".join(_position_block(result, tokenizer, t % n)) for t in chosen]
    return "\n\n".join(blocks)
