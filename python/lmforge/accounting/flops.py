"""FLOPs per token and model FLOPs utilisation (MFU), in the convention of the field's anchors.

Training FLOPs per token are ``6·N + 12·L·T·d`` (Kaplan et al. 2020, §2.1; Chowdhury et al.
2022 (PaLM), Appendix B), the same formula as the plain-PyTorch anchor ``gpt_baseline.py``, so
MFUs compare across the two:

- ``6·N``: each weight costs a multiply-add (2 FLOPs) per token in the forward pass and twice
  that in the backward (gradient of the input and of the weight). N is
  :attr:`~lmforge.accounting.params.ParamCount.flops_params`: every parameter but the token
  embedding (a lookup, no FLOPs), the LM head included, counted once when tied.
- ``12·L·T·d``: attention's two matmuls, ``Q·Kᵀ`` and ``P·V``, are ``2·T·d`` multiply-adds per
  token per layer (``4·T·d`` FLOPs forward, ×3 for training). Following PaLM the causal mask
  is not credited: a flash kernel skips the masked half, so this counts model FLOPs, not the
  hardware's. Grouped-query attention does not change it (queries still span all ``d``).

Forward-only FLOPs per token are a third of that, ``2·N + 4·L·T·d``; in generation with a KV
cache ``T`` is the number of positions attended. Activation checkpointing re-runs the forward
(hardware FLOPs ≈ ``8·N``) but MFU counts model FLOPs only (PaLM, App. B), so it lowers MFU.
Norms, SwiGLU's gating, RoPE, softmax and the loss are elementwise and left out, as everywhere.

The attention term is written for ``2·h·k = 2·d`` (a head's query/key width plus its value
width, summed over heads). Multi-head latent attention (DeepSeek-V2) has query/key heads of
``qk_nope_head_dim + qk_rope_head_dim`` and value heads of ``v_head_dim``, so its term is
``6·L·T·h·(d_qk + d_v)`` in training (MLA's matrices are in N like any other). Multi-token
prediction (DeepSeek-V3 §2.2) adds, in training only, its modules and one more pass of the shared
LM head per depth to N (:attr:`~lmforge.accounting.params.ParamCount.mtp_flops_params`) and
its ``mtp_depth`` blocks to L in the attention term; each depth is counted over the whole
window (it runs on T − k positions). Inference does not run them, so the forward count leaves
them out.
"""

from __future__ import annotations

from typing import overload

from lmforge.accounting.params import count_params
from lmforge.model.config import ModelConfig

__all__ = ["flops_per_token", "forward_flops_per_token", "mfu"]


def _seq_len(cfg: ModelConfig, seq_len: int | None) -> int:
    if seq_len is None:
        return cfg.context_length
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"seq_len must be a positive integer or None, got {seq_len!r}")
    return seq_len


def _attention_width(cfg: ModelConfig) -> int:
    """Summed over heads, a head's query/key width plus its value width (``2·d`` for MHA)."""
    if cfg.mla is None:
        return 2 * cfg.d_model
    return cfg.n_heads * (cfg.mla.qk_head_dim + cfg.mla.v_head_dim)


def flops_per_token(cfg: ModelConfig, seq_len: int | None = None) -> int:
    """Training (forward + backward) FLOPs per token: ``6·N + 12·L·T·d``.

    With MLA the attention term is ``6·L·T·h·(d_qk + d_v)``; with MTP, N and L include the MTP
    modules (see the module docstring).

    Args:
        cfg: the model's shape.
        seq_len: the training sequence length T; ``None`` means ``cfg.context_length``.

    Returns:
        FLOPs per trained token (an exact integer).

    Raises:
        ValueError: ``seq_len`` is not a positive integer.
    """
    t = _seq_len(cfg, seq_len)
    pc = count_params(cfg)
    n_params = pc.flops_params + pc.mtp_flops_params
    return 6 * n_params + 6 * (cfg.n_layers + cfg.mtp_depth) * t * _attention_width(cfg)


def forward_flops_per_token(cfg: ModelConfig, seq_len: int | None = None) -> int:
    """Forward-only FLOPs per token (evaluation, inference): ``2·N + 4·L·T·d``.

    MLA as in :func:`flops_per_token`; MTP modules are not run, so not counted.

    Args:
        cfg: the model's shape.
        seq_len: positions attended, T; ``None`` means ``cfg.context_length``.

    Returns:
        FLOPs per token of one forward pass.

    Raises:
        ValueError: ``seq_len`` is not a positive integer.
    """
    t = _seq_len(cfg, seq_len)
    return 2 * count_params(cfg).flops_params + 2 * cfg.n_layers * t * _attention_width(cfg)


@overload
def mfu(
    tokens_per_s: float, cfg: ModelConfig, seq_len: int | None, peak: float, n_devices: int = 1
) -> float: ...
@overload
def mfu(
    tokens_per_s: float, cfg: ModelConfig, seq_len: int | None, peak: None, n_devices: int = 1
) -> None: ...
def mfu(
    tokens_per_s: float,
    cfg: ModelConfig,
    seq_len: int | None,
    peak: float | None,
    n_devices: int = 1,
) -> float | None:
    """Model FLOPs utilisation: achieved training FLOP/s over the hardware's peak.

    Args:
        tokens_per_s: training tokens per second, summed over all ``n_devices``.
        cfg: the model's shape.
        seq_len: the training sequence length; ``None`` means ``cfg.context_length``.
        peak: one device's peak FLOP/s (:func:`~lmforge.accounting.peak.peak_flops`); ``None``
            (an unknown device, or the CPU) gives ``None``, for the caller to show "MFU n/a".
        n_devices: devices sharing ``tokens_per_s`` (data parallel).

    Returns:
        The fraction of peak in [0, 1] for a sane measurement, or ``None`` without a peak.

    Raises:
        ValueError: a negative ``tokens_per_s``, a non-positive ``peak`` or ``n_devices``.
    """
    if peak is None:
        return None
    if not peak > 0:
        raise ValueError(f"peak must be a positive FLOP/s figure, got {peak!r}")
    if tokens_per_s < 0:
        raise ValueError(f"tokens_per_s must be >= 0, got {tokens_per_s!r}")
    if isinstance(n_devices, bool) or not isinstance(n_devices, int) or n_devices < 1:
        raise ValueError(f"n_devices must be a positive integer, got {n_devices!r}")
    return tokens_per_s * flops_per_token(cfg, seq_len) / (peak * n_devices)
