"""Run configs: TOML files, presets, --set overrides, validation, the TOML written back."""

from __future__ import annotations

import pytest

from lmforge.train.config import (
    RunConfig,
    TrainConfig,
    load_run_config,
    parse_overrides,
    preset_names,
    to_toml,
)

DATA = ["train.train_data=train.bin"]


def test_presets_have_the_issue_shapes():
    assert {"stories-17M", "gpt2-124M", "1B"} <= set(preset_names())
    s = load_run_config("stories-17M", DATA).model
    assert (s.d_model, s.n_layers, s.n_heads, s.d_ff, s.context_length) == (512, 4, 16, 1344, 256)
    assert s.vocab_size >= 10_000 and s.vocab_size % 64 == 0
    g = load_run_config("gpt2-124M", DATA).model
    assert (g.d_model, g.n_layers, g.n_heads, g.context_length, g.vocab_size) == (
        768,
        12,
        12,
        1024,
        50304,
    )
    b = load_run_config("1B", DATA).model
    assert (b.d_model, b.n_layers, b.n_heads, b.context_length, b.vocab_size) == (
        2048,
        16,
        16,
        1024,
        50304,
    )


def test_overrides_are_toml_values():
    cfg = load_run_config(
        "stories-17M",
        [*DATA, "optim.lr=1e-3", "train.compile=false", "model.n_layers=2", 'train.out_dir="x y"'],
    )
    assert cfg.optim.lr == 1e-3 and cfg.train.compile is False and cfg.model.n_layers == 2
    assert cfg.train.out_dir == "x y"
    assert parse_overrides(["train.device=cuda:1"]) == {"train": {"device": "cuda:1"}}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["lr=1"], "table.key=value"),
        (["train.nope=1"], "unknown \\[train\\] key"),
        (["model.d_model=100"], "divisible by n_heads"),
        (["train.batch_size=0"], "batch_size"),
        (["train.dtype=fp8"], "dtype"),
        (["bogus.x=1"], "unknown config table"),
        (['train.compile_mode="fast"'], "compile_mode must be one of"),
        (['train.compile_mode="reduce-overhead"', "train.grad_accum=2"], "grad_accum=1"),
    ],
)
def test_bad_overrides_raise(overrides, message):
    with pytest.raises(ValueError, match=message):
        load_run_config("stories-17M", [*DATA, *overrides])


def test_missing_data_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="--data"):
        load_run_config("stories-17M", [])
    with pytest.raises(FileNotFoundError, match="presets: .*stories-17M"):
        load_run_config(tmp_path / "nope.toml", DATA)
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\n")
    with pytest.raises(ValueError, match="invalid TOML"):
        load_run_config(bad, DATA)


def test_needs_max_iters_or_epochs():
    with pytest.raises(ValueError, match="max_iters"):
        TrainConfig(train_data="x.bin")


def test_toml_round_trip(tmp_path):
    cfg = load_run_config("gpt2-124M", [*DATA, "model.logit_softcap=30.0", "train.seed=7"])
    path = tmp_path / "config.toml"
    path.write_text(to_toml(cfg))
    again = load_run_config(path)
    assert again == cfg and isinstance(again, RunConfig)


def test_train_data_may_be_a_mixture():
    from lmforge.train.config import TrainConfig

    tc = TrainConfig(train_data=["a.bin", "b.bin"], mixture_weights=[1, 3], max_iters=1)
    assert tc.train_paths == ["a.bin", "b.bin"]
    assert TrainConfig(train_data="a.bin", max_iters=1).train_paths == ["a.bin"]
    with pytest.raises(ValueError, match="got 3 mixture weights for 2 sources"):
        TrainConfig(train_data=["a.bin", "b.bin"], mixture_weights=[1, 2, 3], max_iters=1)
    with pytest.raises(ValueError, match="not both"):
        TrainConfig(train_data=["a", "b"], mixture_alpha=0.3, mixture_weights=[1, 1], max_iters=1)
    with pytest.raises(ValueError, match="alpha must be finite and >= 0"):
        TrainConfig(train_data=["a", "b"], mixture_alpha=-1.0, max_iters=1)
    with pytest.raises(ValueError, match="lists a file twice"):
        TrainConfig(train_data=["a", "a"], max_iters=1)
    with pytest.raises(ValueError, match="or a list of them"):
        TrainConfig(train_data=[], max_iters=1)


GRAPHS = "reduce-overhead"


@pytest.mark.parametrize(
    "sets, world, device, expected",
    [
        ([], 1, "cuda", "reduce-overhead"),
        ([], 1, "cpu", None),
        ([], 2, "cuda", None),
        (["train.grad_accum=2"], 1, "cuda", None),
        (["model.moe.n_routed_experts=4"], 1, "cuda", "reduce-overhead"),
        (["model.moe.n_routed_experts=4", 'model.moe.router="sigmoid"'], 1, "cuda", GRAPHS),
        (["model.moe.n_routed_experts=4", 'model.moe.router="hash"'], 1, "cuda", None),
        (["model.moe.n_routed_experts=4", 'model.moe.router="expert_choice"'], 1, "cuda", None),
        (["model.moe.n_routed_experts=4", "model.moe.capacity_factor=1.25"], 1, "cuda", None),
        (['train.compile_mode="default"'], 1, "cuda", None),
        (['train.compile_mode="max-autotune"'], 1, "cuda", "max-autotune"),
    ],
)
def test_auto_compile_mode(sets, world, device, expected):
    from lmforge.train.trainer import resolve_compile_mode

    cfg = load_run_config("stories-17M", ["train.train_data=x.bin", *sets])
    assert resolve_compile_mode(cfg, world, device) == expected
