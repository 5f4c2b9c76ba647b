"""The training loop: a run config in, a trained model and a run directory out.

One ``Trainer`` owns one run: it opens the token files (checking their headers against the model
and the tokenizer), builds the model and optimizer, and steps through the seeded window sampler
with gradient accumulation, clipping and the learning-rate schedule. Design choices:

- **One file or a mixture, one code path.** The sampler is a
  :class:`~lmforge.data.mixture.MixtureSampler` over the training files (weights from their
  sizes and ``mixture_alpha``, or ``mixture_weights``); with one file its stream is exactly the
  ``WindowSampler``'s, so single-file runs and their checkpoints are unchanged. With several,
  the realised mixture (``mix/<file>``, the fraction of windows drawn from each) and each
  file's epochs (``epoch/<file>``) are logged with the loss.

- **No device sync per step.** The loss is accumulated on the device and read only every
  ``log_interval`` steps (and before a checkpoint), so the host runs ahead of the GPU. That is
  also where non-finite losses are caught: training stops with a clear error, and since a
  checkpoint is written only after that check passes, the last checkpoint is a good one.
- **Exact resume.** The checkpoint holds the model, the optimizer, every RNG state and the
  sampler position (a step counter: the windows of step ``s`` are a function of the seed and
  ``s``), so a resumed run continues with bit-identical losses on the CPU.
- **The model–trainer contract.** ``model(x, y, return_logits=False)`` returns ``loss``,
  ``losses`` and ``metrics``; after every optimizer step the trainer calls
  ``model.after_optimizer_step()`` (MoE bias balancing lives behind it). The trainer never
  reaches inside the model.
- **Two objectives, one loop.** ``train.objective = "clm"`` trains the causal
  :class:`~lmforge.model.Transformer` on ``(x, y)`` shifted windows; ``"mlm"`` trains the
  bidirectional :class:`~lmforge.model.Encoder` on the same windows masked by
  :class:`~lmforge.train.mlm.MLMObjective` (``y`` = the masked tokens, ``-100`` elsewhere), and
  evaluates masked-token loss and accuracy. Everything else (sampler, accumulation, clipping,
  checkpoints, resume, DDP/FSDP) is shared.
- **Data parallel under torchrun.** ``torchrun --nproc-per-node=N -m lmforge train`` runs
  this same loop in ``N`` processes (:mod:`lmforge.train.distributed`: DDP or FSDP2, each rank
  its slice of every global batch); rank 0 alone logs and writes the run directory, and the
  loss, non-finite flags and checkpoint decisions are reduced over ranks at log time. Under
  FSDP every rank writes its own shards of a checkpoint (``torch.distributed.checkpoint``,
  :mod:`lmforge.train.dcp_checkpoint`); either format resumes in any world size.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmforge import accounting
from lmforge.data import MixtureSampler, gather_mixture_batch
from lmforge.model import Encoder, build_model
from lmforge.optim import Adam, build_optimizer, clip_coefficient, clip_grad_norm_, lr_at, set_lr
from lmforge.optim._common import LOW_PRECISION
from lmforge.train import distributed as ddp
from lmforge.train.artifacts import generate_text
from lmforge.train.checkpoint import (
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from lmforge.train.config import GRAPH_MODES, RunConfig, to_toml
from lmforge.train.data_files import (
    mixture_line,
    open_run_data,
    source_names,
    train_eot_id,
    with_data_eot_id,
)
from lmforge.train.dcp_checkpoint import STATE_FILE, is_dcp, load_sharded, save_sharded
from lmforge.train.evaluate import EvalResult, evaluate, token_byte_lengths
from lmforge.train.grad_sums import Float32GradSums
from lmforge.train.init_weights import load_initial_weights
from lmforge.train.meter import StepWindow, max_memory_gb, peak_flops
from lmforge.train.metrics import MetricsLogger, NullLogger
from lmforge.train.mlm import MLMObjective
from lmforge.train.resume import (
    apply_hyperparameters,
    check_resumable,
    hyperparameters,
    saved_param_dtype,
)
from lmforge.train.run_dir import CHECKPOINT_FILE, RunDir, write_text_atomic
from lmforge.train.runtime import (
    autocast_dtype,
    autocast_for,
    oom_message,
    over_memory_message,
    run_memory_estimate,
    seed_everything,
    store_weights,
)

__all__ = ["TrainResult", "Trainer", "TrainingError"]

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training cannot go on: a non-finite loss, or the GPU ran out of memory."""


@dataclass(frozen=True)
class TrainResult:
    """What a finished run reports.

    Attributes:
        run_dir: the run directory.
        iterations: optimizer steps taken in total (a resumed run counts earlier ones).
        tokens: training tokens seen in total.
        train_loss: mean training loss over the last logging interval.
        val: the final evaluation, when there is validation data.
        seconds: wall time of this call to :meth:`Trainer.fit`.
    """

    run_dir: Path
    iterations: int
    tokens: int
    train_loss: float
    val: EvalResult | None
    seconds: float


def resolve_compile_mode(config: RunConfig, world_size: int, device_type: str) -> str | None:
    """``torch.compile``'s mode for ``train.compile_mode`` (``None``: the default).

    ``"auto"`` replays CUDA graphs (``"reduce-overhead"``) where they are known to apply and to
    pay off: one process on CUDA, no gradient accumulation, a causal LM whose MLPs are dense or
    dropless token-choice Mixture-of-Experts (softmax or sigmoid router: a GPU test trains one
    under graphs like the default compile, loss-free bias updates included; +0.3–0.6 MFU points
    at ``gpt2-124M`` size on an H200). Expert-choice, hash and capacity routing and the
    masked-LM objective run without them until measured.
    """
    tc, mc = config.train, config.model
    if tc.compile_mode == "auto":
        moe_ok = mc.moe is None or (
            mc.moe.router in ("token_choice", "sigmoid") and mc.moe.capacity_factor is None
        )
        simple = moe_ok and tc.objective == "clm" and tc.grad_accum == 1
        graphs = simple and world_size == 1 and device_type == "cuda"
        return "reduce-overhead" if graphs else None
    return None if tc.compile_mode == "default" else tc.compile_mode


class Trainer:
    """Trains the model of a :class:`RunConfig` on its token files.

    Args:
        config: model, optimizer and training configs.
        resume: continue from the newest checkpoint in ``config.train.out_dir`` (an error if
            there is none); without it the run directory must be new or empty.

    Raises:
        ValueError: the data does not fit the model or tokenizer, or the run directory holds
            another run and ``resume`` is off.
    """

    def __init__(self, config: RunConfig, *, resume: bool = False) -> None:
        tc, mc = config.train, config.model
        self.dist = ctx = ddp.setup(tc.device)
        self.device = ctx.device
        self.amp_dtype = autocast_dtype(tc.dtype, self.device)
        seed_everything(tc.seed)
        self.tokenizer = _load_tokenizer(tc.tokenizer)
        fingerprint = self.tokenizer.fingerprint if self.tokenizer is not None else None
        self.train_files, self.val_file = open_run_data(tc, mc, fingerprint)
        self.config = config = with_data_eot_id(config, train_eot_id(self.train_files))
        # train.param_dtype "auto" -> what the weights are stored in (a resumed run: its own)
        run_dir = RunDir(tc.out_dir)
        saved = saved_param_dtype(run_dir.config_path) if resume and run_dir.latest() else None
        self.config = config = config.resolve_param_dtype(self.device.type, ctx.world_size, saved)
        chosen = " (train.param_dtype auto)" if tc.param_dtype == "auto" else ""
        tc = config.train
        compute = "bf16 autocast" if self.amp_dtype is not None else tc.param_dtype
        self.precision = f"weights {config.stored_weights()}{chosen}; compute {compute}"
        self.mlm = (
            MLMObjective.from_tokenizer(self.tokenizer, tc.mlm_probability, tc.seed)
            if tc.objective == "mlm"
            else None
        )
        self.model = build_model(config.model).to(self.device)
        store_weights(self.model, tc.param_dtype)
        if tc.init_from and not (resume and RunDir(tc.out_dir).latest()):
            load_initial_weights(self.model, tc.init_from)  # a dense run is upcycled to MoE
        kinds = self.model.param_kinds()
        self.wrapped = ddp.wrap_model(self.model, ctx, tc.strategy, self.amp_dtype)
        self.sharded = ctx.distributed and tc.strategy == "fsdp"
        if self.sharded and config.optim.name == "muon":  # Newton-Schulz needs whole matrices
            raise ValueError("optim.name=muon does not work on FSDP shards: use train.strategy=ddp")
        self.optimizer = build_optimizer(  # after sharding: FSDP's parameters are new DTensors
            [(p, kinds[name]) for name, p in self.model.named_parameters()], config.optim
        )
        # micro-batches' gradients of bf16 weights add up in float32 (lmforge.train.grad_sums)
        self.grad_sums = Float32GradSums(self.model.parameters()) if tc.grad_accum > 1 else None
        low = sorted({str(p.dtype).removeprefix("torch.") for p in self.model.parameters()
                      if p.dtype in LOW_PRECISION})  # fmt: skip
        if low and ctx.is_main and ctx.distributed:
            log.warning(
                "weights stored in %s (train.param_dtype or moe.expert_dtype): the %d ranks' "
                "gradients are averaged in that dtype (float32 weights: float32)",
                low[0], ctx.world_size,
            )  # fmt: skip
        self.global_batch = tc.batch_size * tc.grad_accum * ctx.world_size
        self.tokens_per_step = self.global_batch * mc.context_length
        self.sampler = MixtureSampler(
            [len(f) for f in self.train_files],
            mc.context_length,
            self.global_batch,
            tc.seed,
            alpha=tc.mixture_alpha,
            weights=tc.mixture_weights,
            grad_accum=tc.grad_accum,
            rank=ctx.rank,
            world_size=ctx.world_size,
        )
        self.max_iters = tc.max_iters or max(
            1, math.ceil((tc.epochs or 1.0) * self.sampler.n_tokens / self.tokens_per_step)
        )
        try:
            lr_at(config.optim, 0, self.max_iters)  # schedule errors now, not at step one
        except ValueError as err:
            raise ValueError(f"{err}: lower optim.warmup_iters or train more steps") from None
        if self.sampler.n_sources > 1 and ctx.is_main:
            log.info("data mixture: %s", mixture_line(tc.train_paths, self.sampler.weights))
        # rank 0 checks and creates the folder; the others wait, then open it as it is
        ddp.on_main(ctx, lambda: RunDir.create(tc.out_dir, resume=resume))
        self.run_dir = RunDir(tc.out_dir)
        self.iteration = 0
        latest = self.run_dir.latest() if resume else None
        if latest is not None:
            self._resume(latest)
        elif resume:
            log.warning("%s has no checkpoint yet: starting the run afresh", self.run_dir.path)
        ddp.on_main(ctx, self._write_run_files)
        if tc.cuda_graphs and ctx.world_size > 1:
            raise ValueError(
                f"train.compile_mode={tc.compile_mode} captures CUDA graphs, which the gradient "
                "hooks of DDP/FSDP cannot run in: use train.compile_mode=default under torchrun"
            )
        mode = resolve_compile_mode(self.config, ctx.world_size, self.device.type)
        self.cuda_graphs = tc.compile and mode in GRAPH_MODES
        self.cuda_graphs &= self.device.type == "cuda"
        self.step_model = torch.compile(self.wrapped, mode=mode) if tc.compile else self.wrapped
        self.token_bytes = (
            token_byte_lengths(self.tokenizer, mc.vocab_size) if self.tokenizer else None
        )
        # set on the device when a gradient norm is not finite; read only with the loss
        self._bad_grad = torch.zeros((), dtype=torch.bool, device=self.device)

    def _write_run_files(self) -> None:
        write_text_atomic(self.run_dir.path / "config.toml", to_toml(self.config))
        if self.config.train.tokenizer:
            shutil.copyfile(self.config.train.tokenizer, self.run_dir.path / "tokenizer.json")

    def _resume(self, latest: Path) -> None:
        settings = hyperparameters(self.optimizer)
        state: dict[str, Any] = {}
        # map to the CPU: load_state_dict moves moments onto the parameters' device and keeps
        # the step counters on the CPU (on the GPU each would cost a sync per step)
        if is_dcp(latest):  # each rank reads its own shards (any world size, or alone)
            data = read_checkpoint(latest / STATE_FILE)
            load_sharded(latest, self.model, self.optimizer)
            set_rng_state(data["rng"])
            self.iteration, state = int(data["iteration"]), dict(data["state"])
        elif self.sharded:  # the full state, sharded onto the ranks
            data = read_checkpoint(latest / CHECKPOINT_FILE)
            ddp.load_full_state(self.model, self.optimizer, data["model"], data["optimizer"])
            set_rng_state(data["rng"])
            self.iteration, state = int(data["iteration"]), dict(data["state"])
        else:
            self.iteration = load_checkpoint(
                latest / CHECKPOINT_FILE, self.model, self.optimizer, state=state
            )
        changed = check_resumable(
            state.get("config"),
            self.config,
            saved_world_size=int(state.get("world_size", 1)),
            world_size=self.dist.world_size,
        )
        apply_hyperparameters(self.optimizer, settings)
        if changed:
            log.info("resuming with changed optimizer settings: %s", "; ".join(changed))
        self.sampler.load_state_dict(state["sampler"])
        log.info("resumed from %s at step %d", latest, self.iteration)

    def fit(self) -> TrainResult:
        """Train until ``max_iters``, evaluating, logging and checkpointing on the way.

        Raises:
            TrainingError: a non-finite loss or gradient, or CUDA out of memory.
        """
        tc = self.config.train
        if self.dist.is_main:
            log.info("%s", accounting.shape_report(self.config.model))
            log.info("precision: %s", self.precision)
            if self.device.type == "cuda":
                est = run_memory_estimate(self.config)
                log.info(
                    "memory model: peak %s a process (parameters %s, gradients %s, optimizer "
                    "state %s, saved activations %s; `lmforge memory` for the breakdown)",
                    *map(accounting.format_bytes, (est.total, est.parameters, est.gradients,
                                                   est.optimizer_state, est.activations)),
                )  # fmt: skip
                # the estimate is of an unsharded process: FSDP's shards need less
                free, _ = torch.cuda.mem_get_info(self.device)
                have = free + torch.cuda.memory_reserved(self.device)
                if not self.sharded and (warning := over_memory_message(est, have)):
                    log.warning("%s", warning)
        t0 = time.perf_counter()
        window = StepWindow(self.device)
        val, train_loss = None, math.nan
        logger = (
            MetricsLogger(
                self.run_dir.path / "metrics.jsonl",
                tqdm_total=self.max_iters,
                initial=self.iteration,
                progress=tc.progress,
                tensorboard=tc.tensorboard,
                wandb=tc.wandb,
            )
            if self.dist.is_main
            else NullLogger()
        )
        with logger:
            while self.iteration < self.max_iters:
                lr = set_lr(self.optimizer, self.config.optim, self.iteration, self.max_iters)
                window.add(*self._step())
                self.iteration += 1
                it, last = self.iteration, self.iteration == self.max_iters
                if it % tc.log_interval == 0 or last:
                    train_loss = self._log_train(logger, window, lr)
                if (
                    self.val_file is not None
                    and tc.eval_interval
                    and (it % tc.eval_interval == 0 or last)
                ):
                    with window.pause():
                        val = self._evaluate()
                        logger.log(
                            it,
                            tokens=it * self.tokens_per_step,
                            val_loss=val.loss,
                            val_bpb=val.bits_per_byte,
                            val_ppl=val.perplexity,
                            **_accuracy(val),
                        )
                if (tc.ckpt_interval and it % tc.ckpt_interval == 0) or last:
                    with window.pause():
                        self._check_finite(window)
                        self._save()
        self._finish()
        return TrainResult(
            run_dir=self.run_dir.path,
            iterations=self.iteration,
            tokens=self.iteration * self.tokens_per_step,
            train_loss=train_loss,
            val=val,
            seconds=time.perf_counter() - t0,
        )

    def _log_train(
        self, logger: MetricsLogger | NullLogger, window: StepWindow, lr: float
    ) -> float:
        """Write one metrics line for the steps since the last one; returns their mean loss."""
        ce, seconds = self._check_finite(window), window.seconds()
        # tokens_per_step counts every rank's windows; the peak is one GPU's, times the ranks
        tok_s = window.steps * self.tokens_per_step / seconds
        peak = peak_flops(self.device, self.amp_dtype, self.dist.world_size)
        flops = accounting.flops_per_token(self.config.model, self.config.model.context_length)
        logger.log(
            self.iteration,
            tokens=self.iteration * self.tokens_per_step,
            epoch=self.sampler.epoch,
            loss=ce,
            lr=lr,
            grad_norm=window.grad_norm,
            tokens_per_s=tok_s,
            mfu=None if peak is None else tok_s * flops / peak,
            memory_gb=max_memory_gb(self.device),
            **self._mixture_metrics(),
            **window.metrics,
        )
        window.reset()
        return ce

    def _mixture_metrics(self) -> dict[str, float]:
        """With several training files: the realised mixture and each file's epochs so far."""
        if self.sampler.n_sources == 1:
            return {}
        names = source_names(self.config.train.train_paths)
        mix, epochs = self.sampler.realised_mixture(), self.sampler.source_epochs
        return {
            **{f"mix/{name}": float(p) for name, p in zip(names, mix, strict=True)},
            **{f"epoch/{name}": float(e) for name, e in zip(names, epochs, strict=True)},
        }

    def _step(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """One optimizer step over ``grad_accum`` micro-batches.

        Returns:
            The step's mean loss (back-propagated total) and cross-entropy, the gradient norm,
            and the last micro-batch's metrics and named losses, all device tensors.
        """
        accum = self.config.train.grad_accum
        graphs = self.cuda_graphs
        total = torch.zeros((), device=self.device)
        ce = torch.zeros((), device=self.device)
        metrics: dict[str, torch.Tensor] = {}
        try:
            tokens = [f.tokens for f in self.train_files]
            step, context = self.sampler.step, self.config.model.context_length
            for i, (sources, starts) in enumerate(self.sampler.next_step()):
                if self.mlm is None:
                    x, y = gather_mixture_batch(tokens, sources, starts, context, self.device)
                else:  # masked inputs and the masked tokens as targets
                    x, y = self.mlm.batch(
                        tokens,
                        sources,
                        starts,
                        context,
                        self.device,
                        step=step,
                        first_row=self.sampler.first_row(i),
                    )
                # gradients are reduced over ranks in the last micro-step's backward only
                if graphs:  # the last replay's outputs may be overwritten from here on
                    torch.compiler.cudagraph_mark_step_begin()
                last = i == accum - 1
                if last and self.grad_sums:
                    self.grad_sums.restore()  # the last backward adds to the float32 sums
                with ddp.gradient_sync(self.wrapped, last):
                    with autocast_for(self.device, self.amp_dtype):
                        out = self.step_model(x, y, return_logits=False)
                    (out.loss / accum).backward()
                if not last and self.grad_sums:
                    self.grad_sums.collect()
                total += out.loss.detach() / accum
                ce += out.losses["ce"] / accum
                metrics = {**out.metrics, **{f"loss/{k}": v for k, v in out.losses.items()}}
                if graphs:  # kept until the next log line: copy out of the graph's memory
                    metrics = {k: v.clone() for k, v in metrics.items()}
            clip = self.config.optim.grad_clip or math.inf  # the norm is logged either way
            params = list(self.model.parameters())
            # Adam(W) applies the clipping factor as it reads the gradients (no pass of its own)
            opt = self.optimizer
            if (
                isinstance(opt, Adam)
                and (deferred := ddp.clip_coefficient(params, clip, clip_coefficient)) is not None
            ):
                grad_norm, coef = deferred
                opt.step(grad_scale=coef)
            else:
                grad_norm = ddp.clip_grad_norm(params, clip, clip_grad_norm_)
                opt.step()
            self._bad_grad |= ~torch.isfinite(grad_norm)
            self.optimizer.zero_grad(set_to_none=True)
            self.model.after_optimizer_step()
        except torch.cuda.OutOfMemoryError:
            raise TrainingError(oom_message(self.config)) from None
        return total, ce, grad_norm, metrics

    def _check_finite(self, window: StepWindow) -> float:
        """The window's mean cross-entropy over ranks; raises (on every rank alike) if a loss or
        gradient was not finite."""
        n = max(window.steps, 1)
        sums = torch.stack([window.total / n, window.ce / n, self._bad_grad.float()])
        total, ce, bad = ddp.all_reduce_mean(sums, self.dist).tolist()
        bad_grad = bad > 0
        if math.isfinite(total) and not bad_grad:
            return ce
        latest = self.run_dir.latest()
        where = f"the last good checkpoint is {latest}" if latest else "there is no checkpoint yet"
        what = "a gradient norm" if bad_grad else f"the training loss ({total})"
        raise TrainingError(
            f"{what} became non-finite before step {self.iteration}; {where}. "
            "Lower optim.lr, keep optim.grad_clip on (1.0), or try model.qk_norm=true / "
            "model.z_loss=1e-4, then resume with --resume --set optim.lr=..."
        )

    def _evaluate(self) -> EvalResult:
        assert self.val_file is not None
        tc = self.config.train
        if self.mlm is not None:
            assert isinstance(self.model, Encoder)
            return self.mlm.evaluate(
                self.model,
                self.val_file.tokens,
                batch_size=tc.batch_size,
                context_length=self.config.model.context_length,
                device=self.device,
                max_batches=tc.eval_batches,
                autocast_dtype=self.amp_dtype,
            )
        return evaluate(
            self.model,
            self.val_file.tokens,
            batch_size=tc.batch_size,
            context_length=self.config.model.context_length,
            device=self.device,
            max_batches=tc.eval_batches,
            token_bytes=self.token_bytes,
            autocast_dtype=self.amp_dtype,
        )

    def _save(self) -> None:
        """Write ``ckpt-STEP/``: sharded (DCP, every rank) or one file (rank 0), then prune."""
        fmt = self.config.train.checkpoint_format
        if fmt == "dcp" or (fmt == "auto" and self.sharded):
            self._save_sharded()
        else:
            self._save_file()

    def _trainer_state(self) -> dict[str, Any]:
        return {
            "sampler": self.sampler.state_dict(),
            "config": self.config.to_dict(),
            "world_size": self.dist.world_size,
        }

    def _save_sharded(self) -> None:
        """Every rank writes its shards into one staged folder; rank 0 adds the trainer state
        and publishes the folder once all shards are written (a failure anywhere deletes it)."""
        ctx = self.dist
        tmp = Path(ddp.on_main_shared(ctx, lambda: str(self.run_dir.stage(self.iteration))))
        try:
            save_sharded(tmp, self.model, self.optimizer)  # collective: all shards written
            ddp.barrier(ctx)

            def publish() -> None:
                weightless = nn.Module()  # the tensors are in the shards
                state = self._trainer_state()
                save_checkpoint(tmp / STATE_FILE, weightless, None, self.iteration, **state)
                self.run_dir.publish(tmp, self.iteration, self.config.model.to_dict())
                self.run_dir.prune(self.config.train.keep_checkpoints)

            ddp.on_main(ctx, publish)
        except BaseException:
            if ctx.is_main:
                shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _save_file(self) -> None:
        """Rank 0 writes ``checkpoint.pt`` (FSDP's shards gathered first, on every rank)."""
        full = ddp.full_state(self.model, self.optimizer) if self.sharded else None
        model: Any = self.model if full is None else ddp.StateView(full[0])
        optimizer: Any = self.optimizer if full is None else ddp.StateView(full[1])

        def write() -> None:
            self.run_dir.save(
                self.iteration,
                model,
                optimizer,
                self.config.model.to_dict(),
                **self._trainer_state(),
            )
            self.run_dir.prune(self.config.train.keep_checkpoints)

        ddp.on_main(self.dist, write)

    def _finish(self) -> None:
        if self.config.train.sample_tokens and self.tokenizer is not None and self.mlm is None:
            text = self.sample(self.config.train.sample_tokens)  # every rank: FSDP gathers
            if self.dist.is_main:
                write_text_atomic(self.run_dir.path / "sample.txt", text + "\n")
        if self.dist.is_main:
            self._plot()
        ddp.barrier(self.dist)

    def _plot(self) -> None:
        from lmforge.train.plot import plot_run

        try:
            png = plot_run(self.run_dir.path)
            log.info("training curves: %s", png)
        except (ValueError, OSError, ImportError) as err:  # a plot never fails a finished run
            log.warning("could not plot the training curves: %s", err)

    def sample(self, max_new_tokens: int, prompt: str = "Once upon a time") -> str:
        """Sample a continuation of ``prompt`` from the current model (needs the tokenizer)."""
        if self.tokenizer is None:
            raise ValueError("sampling needs train.tokenizer")
        return generate_text(
            self.model,
            self.tokenizer,
            prompt,
            max_new_tokens,
            top_k=200,
            autocast_dtype=self.amp_dtype,
        )[0]


def _accuracy(val: EvalResult) -> dict[str, float]:
    """``val_accuracy`` for the metrics line, when the objective measures one (MLM)."""
    return {} if val.accuracy is None else {"val_accuracy": val.accuracy}


def _load_tokenizer(path: str | None) -> Any:
    if not path:
        return None
    from lmforge.tokenizer import Tokenizer

    return Tokenizer.load(path)
