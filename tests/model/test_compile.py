"""The training path traces into one graph: ``torch.compile(fullgraph=True)`` has no breaks.

Uses the ``aot_eager`` backend (Dynamo + AOTAutograd, forward and backward graphs, no code
generation) so the check takes seconds on a CPU; the GPU tests compile with Inductor.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from model_testing import tiny_model, tokens

CASES: dict[str, dict[str, Any]] = {
    "plain": {},
    "everything": dict(
        n_kv_heads=2,
        qk_norm=True,
        z_loss=1e-4,
        logit_softcap=30.0,
        document_mask=True,
        eot_id=0,
        activation_checkpointing=True,
        parallel_block=True,
        tie_embeddings=True,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_fullgraph_forward_backward(case: str) -> None:
    torch._dynamo.reset()
    model = tiny_model(dtype=torch.float32, **CASES[case]).train()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    idx, tgt = tokens((2, 16), vocab=8), tokens((2, 16), seed=2)
    for return_logits in (False, True):
        out = compiled(idx, tgt, return_logits=return_logits)
        out.loss.backward()
        ref = model(idx, tgt, return_logits=return_logits)
        torch.testing.assert_close(out.loss, ref.loss)
        for key, value in ref.metrics.items():
            torch.testing.assert_close(out.metrics[key], value)
