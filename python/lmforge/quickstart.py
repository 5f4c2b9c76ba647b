"""The quickstart job: the whole lmforge path on the sample corpus bundled in the package.

1. train a byte-level BPE tokenizer on the sample (``assets/stories-sample.txt``, 1.9 MB of
   public-domain children's stories, so a fresh install runs with no download);
2. encode it into token files, the last stories held out for validation;
3. train a small Transformer on them for a few minutes (CPU or GPU: a smaller model and fewer
   steps on the CPU);
4. sample a story from it, and leave a run directory with metrics, a loss plot and checkpoints.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from lmforge.tokenizer import Tokenizer

SAMPLE_SENTENCE = "Once upon a time, the little rabbit hopped into Mr. McGregor's garden."
EOT = "<|endoftext|>"
VAL_FRACTION = 0.05


def sample_corpus() -> Path:
    """Path of the bundled sample corpus."""
    path = Path(str(resources.files("lmforge") / "assets" / "stories-sample.txt"))
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the bundled sample corpus is missing; reinstall lmforge")
    return path


@dataclass(frozen=True)
class QuickstartResult:
    """What the quickstart's data steps made and measured (``run``: the training, if any)."""

    tokenizer_path: Path
    tokens_path: Path
    val_tokens_path: Path
    n_tokens: int
    corpus_bytes: int
    train_seconds: float
    vocab_size: int
    bytes_per_token: float
    sample_tokens: list[str]
    run: object | None = None  # lmforge.train.TrainResult when a model was trained


def run_quickstart(
    out_dir: Path,
    vocab_size: int = 4096,
    progress: bool = True,
    *,
    train_model: bool = True,
    max_iters: int | None = None,
    device: str = "auto",
) -> QuickstartResult:
    """Run the quickstart under ``out_dir``: ``tokenizer.json``, ``train.bin``/``val.bin``
    (+ headers) and, with ``train_model``, a run directory ``run/``.

    Args:
        out_dir: the output folder (created).
        vocab_size: the tokenizer's vocabulary size.
        progress: show progress bars.
        train_model: also train and sample a small model.
        max_iters: optimizer steps (default: 200 on the CPU, 2,000 on a GPU).
        device: ``"auto"``, ``"cpu"`` or ``"cuda[:N]"``.
    """
    data = prepare_data(out_dir, vocab_size, progress)
    if not train_model:
        return data
    run = train_small_model(out_dir, max_iters=max_iters, device=device, progress=progress)
    return dataclasses.replace(data, run=run)


def prepare_data(out_dir: Path, vocab_size: int = 4096, progress: bool = True) -> QuickstartResult:
    """Steps 1 and 2: ``tokenizer.json``, ``train.bin`` and ``val.bin`` under ``out_dir``."""
    corpus = sample_corpus()
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    tok = Tokenizer.train(corpus, vocab_size, progress=progress)
    seconds = time.perf_counter() - start
    path = out_dir / "tokenizer.json"
    tok.save(path)
    text = corpus.read_text(encoding="utf-8")
    ids = tok.encode(text)
    if tok.decode(ids) != text:
        raise RuntimeError("round trip failed: decode(encode(text)) != text")
    sample = [tok.decode([i]) for i in tok.encode(SAMPLE_SENTENCE)]
    train_txt, val_txt = _split(text, out_dir)
    tokens = tok.encode_files(train_txt, out_dir / "train.bin", progress=progress)
    val = tok.encode_files(val_txt, out_dir / "val.bin", progress=progress)
    return QuickstartResult(
        tokenizer_path=path,
        tokens_path=tokens.path,
        val_tokens_path=val.path,
        n_tokens=len(tokens) + len(val),
        corpus_bytes=len(text.encode("utf-8")),
        train_seconds=seconds,
        vocab_size=len(tok),
        bytes_per_token=len(text.encode("utf-8")) / max(len(ids), 1),
        sample_tokens=sample,
    )


def _split(text: str, out_dir: Path) -> tuple[Path, Path]:
    """Write the stories to ``train.txt`` and the last ``VAL_FRACTION`` of them to ``val.txt``."""
    docs = [d for d in text.split(EOT) if d.strip()]
    n_val = max(1, round(len(docs) * VAL_FRACTION))
    train_txt, val_txt = out_dir / "train.txt", out_dir / "val.txt"
    train_txt.write_text(EOT.join(docs[:-n_val]) + EOT, encoding="utf-8")
    val_txt.write_text(EOT.join(docs[-n_val:]) + EOT, encoding="utf-8")
    return train_txt, val_txt


def train_small_model(
    out_dir: Path, *, max_iters: int | None = None, device: str = "auto", progress: bool = True
) -> object:
    """Steps 3 and 4: train a small model on ``prepare_data``'s files in ``out_dir/run``.

    Returns:
        The ``lmforge.train.trainer.TrainResult``.
    """
    import torch

    from lmforge.model import ModelConfig, pad_vocab_size
    from lmforge.optim import OptimConfig
    from lmforge.train.config import RunConfig, TrainConfig
    from lmforge.train.trainer import Trainer

    tok = Tokenizer.load(out_dir / "tokenizer.json")
    gpu = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    d_model, n_layers = (384, 6) if gpu else (256, 4)
    iters = max_iters or (2000 if gpu else 200)
    config = RunConfig(
        model=ModelConfig(
            vocab_size=pad_vocab_size(tok.n_vocab),
            context_length=256 if gpu else 128,
            d_model=d_model,
            n_layers=n_layers,
            n_heads=d_model // 64,
        ),
        optim=OptimConfig(
            name="adamw", lr=2e-3, min_lr=2e-4, warmup_iters=min(100, iters // 10), grad_clip=1.0
        ),
        train=TrainConfig(
            train_data=str(out_dir / "train.bin"),
            val_data=str(out_dir / "val.bin"),
            tokenizer=str(out_dir / "tokenizer.json"),
            out_dir=str(out_dir / "run"),
            batch_size=32,
            max_iters=iters,
            device=device,
            compile=False,
            log_interval=max(1, min(20, iters // 10)),
            eval_interval=max(1, iters // 4),
            eval_batches=8,
            ckpt_interval=iters,
            keep_checkpoints=1,
            sample_tokens=120,
            progress=progress,
        ),
    )
    if (out_dir / "run").exists():
        shutil.rmtree(out_dir / "run")  # the quickstart's own demo run: start it afresh
    return Trainer(config).fit()
