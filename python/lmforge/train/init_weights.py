"""``train.init_from``: start a run from another run's weights, upcycling a dense model to MoE.

A new run normally starts from a random initialisation. With ``train.init_from = PATH`` (a run
directory, checkpoint folder or file) it starts from that checkpoint's weights instead — only
the weights: the optimizer, the step and the data position start afresh, so this is a new run
(fine-tuning on other data, or continued pre-training with another schedule), not a resume.

When the checkpoint is dense and the configured model has ``model.moe``, the checkpoint is
**upcycled** first (:func:`lmforge.model.moe.upcycle`, Komatsuzaki et al. 2023): every expert
starts as the dense MLP, the routers from their own (seeded) initialisation. With full copies,
gates that sum to 1, no shared expert and dropless routing, the first step's loss is the dense
model's.
"""

from __future__ import annotations

import logging
import os

from lmforge.model import Transformer
from lmforge.model.moe import upcycle
from lmforge.train.artifacts import load_trained

__all__ = ["load_initial_weights"]

log = logging.getLogger(__name__)


def load_initial_weights(model: Transformer, path: str | os.PathLike[str]) -> None:
    """Copy the weights saved at ``path`` into ``model`` (upcycling a dense checkpoint).

    Args:
        model: the freshly built model of the run.
        path: a run directory, checkpoint folder or checkpoint file.

    Raises:
        FileNotFoundError: no checkpoint at ``path``.
        ValueError: the checkpoint's weights do not fit ``model`` (another shape), or it is an
            MoE checkpoint and the run's model is dense.
    """
    source = load_trained(path, "cpu").model
    if source.config.moe is not None and model.config.moe is None:
        raise ValueError(
            f"train.init_from={os.fspath(path)!r} is an MoE model but model.moe is not set: "
            "an MoE checkpoint cannot start a dense run"
        )
    if model.config.moe is not None and source.config.moe is None:
        source = upcycle(source, model.config.moe)
        log.info("upcycled the dense checkpoint %s to %s", path, model.config.moe)
    try:
        model.load_state_dict(source.state_dict())
    except RuntimeError as err:
        raise ValueError(
            f"train.init_from={os.fspath(path)!r}: its weights do not fit the configured model "
            f"({err}); give [model] the shape of the checkpoint's config.json"
        ) from None
