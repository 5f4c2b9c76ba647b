"""Device strings, checked once with an error that says what to use instead.

``torch.device("cuda:7")`` succeeds on a machine with one GPU (or none); the mistake only shows
later, as a CUDA error deep inside the first copy, or, for ``"tpu"``, as a ``RuntimeError``
listing twenty device types. Training reads a device from a config or the command line, so it
is checked here, up front, and refused with a ``ValueError`` that names what is available.
Only the device types lmforge trains on are accepted: ``cpu``, ``cuda[:N]`` and ``mps``.
"""

from __future__ import annotations

import torch

_SUPPORTED = "'cpu', 'cuda', 'cuda:N' or 'mps'"


def resolve_device(device: str | torch.device) -> torch.device:
    """Parse a device and check that this machine has it.

    Args:
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``, or a ``torch.device``.

    Returns:
        The device, as a ``torch.device``.

    Raises:
        ValueError: when the string is not a device, the device type is not one lmforge trains
            on, CUDA (or MPS) is not available, or the CUDA index is not a visible GPU.
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}; use {_SUPPORTED}") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {str(dev)!r} needs CUDA, but no CUDA GPU is available (torch "
                f"{torch.__version__}); use 'cpu', or run on a machine with a GPU"
            )
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ValueError(
                f"device {str(dev)!r} does not exist: {count} CUDA GPU(s) visible "
                f"(cuda:0 to cuda:{count - 1}); check CUDA_VISIBLE_DEVICES"
            )
        return dev
    if dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError("device 'mps' is not available on this machine; use 'cpu'")
        return dev
    raise ValueError(f"device type {dev.type!r} is not supported; use {_SUPPORTED}")
