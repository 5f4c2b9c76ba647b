"""Looking inside a trained model: the logit lens and contextual embeddings.

``logit_lens`` decodes the residual stream after every layer with the model's own head
(:func:`format_table` as text, :func:`save_heatmap` as a PNG); ``embed`` turns texts into
pooled hidden states, with the per-dimension standardisation that makes their cosine
similarities meaningful. Nothing here trains; everything takes a model in eval mode, e.g. from
:func:`lmforge.train.artifacts.load_trained`.
"""

from lmforge.analysis.embed import (
    Pooling,
    Standardizer,
    TokenStates,
    embed_texts,
    mean_pairwise_cosine,
    pool_states,
    resolve_layer,
    token_states,
)
from lmforge.analysis.lens_plot import save_heatmap
from lmforge.analysis.logit_lens import LogitLensResult, format_table, logit_lens, token_label

__all__ = [
    "LogitLensResult",
    "Pooling",
    "Standardizer",
    "TokenStates",
    "embed_texts",
    "format_table",
    "logit_lens",
    "mean_pairwise_cosine",
    "pool_states",
    "resolve_layer",
    "save_heatmap",
    "token_label",
    "token_states",
]
