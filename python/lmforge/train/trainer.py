"""The training loop: a run config in, a trained model and a run directory out.

One ``Trainer`` owns one run: it opens the token files (checking their headers against the model
and the tokenizer), builds the model and optimizer, and steps through the seeded window sampler
with gradient accumulation, clipping and the learning-rate schedule. Design choices:

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
"""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lmforge import accounting
from lmforge.data import WindowSampler, batch_from_starts, open_training_file
from lmforge.model import Transformer
from lmforge.optim import build_optimizer, clip_grad_norm_, lr_at, set_lr
from lmforge.train.checkpoint import load_checkpoint
from lmforge.train.config import RunConfig, to_toml
from lmforge.train.evaluate import EvalResult, evaluate, token_byte_lengths
from lmforge.train.metrics import MetricsLogger
from lmforge.train.run_dir import RunDir, write_text_atomic
from lmforge.train.runtime import autocast_dtype, autocast_for, resolve_device, seed_everything

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
        self.config = config
        tc, mc = config.train, config.model
        self.device = resolve_device(tc.device)
        self.amp_dtype = autocast_dtype(tc.dtype, self.device)
        seed_everything(tc.seed)
        self.tokenizer = _load_tokenizer(tc.tokenizer)
        fingerprint = self.tokenizer.fingerprint if self.tokenizer is not None else None
        self.train_file = open_training_file(
            tc.train_data, vocab_size=mc.vocab_size, fingerprint=fingerprint
        )
        self.val_file = (
            open_training_file(tc.val_data, vocab_size=mc.vocab_size, fingerprint=fingerprint)
            if tc.val_data
            else None
        )
        if mc.eot_id is None and self.train_file.header.eot_id is not None:
            # the model's end-of-text id (generation stops on it) comes from the data's header
            mc = dataclasses.replace(mc, eot_id=self.train_file.header.eot_id)
            self.config = config = dataclasses.replace(config, model=mc)
        self.model = Transformer(mc).to(self.device)
        kinds = self.model.param_kinds()
        self.optimizer = build_optimizer(
            [(p, kinds[name]) for name, p in self.model.named_parameters()], config.optim
        )
        self.global_batch = tc.batch_size * tc.grad_accum
        self.max_iters = tc.max_iters or max(
            1,
            math.ceil(
                (tc.epochs or 1.0) * len(self.train_file) / (self.global_batch * mc.context_length)
            ),
        )
        try:
            lr_at(config.optim, 0, self.max_iters)  # schedule errors now, not at step one
        except ValueError as err:
            raise ValueError(f"{err}: lower optim.warmup_iters or train more steps") from None
        self.sampler = WindowSampler(
            len(self.train_file),
            mc.context_length,
            self.global_batch,
            tc.seed,
            grad_accum=tc.grad_accum,
        )
        self.run_dir = RunDir.create(tc.out_dir, resume=resume)
        self.iteration = 0
        if resume:
            self._resume()
        else:
            self._write_run_files()
        self.step_model = torch.compile(self.model) if tc.compile else self.model
        self.token_bytes = (
            token_byte_lengths(self.tokenizer, mc.vocab_size) if self.tokenizer else None
        )

    def _write_run_files(self) -> None:
        write_text_atomic(self.run_dir.path / "config.toml", to_toml(self.config))
        if self.config.train.tokenizer:
            shutil.copyfile(self.config.train.tokenizer, self.run_dir.path / "tokenizer.json")

    def _resume(self) -> None:
        latest = self.run_dir.latest()
        if latest is None:
            raise ValueError(f"--resume: {self.run_dir.path} has no checkpoint to resume from")
        state: dict[str, Any] = {}
        self.iteration = load_checkpoint(
            latest / "checkpoint.pt",
            self.model,
            self.optimizer,
            map_location=self.device,
            state=state,
        )
        self.sampler.load_state_dict(state["sampler"])
        log.info("resumed from %s at step %d", latest, self.iteration)

    def fit(self) -> TrainResult:
        """Train until ``max_iters``, evaluating, logging and checkpointing on the way.

        Raises:
            TrainingError: a non-finite loss or CUDA out of memory.
        """
        tc, mc = self.config.train, self.config.model
        log.info("%s", accounting.shape_report(mc))
        start, t0 = self.iteration, time.perf_counter()
        flops_tok = accounting.flops_per_token(mc, seq_len=mc.context_length)
        peak = _peak_flops(self.device)
        logger = MetricsLogger(
            self.run_dir.path / "metrics.jsonl",
            tqdm_total=self.max_iters,
            initial=start,
            progress=tc.progress,
            tensorboard=tc.tensorboard,
            wandb=tc.wandb,
        )
        loss_acc = torch.zeros((), device=self.device)
        steps_acc, t_last, val = 0, time.perf_counter(), None
        train_loss = math.nan
        with logger:
            while self.iteration < self.max_iters:
                lr = set_lr(self.optimizer, self.config.optim, self.iteration, self.max_iters)
                loss, grad_norm, metrics = self._step()
                loss_acc += loss
                steps_acc += 1
                self.iteration += 1
                it = self.iteration
                last = it == self.max_iters
                if it % tc.log_interval == 0 or last:
                    mean_loss = self._checked_mean(loss_acc, steps_acc)
                    dt = time.perf_counter() - t_last
                    tok_s = steps_acc * self.global_batch * mc.context_length / dt
                    logger.log(
                        it,
                        tokens=it * self.global_batch * mc.context_length,
                        epoch=self.sampler.epoch,
                        loss=mean_loss,
                        lr=lr,
                        grad_norm=grad_norm,
                        tokens_per_s=tok_s,
                        mfu=None if peak is None else tok_s * flops_tok / peak,
                        memory_gb=_max_memory_gb(self.device),
                        **metrics,
                    )
                    loss_acc.zero_()
                    steps_acc, t_last = 0, time.perf_counter()
                    train_loss = mean_loss
                if (
                    self.val_file is not None
                    and tc.eval_interval
                    and (it % tc.eval_interval == 0 or last)
                ):
                    val = self._evaluate()
                    logger.log(
                        it,
                        tokens=it * self.global_batch * mc.context_length,
                        val_loss=val.loss,
                        val_bpb=val.bits_per_byte,
                        val_ppl=val.perplexity,
                    )
                    t_last = time.perf_counter()  # evaluation time is not training time
                if (tc.ckpt_interval and it % tc.ckpt_interval == 0) or last:
                    self._checked_mean(loss_acc, max(steps_acc, 1))
                    self._save()
        self._finish()
        return TrainResult(
            run_dir=self.run_dir.path,
            iterations=self.iteration,
            tokens=self.iteration * self.global_batch * mc.context_length,
            train_loss=train_loss,
            val=val,
            seconds=time.perf_counter() - t0,
        )

    def _step(self) -> tuple[torch.Tensor, float | torch.Tensor, dict[str, torch.Tensor]]:
        """One optimizer step over ``grad_accum`` micro-batches; returns the mean loss."""
        tc = self.config.train
        total = torch.zeros((), device=self.device)
        metrics: dict[str, torch.Tensor] = {}
        try:
            for starts in self.sampler.next_step():
                x, y = batch_from_starts(
                    self.train_file.tokens, starts, self.config.model.context_length, self.device
                )
                with autocast_for(self.device, self.amp_dtype):
                    out = self.step_model(x, y, return_logits=False)
                (out.loss / tc.grad_accum).backward()
                total += out.loss.detach() / tc.grad_accum
                metrics = {**out.metrics, **{f"loss/{k}": v for k, v in out.losses.items()}}
            grad_norm: float | torch.Tensor = math.nan
            if self.config.optim.grad_clip:
                grad_norm = clip_grad_norm_(self.model.parameters(), self.config.optim.grad_clip)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.model.after_optimizer_step()
        except torch.cuda.OutOfMemoryError:
            raise TrainingError(self._oom_message()) from None
        return total, grad_norm, metrics

    def _checked_mean(self, loss_sum: torch.Tensor, steps: int) -> float:
        mean = loss_sum.item() / steps
        if not math.isfinite(mean):
            latest = self.run_dir.latest()
            where = f"the last good checkpoint is {latest}" if latest else "no checkpoint yet"
            raise TrainingError(
                f"the training loss became {mean} before step {self.iteration}; {where}. "
                "Lower optim.lr, keep optim.grad_clip on (1.0), or try model.qk_norm=true / "
                "model.z_loss=1e-4, then resume with --resume"
            )
        return mean

    def _evaluate(self) -> EvalResult:
        assert self.val_file is not None
        tc = self.config.train
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
        self.run_dir.save(
            self.iteration,
            self.model,
            self.optimizer,
            self.config.model.to_dict(),
            sampler=self.sampler.state_dict(),
            config=self.config.to_dict(),
        )
        self.run_dir.prune(self.config.train.keep_checkpoints)

    def _finish(self) -> None:
        from lmforge.train.plot import plot_run

        try:
            png = plot_run(self.run_dir.path)
            log.info("training curves: %s", png)
        except (ValueError, OSError) as err:  # plotting must never fail a finished run
            log.warning("could not plot the training curves: %s", err)
        if self.config.train.sample_tokens and self.tokenizer is not None:
            text = self.sample(self.config.train.sample_tokens)
            write_text_atomic(self.run_dir.path / "sample.txt", text + "\n")

    def sample(self, max_new_tokens: int, prompt: str = "Once upon a time") -> str:
        """Sample a continuation of ``prompt`` from the current model (needs the tokenizer)."""
        from lmforge.model.generate import generate

        if self.tokenizer is None:
            raise ValueError("sampling needs train.tokenizer")
        ids = self.tokenizer.encode(prompt)
        mc = self.config.model
        max_new = min(max_new_tokens, mc.context_length - len(ids))
        idx = torch.tensor([ids], device=self.device)
        with autocast_for(self.device, self.amp_dtype):
            out = generate(self.model, idx, max_new, temperature=0.8, top_k=200, eot_id=mc.eot_id)
        return self.tokenizer.decode(out[0].tolist(), errors="replace")

    def _oom_message(self) -> str:
        tc, mc = self.config.train, self.config.model
        est = accounting.estimate_training_memory(
            mc,
            tc.batch_size,
            mc.context_length,
            compiled=tc.compile,
            grad_accum=tc.grad_accum,
            optimizer=self.config.optim.name,
        )
        return (
            f"CUDA out of memory at batch_size={tc.batch_size}, context {mc.context_length} "
            f"(estimated peak {accounting.format_bytes(est.total)}). Lower train.batch_size "
            f"and raise train.grad_accum to keep the same tokens per step, or set "
            f"model.activation_checkpointing=true, or train.compile=true"
        )


def _load_tokenizer(path: str | None) -> Any:
    if not path:
        return None
    from lmforge.tokenizer import Tokenizer

    return Tokenizer.load(path)


def _peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return accounting.peak_flops(torch.cuda.get_device_name(device), "bf16")


def _max_memory_gb(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30
