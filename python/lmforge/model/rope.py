"""Rotary position embedding (RoPE; Su et al. 2021, "RoFormer").

Queries and keys are rotated by an angle proportional to their position, so that
``<rot(q, m), rot(k, n)>`` depends on the positions only through ``m - n``: attention sees
relative positions, and nothing is added to the residual stream.

Design choices:

* **Adjacent pairs.** Dimensions ``(2i, 2i+1)`` of a head form one 2-D plane, rotated by
  ``pos · θ^(-2i / head_dim)`` — the RoFormer paper's formulation and Meta's original LLaMA code
  (``view_as_complex`` on adjacent pairs). Hugging Face's Llama instead pairs ``i`` with
  ``i + head_dim/2`` ("rotate_half"); the two are the same model up to a permutation of the rows
  of ``wq`` and ``wk`` within each head, which an export to Hugging Face must apply (the
  permutation Meta's ``convert_llama_weights_to_hf.py`` applies).
* **Tables precomputed once** for ``context_length`` positions in float64 and stored in float32
  as non-persistent buffers (rebuilt from the config, never saved in a checkpoint). Casting the
  model to bf16 casts them too, which costs ~3 significant digits of the rotation (what nanochat
  does on purpose); the rotation itself is computed in float32 and cast back.
* **Position offset** ``start`` for the KV cache: new tokens at positions ``start, start+1, …``.
* **Kernel**: on a GPU, contiguous inputs go through one Triton pass per tensor
  (:mod:`lmforge.kernels.rope`, the same float32 arithmetic); :func:`apply_rotary` is the
  reference and runs elsewhere.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lmforge.kernels import use_triton
from lmforge.kernels.rope import rotate
from lmforge.model.functional import at_least_float32

__all__ = ["RotaryEmbedding", "apply_rotary", "rope_frequencies"]

_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)  # the kernel computes in float32


def rope_frequencies(head_dim: int, theta: float = 10_000.0) -> Tensor:
    """The ``head_dim / 2`` angular frequencies ``θ^(-2i / head_dim)``, in float64.

    Args:
        head_dim: width of one head; must be even.
        theta: the base.

    Returns:
        A float64 tensor of shape ``(head_dim // 2,)``.

    Raises:
        ValueError: if ``head_dim`` is odd or not positive, or ``theta`` is not positive.
    """
    if head_dim < 2 or head_dim % 2:
        raise ValueError(f"RoPE needs an even head_dim >= 2, got {head_dim}")
    if not theta > 0:
        raise ValueError(f"rope_theta must be > 0, got {theta}")
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim
    return theta**-exponents


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate each adjacent pair ``(x[2i], x[2i+1])`` of the last dimension.

    ``(a, b) → (a cos - b sin, a sin + b cos)``, in at least float32, cast back to ``x``'s dtype.

    Args:
        x: ``(..., head_dim)``, e.g. ``(batch, heads, seq, head_dim)``.
        cos: cosines of the angles, broadcastable to ``(..., head_dim // 2)``, e.g.
            ``(seq, head_dim // 2)``.
        sin: sines of the angles, shaped like ``cos``.

    Returns:
        A tensor of ``x``'s shape and dtype.
    """
    pairs = at_least_float32(x).unflatten(-1, (-1, 2))
    a, b = pairs[..., 0], pairs[..., 1]
    cos, sin = cos.to(pairs.dtype), sin.to(pairs.dtype)
    rotated = torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1)
    return rotated.flatten(-2).to(x.dtype)


class RotaryEmbedding(nn.Module):
    """RoPE with cosine/sine tables for positions ``0 … context_length - 1``.

    Args:
        head_dim: width of one head (even).
        context_length: number of positions to precompute.
        theta: the base frequency.
        device: where to build the tables.

    Raises:
        ValueError: on an odd ``head_dim`` or a non-positive size or ``theta``.
    """

    cos: Tensor
    sin: Tensor

    def __init__(
        self,
        head_dim: int,
        context_length: int,
        theta: float = 10_000.0,
        *,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if context_length < 1:
            raise ValueError(f"context_length must be >= 1, got {context_length}")
        self.head_dim, self.context_length, self.theta = head_dim, context_length, theta
        cos, sin = self._tables(device)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def _tables(self, device: torch.device | str | None) -> tuple[Tensor, Tensor]:
        freqs = rope_frequencies(self.head_dim, self.theta)
        positions = torch.arange(self.context_length, dtype=torch.float64)
        angles = torch.outer(positions, freqs)
        return (
            angles.cos().to(device=device, dtype=torch.float32),
            angles.sin().to(device=device, dtype=torch.float32),
        )

    def reset_parameters(self) -> None:
        """Rebuild the tables in place (after materialising a model built on ``meta``)."""
        cos, sin = self._tables(self.cos.device)
        self.cos, self.sin = cos, sin

    def forward(self, x: Tensor, start: int = 0, *, seq_dim: int = -2) -> Tensor:
        """Rotate ``x`` as if its tokens sat at positions ``start, start+1, …``.

        Args:
            x: ``(batch, heads, seq, head_dim)`` queries or keys — or any layout whose sequence
                dimension ``seq_dim`` counts from the end, e.g. ``(batch, seq, heads, head_dim)``
                with ``seq_dim=-3`` (the layout the attention module rotates in).
            start: position of the first token (the KV cache's fill level).
            seq_dim: the (negative) index of the sequence dimension.

        Returns:
            A tensor of ``x``'s shape and dtype.

        Raises:
            ValueError: if the positions run past ``context_length`` or ``seq_dim`` is not a
                negative index before the last dimension.
        """
        if not -x.ndim <= seq_dim <= -2:
            raise ValueError(
                f"seq_dim must be in [-{x.ndim}, -2] for a {x.ndim}-D x, got {seq_dim}"
            )
        seq = x.shape[seq_dim]
        if start < 0 or start + seq > self.context_length:
            raise ValueError(
                f"positions {start}..{start + seq - 1} are outside the RoPE table "
                f"(context_length={self.context_length})"
            )
        cos, sin = self.cos[start : start + seq], self.sin[start : start + seq]
        if x.dtype in _KERNEL_DTYPES and x.is_contiguous() and use_triton(x):
            inner = math.prod(x.shape[seq_dim + 1 : -1])
            return rotate(x, cos, sin, inner)
        shape = (seq, *([1] * (-seq_dim - 2)), self.head_dim // 2)
        return apply_rotary(x, cos.view(shape), sin.view(shape))

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, context_length={self.context_length}, theta={self.theta}"
