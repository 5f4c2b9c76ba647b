"""``check_resumable``: a saved config is compared field by field, with fields added to the
config classes since it was written taken at their defaults."""

from __future__ import annotations

import copy

import pytest

from lmforge.train.config import load_run_config
from lmforge.train.resume import check_resumable


def test_fields_added_since_the_checkpoint_count_as_their_defaults() -> None:
    now = load_run_config("stories-moe", ["train.train_data=unused"])
    saved = copy.deepcopy(now.to_dict())
    del saved["model"]["moe"]["expert_dtype"]  # written before the field existed
    assert check_resumable(saved, now) == []
    changed = load_run_config(
        "stories-moe", ["train.train_data=unused", 'model.moe.expert_dtype="bfloat16"']
    )
    with pytest.raises(ValueError, match="model.moe"):
        check_resumable(saved, changed)


def test_param_dtype_is_fixed_for_a_run_and_defaults_to_float32_in_old_checkpoints() -> None:
    now = load_run_config("stories-17M", ["train.train_data=unused"])
    saved = copy.deepcopy(now.to_dict())
    del saved["train"]["param_dtype"]  # written before the field existed
    assert check_resumable(saved, now) == []
    bf16 = load_run_config(
        "stories-17M", ["train.train_data=unused", 'train.param_dtype="bfloat16"']
    )
    with pytest.raises(ValueError, match="train.param_dtype.*'float32'.*'bfloat16'"):
        check_resumable(saved, bf16)
    with pytest.raises(ValueError, match="train.param_dtype.*'bfloat16'.*'float32'"):
        check_resumable(bf16.to_dict(), now)
