"""Pieces every training recipe uses, in the order a recipe calls them."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.data.splits import Splits, load_splits
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


def load_data(ctx: Context, *, allowed_shapes: tuple[str, ...] | None = None) -> Splits:
    d = ctx.cfg.data
    splits = load_splits(
        d.train,
        validation=d.validation,
        test=d.test,
        columns=d.columns or None,
        shape=d.shape,
        validation_fraction=d.split.validation,
        test_fraction=d.split.test,
        seed=d.split.seed,
        limit=d.limit,
        base_dir=ctx.cfg._source_dir,
    )
    if allowed_shapes is not None and splits.shape not in allowed_shapes:
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


def load_base_model(ctx: Context) -> Any:
    return ctx.task.load_model(ctx.model_path, trust_remote_code=ctx.cfg.model.trust_remote_code)


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


def trainable_report(model: Any) -> str:
    trainable, total = trainable_parameters(model)
    return f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}"


def apply_method(ctx: Context, model: Any) -> tuple[Any, str]:
    model = ctx.method.apply(model, ctx.cfg.method_options(), ctx.task)
    report = trainable_report(model)
    info(f"[green]{ctx.cfg.method}[/green] {report}")
    return model, report


def fit(ctx: Context, model: Any, train_rows: list[dict], eval_rows: list[dict]) -> dict[str, Any]:
    """Train with the shared Trainer setup; returns throughput and memory figures."""
    import time

    from transformers import EarlyStoppingCallback

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
    collator = TokenCountingCollator(make_collator(ctx.tokenizer, padding_free=t.padding_free))
    callbacks: list[Any] = [MetricsFileCallback(ctx.run.metrics), RichProgressCallback()]
    if t.early_stopping_patience and args.load_best_model_at_end:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=t.early_stopping_patience))
    if hasattr(model, "config"):
        model.config.use_cache = False  # packed rows + KV cache give silently wrong logits; training needs no cache
    sliced = ctx.task.model_kind == "causal_lm" and ctx.method.sliced_logits
    trainer = trainer_class(sliced)(
        model=model,
        args=args,
        train_dataset=train_rows,
        eval_dataset=eval_rows or None,
        data_collator=collator,
        processing_class=ctx.tokenizer,
        callbacks=callbacks,
    )
    trainer.remove_callback(_printer_callback())
    checkpoint = ctx.run.last_checkpoint() if ctx.resume else None
    if ctx.resume and checkpoint is None:
        info("[yellow]no checkpoint found: training from the start[/yellow]")
    started = time.time()
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
    fmt.save(ctx.run.template)
    return directory


def train_and_save(ctx: Context, model: Any, train_rows: list, eval_rows: list, fmt: Any) -> dict[str, Any]:
    """Apply the method, train, save: the middle of every recipe. Returns the model and what happened."""
    model, trainable = apply_method(ctx, model)
    stats = fit(ctx, model, train_rows, eval_rows)
    stats.pop("trainer")
    weights = save_trained(ctx, model, fmt)
    return {"model": model, "trainable": trainable, "training": stats, "weights": str(weights)}


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
