"""Checkpoints: exact round trips (weights, optimizer, RNG streams, extra state), file objects,
crash safety of the atomic write, and every refusal of load_checkpoint."""

from __future__ import annotations

import dataclasses
import io
import os
import random

import numpy as np
import pytest
import torch
from torch import nn

from lmforge._atomic import write_atomic
from lmforge.train import checkpoint as checkpoint_module
from lmforge.train.checkpoint import (
    FORMAT,
    VERSION,
    CheckpointError,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)


class Tiny(nn.Module):
    def __init__(self, d: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, d)
        self.proj = nn.Linear(d, 10)
        self.register_buffer("scale", torch.ones(d))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.proj(self.embed(ids) * self.scale)


@dataclasses.dataclass
class Config:
    d_model: int = 4


def trained(seed: int = 0) -> tuple[Tiny, torch.optim.Optimizer]:
    """A model and AdamW after two steps, so the optimizer has moments to save."""
    torch.manual_seed(seed)
    model = Tiny()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(2):
        model(torch.arange(10)).square().mean().backward()
        opt.step()
        opt.zero_grad()
    return model, opt


def fresh() -> tuple[Tiny, torch.optim.Optimizer]:
    torch.manual_seed(123)
    model = Tiny()
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


def assert_same_model(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        # .cpu(): DataParallel moves its module onto the GPU when there is one
        torch.testing.assert_close(sa[k].cpu(), sb[k].cpu(), rtol=0, atol=0)


def draws() -> tuple[float, float, list[float]]:
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_round_trip(tmp_path):
    model, opt = trained()
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, model, opt, 7, sampler={"epoch": 1, "step": 5}, best=np.float64(2.5))
    expected = draws()
    new_model, new_opt = fresh()
    draws()  # move every stream on, so only the restore can bring it back
    state: dict = {}
    assert load_checkpoint(path, new_model, new_opt, state=state) == 7
    assert draws() == expected
    assert_same_model(model, new_model)
    assert state == {"sampler": {"epoch": 1, "step": 5}, "best": 2.5}
    assert type(state["best"]) is float  # numpy scalars are saved as Python ones
    # the optimizer continues identically: one more step on both gives the same weights
    for m, o in ((model, opt), (new_model, new_opt)):
        m(torch.arange(10)).square().mean().backward()
        o.step()
    assert_same_model(model, new_model)
    assert leftovers(tmp_path) == []


def test_file_object_round_trip():
    model, opt = trained()
    buf = io.BytesIO()
    save_checkpoint(buf, model, None, 3, note="hi")
    buf.seek(0)
    new_model, _ = fresh()
    state: dict = {}
    assert load_checkpoint(buf, new_model, state=state, restore_rng=False) == 3
    assert_same_model(model, new_model)
    assert state == {"note": "hi"}


def test_rng_state_round_trip():
    state = rng_state()
    np.random.randn()  # leaves a cached gaussian in numpy's state
    random.gauss(0, 1)
    state = rng_state()
    expected = (draws(), np.random.randn(), random.gauss(0, 1))
    set_rng_state(state)
    assert (draws(), np.random.randn(), random.gauss(0, 1)) == expected
    with pytest.raises(ValueError, match="rng_state"):
        set_rng_state({"python": (3, (), None)})


@pytest.mark.parametrize("fail_in", ["torch.save", "os.replace"])
def test_crash_mid_write_keeps_previous_checkpoint(tmp_path, monkeypatch, fail_in):
    model, opt = trained(seed=0)
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, model, opt, 1)
    other, other_opt = trained(seed=1)

    def crash(*args, **kwargs):
        if fail_in == "torch.save":
            args[1].write(b"PK\x03\x04 half a zip")  # a torn file, then the crash
        raise OSError("disk full")

    target = checkpoint_module.torch if fail_in == "torch.save" else checkpoint_module.os
    monkeypatch.setattr(target, fail_in.split(".")[1], crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, other, other_opt, 2)
    monkeypatch.undo()
    assert leftovers(tmp_path) == []
    restored, _ = fresh()
    assert load_checkpoint(path, restored) == 1
    assert_same_model(model, restored)


def test_write_atomic_replaces_and_cleans_up(tmp_path):
    path = tmp_path / "f.bin"
    write_atomic(path, lambda f: f.write(b"one"))
    write_atomic(path, lambda f: f.write(b"two"))
    assert path.read_bytes() == b"two"

    def boom(f):
        f.write(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomic(path, boom)
    assert path.read_bytes() == b"two" and leftovers(tmp_path) == []
    umask = os.umask(0o022)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's private 0o600


def test_truncated_file(tmp_path):
    model, opt = trained()
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, model, opt, 1)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="checkpoint.pt is not a readable") as err:
        load_checkpoint(path, fresh()[0])
    assert "truncated or corrupt" in str(err.value)


@pytest.mark.parametrize("content", [b"", b"\x00garbage" * 100, b"PK\x03\x04not a zip"])
def test_garbage_file(tmp_path, content):
    path = tmp_path / "junk.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_checkpoint(path, fresh()[0])


def test_not_an_lmforge_checkpoint(tmp_path):
    path = tmp_path / "bare.pt"
    torch.save(fresh()[0].state_dict(), path)
    with pytest.raises(CheckpointError, match="not an lmforge checkpoint"):
        load_checkpoint(path, fresh()[0])
    torch.save(fresh()[0], path)  # a pickled module: weights_only refuses it
    with pytest.raises(CheckpointError, match=r"safe \(weights_only\) loading refuses"):
        load_checkpoint(path, fresh()[0])


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "nope.pt", fresh()[0])
    with pytest.raises(CheckpointError, match="is a folder"):
        load_checkpoint(tmp_path, fresh()[0])


def test_future_version_refused(tmp_path):
    path = tmp_path / "future.pt"
    torch.save({"format": FORMAT, "version": VERSION + 1}, path)
    with pytest.raises(CheckpointError, match="upgrade lmforge"):
        load_checkpoint(path, fresh()[0])


def test_key_and_shape_mismatches_are_named(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, Tiny(), None, 0)
    bigger = Tiny()
    bigger.extra = nn.Linear(2, 2)
    with pytest.raises(CheckpointError, match=r"missing keys \(2\): extra.weight, extra.bias"):
        load_checkpoint(path, bigger)
    smaller = nn.Sequential(nn.Linear(1, 1))
    with pytest.raises(CheckpointError, match=r"unexpected keys \(4\): scale, embed.weight"):
        load_checkpoint(path, smaller)
    with pytest.raises(
        CheckpointError, match=r"shape mismatches \(3\): scale \(4,\) saved, \(8,\)"
    ):
        load_checkpoint(path, Tiny(d=8))


def test_optimizer_mismatch(tmp_path):
    path = tmp_path / "c.pt"
    model, _ = trained()
    save_checkpoint(path, model, None, 0)
    with pytest.raises(CheckpointError, match="no optimizer state"):
        load_checkpoint(path, *fresh())
    save_checkpoint(path, model, torch.optim.SGD([model.proj.weight], lr=0.1), 0)
    with pytest.raises(CheckpointError, match="optimizer state does not fit"):
        load_checkpoint(path, *fresh())


def test_unsafe_state_refused_before_writing(tmp_path):
    path = tmp_path / "c.pt"
    with pytest.raises(ValueError, match=r"state 'cfg'\['arr'\] is a numpy.ndarray"):
        save_checkpoint(path, Tiny(), None, 0, cfg={"arr": np.zeros(2)})
    with pytest.raises(ValueError, match=r"state 'config' is a test_checkpoint.Config.*asdict"):
        save_checkpoint(path, Tiny(), None, 0, config=Config())
    with pytest.raises(ValueError, match="iteration"):
        save_checkpoint(path, Tiny(), None, -1)
    assert not path.exists()


def test_compiled_and_wrapped_models(tmp_path):
    model, _ = trained()
    compiled = torch.compile(model)  # wraps lazily: nothing is compiled until it is called
    assert all(k.startswith("_orig_mod.") for k in compiled.state_dict())
    path = tmp_path / "c.pt"
    save_checkpoint(path, compiled, None, 1)
    plain = fresh()[0]
    load_checkpoint(path, plain)
    assert_same_model(model, plain)
    # a plain checkpoint loads into a compiled model, a DataParallel and a compiled submodule
    save_checkpoint(path, model, None, 1)
    for target in (torch.compile(fresh()[0]), nn.DataParallel(fresh()[0])):
        load_checkpoint(path, target)
        assert_same_model(model, target.module if hasattr(target, "module") else target._orig_mod)
    partial = fresh()[0]
    partial.proj = torch.compile(partial.proj)
    assert "proj._orig_mod.weight" in partial.state_dict()
    load_checkpoint(path, partial)
    torch.testing.assert_close(partial.proj._orig_mod.weight, model.proj.weight)


def test_foreign_ddp_prefix(tmp_path):
    """A checkpoint whose keys all carry `module.` (saved from a DDP model elsewhere) loads."""
    model, _ = trained()

    class Holder(nn.Module):  # not DDP, so its `module.` keys are saved as they are
        def __init__(self, inner):
            super().__init__()
            self.module = inner

    path = tmp_path / "c.pt"
    save_checkpoint(path, Holder(model), None, 0)
    plain = fresh()[0]
    load_checkpoint(path, plain)
    assert_same_model(model, plain)


@pytest.mark.gpu
@pytest.mark.parametrize("map_location", ["cpu", "cuda"])
def test_cuda_round_trip(tmp_path, map_location):
    """CUDA RNG streams continue after a restore; tensors land on the model's device."""
    torch.manual_seed(0)
    model = Tiny().cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.arange(10, device="cuda")).square().mean().backward()
    opt.step()
    path = tmp_path / "c.pt"
    save_checkpoint(path, model, opt, 1)
    expected = torch.rand(4, device="cuda").tolist()
    torch.rand(4, device="cuda")
    new_model = Tiny().cuda()
    new_opt = torch.optim.AdamW(new_model.parameters(), lr=1e-2)
    load_checkpoint(path, new_model, new_opt, map_location=map_location)
    assert torch.rand(4, device="cuda").tolist() == expected
    assert_same_model(model, new_model)
    assert all(s["exp_avg"].is_cuda for s in new_opt.state.values())
