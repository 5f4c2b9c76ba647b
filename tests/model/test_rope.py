"""RoPE: the adjacent-pair convention, the relative-position property, offsets, buffers."""

from __future__ import annotations

import pytest
import torch
from model_testing import complex_rope

from lmforge.model.rope import RotaryEmbedding, apply_rotary, rope_frequencies


def test_matches_complex_rotation_of_adjacent_pairs() -> None:
    rope = RotaryEmbedding(16, 40, theta=500.0)
    x = torch.randn(2, 3, 40, 16, dtype=torch.float64)
    expected = complex_rope(x, torch.arange(40), theta=500.0)
    torch.testing.assert_close(rope(x).double(), expected, rtol=1e-6, atol=1e-6)


def test_first_pair_rotates_by_position_times_one() -> None:
    # dims (0, 1) have frequency theta^0 = 1: position p rotates them by p radians
    rope = RotaryEmbedding(4, 8)
    x = torch.zeros(1, 1, 8, 4)
    x[..., 0] = 1.0
    y = rope(x)[0, 0]
    p = torch.arange(8.0)
    torch.testing.assert_close(y[:, 0], torch.cos(p))
    torch.testing.assert_close(y[:, 1], torch.sin(p))


def test_scores_depend_only_on_relative_position() -> None:
    rope = RotaryEmbedding(32, 64)
    q, k = torch.randn(2, 32, dtype=torch.float64).unbind(0)

    def score(m: int, n: int) -> torch.Tensor:
        qm = rope(q.expand(1, 1, m + 1, 32).contiguous())[0, 0, m]
        kn = rope(k.expand(1, 1, n + 1, 32).contiguous())[0, 0, n]
        return (qm * kn).sum()

    for shift in (1, 7, 30):
        torch.testing.assert_close(score(5, 2), score(5 + shift, 2 + shift), rtol=0, atol=1e-5)
    assert not torch.allclose(score(5, 2), score(5, 3))


def test_offset_equals_slice_of_full_rotation() -> None:
    rope = RotaryEmbedding(8, 20)
    x = torch.randn(2, 2, 20, 8)
    full = rope(x)
    torch.testing.assert_close(rope(x[:, :, 13:], start=13), full[:, :, 13:])
    torch.testing.assert_close(rope(x[:, :, 19:20], start=19), full[:, :, 19:20])


def test_sequence_dim_layouts_agree() -> None:
    rope = RotaryEmbedding(8, 20)
    x = torch.randn(2, 3, 12, 8)  # (batch, heads, seq, head_dim)
    bthd = rope(x.transpose(1, 2).contiguous(), 4, seq_dim=-3)  # (batch, seq, heads, head_dim)
    torch.testing.assert_close(bthd.transpose(1, 2), rope(x, 4))
    torch.testing.assert_close(rope(x[0, 0], 4), rope(x, 4)[0, 0])  # (seq, head_dim)
    with pytest.raises(ValueError, match="seq_dim"):
        rope(x, seq_dim=-1)


def test_dtype_preserved_and_buffers_not_saved() -> None:
    rope = RotaryEmbedding(8, 16)
    assert rope.state_dict() == {}
    assert rope.cos.dtype == torch.float32 and rope.cos.shape == (16, 4)
    x = torch.randn(1, 2, 16, 8, dtype=torch.bfloat16)
    assert rope(x).dtype == torch.bfloat16
    with torch.no_grad():
        rope.cos.zero_()
    rope.reset_parameters()
    torch.testing.assert_close(rope.cos[:, 0], torch.cos(torch.arange(16.0)))


def test_apply_rotary_preserves_norm_of_each_pair() -> None:
    x = torch.randn(1, 1, 5, 6, dtype=torch.float64)
    rope = RotaryEmbedding(6, 5)
    y = apply_rotary(x, rope.cos, rope.sin)
    assert y.dtype == torch.float64
    torch.testing.assert_close(
        y.unflatten(-1, (-1, 2)).norm(dim=-1),
        x.unflatten(-1, (-1, 2)).norm(dim=-1),
        rtol=1e-6,
        atol=0,
    )


def test_errors() -> None:
    with pytest.raises(ValueError, match="even"):
        rope_frequencies(7)
    with pytest.raises(ValueError, match="rope_theta"):
        rope_frequencies(8, theta=0.0)
    with pytest.raises(ValueError, match="context_length"):
        RotaryEmbedding(8, 0)
    rope = RotaryEmbedding(8, 16)
    with pytest.raises(ValueError, match="outside the RoPE table"):
        rope(torch.randn(1, 1, 4, 8), start=13)
