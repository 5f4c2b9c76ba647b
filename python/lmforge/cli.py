"""The ``lmforge`` command. Parses arguments, calls the library, prints; holds no logic."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lmforge import __version__


def _cmd_quickstart(args: argparse.Namespace) -> int:
    from lmforge.quickstart import prepare_data, train_small_model

    print(f"lmforge {__version__} quickstart: training a tokenizer on the bundled stories sample")
    out, progress = Path(args.out), not args.no_progress
    r = prepare_data(out, vocab_size=args.vocab_size, progress=progress)
    print(
        f"trained vocab {r.vocab_size} on {r.corpus_bytes / 1e6:.1f} MB in {r.train_seconds:.2f} s"
    )
    print(f"compression: {r.bytes_per_token:.2f} bytes per token on the sample corpus")
    print("tokens: " + " | ".join(repr(t)[1:-1] for t in r.sample_tokens))
    print(f"saved {r.tokenizer_path}")
    print(
        f"encoded the corpus into {r.n_tokens:,} tokens: {r.tokens_path} and "
        f"{r.val_tokens_path} (held-out stories), each with a .json header"
    )
    if args.no_train:
        return 0
    print("training a small Transformer on them (see the run directory for curves):")
    run = train_small_model(out, max_iters=args.max_iters, device=args.device, progress=progress)
    _print_train_result(run)
    return 0


def _cmd_tokenizer_train(args: argparse.Namespace) -> int:
    from lmforge.tokenizer import Tokenizer

    specials = [] if args.no_special_tokens else (args.special_token or ["<|endoftext|>"])
    if args.encoder_specials:  # [CLS] [SEP] [MASK] [PAD], for objective = "mlm"
        from lmforge.tokenizer import ENCODER_SPECIAL_TOKENS

        specials += [t for t in ENCODER_SPECIAL_TOKENS if t not in specials]
    tok = Tokenizer.train(
        args.inputs,
        args.vocab_size,
        special_tokens=specials,
        pattern=args.pattern,
        num_threads=args.threads,
        progress=not args.no_progress,
        errors=args.errors,
    )
    tok.save(args.out)
    info = tok.train_info
    print(
        f"trained {len(tok)} tokens ({info['merges']} merges) on {info['bytes'] / 1e6:.1f} MB, "
        f"{info['unique_pretokens']} unique pretokens; saved {args.out}"
    )
    return 0


def _cmd_tokenizer_encode(args: argparse.Namespace) -> int:
    from lmforge.tokenizer import Tokenizer

    tok = Tokenizer.load(args.tokenizer)
    tf = tok.encode_files(
        args.inputs,
        args.out,
        append_eot=not args.no_eot,
        dtype=args.dtype,
        num_threads=args.threads,
        progress=not args.no_progress,
    )
    n_bytes = sum(source["bytes"] for source in tf.header.sources)
    print(
        f"wrote {len(tf):,} {tf.header.dtype} tokens from {n_bytes / 1e6:.1f} MB "
        f"({len(tf) / max(n_bytes, 1):.3f} tokens/byte) to {tf.path}"
    )
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from lmforge.train.config import load_run_config, toml_value
    from lmforge.train.distributed import teardown
    from lmforge.train.trainer import Trainer, TrainingError

    config_path = args.config
    if config_path is None and args.resume and args.out is not None:
        config_path = Path(args.out) / "config.toml"  # resume with the run's own config
    overrides = list(args.set or [])
    for flag, key in (
        ("data", "train.train_data"),
        ("val_data", "train.val_data"),
        ("tokenizer", "train.tokenizer"),
        ("out", "train.out_dir"),
    ):
        value = getattr(args, flag)
        if isinstance(value, list) and len(value) == 1:
            value = value[0]
        if value is not None:
            overrides.append(f"{key}={toml_value(value)}")
    config = load_run_config(config_path, overrides)
    main_rank = int(os.environ.get("RANK", "0") or 0) == 0  # under torchrun, rank 0 speaks
    if not main_rank:
        logging.getLogger().setLevel(logging.WARNING)
    finished = False
    try:
        result = Trainer(config, resume=args.resume).fit()
        finished = True
    except TrainingError as err:
        print(f"lmforge: training stopped: {err}", file=sys.stderr)
        return 1
    finally:
        teardown(wait=finished)
    if main_rank:
        _print_train_result(result)
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        _leave_torchrun_worker()
    return 0


def _leave_torchrun_worker() -> None:
    """End a ``torchrun`` worker whose run finished and whose files are written, without the
    interpreter's teardown: gloo's threads race it now and then (``terminate called without
    an active exception``, the rank aborted after its run had finished, once in a CI run of
    the two-process tests), and ``torchrun`` then reports the whole run as failed."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _print_train_result(result: Any) -> None:
    print(
        f"trained {result.iterations} steps ({result.tokens / 1e6:.1f}M tokens) in "
        f"{result.seconds:.0f} s; last train loss {result.train_loss:.4f}"
    )
    if result.val is not None:
        bpb = result.val.bits_per_byte
        acc = result.val.accuracy
        print(
            f"val loss {result.val.loss:.4f}, perplexity {result.val.perplexity:.2f}"
            + (f", {bpb:.4f} bits/byte" if bpb is not None else "")
            + (f", masked-token accuracy {acc:.3f}" if acc is not None else "")
        )
    print(f"run directory: {result.run_dir} (metrics.jsonl, plots, checkpoints)")
    sample = result.run_dir / "sample.txt"
    if sample.is_file():
        print("sample:\n" + sample.read_text(encoding="utf-8"))


def _load_trained(checkpoint: str, device: str | None = None) -> tuple[Any, str]:
    """The trained model at ``checkpoint`` on ``device`` (default: CUDA when available)."""
    import torch

    from lmforge.train.artifacts import load_trained

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return load_trained(checkpoint, device), device


def _tokenizer_of(trained: Any) -> Any:
    if trained.tokenizer is None:
        raise ValueError(f"no tokenizer.json in the run directory of {trained.checkpoint}")
    return trained.tokenizer


def _cmd_sample(args: argparse.Namespace) -> int:
    import torch

    from lmforge.train.artifacts import generate_text

    trained, device = _load_trained(args.checkpoint)
    _tokenizer_of(trained)
    texts = generate_text(
        trained.model,
        trained.tokenizer,
        args.prompt,
        args.max_new_tokens,
        num_samples=args.num_samples,
        temperature=0.0 if args.speculative else args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        generator=torch.Generator(device=device).manual_seed(args.seed),
        speculative=args.speculative,
    )
    print(("\n" + "-" * 40 + "\n").join(texts))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:

    from lmforge.data import open_training_file
    from lmforge.train.evaluate import evaluate, token_byte_lengths

    trained, device = _load_trained(args.checkpoint)
    tok = trained.tokenizer
    data = open_training_file(
        args.data,
        vocab_size=trained.config.vocab_size,
        fingerprint=tok.fingerprint if tok is not None else None,
    )
    if not trained.config.causal:  # an encoder: masked-token loss and accuracy
        from lmforge.train.mlm import MLMObjective

        objective = MLMObjective.from_tokenizer(_tokenizer_of(trained), 0.15, seed=0)
        result = objective.evaluate(
            trained.model,
            data.tokens,
            batch_size=args.batch_size,
            context_length=trained.config.context_length,
            device=device,
            max_batches=args.batches,
        )
        print(
            f"step {trained.step}: masked-token loss {result.loss:.4f}, accuracy "
            f"{result.accuracy:.4f} over {result.tokens:,} masked tokens"
        )
        return 0
    result = evaluate(
        trained.model,
        data.tokens,
        batch_size=args.batch_size,
        context_length=trained.config.context_length,
        device=device,
        max_batches=args.batches,
        token_bytes=token_byte_lengths(tok, trained.config.vocab_size) if tok else None,
    )
    bpb = "n/a" if result.bits_per_byte is None else f"{result.bits_per_byte:.4f}"
    print(
        f"step {trained.step}: loss {result.loss:.4f}, perplexity {result.perplexity:.2f}, "
        f"bits/byte {bpb} over {result.tokens:,} tokens"
    )
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from lmforge.train.plot import plot_run

    print(f"wrote {plot_run(args.run_dir, args.out)}")
    return 0


def _cmd_lens(args: argparse.Namespace) -> int:

    from lmforge.analysis import format_table, logit_lens, save_heatmap

    trained, device = _load_trained(args.checkpoint)
    _tokenizer_of(trained)
    result = logit_lens(trained.model, trained.tokenizer.encode(args.text), top_k=args.top_k)
    print(f"logit lens of step {trained.step} ({trained.checkpoint})")
    print(format_table(result, trained.tokenizer))
    if args.png:
        print(f"wrote {save_heatmap(result, trained.tokenizer, args.png)}")
    return 0


def _cmd_embed(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from lmforge.analysis import Standardizer, embed_texts, mean_pairwise_cosine

    trained, device = _load_trained(args.checkpoint)
    tokenizer = _tokenizer_of(trained)

    def embed(path: str) -> torch.Tensor:
        texts = [t for t in Path(path).read_text(encoding="utf-8").splitlines() if t.strip()]
        return embed_texts(trained.model, tokenizer, texts, layer=args.layer, pooling=args.pooling)

    emb = embed(args.texts)
    print(f"{emb.shape[0]} texts -> {emb.shape[1]}-dim embeddings (layer {args.layer})")
    print(f"mean cosine of random pairs: {mean_pairwise_cosine(emb):.3f} raw")
    if args.reference:
        emb = Standardizer.fit(embed(args.reference)).transform(emb)
        print(f"mean cosine of random pairs: {mean_pairwise_cosine(emb):.3f} standardised")
    np.save(args.out, emb.numpy())
    print(f"wrote {args.out}")
    return 0


def _cmd_finetune(args: argparse.Namespace) -> int:

    from lmforge.data import open_training_file
    from lmforge.model.lora import LoRAConfig, apply_lora, save_lora, trainable_parameters
    from lmforge.train.finetune import finetune

    trained, device = _load_trained(args.checkpoint, args.device)
    tok = trained.tokenizer
    data = open_training_file(
        args.data,
        vocab_size=trained.config.vocab_size,
        fingerprint=tok.fingerprint if tok is not None else None,
        context_length=trained.config.context_length,
    )
    targets = tuple(t.strip() for t in args.targets.split(",") if t.strip())
    config = LoRAConfig(rank=args.rank, alpha=args.alpha, dropout=args.dropout, targets=targets)
    model = apply_lora(trained.model, config)
    print(
        f"LoRA rank {config.rank} on {', '.join(targets)}: "
        f"{trainable_parameters(model):,} trainable of {trained.model.num_params():,} parameters"
    )
    losses = finetune(
        model,
        data.tokens,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        context_length=trained.config.context_length,
        device=device,
        seed=args.seed,
        progress=not args.no_progress,
    )
    save_lora(model, args.out)
    print(f"loss {losses[0]:.4f} -> {losses[-1]:.4f} over {len(losses)} steps; saved {args.out}")
    return 0


def _cmd_quantize(args: argparse.Namespace) -> int:

    from lmforge.data import open_training_file
    from lmforge.quant import quantization_report, quantize, save_quantized, weight_bytes
    from lmforge.train.evaluate import evaluate

    trained, device = _load_trained(args.checkpoint)
    tok = trained.tokenizer

    def perplexity(model: Any) -> float:
        data = open_training_file(
            args.data,
            vocab_size=trained.config.vocab_size,
            fingerprint=tok.fingerprint if tok is not None else None,
        )
        result = evaluate(
            model,
            data.tokens,
            batch_size=args.batch_size,
            context_length=trained.config.context_length,
            device=device,
            max_batches=args.batches,
        )
        return result.perplexity

    ppl_before = perplexity(trained.model) if args.data else None
    before = weight_bytes(trained.model)
    model = trained.model
    quantize(model, args.format, include_head=args.include_head)  # in place
    path = save_quantized(model, args.out)
    if tok is not None:
        tok.save(Path(args.out) / "tokenizer.json")
    print(quantization_report(before, model).summary())
    if ppl_before is not None:
        ppl_after = perplexity(model)
        print(
            f"perplexity on {args.data}: {ppl_before:.3f} -> {ppl_after:.3f} "
            f"({ppl_after / ppl_before - 1:+.2%})"
        )
    print(f"wrote step {trained.step} ({args.format}) to {path}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from lmforge.model.export import export_hf_llama, export_safetensors
    from lmforge.train.artifacts import load_trained
    from lmforge.train.resume import saved_param_dtype
    from lmforge.train.runtime import store_weights

    trained = load_trained(args.checkpoint, "cpu")
    dtype = args.dtype  # auto: as the run stored its weights (its config.toml records it)
    if dtype == "auto":
        dtype = saved_param_dtype(trained.checkpoint.parent.parent / "config.toml") or "float32"
    store_weights(trained.model, dtype)
    if args.format == "hf":
        out = export_hf_llama(trained.model, args.out, tokenizer=trained.tokenizer)
    else:
        out = export_safetensors(trained.model, args.out)
    print(f"exported step {trained.step} to {out} ({dtype} weights)")
    return 0


def _cmd_accounting(args: argparse.Namespace) -> int:
    from lmforge.accounting import attention_cost_table, shape_report
    from lmforge.train.config import load_model_config

    cfg = load_model_config(args.config, args.set)
    seq = cfg.context_length if args.seq is None else args.seq
    table = attention_cost_table(cfg, args.batch, seq, args.dtype)
    print(shape_report(cfg, seq))
    print()
    print(table)
    return 0


def _positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def _cmd_memory(args: argparse.Namespace) -> int:
    from lmforge.accounting import format_bytes
    from lmforge.train.config import load_run_config
    from lmforge.train.runtime import run_memory_estimate

    config = load_run_config(args.config, ["train.train_data=unused", *(args.set or [])])
    config = config.resolve_param_dtype("cuda", args.world_size)  # what "auto" stores weights in
    tc, mc, oc = config.train, config.model, config.optim
    est = run_memory_estimate(config)
    print(
        f"one training step a process: batch {tc.batch_size} x {mc.context_length} tokens, "
        f"grad_accum {tc.grad_accum}, optimizer {oc.name} (moments {oc.moment_dtype or 'float32'}"
        f"), weights {config.stored_weights()}, compute {tc.dtype}, compiled {tc.compile}, "
        "activation "
        f"checkpointing {mc.activation_checkpointing}"
    )
    print(est.table())
    if args.world_size > 1 and tc.strategy == "fsdp":
        print("(one unsharded process: FSDP's shards of weights, gradients and state need less)")
    print(f"estimated peak: {format_bytes(est.total)} (CUDA; the caching allocator adds its slack)")
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lmforge",
        description="Train byte-level BPE tokenizers and language models from scratch.",
    )
    p.add_argument("--version", action="version", version=f"lmforge {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    q = sub.add_parser("quickstart", help="train on the bundled sample corpus and show the result")
    q.add_argument("--out", default="lmforge-quickstart", help="output folder")
    q.add_argument("--vocab-size", type=int, default=4096)
    q.add_argument("--no-progress", action="store_true", help="hide progress bars")
    q.add_argument("--no-train", action="store_true", help="stop after the token files")
    q.add_argument(
        "--max-iters", type=int, default=None, help="training steps (default: 200 CPU, 2000 GPU)"
    )
    q.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    q.set_defaults(func=_cmd_quickstart)

    tok = sub.add_parser("tokenizer", help="train tokenizers and encode text with them")
    tsub = tok.add_subparsers(dest="tokenizer_command", required=True)
    t = tsub.add_parser("train", help="train a byte-level BPE tokenizer on text files")
    t.add_argument("inputs", nargs="+", metavar="INPUT", help="UTF-8 text files")
    t.add_argument("--vocab-size", type=int, required=True, help="bytes + merges + specials")
    t.add_argument(
        "--special-token",
        action="append",
        metavar="TOK",
        help="a special token (repeatable; default <|endoftext|>)",
    )
    t.add_argument("--no-special-tokens", action="store_true", help="train without specials")
    t.add_argument(
        "--encoder-specials",
        action="store_true",
        help="also add [CLS] [SEP] [MASK] [PAD] (for an encoder trained with objective=mlm)",
    )
    t.add_argument("--pattern", default="gpt2", help="gpt2, cl100k, o200k or a regex")
    t.add_argument("--out", default="tokenizer.json", help="where to save the tokenizer")
    t.add_argument("--threads", type=int, default=None, help="worker threads (default: all)")
    t.add_argument(
        "--errors",
        choices=["strict", "replace"],
        default="strict",
        help="what to do with invalid UTF-8",
    )
    t.add_argument("--no-progress", action="store_true", help="hide progress bars")
    t.set_defaults(func=_cmd_tokenizer_train)

    e = tsub.add_parser("encode", help="encode text files into a token file for training")
    e.add_argument("inputs", nargs="+", metavar="INPUT", help="UTF-8 text files")
    e.add_argument("--tokenizer", default="tokenizer.json", help="the tokenizer to encode with")
    e.add_argument("--out", required=True, help="the token file (its header goes to OUT.json)")
    e.add_argument("--no-eot", action="store_true", help="append no end-of-text id per document")
    e.add_argument(
        "--dtype",
        choices=["uint16", "uint32"],
        default=None,
        help="id type (default: uint16 when the vocabulary fits, else uint32)",
    )
    e.add_argument("--threads", type=int, default=None, help="worker threads (default: all)")
    e.add_argument("--no-progress", action="store_true", help="hide progress bars")
    e.set_defaults(func=_cmd_tokenizer_encode)
    _add_model_commands(sub)
    return p


def _add_model_commands(sub: argparse._SubParsersAction) -> None:
    tr = sub.add_parser("train", help="train a language model on token files")
    tr.add_argument(
        "--config",
        default=None,
        help="a run config TOML or a preset name (stories-17M, stories-moe, gpt2-124M, 1B); "
        "with --resume and --out, the run's own config.toml by default",
    )
    tr.add_argument(
        "--data",
        nargs="+",
        default=None,
        help="the training token file(s) (several: a mixture, see train.mixture_alpha)",
    )
    tr.add_argument("--val-data", default=None, help="a validation token file")
    tr.add_argument("--tokenizer", default=None, help="the tokenizer.json that made the data")
    tr.add_argument("--out", default=None, help="the run directory")
    tr.add_argument(
        "--set",
        action="append",
        metavar="TABLE.KEY=VALUE",
        help="override a config value, e.g. --set optim.lr=1e-3 (repeatable)",
    )
    tr.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    tr.set_defaults(func=_cmd_train)

    sa = sub.add_parser("sample", help="generate text from a trained model")
    sa.add_argument("checkpoint", help="a run directory, checkpoint folder or checkpoint file")
    sa.add_argument("--prompt", default="Once upon a time")
    sa.add_argument("--max-new-tokens", type=int, default=200)
    sa.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    sa.add_argument("--top-k", type=int, default=None)
    sa.add_argument("--top-p", type=float, default=None)
    sa.add_argument("--num-samples", type=int, default=1)
    sa.add_argument("--seed", type=int, default=0)
    sa.add_argument(
        "--speculative",
        action="store_true",
        help="greedy decoding drafted by the model's MTP modules (needs mtp_depth >= 1; "
        "implies --temperature 0)",
    )
    sa.set_defaults(func=_cmd_sample)

    ev = sub.add_parser("eval", help="loss, perplexity and bits per byte on a token file")
    ev.add_argument("checkpoint", help="a run directory, checkpoint folder or checkpoint file")
    ev.add_argument("--data", required=True, help="the token file to evaluate on")
    ev.add_argument("--batch-size", type=int, default=16)
    ev.add_argument("--batches", type=int, default=None, help="at most this many batches")
    ev.set_defaults(func=_cmd_eval)

    pl = sub.add_parser("plot", help="plot a run's loss and throughput curves (PNG)")
    pl.add_argument("run_dir", help="the run directory")
    pl.add_argument("--out", default=None, help="the PNG (default: in the run directory)")
    pl.set_defaults(func=_cmd_plot)

    ex = sub.add_parser("export", help="write a trained model as safetensors or for HF")
    ex.add_argument("checkpoint", help="a run directory, checkpoint folder or checkpoint file")
    ex.add_argument("--out", required=True, help="the output folder")
    ex.add_argument(
        "--format",
        choices=["safetensors", "hf"],
        default="safetensors",
        help="safetensors + config.json, or a Hugging Face Llama folder",
    )
    ex.add_argument(
        "--dtype",
        choices=["auto", "float32", "bfloat16"],  # train.config's PARAM_DTYPES (no torch here)
        default="auto",
        help="the exported weights' dtype; auto (default): the one the run stored them in "
        "(train.param_dtype: bfloat16, half the size, for a single-GPU run), else float32",
    )
    ex.set_defaults(func=_cmd_export)

    le = sub.add_parser("lens", help="the logit lens: what each layer would predict next")
    le.add_argument("checkpoint", help="a run directory, checkpoint folder or checkpoint file")
    le.add_argument("--text", required=True, help="the text to read (at most the context)")
    le.add_argument("--top-k", type=int, default=5, help="most likely tokens shown per layer")
    le.add_argument("--png", default=None, help="also draw the heatmap to this PNG")
    le.set_defaults(func=_cmd_lens)

    em = sub.add_parser("embed", help="contextual embeddings of texts (one per line) as .npy")
    em.add_argument("checkpoint", help="a run directory, checkpoint folder or checkpoint file")
    em.add_argument("--texts", required=True, help="a UTF-8 file, one text per line")
    em.add_argument("--out", required=True, help="the .npy file to write (n_texts, d_model)")
    em.add_argument("--layer", type=int, default=-1, help="0 = embedding, -1 = last block")
    em.add_argument("--pooling", choices=["mean", "last", "cls"], default="mean")
    em.add_argument(
        "--reference",
        default=None,
        help="texts (one per line) to fit a per-dimension z-score on; the output is standardised",
    )
    em.set_defaults(func=_cmd_embed)

    ft = sub.add_parser("finetune", help="train LoRA adapters on a trained model (base frozen)")
    ft.add_argument("checkpoint", help="a run directory, checkpoint folder or checkpoint file")
    ft.add_argument("--data", required=True, help="the token file to fine-tune on (.bin)")
    ft.add_argument("--out", required=True, help="the adapter file to write (e.g. lora.pt)")
    ft.add_argument("--rank", type=int, default=8, help="LoRA rank r")
    ft.add_argument("--alpha", type=float, default=16.0, help="adapter scale is alpha / rank")
    ft.add_argument("--dropout", type=float, default=0.0, help="dropout on the adapter input")
    ft.add_argument(
        "--targets", default="wq,wv", help="comma-separated Linear names (wq,wk,wv,wo,w1,w2,w3)"
    )
    ft.add_argument("--steps", type=int, default=200)
    ft.add_argument("--lr", type=float, default=1e-3)
    ft.add_argument("--batch-size", type=int, default=16)
    ft.add_argument("--seed", type=int, default=0)
    ft.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    ft.add_argument("--no-progress", action="store_true", help="no progress bar")
    ft.set_defaults(func=_cmd_finetune)

    qz = sub.add_parser("quantize", help="store a trained model's Linear weights in int8 or fp8")
    qz.add_argument("checkpoint", help="a run directory, checkpoint folder or checkpoint file")
    qz.add_argument("--out", required=True, help="the output folder (quantized.pt + config.json)")
    qz.add_argument(
        "--format",
        choices=["int8", "fp8"],
        default="int8",
        help="int8 (absmax/127 per output channel) or fp8 e4m3 (absmax/448)",
    )
    qz.add_argument("--include-head", action="store_true", help="quantize the LM head too")
    qz.add_argument("--data", default=None, help="a token file: report perplexity before/after")
    qz.add_argument("--batch-size", type=int, default=16)
    qz.add_argument("--batches", type=int, default=None, help="at most this many eval batches")
    qz.set_defaults(func=_cmd_quantize)

    ac = sub.add_parser(
        "accounting", help="parameters, FLOPs and attention/KV-cache cost of a config, no GPU"
    )
    ac.add_argument("--config", required=True, help="a run config TOML or a preset name")
    ac.add_argument("--batch", type=int, default=1, help="sequences decoded together")
    ac.add_argument(
        "--seq", type=int, default=None, help="positions attended (default: context_length)"
    )
    ac.add_argument(
        "--dtype",
        choices=["bf16", "fp16", "fp32", "fp8"],
        default="bf16",
        help="dtype of weights, KV cache and activations",
    )
    ac.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a model value, e.g. --set n_kv_heads=4 (repeatable)",
    )
    ac.set_defaults(func=_cmd_accounting)

    me = sub.add_parser(
        "memory",
        help="predicted peak GPU memory of one training step of a run config, no GPU",
    )
    me.add_argument(
        "--config", required=True, help="a run config TOML or a preset name (as lmforge train)"
    )
    me.add_argument(
        "--set",
        action="append",
        metavar="TABLE.KEY=VALUE",
        help="override a config value as lmforge train does, e.g. --set train.batch_size=16",
    )
    me.add_argument(
        "--world-size",
        type=_positive_int,
        default=1,
        help="processes the run trains in (torchrun's world size; train.param_dtype = auto "
        "stores float32 weights for more than one); default 1",
    )
    me.set_defaults(func=_cmd_memory)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lmforge`` command; returns the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return int(args.func(args))
    except (ValueError, OSError, TypeError) as e:
        print(f"lmforge: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lmforge: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
