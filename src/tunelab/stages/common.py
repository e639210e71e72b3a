"""Pieces every training recipe uses, in the order a recipe calls them."""

from __future__ import annotations

import errno
import json
import random
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tunelab.data.splits import Splits, splits_from_config
from tunelab.errors import TunelabError
from tunelab.methods.base import save_weights
from tunelab.models.kinds import is_decoder_classifier
from tunelab.models.loading import load_tokenizer
from tunelab.progress import info
from tunelab.runs.layout import checkpoint_problem, checkpoint_step, read_metrics, write_json_atomic
from tunelab.stages.base import Context, base_model_kwargs, base_model_path


def setup(ctx: Context) -> None:
    """Seed, threads, model path and tokenizer."""
    import torch
    from transformers import set_seed

    from tunelab.training.device import choose_precision

    t = ctx.cfg.training
    if t.threads:
        torch.set_num_threads(t.threads)
    set_seed(t.seed)
    random.seed(t.seed)
    ctx.model_path = base_model_path(ctx.cfg, ctx.run)
    ctx.tokenizer = load_tokenizer(ctx.model_path, trust_remote_code=ctx.cfg.model.trust_remote_code)
    ctx.precision = choose_precision(t.precision)
    ctx.notes.append(f"model {ctx.cfg.model.name} ({ctx.model_path}); precision {ctx.precision}")
    if ctx.cfg.model.init_from:
        ctx.notes.append(f"started from run {ctx.cfg.model.init_from}: its trained weights, merged into "
                         f"{ctx.run.init_model.name}/ (the reference model of preference and RL stages too)")  # fmt: skip
    defaults = ctx.cfg.method_defaults_note()
    if defaults:
        ctx.notes.append(defaults)
        info(f"[green]{ctx.cfg.method}[/green] {defaults}")


def responses_only(cfg: Any) -> tuple[str, tuple[str, ...]] | None:
    """A `Stage.refuse` for preference, reward and RL stages: they compare or score responses, so
    `data.train_on_prompt` would be silently ignored; refuse it instead."""
    if cfg.data.train_on_prompt:
        return (f"is set, but a {cfg.task} run compares or scores responses to a prompt and never trains on the "
                "prompt; remove it", ("data", "train_on_prompt"))  # fmt: skip
    return None


def load_data(ctx: Context) -> Splits:
    """The splits the data check already carved (read once), or read them now for a recipe run alone."""
    splits = ctx.splits if ctx.splits is not None else splits_from_config(ctx.cfg.data, ctx.cfg._source_dir)
    allowed_shapes = ctx.stage.shapes
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


def held_out(ctx: Context, splits: Splits) -> list:
    """The test rows a recipe judges on: the test split, cut to `evaluation.max_examples`."""
    n = ctx.cfg.evaluation.max_examples
    return splits.test[:n] if n else splits.test


def load_base_model(ctx: Context, labels: list[str] | None = None) -> Any:
    """The base model as the method trains on it (a classifier head sized for `labels`)."""
    from tunelab.models.loading import load_model

    ctx.labels = labels
    kwargs = base_model_kwargs(ctx.stage, ctx.method, ctx.cfg, ctx.precision, ctx.tokenizer, labels)
    model = load_model(ctx.model_path, ctx.stage.model_kind, **kwargs)
    if ctx.method.prepare_for_training is not None:
        model = ctx.method.prepare_for_training(model)
    if ctx.stage.kind.classifier and is_decoder_classifier(model):
        # decoder heads read the last token; left padding keeps it real even when peft prepends
        # virtual tokens (then the model sees no input_ids and cannot locate padding itself)
        ctx.tokenizer.padding_side = "left"
    ctx.notes.append(f"base weights in memory: {model.get_memory_footprint() / 2**20:.1f} MiB")
    return model


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
    model = ctx.method.apply(model, ctx.cfg.method_options(), ctx.stage.kind)
    report = trainable_report(model)
    info(f"[green]{ctx.cfg.method}[/green] {report}")
    return model, report


def fit(ctx: Context, model: Any, train_rows: list[dict], eval_rows: list[dict], **options: Any) -> dict[str, Any]:
    """Train with the shared Trainer setup (`_fit`), the chosen experiment trackers pointed inside the run."""
    from tunelab.training.trackers import tracker_environment

    with tracker_environment(ctx.cfg.training.report_to, ctx.run.path):
        return _fit(ctx, model, train_rows, eval_rows, **options)


def _fit(ctx: Context, model: Any, train_rows: list[dict], eval_rows: list[dict], *,
         loss_options: dict[str, Any] | None = None, build_trainer: Any = None, args_class: Any = None,
         extra_args: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """Train with the shared Trainer setup; returns throughput and memory figures.

    The stage's loss (`Stage.loss`, with `loss_options` such as class weights) picks the Trainer; a
    stage whose trainer is another library's (TRL's preference and RL trainers) passes
    `build_trainer(model=, args=, train_dataset=, eval_dataset=, data_collator=, processing_class=,
    callbacks=)` instead, with its config class (`args_class`, e.g. TRL's RewardConfig, and its own
    fields in `extra_args`), and keeps everything else: arguments, callbacks, resume, packing, figures.
    """
    from contextlib import nullcontext

    from transformers import EarlyStoppingCallback

    from tunelab.training.device import autocast_dtype, peak_memory_gib
    from tunelab.training.frozen_weights import frozen_weights_in
    from tunelab.training.losses import LOSSES, loss_trainer
    from tunelab.training.packed_attention import packed_attention, sharing_collator
    from tunelab.training.tied_embedding import sparse_tied_embedding_grad
    from tunelab.training.trainer import (
        MetricsFileCallback,
        NonFiniteGuard,
        RichProgressCallback,
        RunTotals,
        training_arguments,
    )

    if not train_rows:
        raise TunelabError("no training rows left after preparation", file=ctx.cfg.data.train, expected="at least one row")
    t = ctx.cfg.training
    stage, method = ctx.stage, ctx.method
    args = training_arguments(ctx.cfg, ctx.run.checkpoints, ctx.precision, has_eval=bool(eval_rows),
                              n_train=len(train_rows), args_class=args_class, **(extra_args or {}))  # fmt: skip
    stage_packs = stage.kind.packs
    packed = t.padding_free and stage_packs and method.packs_rows
    if t.padding_free and stage_packs and not method.packs_rows:
        ctx.notes.append(f"method {method.name} prepends virtual tokens per row: batches are padded, not packed")
    checkpoint = resume_checkpoint(ctx) if ctx.resume else None
    # step 0 of the loss curve: the validation loss before any training, measured by the Trainer once
    # it has prepared the model (an evaluate() before train() would leave it unwrapped: no DDP)
    args.eval_on_start = args.eval_strategy != "no" and checkpoint is None
    totals = RunTotals.from_checkpoint(checkpoint)
    callbacks: list[Any] = [
        MetricsFileCallback(ctx.run.metrics, seconds_before=totals.seconds_before),
        RichProgressCallback(),
    ]
    guard = NonFiniteGuard(totals, run=ctx.run, lr=t.lr, check_gradients=ctx.precision != "fp16")
    callbacks.append(guard)
    if t.early_stopping_patience and args.load_best_model_at_end:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=t.early_stopping_patience))
    if hasattr(model, "config"):
        model.config.use_cache = False  # packed rows + KV cache give silently wrong logits; training needs no cache
    make = build_trainer or loss_trainer(stage.loss, sliced_logits=method.sliced_logits, options=loss_options)
    collator = stage.kind.collator(ctx.tokenizer, padding_free=packed)
    if packed and t.share_prefix:
        collator = sharing_collator(model, collator)
    trainer = make(
        model=model,
        args=args,
        train_dataset=train_rows,
        eval_dataset=eval_rows or None,
        data_collator=collator,
        processing_class=ctx.tokenizer,
        callbacks=callbacks,
    )
    trainer.remove_callback(_printer_callback())
    for asked, running, name in ((args.fsdp, trainer.is_fsdp_enabled, "FSDP"),
                                 (args.deepspeed, trainer.is_deepspeed_enabled, "DeepSpeed")):  # fmt: skip
        if asked and not running:  # accelerate drops FSDP without a word on CPUs: never train as something else
            raise TunelabError(f"{name} was asked for but the Trainer would train without it (plain DDP) here",
                               field="distributed.strategy", expected="ddp on this machine")  # fmt: skip
    totals.attach(trainer)
    guard.watch(trainer)
    if build_trainer is None and LOSSES[stage.loss].per_batch_mean:
        # per-batch-mean losses: let Trainer divide them across accumulation steps
        trainer.model_accepts_loss_kwargs = False
    # tunelab's own Trainer runs every forward under autocast (a TRL trainer may generate outside it);
    # FSDP and DeepSpeed flatten and cast the weights themselves
    sharded = ctx.world.distributed and ctx.cfg.distributed.strategy != "ddp"
    half = method.holds_frozen_in_half and build_trainer is None and not sharded
    held = autocast_dtype(ctx.precision) if half else None  # None: nothing held
    # one process alone: DDP, FSDP and DeepSpeed decide at wrap time how they reduce each gradient
    with packed_attention(model) if packed else nullcontext(), frozen_weights_in(model, held), \
            sparse_tied_embedding_grad(model, enabled=not ctx.world.distributed), disk_full_message(ctx.run.path):
        if checkpoint is not None and training_finished(checkpoint):
            # killed after the last step (during the final evaluation or the report): the Trainer
            # would train one step more than asked, so load the finished weights instead
            load_finished(trainer, checkpoint, ctx)
        else:
            trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    if hasattr(model, "config"):
        model.config.use_cache = True
    seconds, steps = totals.seconds, trainer.state.global_step
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # accelerate wraps it
    return {
        "optimizer": f"{type(optimizer).__module__}.{type(optimizer).__qualname__}" if optimizer is not None else None,
        # the whole run's figures, over every process a resumed run took
        "train_seconds": round(seconds, 1),
        "train_tokens": totals.tokens or None,  # None: the trainer samples its own (GRPO)
        "train_tokens_per_second": round(totals.tokens / seconds, 1) if seconds > 0 and totals.tokens else None,
        "train_loss": round(totals.loss_sum / steps, 4) if steps else None,
        "global_step": steps,
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "peak_memory_gib": round(peak_memory_gib(), 2),
        "trainer": trainer,
    }


def training_finished(checkpoint: Path) -> bool:
    """Whether a checkpoint was saved at the run's last step."""
    state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    return state.get("max_steps", 0) > 0 and state.get("global_step", 0) >= state["max_steps"]


def load_finished(trainer: Any, checkpoint: Path, ctx: Context) -> None:
    """Put a finished run's trained weights (the best checkpoint's when the run keeps the best) into
    `trainer`'s model, with the Trainer state they were saved with."""
    from transformers import TrainerState

    trainer.state = TrainerState.load_from_json(str(checkpoint / "trainer_state.json"))
    best = trainer.state.best_model_checkpoint
    if trainer.args.load_best_model_at_end and best and Path(best).is_dir():
        trainer._load_best_model()  # noqa: SLF001 - the Trainer's own end-of-training step
    else:
        trainer._load_from_checkpoint(str(checkpoint))  # noqa: SLF001 - the Trainer's own resume loader
    note = f"{checkpoint.name} was saved after the last step: nothing left to train, its weights were loaded"
    ctx.notes.append(note)
    info(f"[yellow]resume[/yellow] {note}")


@contextmanager
def disk_full_message(run_dir: Path) -> Iterator[None]:
    """A full disk during a save becomes one clear message (the previous checkpoint stays: the Trainer
    removes old checkpoints only after a new one is written, and resume skips one cut short)."""
    try:
        yield
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        raise TunelabError(
            f"the disk is full ({err.filename or 'while saving'})",
            file=str(run_dir),
            expected="free space, then `tunelab train --resume RUN_DIR` continues from the last complete checkpoint",
        ) from err


def resume_checkpoint(ctx: Context) -> Path | None:
    """The checkpoint a resumed run continues from: the newest complete one. Newer ones a kill or a
    full disk cut short are removed (unusable, and in the way of this run's save of the same step),
    and metrics.jsonl loses the rows logged after it (those steps are trained again)."""
    checkpoint = ctx.run.last_checkpoint()
    if not ctx.writes:  # rank 0 tidies the folder; the others only read the checkpoint it resumes from
        return checkpoint
    for skipped in ctx.run.checkpoint_dirs():
        if skipped == checkpoint:
            break
        note = (f"{skipped.name} was incomplete ({checkpoint_problem(skipped)}) and was removed; resuming from "
                f"{checkpoint.name if checkpoint else 'the start'}")  # fmt: skip
        shutil.rmtree(skipped)
        ctx.notes.append(note)
        info(f"[yellow]resume[/yellow] {note}")
    if checkpoint is None:
        info("[yellow]no checkpoint found: training from the start[/yellow]")
    # the steps logged after the checkpoint (all of them, without one) are trained again
    ctx.run.truncate_metrics(checkpoint_step(checkpoint) if checkpoint else -1)
    return checkpoint


def _printer_callback() -> Any:
    from transformers.trainer_callback import PrinterCallback

    return PrinterCallback


def gathered_model(ctx: Context, trainer: Any) -> Any:
    """After FSDP or ZeRO-3 training each process holds a shard of the weights: every process takes
    part in gathering the whole state dict, and rank 0 loads it into a fresh, unsharded model of the
    same kind (base, method applied), which it then saves and evaluates like a one-process run's
    model. The other ranks get None. Rank 0 must hold the whole model for that (in CPU memory first)."""
    from tunelab.models.loading import load_model

    state = trainer.accelerator.get_state_dict(trainer.model_wrapped)  # a collective: every rank calls it
    if not ctx.writes:
        return None
    if trainer.is_deepspeed_enabled:
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        # training is over: from here on rank 0 loads and generates alone, so no ZeRO-3 partitioning at
        # load and no generation in step with the other processes (which have stopped)
        unset_hf_deepspeed_config()
    kwargs = base_model_kwargs(ctx.stage, ctx.method, ctx.cfg, ctx.precision, ctx.tokenizer, ctx.labels)
    model = load_model(ctx.model_path, ctx.stage.model_kind, **kwargs)
    if ctx.method.prepare_for_training is not None:
        model = ctx.method.prepare_for_training(model)
    model = ctx.method.apply(model, ctx.cfg.method_options(), ctx.stage.kind)
    missing, unexpected = model.load_state_dict(state, strict=False)
    trained = {name for name, p in model.named_parameters() if p.requires_grad}
    if unexpected or trained & set(missing):
        raise RuntimeError(f"the gathered weights do not fit the model: missing {sorted(trained & set(missing))[:3]}, "
                           f"unexpected {sorted(unexpected)[:3]}")  # fmt: skip
    return model


def save_trained(ctx: Context, model: Any, fmt: Any) -> Path:
    """Weights (safetensors), tokenizer and prompt format, so the run can be used without its config."""
    directory = ctx.run.path / ctx.method.weights_dir
    directory.mkdir(parents=True, exist_ok=True)
    save_weights(ctx.method, model, directory)
    ctx.tokenizer.save_pretrained(ctx.run.tokenizer_dir)
    if fmt is not None:
        fmt.save(ctx.run.template)
    return directory


def train_and_save(ctx: Context, model: Any, train_rows: list, eval_rows: list, fmt: Any,
                   **fit_options: Any) -> dict[str, Any]:
    """Apply the method, train, save: the middle of every recipe (`fit_options` go to `fit`). Returns
    the model and what happened."""
    from tunelab.training.distributed import WorkerFinished, shards_weights

    model, trainable = apply_method(ctx, model)
    stats = fit(ctx, model, train_rows, eval_rows, **fit_options)
    trainer = stats.pop("trainer")
    if shards_weights(ctx.cfg.distributed, ctx.world):
        model = gathered_model(ctx, trainer)
    if not ctx.writes:  # saving and evaluating are rank 0's
        raise WorkerFinished
    weights = save_trained(ctx, model, fmt)
    ctx.model = model
    return {
        "model": model,
        "trainable": trainable,
        "training": stats,
        "weights": str(weights),
        "weight_memory": ctx.weight_memory,
    }


def write_results(ctx: Context, trained: dict[str, Any], *, base: Any, tuned: Any, n_test: int,
                  paired: tuple[Any, list, list] | None = None, extra: dict | None = None) -> dict[str, Any]:  # fmt: skip
    """eval.json: base and tuned metrics side by side, with how training went and, when the run shows
    no sign of learning, why (`warnings`: also in run.json, the console and the report's first lines).
    `paired` is (MetricSpec, base statistics, tuned statistics) of the stage's first headline metric
    per held-out row, for the paired bootstrap interval of tuned − base (`learning_check`)."""
    check = learning_check(ctx, base, tuned, paired)
    warnings = learning_warnings(ctx, base, tuned, check)
    for warning in warnings:
        info(f"[yellow]did not learn?[/yellow] {warning}")
    results = {
        "task": ctx.cfg.task,
        "metrics": {"base": base, "tuned": tuned},
        "n_test": n_test,
        **{k: v for k, v in trained.items() if k != "model"},
        "learning_check": check,
        "warnings": warnings,
        **(extra or {}),  # a stage's own findings (sft: the off-task probes)
    }
    write_json_atomic(ctx.run.eval_json, results)
    return results


def learning_check(ctx: Context, base: Any, tuned: Any, paired: tuple[Any, list, list] | None) -> dict | None:
    """Tuned − base on the first headline metric with its 95% paired bootstrap interval, and whether
    the tuned model is better beyond doubt (the interval excludes zero on the right side)."""
    if paired is None or not base or not tuned:
        return None
    spec, base_stats, tuned_stats = paired
    return interval_check(spec, base_stats, tuned_stats)


def interval_check(metric: Any, base_stats: list, tuned_stats: list) -> dict[str, Any]:
    """Tuned − base of a metric (a MetricSpec, or the name of a per-row mean) over paired per-row
    statistics, with its 95% paired bootstrap interval; `better`: beyond doubt, in the metric's direction."""
    from tunelab.evaluation.bootstrap import mean_metric, paired_bootstrap
    from tunelab.evaluation.metrics import LOWER_IS_BETTER

    spec = mean_metric(metric) if isinstance(metric, str) else metric
    r = paired_bootstrap(spec, base_stats, tuned_stats)
    lower = spec.name in LOWER_IS_BETTER
    return {"metric": spec.name, "base": r["a"], "tuned": r["b"], "delta": r["delta"], "low": r["low"],
            "high": r["high"], "better": bool(r["high"] < 0 if lower else r["low"] > 0), "n": len(base_stats)}  # fmt: skip


def learning_warnings(ctx: Context, base: dict[str, Any] | None, tuned: dict[str, Any] | None,
                      check: dict[str, Any] | None = None) -> list[str]:  # fmt: skip
    """Signs that a finished run learned nothing: its final logged train loss is not below the first, or
    the tuned model is not better than the base on held-out rows (by the interval of `check` when the
    stage gave per-row statistics, else by the stage's first headline metric)."""
    from tunelab.evaluation.metrics import LOWER_IS_BETTER

    out = []
    from tunelab.training.losses import LOSSES

    losses = []
    if ctx.run.metrics.is_file() and LOSSES[ctx.stage.loss].shows_learning:
        losses = [row["loss"] for row in read_metrics(ctx.run.metrics) if isinstance(row.get("loss"), int | float)]
    if len(losses) >= 2 and losses[-1] >= losses[0]:
        out.append(f"the final train loss ({losses[-1]:.4g}) is not below the first ({losses[0]:.4g})")
    if check is not None:
        if not check["better"]:
            out.append(f"the tuned model is not clearly better than the base on held-out {check['metric']} "
                       f"({check['tuned']:.4g} vs {check['base']:.4g}; 95% interval of the difference "
                       f"[{check['low']:+.4g}, {check['high']:+.4g}] over {check['n']} rows)")  # fmt: skip
        return out
    key = ctx.stage.headline_metrics[0]
    if base and tuned and isinstance(base.get(key), int | float) and isinstance(tuned.get(key), int | float):
        b, t = base[key], tuned[key]
        if not (t < b if key in LOWER_IS_BETTER else t > b):
            out.append(f"the tuned model is not better than the base on held-out {key} ({t:.4g} vs {b:.4g})")
    return out


def note_truncation(ctx: Context, n_truncated: int, n: int, split: str) -> None:
    """Say (in the run notes and the console) how many rows data.max_length cut short."""
    if not n_truncated:
        return
    note = (f"{n_truncated} of {n} {split} rows ({100 * n_truncated / n:.1f}%) were longer than "
            f"max_length={ctx.cfg.data.max_length} tokens and were truncated")  # fmt: skip
    ctx.notes.append(note)
    info(f"[yellow]data[/yellow] {note}")
