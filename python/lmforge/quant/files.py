"""Saving and loading a quantized model: ``save_quantized`` and ``load_quantized``.

A quantized model is a folder holding ``quantized.pt`` — one ``torch.save`` dict with the
format name and version, the quantization format (``"int8"``/``"fp8"``), whether the LM head
was quantized, the float dtype of the original weights, the :class:`ModelConfig` as a plain
dict, and the ``state_dict`` (int8/fp8 ``qweight`` and float32 ``scale`` per quantized layer,
float embeddings and norms) — and a ``config.json`` for people and tools that read configs.

Design choices:

* **Safe, self-describing files**: everything saved is a tensor or a plain value, so loading
  uses ``torch.load(weights_only=True)`` (no code runs when a file is opened), and the file alone
  says how to rebuild the model: no guess from tensor dtypes.
* **Atomic writes** through :func:`lmforge._atomic.write_atomic`: a crash leaves the old file
  or the new one, never half of one.
* **Loading does not re-quantize**: the float model is built from the config, its layers are
  swapped for empty quantized ones, and the saved tensors are loaded strictly, so the logits
  after a round trip are bit-identical.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from lmforge._atomic import write_atomic, write_text_atomic
from lmforge.model import ModelConfig, Transformer, build_model
from lmforge.quant.base import QuantError, quantized_modules, swap_linears
from lmforge.quant.quantize import layer_class

__all__ = ["QUANTIZED_FILE", "load_quantized", "save_quantized"]

QUANTIZED_FILE = "quantized.pt"
FORMAT = "lmforge-quantized"
VERSION = 1


def _describe(model: Transformer) -> dict[str, Any]:
    layers = quantized_modules(model)
    formats = {m.format for m in layers.values()}
    if len(formats) != 1:
        raise QuantError(
            "save_quantized needs a model quantized to one format, "
            f"found {sorted(formats) or 'none'}: quantize it first (lmforge.quant.quantize)"
        )
    head = model.output
    dtypes = {m.weight_dtype for m in layers.values()}
    return {
        "quant_format": formats.pop(),
        "include_head": head is not None and any(m is head for m in layers.values()),
        "dtype": str(dtypes.pop()).removeprefix("torch."),
    }


def save_quantized(model: Transformer, directory: str | os.PathLike[str]) -> Path:
    """Write a quantized model to ``directory`` (created if needed).

    Args:
        model: a :class:`Transformer` quantized by :func:`~lmforge.quant.quantize`.
        directory: the output folder; ``quantized.pt`` and ``config.json`` are replaced.

    Returns:
        The path of ``quantized.pt``.

    Raises:
        QuantError: the model is not quantized, or mixes formats.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        **_describe(model),
        "config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    path = out / QUANTIZED_FILE
    write_atomic(path, lambda f: torch.save(payload, f))
    write_text_atomic(out / "config.json", json.dumps(model.config.to_dict(), indent=2) + "\n")
    return path


def _read(path: Path) -> dict[str, Any]:
    file = path / QUANTIZED_FILE if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no quantized model (write one with save_quantized)")
    try:
        payload = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises pickle, zip and runtime errors for bad files
        raise QuantError(f"{file}: not a readable quantized model ({err})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise QuantError(f"{file}: not an lmforge quantized model (format {FORMAT!r} expected)")
    if payload.get("version", VERSION + 1) > VERSION:
        raise QuantError(f"{file}: version {payload.get('version')} is newer than this lmforge")
    return payload


def load_quantized(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> Transformer:
    """Rebuild a model written by :func:`save_quantized`.

    Args:
        path: the folder, or the ``quantized.pt`` inside it.
        device: where to put the model.

    Returns:
        The quantized :class:`Transformer`, in eval mode.

    Raises:
        FileNotFoundError: no quantized model there.
        QuantError: a corrupt, foreign or newer file, an unknown format, or tensors that do not
            fit the config.
    """
    payload = _read(Path(path))
    cls = layer_class(payload["quant_format"])
    config = ModelConfig.from_dict(payload["config"])
    dtype = getattr(torch, str(payload.get("dtype")), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise QuantError(f"{path}: unknown weight dtype {payload.get('dtype')!r}")
    model = build_model(config, dtype=dtype)
    swap_linears(model, cls.empty_like, include_head=bool(payload["include_head"]))
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as err:
        raise QuantError(f"{path}: the saved tensors do not fit the model ({err})") from None
    return model.to(device).eval()
