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
from transformers.trainer_callback import ExportableState

from tunelab.errors import TunelabError
from tunelab.models.loading import import_deepspeed_only_when_used
from tunelab.progress import make_progress
from tunelab.runs.layout import RunDir
from tunelab.training.distributed import trainer_arguments as distributed_arguments
from tunelab.training.distributed import world
from tunelab.training.shared_prefix import row_tokens


class RunTotals(TrainerCallback, ExportableState):
    """Tokens, loss and seconds of the whole run, resumes included.

    Counted per micro-batch as it is trained (the collator also sees the batch the dataloader
    prefetches past the last step): non-padding tokens (the attention mask, or every token of a
    packed row) and the loss `training_step` returns, summed as Python floats so a resumed run adds
    up to exactly what an uninterrupted one does. The figures so far are saved in each checkpoint's
    trainer_state.json (`stateful_callbacks`), and `from_checkpoint` starts a resumed run from them.
    """

    def __init__(self, tokens: int = 0, loss_sum: float = 0.0, seconds: float = 0.0) -> None:
        self.tokens = tokens
        self.loss_sum = loss_sum
        self.seconds_before = seconds  # training time so far (earlier processes of a resumed run too)
        self.started: float | None = None  # while training
        self.last_loss: float | None = None

    @classmethod
    def from_checkpoint(cls, checkpoint: Path | None) -> RunTotals:
        if checkpoint is None:
            return cls()
        state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
        saved = state.get("stateful_callbacks", {}).get(cls.__name__, {}).get("attributes", {})
        return cls(int(saved.get("tokens", 0)), float(saved.get("loss_sum", 0.0)), float(saved.get("seconds", 0.0)))

    @property
    def seconds(self) -> float:
        return self.seconds_before + (time.time() - self.started if self.started is not None else 0.0)

    def state(self) -> dict:
        return {"args": {}, "attributes": {"tokens": self.tokens, "loss_sum": self.loss_sum, "seconds": self.seconds}}

    def attach(self, trainer: Any) -> None:
        """Count every micro-batch `trainer` trains (wraps its `training_step`)."""
        trainer.add_callback(self)
        step = trainer.training_step

        processes = world().size

        def counted_step(model: Any, inputs: dict, *args: Any, **kwargs: Any) -> Any:
            loss = step(model, inputs, *args, **kwargs)
            tokens, value = batch_tokens(inputs), float(loss)
            if processes > 1:  # every process counts the whole run: all tokens, the mean loss
                tokens, value = summed_over_processes(loss, tokens, value)
                value /= processes
            self.tokens += tokens
            self.last_loss = value
            self.loss_sum += self.last_loss
            return loss

        trainer.training_step = counted_step

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001
        self.started = time.time()

    def on_evaluate(self, args, state, control, **kwargs):  # noqa: ANN001
        if state.global_step == 0 and self.started is not None:
            self.started = time.time()  # the validation loss before training (eval_on_start) is not training time

    def on_train_end(self, args, state, control, **kwargs):  # noqa: ANN001
        self.seconds_before, self.started = self.seconds, None


def summed_over_processes(like: Any, tokens: int, value: float) -> tuple[int, float]:
    """(tokens, value) summed over the run's processes (a tensor on `like`'s device: nccl needs the GPU)."""
    import torch
    import torch.distributed as dist

    both = torch.tensor([float(tokens), value], dtype=torch.float64, device=like.device)
    dist.all_reduce(both)
    return int(both[0].item()), float(both[1].item())


def batch_tokens(inputs: dict) -> int:
    """Non-padding tokens of a collated batch: its attention mask(s), else its packed rows' tokens. 0 for
    what is not a collated batch (GRPO trains on rows it samples answers for inside the step)."""
    if not isinstance(inputs, dict):
        return 0
    if "attention_mask" in inputs:
        return int(inputs["attention_mask"].sum())
    ids, positions = inputs.get("input_ids"), inputs.get("position_ids")
    if hasattr(ids, "shape") and hasattr(positions, "shape") and ids.shape[0] == 1 and positions.shape == ids.shape:
        return row_tokens(positions)  # packed rows: a shared prefix counts in every row that reads it
    masks = [v for k, v in inputs.items() if k.endswith("attention_mask") and hasattr(v, "sum")]
    if masks:
        return int(sum(int(m.sum()) for m in masks))
    masks = [v for k, v in inputs.items() if k.endswith("_mask") and hasattr(v, "sum")]  # GRPO: prompt + completion
    if masks:
        return int(sum(int(m.sum()) for m in masks))
    return int(sum(v.numel() for k, v in inputs.items() if k.endswith("input_ids") and hasattr(v, "numel")))


class TrainingDiverged(TunelabError):
    """The loss, the gradients or the weights stopped being finite numbers."""


class NonFiniteGuard(TrainerCallback):
    """Stops the run when training stops being numbers, before the damage is written anywhere.

    Before every optimizer step: the micro-batch losses and the gradients must be finite (so NaN
    weights are never produced from them); before every save, evaluation and the end: the weights.
    The Trainer's own `logging_nan_inf_filter` would hide a NaN loss in the logs and finish "complete"
    with NaN weights. Under fp16 the gradient scaler skips steps with inf gradients by design, so
    only the weights are checked there.
    """

    def __init__(self, totals: RunTotals, *, run: RunDir, lr: float, check_gradients: bool = True) -> None:
        self.totals = totals
        self.run = run
        self.lr = lr
        self.check_gradients = check_gradients
        self.step_losses: list[float] = []
        self.grad_norm: Any = None  # the Trainer's own norm of this step's gradients, once `watch` sees it

    def watch(self, trainer: Any) -> None:
        """Read the gradient norm the Trainer computes before every optimizer step (to clip and log it),
        instead of computing it again: over a full model's gradients that is ~20 ms a step on two CPU
        cores. A Trainer without the hook (another transformers) leaves the guard computing its own."""
        compute = getattr(trainer, "_get_grad_norm", None)
        if compute is None:
            return

        def recorded(model: Any, grad_norm: Any = None) -> Any:
            self.grad_norm = compute(model, grad_norm=grad_norm)
            return self.grad_norm

        trainer._get_grad_norm = recorded

    def _stop(self, step: int, what: str) -> None:
        last = self.run.last_checkpoint()
        kept = f"the last checkpoint is {last.name}" if last else "no checkpoint was written"
        raise TrainingDiverged(
            f"training stopped at step {step}: {what} not finite (NaN or inf); nothing was saved from it and {kept}",
            file=str(self.run.path),
            field="training.lr",
            expected=f"a smaller learning rate than {self.lr:g} (or a max_grad_norm); the run is marked failed",
        )

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):  # noqa: ANN001
        import torch

        step = state.global_step + 1
        if self.totals.last_loss is not None and not math.isfinite(self.totals.last_loss):
            self._stop(step, "the loss is")
        norm, self.grad_norm = self.grad_norm, None
        if self.check_gradients and norm is None and model is not None:
            grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
            norm = torch.nn.utils.get_total_norm(grads) if grads else None
        if self.check_gradients and norm is not None and not math.isfinite(float(norm)):
            self._stop(step, "the gradients are")

    def on_step_end(self, args, state, control, model=None, **kwargs):  # noqa: ANN001
        import torch

        if model is None or not (control.should_save or control.should_evaluate or state.global_step >= state.max_steps):
            return
        weights = [p.detach() for p in model.parameters() if p.requires_grad]
        if weights and not torch.isfinite(torch.nn.utils.get_total_norm(weights)):
            self._stop(state.global_step, "the trained weights are")


class MetricsFileCallback(TrainerCallback):
    """Appends every logged dict to metrics.jsonl (with step and wall time) as it happens."""

    def __init__(self, path: Path, *, seconds_before: float = 0.0) -> None:
        self.path = path
        self.start = time.time() - seconds_before  # a resumed run's clock continues the earlier one's

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
        if not logs or not state.is_world_process_zero:
            return
        # max_steps: how far the run has to go, for progress and ETA read from the file (`tunelab ui`)
        row = {"step": state.global_step, "max_steps": state.max_steps, "epoch": round(state.epoch or 0.0, 4), **logs}
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

    import_deepspeed_only_when_used()
    args_class = args_class or TrainingArguments
    if args_class is not TrainingArguments:
        extra.setdefault("gradient_checkpointing", cfg.training.gradient_checkpointing)
    t = cfg.training
    current = world()
    if current.distributed:
        extra = {**distributed_arguments(cfg.distributed, cuda=_cuda(), training=t), **extra}
    eval_on = has_eval and t.eval_steps is not None
    steps_per_epoch = max(1, math.ceil(n_train / (t.batch_size * t.grad_accum * current.size)))
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
        # trackers: pointed inside the run by `trackers` (a memory measurement passes "none")
        report_to=extra.pop("report_to", list(t.report_to) or "none"),
        run_name=cfg.name,
        disable_tqdm=True,  # replaced by RichProgressCallback
        logging_nan_inf_filter=False,  # a NaN loss is logged as NaN (and NonFiniteGuard stops the run)
        remove_unused_columns=False,
        prediction_loss_only=True,  # eval needs the loss only; gathering full-vocab logits is slow
        dataloader_num_workers=0,
        use_cpu=not _cuda(),  # checkpoints are safetensors: transformers 5 writes nothing else
        **extra,
    )


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
