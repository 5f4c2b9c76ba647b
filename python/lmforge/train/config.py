"""Run configuration: ``TrainConfig`` and the TOML file that holds a whole run.

A run is described by one TOML file with three tables, one per owner (STYLE: each part receives
only its own config)::

    [model]   # lmforge.model.ModelConfig
    [optim]   # lmforge.optim.OptimConfig
    [train]   # TrainConfig: data, batch, length, evaluation, checkpoints, device

``load_run_config(path, overrides)`` reads it and applies ``--set table.key=value`` overrides
(values are parsed as TOML, so ``--set train.compile=true``, ``--set optim.lr=1e-3`` and
``--set train.train_data="a.bin"`` all work; a bare word falls back to a string; a dotted key
such as ``--set model.moe.top_k=4`` sets a key of a nested table, ``[model.moe]``). The trainer
writes the resolved config back as ``config.toml`` in the run directory, so a run can be
reproduced from its folder alone.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.model.config import ModelConfig
from lmforge.optim import OptimConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "MASTER_OPTIMIZERS",
    "PARAM_DTYPES",
    "STORED_PARAM_DTYPES",
    "RunConfig",
    "TrainConfig",
    "load_model_config",
    "load_run_config",
    "parse_overrides",
    "preset_names",
    "resolve_config",
    "to_toml",
    "toml_value",
]

_PRESETS = Path(__file__).resolve().parent.parent / "configs"

_DTYPES = ("bf16", "fp32")
STORED_PARAM_DTYPES = ("float32", "bfloat16")
"""What ``train.param_dtype`` resolves to: how a run stores its weights."""
PARAM_DTYPES = ("auto", *STORED_PARAM_DTYPES)
"""The values of ``train.param_dtype``."""
MASTER_OPTIMIZERS = ("adamw", "adam")
"""The optimizers that keep float32 master weights, which ``train.param_dtype = "bfloat16"``
needs."""
_STRATEGIES = ("ddp", "fsdp")
_CHECKPOINT_FORMATS = ("auto", "torch", "dcp")
_COMPILE_MODES = (
    "auto",
    "default",
    "reduce-overhead",
    "max-autotune",
    "max-autotune-no-cudagraphs",
)
GRAPH_MODES = ("reduce-overhead", "max-autotune")
"""The ``torch.compile`` modes that replay CUDA graphs."""
_OBJECTIVES = ("clm", "mlm")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """How to train: data, batch, length, evaluation, checkpoints and the device.

    Attributes:
        train_data: the training token file (``train.bin``, with its ``.json`` header), or a
            list of them to train on a mixture (languages, domains; see
            :class:`~lmforge.data.mixture.MixtureSampler`).
        mixture_alpha: with several training files, draw file ``i`` with probability
            ``n_i^alpha / sum_j n_j^alpha`` for sizes ``n_i`` in tokens: 1 (the default) is
            proportional to size, 0.3 up-samples small files as XLM-R and mT5 do, 0 is uniform.
        mixture_weights: explicit sampling weights, one per training file, instead of
            ``mixture_alpha``.
        val_data: a validation token file; ``None`` skips evaluation.
        tokenizer: the tokenizer JSON that made the token files: copied into the run folder,
            checked against the token files' fingerprint, used for bits per byte and samples.
        out_dir: the run directory (``config.toml``, ``metrics.jsonl``, ``ckpt-STEP/``, plots).
        batch_size: sequences per micro-batch, per process.
        grad_accum: micro-batches per optimizer step, per process. Under ``torchrun`` with
            ``N`` processes the global batch is ``batch_size * grad_accum * N`` sequences, the
            same windows as one process with ``grad_accum * N``.
        max_iters: optimizer steps; ``None`` means derive it from ``epochs``.
        epochs: passes over the training tokens (tokens seen / tokens in the file); used when
            ``max_iters`` is ``None``.
        seed: seeds every RNG (Python, NumPy, torch) and the data sampler.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        dtype: ``"bf16"`` (CUDA autocast to bf16, over weights stored as ``param_dtype``
            says) or ``"fp32"``.
        param_dtype: how the model's weights are stored: ``"auto"`` (default), ``"float32"``
            or ``"bfloat16"`` — every weight in bf16, the dtype the matmuls compute in under
            ``dtype = "bf16"``, with AdamW/Adam keeping a float32 master copy of each, so no
            weight is cast at each step and weight gradients are bf16 (faster, less memory,
            the same validation loss; measured in ``benches/NOTES-model.md``). ``"bfloat16"``
            needs ``dtype = "bf16"`` and ``optim.name`` ``"adamw"`` or ``"adam"``; on the CPU
            the model then computes in bf16. ``"auto"`` is ``"bfloat16"`` where all of that
            holds for one process on CUDA, else ``"float32"`` (the CPU computes in float32;
            several processes average gradients in the weights' dtype; FSDP needs float32),
            and on resume the run's own value. The trainer writes the resolved value into the
            run's config. Checkpoints hold the bf16 weights (they load into float32 models for
            sampling, evaluation and export) and the float32 masters.
        compile: ``torch.compile`` the model.
        compile_mode: ``torch.compile``'s mode: ``"auto"`` (``"reduce-overhead"`` where it
            applies — one process on CUDA, ``grad_accum = 1``, a causal LM that is dense or a
            dropless token-choice MoE — else
            ``"default"``), ``"default"``, ``"reduce-overhead"`` (the forward and backward
            replayed as CUDA graphs: no per-kernel launch cost, which bounds small models; one
            process, ``grad_accum = 1``), ``"max-autotune"`` (CUDA graphs and tuned matmuls;
            same limits) or ``"max-autotune-no-cudagraphs"``.
        strategy: with several processes (``torchrun``), ``"ddp"`` (replicated model,
            averaged gradients) or ``"fsdp"`` (FSDP2 sharding per block); ignored alone.
        log_interval: steps between metric lines (each one synchronises the device).
        eval_interval: steps between evaluations (and at the end); 0 disables.
        eval_batches: validation batches per evaluation.
        ckpt_interval: steps between checkpoints (and at the end); 0 keeps only the final one.
        keep_checkpoints: how many ``ckpt-STEP/`` folders to keep (newest first); 0 keeps all.
        checkpoint_format: ``"auto"`` (sharded under FSDP with several processes, a plain
            ``checkpoint.pt`` otherwise), ``"torch"`` (always one ``checkpoint.pt``, FSDP's
            shards gathered onto rank 0) or ``"dcp"`` (always ``torch.distributed.checkpoint``:
            each rank writes its shards; :mod:`lmforge.train.dcp_checkpoint`). Either format
            resumes in any world size and loads in ``lmforge sample/eval/export``.
        sample_tokens: at the end of training, sample this many tokens (0 skips; ignored with
            ``objective = "mlm"``: an encoder does not generate).
        objective: ``"clm"`` (default): next-token prediction with the causal
            :class:`~lmforge.model.Transformer`; ``"mlm"``: masked language modelling with the
            bidirectional :class:`~lmforge.model.Encoder` (BERT), which sets ``model.causal``
            to false and needs ``tokenizer`` with ``[CLS]`` and ``[MASK]``
            (:mod:`lmforge.data.mlm`: each window is ``[CLS]`` + its first ``T - 1`` tokens).
        mlm_probability: with ``objective = "mlm"``, the share of (non-special) tokens
            selected as targets: 80% become ``[MASK]``, 10% a random token, 10% stay.
        init_from: start a new run from the weights of this run directory or checkpoint (a
            dense one is upcycled when ``model.moe`` is set; see
            :mod:`lmforge.train.init_weights`); ignored when resuming.
        progress: show a progress bar.
        tensorboard: also log to TensorBoard (if installed).
        wandb: also log to Weights & Biases (if installed).
    """

    train_data: str | list[str]
    mixture_alpha: float | None = None
    mixture_weights: list[float] | None = None
    val_data: str | None = None
    tokenizer: str | None = None
    out_dir: str = "runs/run"
    batch_size: int = 32
    grad_accum: int = 1
    max_iters: int | None = None
    epochs: float | None = None
    seed: int = 1337
    device: str = "auto"
    dtype: str = "bf16"
    param_dtype: str = "auto"
    compile: bool = False
    compile_mode: str = "auto"
    strategy: str = "ddp"
    log_interval: int = 10
    eval_interval: int = 250
    eval_batches: int = 20
    ckpt_interval: int = 1000
    keep_checkpoints: int = 2
    checkpoint_format: str = "auto"
    sample_tokens: int = 0
    objective: str = "clm"
    mlm_probability: float = 0.15
    init_from: str | None = None
    progress: bool = True
    tensorboard: bool = False
    wandb: bool = False

    @property
    def cuda_graphs(self) -> bool:
        """Whether ``compile_mode`` asks for CUDA graphs explicitly (``"auto"`` decides in the
        trainer, where the world size is known)."""
        return self.compile and self.compile_mode in GRAPH_MODES

    def __post_init__(self) -> None:
        paths = self.train_paths
        if not paths or not all(isinstance(p, str) and p for p in paths):
            raise ValueError(
                "train.train_data must be the path of a token file (train.bin) or a list of them"
            )
        if len(set(paths)) != len(paths):
            raise ValueError(
                f"train.train_data lists a file twice ({paths}); give it a larger "
                "train.mixture_weights entry instead"
            )
        if self.mixture_alpha is not None or self.mixture_weights is not None:
            from lmforge.data.mixture import mixture_weights  # torch only for a mixture

            try:  # the alpha and weights checks; the real sizes come with the files
                mixture_weights([1] * len(paths), self.mixture_alpha, self.mixture_weights)
            except ValueError as err:
                raise ValueError(f"train.mixture_alpha / train.mixture_weights: {err}") from None
        for name in ("batch_size", "grad_accum", "log_interval", "eval_batches"):
            _check_int(name, getattr(self, name), minimum=1)
        for name in ("eval_interval", "ckpt_interval", "keep_checkpoints", "sample_tokens"):
            _check_int(name, getattr(self, name), minimum=0)
        _check_int("seed", self.seed, minimum=0)
        if self.max_iters is None and self.epochs is None:
            raise ValueError("set train.max_iters (optimizer steps) or train.epochs")
        if self.max_iters is not None:
            _check_int("max_iters", self.max_iters, minimum=1)
        if self.epochs is not None and not (
            isinstance(self.epochs, (int, float)) and math.isfinite(self.epochs) and self.epochs > 0
        ):
            raise ValueError(f"train.epochs must be a positive number, got {self.epochs!r}")
        if self.dtype not in _DTYPES:
            raise ValueError(f"train.dtype must be one of {_DTYPES}, got {self.dtype!r}")
        if self.param_dtype not in PARAM_DTYPES:
            raise ValueError(
                f"train.param_dtype must be one of {PARAM_DTYPES}, got {self.param_dtype!r}"
            )
        if self.param_dtype == "bfloat16" and self.dtype != "bf16":
            raise ValueError(
                f'train.param_dtype = "{self.param_dtype}" computes in that dtype: set '
                'train.dtype = "bf16" (or train.param_dtype = "float32")'
            )
        if self.strategy not in _STRATEGIES:
            raise ValueError(f"train.strategy must be one of {_STRATEGIES}, got {self.strategy!r}")
        if self.checkpoint_format not in _CHECKPOINT_FORMATS:
            raise ValueError(
                f"train.checkpoint_format must be one of {_CHECKPOINT_FORMATS}, "
                f"got {self.checkpoint_format!r}"
            )
        if self.compile_mode not in _COMPILE_MODES:
            raise ValueError(
                f"train.compile_mode must be one of {_COMPILE_MODES}, got {self.compile_mode!r}"
            )
        if self.cuda_graphs and self.grad_accum != 1:
            raise ValueError(
                f"train.compile_mode={self.compile_mode} replays CUDA graphs, whose gradients "
                "cannot accumulate over micro-batches: set train.grad_accum=1 (and a larger "
                "train.batch_size), or train.compile_mode=default"
            )
        if self.objective not in _OBJECTIVES:
            raise ValueError(
                f"train.objective must be one of {_OBJECTIVES}, got {self.objective!r}"
            )
        if not (isinstance(self.mlm_probability, (int, float)) and 0 < self.mlm_probability < 1):
            raise ValueError(
                f"train.mlm_probability must be a number in (0, 1), got {self.mlm_probability!r}"
            )
        if self.objective == "mlm" and not self.tokenizer:
            raise ValueError(
                'train.objective = "mlm" needs train.tokenizer (its [CLS] and [MASK] ids): pass '
                "--tokenizer tokenizer.json"
            )
        if self.init_from is not None and (
            not isinstance(self.init_from, str) or not self.init_from
        ):
            raise ValueError(
                f"train.init_from must be the path of a run or checkpoint, got {self.init_from!r}"
            )
        if not isinstance(self.device, str) or not self.device:
            raise ValueError(f"train.device must be a string such as 'cuda', got {self.device!r}")

    @property
    def train_paths(self) -> list[str]:
        """The training token files: ``train_data`` as a list."""
        data = self.train_data
        return [data] if isinstance(data, str) else list(data) if isinstance(data, list) else []

    @property
    def tokens_per_step(self) -> int:
        """Tokens per optimizer step of one process, before multiplying by the world size."""
        return self.batch_size * self.grad_accum


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """A whole run: the model, the optimizer and the training configs.

    ``train.objective = "mlm"`` makes ``model.causal`` false (the model is then an
    :class:`~lmforge.model.Encoder`); a non-causal model with ``objective = "clm"`` is refused.
    """

    model: ModelConfig
    optim: OptimConfig
    train: TrainConfig

    def __post_init__(self) -> None:
        # the objective decides the attention: "mlm" trains the bidirectional encoder
        if self.train.objective == "mlm" and self.model.causal:
            object.__setattr__(self, "model", dataclasses.replace(self.model, causal=False))
        elif self.train.objective == "clm" and not self.model.causal:
            raise ValueError(
                "model.causal = false is a bidirectional encoder: train it with "
                'train.objective = "mlm"'
            )
        if self.train.param_dtype == "bfloat16" and self.optim.name not in MASTER_OPTIMIZERS:
            raise ValueError(
                f'train.param_dtype = "{self.train.param_dtype}" needs float32 master weights, '
                f"which only adamw and adam keep, not optim.name = {self.optim.name!r}: change "
                'one or set train.param_dtype = "float32"'
            )

    def resolve_param_dtype(
        self, device_type: str, world_size: int, saved: str | None = None
    ) -> RunConfig:
        """This config with ``train.param_dtype = "auto"`` made what a run stores its weights in.

        ``"auto"`` becomes ``saved`` when given (a resumed run keeps its weights' dtype), else
        ``"bfloat16"`` for one process on CUDA with ``train.dtype = "bf16"`` and AdamW or Adam
        (which keep float32 masters), else ``"float32"``. Explicit values stay as they are.

        Raises:
            ValueError: ``saved`` is ``"bfloat16"`` and this config cannot train bf16 weights
                (``train.dtype = "fp32"``, an optimizer without masters, or FSDP).

        Args:
            device_type: the run's device type (``"cuda"``, ``"cpu"``).
            world_size: the run's processes.
            saved: the resolved ``param_dtype`` of the run being resumed, if known.
        """
        tc = self.train
        if tc.param_dtype != "auto":
            return self
        fast = device_type == "cuda" and world_size == 1 and tc.dtype == "bf16"
        fast &= self.optim.name in MASTER_OPTIMIZERS
        resolved = saved or ("bfloat16" if fast else "float32")
        if saved == "bfloat16":
            reasons = [f"train.dtype = {tc.dtype!r}"] if tc.dtype != "bf16" else []
            if self.optim.name not in MASTER_OPTIMIZERS:
                reasons.append(f"optim.name = {self.optim.name!r} keeps no float32 masters")
            if world_size > 1 and tc.strategy == "fsdp":
                reasons.append("FSDP needs float32 weights")
            if reasons:
                raise ValueError(
                    "this run stores its weights in bfloat16 (its config.toml records "
                    'train.param_dtype = "bfloat16"), which train.param_dtype = "auto" '
                    f"keeps on resume, but {'; '.join(reasons)}: resume it with "
                    'train.dtype = "bf16", AdamW or Adam and no FSDP, or start a new run from it '
                    "with train.init_from"
                )
        return dataclasses.replace(self, train=dataclasses.replace(tc, param_dtype=resolved))

    def stored_weights(self) -> str:
        """How a run with this (resolved) config stores its weights, for logs: e.g.
        ``"bfloat16"``, or ``"float32 (routed experts bfloat16)"`` with ``moe.expert_dtype``."""
        moe, stored = self.model.moe, self.train.param_dtype
        if moe is not None and stored == "float32" != moe.expert_dtype:
            return f"{stored} (routed experts {moe.expert_dtype})"
        return stored

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """``{"model": ..., "optim": ..., "train": ...}``."""
        return {
            "model": self.model.to_dict(),
            "optim": self.optim.to_dict(),
            "train": dataclasses.asdict(self.train),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """Build from nested tables; unknown tables or keys raise ``ValueError``."""
        unknown = sorted(set(data) - {"model", "optim", "train"})
        if unknown:
            raise ValueError(f"unknown config table(s) {unknown}; use [model], [optim], [train]")
        for table in ("model", "train"):
            if table not in data:
                raise ValueError(f"the config has no [{table}] table")
        return cls(
            model=ModelConfig.from_dict(dict(data["model"])),
            optim=OptimConfig.from_dict(dict(data.get("optim", {}))),
            train=_train_from_dict(dict(data["train"])),
        )


def _train_from_dict(data: dict[str, Any]) -> TrainConfig:
    if "train_data" not in data:
        raise ValueError(
            "no training data: pass --data train.bin (or set train.train_data in the config)"
        )
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown [train] key(s) {unknown}; known keys: {sorted(known)}")
    return TrainConfig(**data)


def parse_overrides(overrides: list[str]) -> dict[str, dict[str, Any]]:
    """Parse ``table.key=value`` strings into nested tables (``table.sub.key=value`` sets
    ``key`` of the sub-table ``sub``, e.g. ``model.moe.top_k=4``).

    A dotted key goes into a nested table: ``model.mla.kv_lora_rank=64`` →
    ``{"model": {"mla": {"kv_lora_rank": 64}}}``.

    Raises:
        ValueError: an override without ``=`` or without a ``table.`` prefix.
    """
    out: dict[str, dict[str, Any]] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        table, dot, name = key.strip().partition(".")
        if not sep or not dot or not table or not name or "" in name.split("."):
            raise ValueError(f"--set {item!r}: expected table.key=value, e.g. --set optim.lr=1e-3")
        *parents, leaf = name.split(".")
        node = out.setdefault(table, {})
        for parent in parents:
            node = node.setdefault(parent, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {item!r}: {parent!r} is set as a value and a table")
        node[leaf] = _parse_value(raw.strip())
    return out


def _merge(base: dict[str, Any], updates: dict[str, Any]) -> None:
    """Update ``base`` in place; nested tables are merged key by key, not replaced."""
    for key, value in updates.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def _parse_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw  # a bare word: a path or a name


def preset_names() -> list[str]:
    """The bundled presets (``lmforge/configs/*.toml``), e.g. ``stories-17M``."""
    return sorted(p.stem for p in _PRESETS.glob("*.toml"))


def resolve_config(name_or_path: str | os.PathLike[str]) -> Path:
    """A config file path, or the path of a bundled preset named ``name_or_path``.

    Raises:
        FileNotFoundError: neither a file nor a preset; the message lists the presets.
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    preset = _PRESETS / f"{path.name.removesuffix('.toml')}.toml"
    if path.parent == Path(".") and preset.is_file():
        return preset
    raise FileNotFoundError(
        f"config {os.fspath(name_or_path)!r} is neither a file nor a preset; "
        f"presets: {', '.join(preset_names())}"
    )


def load_run_config(
    path: str | os.PathLike[str] | None, overrides: list[str] | None = None
) -> RunConfig:
    """Read a run config TOML and apply ``--set`` overrides.

    Args:
        path: a TOML file or the name of a bundled preset (:func:`preset_names`); ``None``
            builds the config from the overrides alone.
        overrides: ``table.key=value`` strings applied on top.

    Raises:
        FileNotFoundError: no such file.
        ValueError: invalid TOML, unknown keys or invalid values.
    """
    data: dict[str, Any] = {}
    if path is not None:
        p = resolve_config(path)
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"{p}: invalid TOML ({err})") from None
    _merge(data, parse_overrides(overrides or []))
    return RunConfig.from_dict(data)


def load_model_config(
    path: str | os.PathLike[str], overrides: list[str] | None = None
) -> ModelConfig:
    """Only the ``[model]`` table of a run config or preset, with ``model.key=value`` (or bare
    ``key=value``, ``moe.key=value``) overrides: for tools that need the shape but no data.

    Raises:
        FileNotFoundError: neither a file nor a preset.
        ValueError: invalid TOML, no ``[model]`` table, or invalid values.
    """
    p = resolve_config(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{p}: invalid TOML ({err})") from None
    if "model" not in data:
        raise ValueError(f"{p} has no [model] table")
    tables = ("model", "optim", "train")  # other keys are model's: d_model=.., moe.top_k=..
    items = [o if o.split(".")[0] in tables else f"model.{o}" for o in overrides or []]
    table = dict(data["model"])
    for name, values in parse_overrides(items).items():
        if name != "model":
            raise ValueError(f"only model.* values can be set here, got [{name}]")
        _merge(table, values)
    return ModelConfig.from_dict(table)


def to_toml(config: RunConfig) -> str:
    """The config as TOML text (``None`` values are left out: they mean the default; a nested
    table such as ``model.moe`` follows its parent as ``[model.moe]``)."""
    lines: list[str] = []
    for table, values in config.to_dict().items():
        _toml_table(table, values, lines)
    return "\n".join(lines)


def _toml_table(name: str, values: dict[str, Any], lines: list[str]) -> None:
    lines.append(f"[{name}]")
    for key, value in values.items():
        if value is not None and not isinstance(value, dict):
            lines.append(f"{key} = {toml_value(value)}")
    lines.append("")
    for key, value in values.items():
        if isinstance(value, dict):
            _toml_table(f"{name}.{key}", value, lines)


def toml_value(value: Any) -> str:
    """One value written as TOML (a string quoted and escaped, a list in brackets, a dict as an
    inline table without its ``None`` values)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(float(value)) if isinstance(value, float) else str(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        items = (f"{k} = {toml_value(v)}" for k, v in value.items() if v is not None)
        return "{" + ", ".join(items) + "}"
    raise TypeError(f"cannot write {value!r} as TOML")


def _check_int(name: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"train.{name} must be an integer >= {minimum}, got {value!r}")
