"""MoE under torchrun (2 CPU processes): the loss-free bias sees the load of the whole global
batch — each rank's counts are all-reduced before the sign update — so 2 ranks with
``grad_accum = 2`` train exactly what one process with ``grad_accum = 4`` does, bias included."""

from __future__ import annotations

import torch
from test_distributed import assert_same_run, final_weights, single, torchrun_train
from test_moe_training import MOE_TINY

EXTRA = [*MOE_TINY, "model.moe.router=sigmoid"]


def test_ddp_moe_matches_one_process(stories_data, tmp_path):
    reference = single(stories_data, tmp_path / "single", *EXTRA)
    torchrun_train(stories_data, tmp_path / "ddp", "train.grad_accum=2", *EXTRA)
    assert_same_run(tmp_path / "ddp", reference)  # losses and weights, expert_bias included
    weights = final_weights(tmp_path / "ddp")
    biases = [v for k, v in weights.items() if k.endswith("expert_bias")]
    assert len(biases) == 2 and all(b.abs().sum() > 0 for b in biases)
    assert not any(k.endswith("expert_load") for k in weights)
    assert all(torch.equal(b, final_weights(reference)[k]) for k, b in weights.items()
               if k.endswith("expert_bias"))  # fmt: skip
