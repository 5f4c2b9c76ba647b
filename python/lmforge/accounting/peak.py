"""Peak FLOP/s of the GPUs we train on, by the name the driver reports, for MFU.

The figures are NVIDIA's datasheet numbers for *dense* math (the datasheets print tensor-core
figures "with sparsity", twice the dense ones; MFU is measured against dense, as in PaLM,
Chowdhury et al. 2022, App. B, and nanoGPT's ``estimate_mfu``):

| GPU (``torch.cuda.get_device_name``)       | bf16/fp16 | tf32  | fp32 (no tensor core) | fp8  |
|--------------------------------------------|-----------|-------|-----------------------|------|
| H100 SXM ("NVIDIA H100 80GB HBM3"), H200,  | 989       | 494   | 67                    | 1979 |
| GH200, H800                                |           |       |                       |      |
| H100 PCIe ("NVIDIA H100 PCIe"), H800 PCIe  | 756       | 378   | 51                    | 1513 |
| H100 NVL, H200 NVL                         | 835       | 417   | 60                    | 1670 |
| A100 SXM4 / PCIe (40 and 80 GB), A800      | 312       | 156   | 19.5                  | —    |

(TFLOP/s; sources: NVIDIA H100 Tensor Core GPU datasheet, H200 datasheet, A100 datasheet.)
The H200 and GH200 have the H100 SXM's compute with more, faster memory; the A100's SXM and PCIe
boards share the same peak. An unknown device — the CPU, a consumer card, a GPU not listed —
gives ``None`` rather than a guess, so the caller prints "MFU n/a" instead of a wrong number.
"""

from __future__ import annotations

__all__ = ["PEAK_FLOPS", "peak_flops"]

_T = 1e12

#: Dense peak FLOP/s by board and dtype; ``None`` where the board has no such tensor-core path.
PEAK_FLOPS: dict[str, dict[str, float | None]] = {
    "H100 SXM": {"bf16": 989 * _T, "fp16": 989 * _T, "tf32": 494 * _T, "fp32": 67 * _T,
                 "fp8": 1979 * _T},
    "H100 PCIe": {"bf16": 756 * _T, "fp16": 756 * _T, "tf32": 378 * _T, "fp32": 51 * _T,
                  "fp8": 1513 * _T},
    "H100 NVL": {"bf16": 835 * _T, "fp16": 835 * _T, "tf32": 417 * _T, "fp32": 60 * _T,
                 "fp8": 1670 * _T},
    "A100": {"bf16": 312 * _T, "fp16": 312 * _T, "tf32": 156 * _T, "fp32": 19.5 * _T,
             "fp8": None},
}  # fmt: skip

_DTYPE_ALIASES = {
    "bf16": "bf16",
    "bfloat16": "bf16",
    "fp16": "fp16",
    "float16": "fp16",
    "half": "fp16",
    "tf32": "tf32",
    "fp32": "fp32",
    "float32": "fp32",
    "float": "fp32",
    "fp8": "fp8",
}


def _board(device_name: str) -> str | None:
    """The :data:`PEAK_FLOPS` row for a driver-reported name, or ``None`` if not listed."""
    name = device_name.lower()
    if "gh200" in name:  # Grace Hopper: an H100/H200-class GPU; test before "h200"
        return "H100 SXM"
    if "h100" in name or "h800" in name or "h200" in name:
        if "nvl" in name:
            return "H100 NVL"
        if "pcie" in name and "h200" not in name:
            return "H100 PCIe"
        return "H100 SXM"
    if "a100" in name or "a800" in name:
        return "A100"
    return None


def peak_flops(device_name: str, dtype: str = "bf16") -> float | None:
    """A device's dense peak FLOP/s for matmuls in ``dtype``.

    Args:
        device_name: the name the driver reports (``torch.cuda.get_device_name()``), e.g.
            ``"NVIDIA H100 80GB HBM3"``, ``"NVIDIA H100 PCIe"``, ``"NVIDIA H200"``,
            ``"NVIDIA A100-SXM4-80GB"``; matched case-insensitively.
        dtype: ``"bf16"`` (the autocast dtype we train in), ``"fp16"``, ``"tf32"``, ``"fp32"``
            (plain fp32 FMA, no tensor cores) or ``"fp8"``; ``"bfloat16"``, ``"float32"``... too.

    Returns:
        FLOP/s, or ``None`` for a device not in the table (the CPU included) or a dtype the
        device has no tensor-core path for (fp8 on an A100).

    Raises:
        ValueError: ``dtype`` is not one of the names above.
    """
    key = _DTYPE_ALIASES.get(dtype.lower()) if isinstance(dtype, str) else None
    if key is None:
        raise ValueError(
            f"unknown dtype {dtype!r} for peak_flops; use one of 'bf16', 'fp16', 'tf32', "
            "'fp32', 'fp8'"
        )
    board = _board(device_name)
    return None if board is None else PEAK_FLOPS[board][key]
