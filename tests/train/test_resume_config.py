"""``check_resumable``: a saved config is compared field by field, with fields added to the
config classes since it was written taken at their defaults."""

from __future__ import annotations

import copy

import pytest

from lmforge.train.config import load_run_config
from lmforge.train.resume import check_resumable, saved_param_dtype


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
    now = load_run_config("stories-17M", ["train.train_data=unused"]).resolve_param_dtype("cpu", 1)
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


def test_auto_param_dtype_resolves_by_device_processes_and_optimizer() -> None:
    def resolved(device: str, world: int, *sets: str, saved: str | None = None) -> str:
        config = load_run_config("stories-17M", ["train.train_data=unused", *sets])
        return config.resolve_param_dtype(device, world, saved).train.param_dtype

    assert resolved("cuda", 1) == "bfloat16"
    assert resolved("cpu", 1) == "float32"  # the CPU computes in float32
    assert resolved("cuda", 2) == "float32"  # ranks average gradients in the weights' dtype
    assert resolved("cuda", 1, 'train.dtype="fp32"') == "float32"
    assert resolved("cuda", 1, 'optim.name="muon"') == "float32"  # no float32 masters
    assert resolved("cuda", 1, 'optim.name="adam"') == "bfloat16"
    assert resolved("cuda", 2, saved="bfloat16") == "bfloat16"  # a resumed run keeps its own
    assert resolved("cuda", 1, saved="float32") == "float32"
    assert resolved("cuda", 1, 'train.param_dtype="float32"') == "float32"  # explicit stays
    assert resolved("cpu", 1, 'train.param_dtype="bfloat16"', saved="float32") == "bfloat16"
    # a bf16 run resumed where bf16 weights cannot train: refused with the reason, not re-typed
    for sets in (['train.dtype="fp32"'], ['optim.name="muon"'], ["train.strategy=fsdp"]):
        with pytest.raises(ValueError, match="stores its weights in bfloat16.*init_from"):
            resolved("cuda", 2, *sets, saved="bfloat16")
    assert resolved("cuda", 2, 'train.dtype="fp32"', saved="float32") == "float32"


def test_saved_param_dtype_reads_the_run_config(tmp_path) -> None:
    path = tmp_path / "config.toml"
    assert saved_param_dtype(path) is None  # no file
    path.write_text('[train]\nparam_dtype = "bfloat16"\n')
    assert saved_param_dtype(path) == "bfloat16"
    path.write_text("[train]\nbatch_size = 4\n")  # written before the field existed
    assert saved_param_dtype(path) == "float32"
    for bad in ('[train]\nparam_dtype = "auto"\n', "[train", "train = 3\n", b"\xff\xfe"):
        if isinstance(bad, bytes):
            path.write_bytes(bad)
        else:
            path.write_text(bad)
        assert saved_param_dtype(path) is None
