"""``MoEConfig`` validation, router-dependent defaults, layer placement, and its place in
``ModelConfig`` (dict round trip, TOML tables and ``--set model.moe.key=value``)."""

from __future__ import annotations

import pytest

from lmforge.model import ModelConfig
from lmforge.model.moe import MoEConfig
from lmforge.train.config import load_model_config, load_run_config, to_toml

BASE = dict(vocab_size=64, context_length=16, d_model=32, n_layers=4, n_heads=4)


def test_router_dependent_defaults_are_resolved_and_saved() -> None:
    tc = MoEConfig(n_routed_experts=8)
    assert (tc.aux_loss_weight, tc.bias_update_rate, tc.seq_aux_loss_weight) == (0.01, 0.0, 0.0)
    assert tc.normalize_gates is True and tc.capacity_factor is None  # dropless by default
    ds = MoEConfig(n_routed_experts=8, router="sigmoid", top_k=1)
    assert (ds.aux_loss_weight, ds.bias_update_rate, ds.seq_aux_loss_weight) == (0.0, 1e-2, 1e-4)
    assert ds.normalize_gates is False  # one expert: a normalised gate would always be 1
    ec = MoEConfig(n_routed_experts=8, router="expert_choice")
    assert ec.capacity_factor == 1.0 and ec.aux_loss_weight == 0.0
    assert MoEConfig.from_dict(ds.to_dict()) == ds


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (dict(n_routed_experts=0), "n_routed_experts must be an integer >= 1"),
        (dict(n_routed_experts=4, top_k=5), "top_k \\(5\\) exceeds"),
        (dict(n_routed_experts=4, router="switch"), "router must be one of"),
        (dict(n_routed_experts=6, n_expert_groups=4), "n_expert_groups \\(4\\) must divide"),
        (dict(n_routed_experts=4, device_loss_weight=0.1), "n_expert_groups >= 2"),
        (dict(n_routed_experts=4, router="hash", aux_loss_weight=0.01), "moe.aux_loss_weight"),
        (dict(n_routed_experts=4, router="hash", z_loss_weight=1e-3), "z_loss_weight=0"),
        (dict(n_routed_experts=4, router="expert_choice", bias_update_rate=1e-3), "balanced"),
        (dict(n_routed_experts=4, capacity_factor=0.0), "capacity_factor must be a positive"),
        (dict(n_routed_experts=4, z_loss_weight=-1.0), "z_loss_weight must be a number >= 0"),
        (dict(n_routed_experts=4, normalize_gates="yes"), "normalize_gates must be true or false"),
        (dict(n_routed_experts=4, expert_d_ff=0), "expert_d_ff must be an integer >= 1"),
    ],
)
def test_invalid_fields_are_named(fields, message) -> None:
    with pytest.raises(ValueError, match=message):
        MoEConfig(**fields)


def test_from_dict_errors() -> None:
    with pytest.raises(ValueError, match="unknown model.moe field"):
        MoEConfig.from_dict({"n_routed_experts": 4, "experts": 4})
    with pytest.raises(ValueError, match="needs n_routed_experts"):
        MoEConfig.from_dict({"top_k": 2})


def test_layer_placement() -> None:
    moe = MoEConfig(n_routed_experts=4, first_dense_layers=1, moe_every=2)
    assert moe.moe_layers(6) == [1, 3, 5]
    assert MoEConfig(n_routed_experts=4).moe_layers(3) == [0, 1, 2]
    with pytest.raises(ValueError, match="leaves no MoE layer"):
        ModelConfig(**BASE, moe=MoEConfig(n_routed_experts=4, first_dense_layers=4))


def test_model_config_round_trip() -> None:
    cfg = ModelConfig(**BASE, moe={"n_routed_experts": 4, "router": "sigmoid"})
    assert isinstance(cfg.moe, MoEConfig) and cfg.moe.bias_update_rate == 1e-2
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert ModelConfig.from_dict({**BASE}).moe is None  # configs saved before MoE still load
    with pytest.raises(ValueError, match="moe must be an MoEConfig"):
        ModelConfig(**BASE, moe=4)


def test_toml_tables_and_overrides(tmp_path) -> None:
    data = ['train.train_data="x.bin"']
    cfg = load_run_config("stories-moe", [*data, "model.moe.top_k=2", "model.moe.router=hash",
                                          "model.moe.seq_aux_loss_weight=0",
                                          "model.moe.bias_update_rate=0"])  # fmt: skip
    assert cfg.model.moe is not None
    assert (cfg.model.moe.top_k, cfg.model.moe.n_routed_experts) == (2, 16)  # merged, not replaced
    assert cfg.model.moe.router == "hash"
    text = to_toml(cfg)
    assert "[model.moe]" in text
    path = tmp_path / "run.toml"
    path.write_text(text)
    assert load_run_config(path) == cfg
    dense = load_run_config("stories-17M", [*data, "model.moe.n_routed_experts=4"])
    assert dense.model.moe == MoEConfig(n_routed_experts=4)
    assert load_model_config("stories-moe", ["moe.top_k=4"]).moe.top_k == 4  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="needs n_routed_experts"):
        load_run_config("stories-17M", [*data, "model.moe.top_k=4"])
