"""Pieces every training recipe uses, in the order a recipe calls them."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.data.splits import Splits, splits_from_config
from tunelab.errors import TunelabError
from tunelab.methods.base import save_weights
from tunelab.methods.registry import METHODS
from tunelab.models.loading import load_tokenizer, resolve_model
from tunelab.progress import info
from tunelab.run import RunDir
from tunelab.stages.registry import TASKS


@dataclass
class Context:
    """What a recipe has built so far; handed from step to step."""

    cfg: Any
    run: RunDir
    resume: bool
    model_path: str = ""
    tokenizer: Any = None
    splits: Splits | None = None
    notes: list[str] = field(default_factory=list)
    precision: str = "fp32"
    labels: list[str] | None = None  # classification label order (ids = positions)
    class_weights: list[float] | None = None
    weight_memory: dict[str, int] = field(default_factory=dict)
    model: Any = None  # the trained model once training is done

    @property
    def task(self) -> Any:
        return TASKS[self.cfg.task]

    @property
    def method(self) -> Any:
        return METHODS[self.cfg.method]


def setup(ctx: Context) -> None:
    """Seed, threads, model path and tokenizer."""
    import torch
    from transformers import set_seed

    from tunelab.training.trainer import choose_precision

    t = ctx.cfg.training
    if t.threads:
        torch.set_num_threads(t.threads)
    set_seed(t.seed)
    random.seed(t.seed)
    ref = resolve_model(ctx.cfg.model.name)
    ctx.model_path = ref.path
    ctx.tokenizer = load_tokenizer(ref.path, trust_remote_code=ctx.cfg.model.trust_remote_code)
    ctx.precision = choose_precision(t.precision)
    ctx.notes.append(f"model {ctx.cfg.model.name} ({ref.path}); precision {ctx.precision}")


def load_data(ctx: Context) -> Splits:
    splits = splits_from_config(ctx.cfg.data, ctx.cfg._source_dir)
    allowed_shapes = ctx.task.shapes
    if splits.shape not in allowed_shapes:
        raise TunelabError(
            f"task {ctx.cfg.task!r} cannot train on rows of shape {splits.shape!r}",
            file=splits.source,
            field="data",
            expected=f"rows of shape {', '.join(allowed_shapes)}",
        )
    ctx.splits = splits
    ctx.notes += splits.notes
    for note in splits.notes:
        info(f"[cyan]data[/cyan] {note}")
    return splits


def base_model_kwargs(cfg: Any, precision: str, tokenizer: Any, labels: list[str] | None) -> dict[str, Any]:
    """How to load the base for this task and method (labels for a head, 4-bit for QLoRA, …)."""
    from tunelab.methods.registry import METHODS

    method = METHODS[cfg.method]
    kwargs: dict[str, Any] = {"trust_remote_code": cfg.model.trust_remote_code}
    if method.model_kwargs is not None:
        kwargs.update(method.model_kwargs(cfg.method_options(), precision))
    if TASKS[cfg.task].model_kind == "seq_cls":
        kwargs.update(labels=labels, pad_token_id=tokenizer.pad_token_id)
    return kwargs


def load_base_model(ctx: Context) -> Any:
    kwargs = base_model_kwargs(ctx.cfg, ctx.precision, ctx.tokenizer, ctx.labels)
    model = ctx.task.load_model(ctx.model_path, **kwargs)
    if ctx.task.model_kind == "seq_cls" and is_decoder_classifier(model):
        # decoder heads read the last token; left padding keeps it real even when peft prepends
        # virtual tokens (then the model sees no input_ids and cannot locate padding itself)
        ctx.tokenizer.padding_side = "left"
    ctx.notes.append(f"base weights in memory: {model.get_memory_footprint() / 2**20:.1f} MiB")
    return model


def is_decoder_classifier(model: Any) -> bool:
    return hasattr(model, "score") and not hasattr(model, "classifier")


def trainable_parameters(model: Any) -> tuple[int, int]:
    """(trainable, all) counted exactly as peft's print_trainable_parameters() does."""
    if hasattr(model, "get_nb_trainable_parameters"):
        return model.get_nb_trainable_parameters()
    trainable = all_params = 0
    for p in model.parameters():
        n = p.numel()
        if n == 0 and hasattr(p, "ds_numel"):
            n = p.ds_numel
        all_params += n
        if p.requires_grad:
            trainable += n
    return trainable, all_params


def full_precision_bytes(model: Any) -> int:
    """What the weights would take unquantized in fp32 (4-bit params hold two values per byte)."""
    total = 0
    for p in model.parameters():
        n = p.numel()
        if p.__class__.__name__ == "Params4bit":
            n *= 2
        total += n * 4
    return total


def trainable_report(model: Any) -> str:
    trainable, total = trainable_parameters(model)
    return f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}"


def apply_method(ctx: Context, model: Any) -> tuple[Any, str]:
    weight_bytes, fp32_bytes = model.get_memory_footprint(), full_precision_bytes(model)
    if weight_bytes < fp32_bytes * 0.9:
        note = (
            f"quantized base weights: {weight_bytes / 2**20:.1f} MiB vs {fp32_bytes / 2**20:.1f} MiB unquantized fp32 "
            f"({100 * (1 - weight_bytes / fp32_bytes):.0f}% less)"
        )
        ctx.notes.append(note)
        info(f"[green]{ctx.cfg.method}[/green] {note}")
    ctx.weight_memory = {"weights_bytes": weight_bytes, "fp32_weights_bytes": fp32_bytes}
    model = ctx.method.apply(model, ctx.cfg.method_options(), ctx.task)
    report = trainable_report(model)
    info(f"[green]{ctx.cfg.method}[/green] {report}")
    return model, report


def fit(ctx: Context, model: Any, train_rows: list[dict], eval_rows: list[dict]) -> dict[str, Any]:
    """Train with the shared Trainer setup; returns throughput and memory figures."""
    import time
    from contextlib import nullcontext

    from transformers import EarlyStoppingCallback

    from tunelab.training.packed_attention import packed_attention
    from tunelab.training.trainer import (
        MetricsFileCallback,
        RichProgressCallback,
        TokenCountingCollator,
        make_collator,
        peak_memory_gib,
        trainer_class,
        training_arguments,
    )

    if not train_rows:
        raise TunelabError("no training rows left after preparation", file=ctx.cfg.data.train, expected="at least one row")
    t = ctx.cfg.training
    args = training_arguments(
        ctx.cfg, ctx.run.checkpoints, ctx.precision, has_eval=bool(eval_rows), n_train=len(train_rows)
    )
    packed = t.padding_free and ctx.task.packs_rows and ctx.method.padding_free
    if t.padding_free and ctx.task.packs_rows and not ctx.method.padding_free:
        ctx.notes.append(f"method {ctx.method.name} prepends virtual tokens per row: batches are padded, not packed")
    collator = TokenCountingCollator(make_collator(ctx.tokenizer, padding_free=packed, kind=ctx.task.model_kind))
    callbacks: list[Any] = [MetricsFileCallback(ctx.run.metrics), RichProgressCallback()]
    if t.early_stopping_patience and args.load_best_model_at_end:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=t.early_stopping_patience))
    if hasattr(model, "config"):
        model.config.use_cache = False  # packed rows + KV cache give silently wrong logits; training needs no cache
    sliced = ctx.task.model_kind == "causal_lm" and ctx.method.sliced_logits
    trainer = trainer_class(sliced, ctx.class_weights)(
        model=model,
        args=args,
        train_dataset=train_rows,
        eval_dataset=eval_rows or None,
        data_collator=collator,
        processing_class=ctx.tokenizer,
        callbacks=callbacks,
    )
    trainer.remove_callback(_printer_callback())
    if ctx.task.model_kind == "seq_cls":
        # classifier losses are per-batch means: let Trainer divide them across accumulation steps
        trainer.model_accepts_loss_kwargs = False
    checkpoint = ctx.run.last_checkpoint() if ctx.resume else None
    if ctx.resume and checkpoint is None:
        info("[yellow]no checkpoint found: training from the start[/yellow]")
    started = time.time()
    with packed_attention(model) if packed else nullcontext():
        output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    seconds = time.time() - started
    if hasattr(model, "config"):
        model.config.use_cache = True
    return {
        "train_seconds": round(seconds, 1),
        "train_tokens": collator.tokens,
        "train_tokens_per_second": round(collator.tokens / seconds, 1) if seconds > 0 else None,
        "train_loss": round(output.training_loss, 4),
        "global_step": trainer.state.global_step,
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "peak_memory_gib": round(peak_memory_gib(), 2),
        "trainer": trainer,
    }


def _printer_callback() -> Any:
    from transformers.trainer_callback import PrinterCallback

    return PrinterCallback


def save_trained(ctx: Context, model: Any, fmt: Any) -> Path:
    """Weights (safetensors), tokenizer and prompt format, so the run can be used without its config."""
    directory = ctx.run.path / ctx.method.weights_dir
    directory.mkdir(parents=True, exist_ok=True)
    save_weights(ctx.method, model, directory)
    ctx.tokenizer.save_pretrained(ctx.run.tokenizer_dir)
    if fmt is not None:
        fmt.save(ctx.run.template)
    return directory


def train_and_save(ctx: Context, model: Any, train_rows: list, eval_rows: list, fmt: Any) -> dict[str, Any]:
    """Apply the method, train, save: the middle of every recipe. Returns the model and what happened."""
    model, trainable = apply_method(ctx, model)
    stats = fit(ctx, model, train_rows, eval_rows)
    stats.pop("trainer")
    weights = save_trained(ctx, model, fmt)
    ctx.model = model
    return {
        "model": model,
        "trainable": trainable,
        "training": stats,
        "weights": str(weights),
        "weight_memory": ctx.weight_memory,
    }


def write_results(ctx: Context, trained: dict[str, Any], *, base: Any, tuned: Any, n_test: int) -> dict[str, Any]:
    """eval.json: base and tuned metrics side by side, with how training went."""
    from tunelab.run import write_json_atomic

    results = {
        "task": ctx.cfg.task,
        "metrics": {"base": base, "tuned": tuned},
        "n_test": n_test,
        **{k: v for k, v in trained.items() if k != "model"},
    }
    write_json_atomic(ctx.run.eval_json, results)
    return results


def truncation_note(n_truncated: int, n: int, max_length: int, split: str) -> str | None:
    if not n_truncated:
        return None
    return f"{n_truncated} of {n} {split} rows ({100 * n_truncated / n:.1f}%) were longer than max_length={max_length} tokens and were truncated"
