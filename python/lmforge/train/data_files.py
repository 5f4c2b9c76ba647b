"""A run's token files: opened against the model and tokenizer, and what they must agree on.

Every training and validation file is opened once (a path listed twice is one file), each checked
against the model's ``vocab_size`` and ``context_length`` and the tokenizer's fingerprint. The
training files of a mixture must come from one tokenizer with one end-of-text id, which becomes
the model's ``eot_id`` when the config leaves it unset (generation stops on it; document masks
split on it).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from lmforge.data import TokenFile, open_training_file
from lmforge.model import ModelConfig
from lmforge.train.config import RunConfig, TrainConfig

__all__ = ["mixture_line", "open_run_data", "source_names", "train_eot_id", "with_data_eot_id"]


def open_run_data(
    tc: TrainConfig, mc: ModelConfig, fingerprint: str | None
) -> tuple[list[TokenFile], TokenFile | None]:
    """The training files and the validation file (``None`` without ``val_data``).

    Raises:
        lmforge.data.TokenFileError: a file that does not fit the model or the tokenizer.
    """
    opened = {
        path: open_training_file(
            path,
            vocab_size=mc.vocab_size,
            fingerprint=fingerprint,
            context_length=mc.context_length,
        )
        for path in dict.fromkeys(filter(None, (*tc.train_paths, tc.val_data)))
    }
    val = opened[tc.val_data] if tc.val_data else None
    return [opened[path] for path in tc.train_paths], val


def train_eot_id(files: list[TokenFile]) -> int | None:
    """The end-of-text id of the training files, which must agree on it and on the tokenizer.

    Raises:
        ValueError: files made by different tokenizers or with different end-of-text ids.
    """
    for field, what in (("tokenizer_fingerprint", "tokenizers"), ("eot_id", "end-of-text ids")):
        values = {f.path.name: getattr(f.header, field) for f in files}
        if len(set(values.values())) > 1:
            raise ValueError(
                f"the training files have different {what} ({values}); encode them all with "
                "one tokenizer, with the same append_eot setting"
            )
    return files[0].header.eot_id


def source_names(paths: list[str]) -> list[str]:
    """Short names for metrics: file names without ``.bin``, or indices when those collide."""
    names = [Path(p).name.removesuffix(".bin") for p in paths]
    return names if len(set(names)) == len(names) else [str(i) for i in range(len(paths))]


def mixture_line(paths: list[str], weights: Any) -> str:
    return ", ".join(f"{n} {w:.3f}" for n, w in zip(source_names(paths), weights, strict=True))


def with_data_eot_id(config: RunConfig, eot_id: int | None) -> RunConfig:
    """The config with ``model.eot_id`` taken from the token file's header when unset.

    Raises:
        ValueError: a configured ``eot_id`` that differs from the data's.
    """
    mc = config.model
    if eot_id is None or mc.eot_id == eot_id:
        return config
    if mc.eot_id is not None:
        raise ValueError(
            f"model.eot_id is {mc.eot_id} but the training data's end-of-text id is {eot_id}; "
            "leave model.eot_id unset to take it from the data"
        )
    return dataclasses.replace(config, model=dataclasses.replace(mc, eot_id=eot_id))
