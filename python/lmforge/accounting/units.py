"""Human-readable counts, bytes and FLOPs for logs and reports.

Counts use decimal suffixes (K, M, B, T: "124.4M parameters", as papers write them); bytes use
binary ones (KiB, MiB, GiB), since that is what ``torch.cuda.max_memory_allocated() / 2**30`` and
``nvidia-smi`` report; FLOPs use SI prefixes (GFLOP, TFLOP, PFLOP).
"""

from __future__ import annotations

__all__ = ["format_bytes", "format_count", "format_flops"]

_COUNT_UNITS = ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K"))
_BYTE_UNITS = ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB"))
_FLOP_UNITS = ((1e18, "EFLOP"), (1e15, "PFLOP"), (1e12, "TFLOP"), (1e9, "GFLOP"), (1e6, "MFLOP"))


def _check_number(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")


def format_count(n: float) -> str:
    """A count with a decimal suffix: ``124_000_000 -> "124.0M"``, ``950 -> "950"``.

    Args:
        n: the count (a negative one keeps its sign).

    Returns:
        One decimal and a suffix K/M/B/T from a thousand up; below that the plain number.

    Raises:
        ValueError: ``n`` is not a number.
    """
    _check_number("n", n)
    for scale, suffix in _COUNT_UNITS:
        if abs(n) >= scale:
            return f"{n / scale:.1f}{suffix}"
    return f"{n:g}"


def format_bytes(n: float) -> str:
    """A byte count with a binary suffix: ``1536 -> "1.50 KiB"``, ``3 * 2**30 -> "3.00 GiB"``.

    Args:
        n: bytes.

    Returns:
        Two decimals and KiB/MiB/GiB/TiB from 1 KiB up; below that ``"N B"``.

    Raises:
        ValueError: ``n`` is not a number.
    """
    _check_number("n", n)
    for scale, suffix in _BYTE_UNITS:
        if abs(n) >= scale:
            return f"{n / scale:.2f} {suffix}"
    return f"{n:g} B"


def format_flops(n: float) -> str:
    """A FLOP count with an SI prefix: ``7.3e8 -> "730 MFLOP"``, ``1.234e15 -> "1.23 PFLOP"``.

    Args:
        n: FLOPs (append "/s" yourself for a rate).

    Returns:
        Three significant figures and a prefix from MFLOP up; below that ``"N FLOP"``.

    Raises:
        ValueError: ``n`` is not a number.
    """
    _check_number("n", n)
    for scale, suffix in _FLOP_UNITS:
        if abs(n) >= scale:
            return f"{n / scale:.3g} {suffix}"
    return f"{n:g} FLOP"
