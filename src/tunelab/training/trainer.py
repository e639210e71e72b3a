"""The shared training loop: a transformers `Trainer` configured from a run config.

tunelab adds what the anchors make users hand-write: the precision choice, padding-free batches,
every logged value in `metrics.jsonl`, a rich progress bar with ETA, non-padding token throughput
and peak memory.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from tunelab.progress import make_progress


class TokenCountingCollator:
    """Wraps a collator and counts the non-padding tokens it hands to training."""

    def __init__(self, collate: Any) -> None:
        self.collate = collate
        self.tokens = 0

    def __call__(self, features: list[dict]) -> dict:
        # every token sequence of a row: input_ids, or chosen_ids + rejected_ids of a preference pair
        self.tokens += sum(len(v) for f in features for k, v in f.items() if k.endswith("_ids"))
        return self.collate(features)


class MetricsFileCallback(TrainerCallback):
    """Appends every logged dict to metrics.jsonl (with step and wall time) as it happens."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.start = time.time()

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
        if not logs or not state.is_world_process_zero:
            return
        row = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4), **logs}
        row["time_s"] = round(time.time() - self.start, 2)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")


class RichProgressCallback(TrainerCallback):
    """Training and evaluation bars with ETA, showing the latest loss."""

    def __init__(self) -> None:
        self.progress = None
        self.train_task = None
        self.eval_task = None
        self.last = ""

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001
        self.progress = make_progress()
        self.progress.start()
        self.train_task = self.progress.add_task("train", total=state.max_steps, completed=state.global_step, info="")

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
        if self.progress is not None:
            self.progress.update(self.train_task, completed=state.global_step, info=self.last)

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
        if logs and "loss" in logs:
            self.last = f"loss {logs['loss']:.3f}"
        if logs and "eval_loss" in logs:
            self.last += f" · eval {logs['eval_loss']:.3f}"

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):  # noqa: ANN001
        if self.progress is None or eval_dataloader is None:
            return
        if self.eval_task is None:
            self.eval_task = self.progress.add_task("eval", total=len(eval_dataloader), info="")
        self.progress.advance(self.eval_task)

    def on_evaluate(self, args, state, control, **kwargs):  # noqa: ANN001
        if self.progress is not None and self.eval_task is not None:
            self.progress.remove_task(self.eval_task)
            self.eval_task = None

    def on_train_end(self, args, state, control, **kwargs):  # noqa: ANN001
        if self.progress is not None:
            self.progress.update(self.train_task, completed=state.global_step)
            self.progress.stop()
            self.progress = None


def training_arguments(cfg: Any, output_dir: Path, precision: str, *, has_eval: bool, n_train: int,
                       args_class: Any = None, **extra: Any) -> Any:  # fmt: skip
    """TrainingArguments from the run config; `args_class` (a TRL config such as RewardConfig) and
    `extra` (its own fields) for stages whose trainer is TRL's. TRL's CPU-unfriendly defaults
    (gradient checkpointing on) are overridden by the run's own settings."""
    from transformers import TrainingArguments

    args_class = args_class or TrainingArguments
    if args_class is not TrainingArguments:
        extra.setdefault("gradient_checkpointing", cfg.training.gradient_checkpointing)
    t = cfg.training
    eval_on = has_eval and t.eval_steps is not None
    steps_per_epoch = max(1, math.ceil(n_train / (t.batch_size * t.grad_accum)))
    total = t.max_steps or math.ceil(steps_per_epoch * t.epochs)
    save_steps = t.save_steps or total
    eval_steps = t.eval_steps or total
    if eval_on and t.load_best_model_at_end and save_steps % eval_steps:
        save_steps = eval_steps  # best-model selection needs a checkpoint at every evaluation
    return args_class(
        output_dir=str(output_dir),
        num_train_epochs=t.epochs,
        max_steps=t.max_steps or -1,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.lr,
        lr_scheduler_type=t.scheduler,
        warmup_steps=math.ceil(t.warmup_ratio * total),
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        optim=t.optimizer,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        activation_checkpointing=t.gradient_checkpointing,
        logging_strategy="steps",
        logging_steps=t.logging_steps,
        # no lone first-step point: one batch's loss swings 1.6–4.2 on chatterbot, so a curve starting
        # with it looked like training made things worse; step 0 is the validation loss instead
        logging_first_step=False,
        eval_strategy="steps" if eval_on else "no",
        eval_steps=eval_steps if eval_on else None,
        save_strategy="steps" if t.save_steps else "no",
        save_steps=save_steps,
        save_total_limit=t.save_total_limit,
        load_best_model_at_end=bool(eval_on and t.load_best_model_at_end and t.save_steps),
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        seed=t.seed,
        data_seed=t.seed,
        report_to="none",
        disable_tqdm=True,  # replaced by RichProgressCallback
        remove_unused_columns=False,
        prediction_loss_only=True,  # eval needs the loss only; gathering full-vocab logits is slow
        dataloader_num_workers=0,
        use_cpu=not _cuda(),  # checkpoints are safetensors: transformers 5 writes nothing else
        **extra,
    )


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
