"""Exporting a trained :class:`Transformer`: a safetensors folder, and a Hugging Face Llama folder.

Two formats, both plain files that need no pickle to read:

* :func:`export_safetensors` / :func:`load_safetensors`: lmforge's own parameter names in
  ``model.safetensors`` beside ``config.json`` (:meth:`ModelConfig.to_dict`), the portable
  counterpart of a training checkpoint (no optimizer state, no code execution on load).
  safetensors refuses tensors that share memory, so a tensor that is the same view of the same
  storage as one already written (the LM head tied to the embedding) is written once and its
  name recorded in the file's metadata, from which the loader restores it.
* :func:`export_hf_llama`: a folder that ``transformers.LlamaForCausalLM.from_pretrained``
  loads with the same logits. Our block is Llama's (pre-norm RMSNorm, SwiGLU, RoPE, GQA, no
  biases), so only names and one permutation differ. lmforge's RoPE rotates *adjacent* pairs
  of a head's dims ``(2i, 2i+1)`` (RoFormer, Meta's original Llama); HF's ``rotate_half``
  rotates the *halves* ``(j, j + hd/2)``, both with frequency ``theta^(-2i/hd)`` for pair
  ``i``. We therefore reorder the rows of ``wq`` and ``wk`` within each head to
  ``[0, 2, ..., hd-2, 1, 3, ..., hd-1]``: that permutation ``P`` sends adjacent pair ``i`` to
  half-split pair ``i``, so HF's rotation of ``P q`` is ``P`` applied to our rotation of ``q``.
  Attention only sees ``q · k``, and ``(P q) · (P k) = q · k`` because ``P`` is orthogonal,
  so scores, and with ``wv``/``wo`` untouched the outputs, are unchanged. (This is the inverse
  of the permutation in HF's ``convert_llama_weights_to_hf.py``.) Options that HF's Llama
  cannot express (``qk_norm``, ``logit_softcap``, ``parallel_block``, ``moe``) are refused with a
  ``ValueError`` rather than exported into a model that would compute something else.

We write the HF files ourselves (JSON and safetensors) so that exporting never needs
``transformers`` installed. Every file goes to a temporary name in ``out_dir`` first, is
fsynced and then renamed, so an interrupted export never leaves a half-written file.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from lmforge._atomic import write_atomic_path
from lmforge.model.config import ModelConfig
from lmforge.model.encoder import build_model
from lmforge.model.layers import cast_parameters_, float32_parameter_names
from lmforge.model.transformer import Transformer

if TYPE_CHECKING:
    from lmforge.tokenizer import Tokenizer

__all__ = [
    "adjacent_to_half_rope_rows",
    "check_hf_llama_compatible",
    "export_hf_llama",
    "export_safetensors",
    "hf_llama_config",
    "load_safetensors",
]

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
HF_TOKENIZER_FILE = "tokenizer.json"
HF_TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
_ALIASES_KEY = "lmforge_aliases"

PathLike = str | os.PathLike[str]

# lmforge name -> HF name, per block and for the whole model.
_HF_BLOCK_NAMES = {
    "attention_norm.weight": "input_layernorm.weight",
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "mlp_norm.weight": "post_attention_layernorm.weight",
    "mlp.w1.weight": "mlp.gate_proj.weight",
    "mlp.w3.weight": "mlp.up_proj.weight",
    "mlp.w2.weight": "mlp.down_proj.weight",
}
_HF_MODEL_NAMES = {
    "tok_embeddings.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_HF_UNSUPPORTED = ("qk_norm", "logit_softcap", "parallel_block", "moe")


# ------------------------------------------------------------------------ lmforge safetensors


def export_safetensors(model: nn.Module, out_dir: PathLike) -> Path:
    """Writes ``model``'s weights and config as ``model.safetensors`` + ``config.json``.

    Args:
        model: a :class:`Transformer` (a ``torch.compile`` wrapper around one is accepted).
        out_dir: the folder to write into; created if missing, existing files replaced.

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: ``model`` carries no :class:`ModelConfig` (not an lmforge Transformer).
        OSError: the folder cannot be created or written.
    """
    model = _unwrap(model)
    config = _config_of(model)
    tensors, aliases = _dedup_shared(model.state_dict())
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metadata = {"format": "pt", _ALIASES_KEY: json.dumps(aliases, sort_keys=True)}
    write_atomic_path(out / WEIGHTS_FILE, lambda p: save_file(tensors, p, metadata=metadata))
    _write_json(out / CONFIG_FILE, config.to_dict())
    logger.info("wrote %d tensors to %s", len(tensors), out / WEIGHTS_FILE)
    return out


def load_safetensors(out_dir: PathLike, *, device: str | torch.device = "cpu") -> Transformer:
    """Rebuilds the :class:`Transformer` that :func:`export_safetensors` wrote to ``out_dir``.

    The model's parameters take the dtype they were saved in (when they all share one; an MoE
    router's weight stays float32 beside narrower ones, as in training), and its buffers too
    unless that is narrower than float32.

    Args:
        out_dir: a folder holding ``model.safetensors`` and ``config.json``.
        device: where to put the model.

    Returns:
        The model, in eval mode.

    Raises:
        FileNotFoundError: either file is missing.
        ValueError: an invalid config, or weights that do not fit the model it describes.
    """
    folder = Path(out_dir)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (folder / name).is_file():
            raise FileNotFoundError(
                f"{folder / name} not found; write the folder with export_safetensors"
            )
    config = ModelConfig.load(folder / CONFIG_FILE)
    with safe_open(str(folder / WEIGHTS_FILE), framework="pt", device="cpu") as f:
        metadata = f.metadata() or {}
        state = {key: f.get_tensor(key) for key in f.keys()}
    for alias, source in json.loads(metadata.get(_ALIASES_KEY, "{}")).items():
        state[alias] = state[source]
    model = build_model(config)
    # the parameters take the dtype they were saved in; buffers too, but never narrower than
    # float32 (RoPE's tables and a router's bias stay float32 beside bf16 weights, as in
    # training, and so do the routers' weights: cast_parameters_ keeps them)
    params = set(dict(model.named_parameters())) - float32_parameter_names(model)
    dtypes = {t.dtype for k, t in state.items() if k in params and t.is_floating_point()}
    if len(dtypes) == 1:
        dtype = dtypes.pop()
        if dtype.itemsize >= 4:
            model.to(dtype)
        cast_parameters_(model, dtype)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(
            f"{folder / WEIGHTS_FILE} does not fit the model that {CONFIG_FILE} describes: {err}"
        ) from None
    return model.to(device).eval()


def _dedup_shared(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Contiguous CPU copies of ``state`` with each shared tensor kept once.

    Returns:
        ``(tensors, aliases)``: the tensors to write, and each dropped name -> the written
        name whose tensor it is (same storage, offset, shape and strides).
    """
    tensors: dict[str, Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[Any, ...], str] = {}
    storages: set[tuple[torch.device, int]] = set()
    for name, t in state.items():
        view = (t.device, t.untyped_storage().data_ptr(), t.storage_offset())
        key = (*view, tuple(t.shape), t.stride(), t.dtype)
        if key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        out = t.detach().cpu().contiguous()
        storage = (out.device, out.untyped_storage().data_ptr())
        if storage in storages:  # a different view of memory already written: copy it
            out = out.clone()
        storages.add((out.device, out.untyped_storage().data_ptr()))
        tensors[name] = out
    return tensors, aliases


# ----------------------------------------------------------------------- Hugging Face Llama


def export_hf_llama(
    model: nn.Module, out_dir: PathLike, *, tokenizer: Tokenizer | None = None
) -> Path:
    """Writes a folder that ``transformers.LlamaForCausalLM.from_pretrained`` loads.

    The folder holds ``config.json`` (a ``LlamaConfig``) and ``model.safetensors`` (HF's
    parameter names, ``wq``/``wk`` rows permuted for HF's RoPE layout; see the module
    docstring). With a tokenizer it also holds HF's ``tokenizer.json`` (written by
    :meth:`Tokenizer.save_hf`, which HF's ``tokenizers`` encodes identically) and a
    ``tokenizer_config.json`` so that ``AutoTokenizer.from_pretrained`` finds it.
    ``bos_token_id`` and ``eos_token_id`` are both ``config.eot_id`` (GPT-2's convention: one
    end-of-text token separates documents), or null when it is unset.

    Args:
        model: a :class:`Transformer` (a ``torch.compile`` wrapper around one is accepted).
        out_dir: the folder to write into; created if missing, existing files replaced.
        tokenizer: the model's tokenizer, to export alongside.

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: the config uses an option HF's Llama cannot express (``qk_norm``,
            ``logit_softcap``, ``parallel_block``; the message names it), the model's
            parameters are not the Llama layout, or the tokenizer does not fit the model
            (more tokens than ``vocab_size``, or ``eot_id`` not one of its special tokens).
        OSError: the folder cannot be created or written.
    """
    model = _unwrap(model)
    config = _config_of(model)
    check_hf_llama_compatible(config)
    if tokenizer is not None:
        _check_tokenizer(tokenizer, config)
    tensors = _hf_state_dict(_parameters(model), config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metadata = {"format": "pt"}
    write_atomic_path(out / WEIGHTS_FILE, lambda p: save_file(tensors, p, metadata=metadata))
    dtype = str(tensors["model.embed_tokens.weight"].dtype).removeprefix("torch.")
    _write_json(out / CONFIG_FILE, hf_llama_config(config, dtype=dtype))
    if tokenizer is not None:
        tokenizer.save_hf(out / HF_TOKENIZER_FILE)
        _write_json(out / HF_TOKENIZER_CONFIG_FILE, _hf_tokenizer_config(tokenizer, config))
    logger.info("wrote a Hugging Face Llama folder to %s", out)
    return out


def check_hf_llama_compatible(config: ModelConfig) -> None:
    """Raises ``ValueError`` when ``config`` uses an option HF's ``LlamaForCausalLM`` lacks.

    Raises:
        ValueError: ``qk_norm``, ``logit_softcap``, ``parallel_block`` or ``moe`` is set, the
            model uses MLA or MTP (named in the message), or it is a bidirectional encoder
            (``causal=False``). Training-only options (``z_loss``, ``document_mask``, ...) are
            fine.
    """
    if not config.causal:
        raise ValueError(
            "cannot export a bidirectional encoder (model.causal=false) as a Hugging Face Llama, "
            "a causal LM; use export_safetensors for this model"
        )
    used = [name for name in _HF_UNSUPPORTED if getattr(config, name) not in (None, False)]
    used += ["attention"] if config.attention != "mha" else []
    used += ["mtp_depth"] if config.mtp_depth else []
    if used:
        raise ValueError(
            f"cannot export to Hugging Face Llama: it has no equivalent of "
            f"{', '.join(f'{name}={getattr(config, name)!r}' for name in used)}; "
            "use export_safetensors for this model"
        )


def hf_llama_config(config: ModelConfig, *, dtype: str = "float32") -> dict[str, Any]:
    """The ``LlamaConfig`` (as a JSON object) of a model with ``config``.

    ``rope_theta`` is written both at the top level (transformers 4) and inside
    ``rope_parameters`` (transformers 5), which agree.

    Args:
        config: the lmforge model config.
        dtype: the weights' dtype name, written as ``torch_dtype``.

    Returns:
        The contents of HF's ``config.json``.
    """
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "intermediate_size": config.d_ff,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.context_length,
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "rope_scaling": None,
        "tie_word_embeddings": config.tie_embeddings,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "pretraining_tp": 1,
        "initializer_range": config.init_std,
        "bos_token_id": config.eot_id,
        "eos_token_id": config.eot_id,
        "pad_token_id": None,
        "use_cache": True,
        "torch_dtype": dtype,
    }


def _hf_state_dict(params: dict[str, Tensor], config: ModelConfig) -> dict[str, Tensor]:
    """``params`` (lmforge names) under HF Llama's names, ``wq``/``wk`` rows permuted.

    Raises:
        ValueError: a parameter is missing, or one has no place in HF's Llama.
    """
    names = dict(_HF_MODEL_NAMES)
    if config.tie_embeddings:
        del names["output.weight"]  # HF ties lm_head to embed_tokens itself
    for i in range(config.n_layers):
        for ours, theirs in _HF_BLOCK_NAMES.items():
            names[f"layers.{i}.{ours}"] = f"model.layers.{i}.{theirs}"
    missing, unexpected = sorted(set(names) - set(params)), sorted(set(params) - set(names))
    if missing or unexpected:
        raise ValueError(
            "the model's parameters are not HF Llama's layout: "
            f"missing {missing[:5]}, no HF equivalent for {unexpected[:5]}"
        )
    tensors = {}
    for ours, theirs in names.items():
        t = params[ours].detach().cpu()
        if ours.endswith(("attention.wq.weight", "attention.wk.weight")):
            t = adjacent_to_half_rope_rows(t, config.head_dim)
        tensors[theirs] = t.contiguous()
    return tensors


def adjacent_to_half_rope_rows(weight: Tensor, head_dim: int) -> Tensor:
    """Reorders a query/key projection's rows from adjacent-pair RoPE to half-split RoPE.

    Within each head, output row order becomes ``[0, 2, ..., hd-2, 1, 3, ..., hd-1]``, so
    the pair ``(2i, 2i+1)`` that lmforge rotates together lands on ``(i, i + hd/2)``, the pair
    HF's ``rotate_half`` rotates together (see the module docstring for why logits agree).

    Args:
        weight: a ``(n_heads · head_dim, d_in)`` projection weight (``nn.Linear`` layout).
        head_dim: the width of one head (even).

    Returns:
        A new tensor of the same shape with rows permuted.

    Raises:
        ValueError: the row count is not a multiple of ``head_dim``, or ``head_dim`` is odd.
    """
    rows, d_in = weight.shape
    if head_dim % 2 or rows % head_dim:
        raise ValueError(
            f"a projection with {rows} rows cannot be split into RoPE heads of {head_dim} dims"
        )
    # (head, pair i, member of pair) -> (head, member, pair i): evens first, then odds.
    per_head = weight.reshape(rows // head_dim, head_dim // 2, 2, d_in)
    return per_head.transpose(1, 2).reshape(rows, d_in)


def _parameters(model: nn.Module) -> dict[str, Tensor]:
    """``model``'s parameters by name, a tied LM head dropped (it is the embedding)."""
    params: dict[str, Tensor] = dict(model.named_parameters(remove_duplicate=False))
    head, emb = params.get("output.weight"), params.get("tok_embeddings.weight")
    if head is not None and emb is not None and head is emb:
        del params["output.weight"]
    return params


def _check_tokenizer(tokenizer: Tokenizer, config: ModelConfig) -> None:
    if tokenizer.n_vocab > config.vocab_size:
        raise ValueError(
            f"the tokenizer has {tokenizer.n_vocab} tokens but the model only "
            f"vocab_size={config.vocab_size}: it is not this model's tokenizer"
        )
    if config.eot_id is not None and config.eot_id not in tokenizer.special_tokens.values():
        raise ValueError(
            f"the model's eot_id={config.eot_id} is not a special token of the tokenizer "
            f"(its special tokens: {tokenizer.special_tokens}); is it the model's tokenizer?"
        )


def _hf_tokenizer_config(tokenizer: Tokenizer, config: ModelConfig) -> dict[str, Any]:
    """``tokenizer_config.json``: the fast tokenizer class and the end-of-text token."""
    by_id = {i: text for text, i in tokenizer.special_tokens.items()}
    eot = by_id.get(config.eot_id) if config.eot_id is not None else None
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": eot,
        "eos_token": eot,
        "model_max_length": config.context_length,
        "clean_up_tokenization_spaces": False,
    }


# ------------------------------------------------------------------------------ shared parts


def _unwrap(model: nn.Module) -> nn.Module:
    """The module that ``torch.compile`` wrapped, or ``model`` itself."""
    inner = getattr(model, "_orig_mod", None)
    return inner if isinstance(inner, nn.Module) else model


def _config_of(model: nn.Module) -> ModelConfig:
    config = getattr(model, "config", None)
    if not isinstance(config, ModelConfig):
        raise ValueError(
            f"expected an lmforge Transformer (with a ModelConfig in .config), "
            f"got {type(model).__name__}"
        )
    return config


def _write_json(path: Path, data: dict[str, Any]) -> None:
    text = json.dumps(data, indent=2) + "\n"
    write_atomic_path(path, lambda p: p.write_text(text, encoding="utf-8"))
