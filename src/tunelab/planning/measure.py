"""`plan --measure`: train a few real steps of a config and read the memory it took, to set beside the
estimate.

The steps run tunelab's own training path — the base loaded as the method loads it (`stages.base`,
4-bit for QLoRA), the method applied, `training.trainer.training_arguments` from the config, the
stage's loss trainer (`training.losses`), the same collator and packed attention — on synthetic rows
of exactly `data.max_length` random tokens, every position labelled (the estimate's worst case and its
default `trained_fraction` of 1; a smaller fraction leaves the first tokens of each row unlabelled).
No data file is read and nothing is saved.

What is read: on CUDA, `torch.cuda.max_memory_allocated()` (reset after the model is loaded, so it
covers the training steps; the weights count, as they stay allocated). On CPU, the process's peak
resident set (VmHWM): reset after the model is loaded by writing 5 to /proc/self/clear_refs (Linux;
elsewhere `resource.getrusage`'s lifetime peak, which also covers loading), and reported both as is
and as growth over the RSS measured just before the model loaded — the figure the estimate's
allocated peak (framework overhead excluded) is comparable to.
"""

from __future__ import annotations

import os
import random
import resource
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.allocator import running
from tunelab.errors import TunelabError

MEASURE_STEPS = 3  # optimizer steps: the first creates the optimizer's states, later ones run with them


@dataclass
class Measured:
    device: str
    peak_bytes: float  # CUDA: max allocated; CPU: peak RSS while training
    baseline_bytes: float  # before the model loaded (CPU: RSS; CUDA: allocated)
    steps: int
    seconds: float
    tokens: int
    how: str
    notes: list[str] = field(default_factory=list)
    tensor_peak_bytes: float | None = None  # CPU with tensors=True: the most bytes torch's tensors held at once
    malloc: str = "glibc"  # the allocator the process ran on (CPU RSS depends on it)

    @property
    def growth_bytes(self) -> float:
        return self.peak_bytes - self.baseline_bytes

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "peak_bytes": round(self.peak_bytes), "baseline_bytes": round(self.baseline_bytes),
                "growth_bytes": round(self.growth_bytes), "steps": self.steps, "seconds": round(self.seconds, 2),
                "tokens": self.tokens, "how": self.how, "notes": self.notes,
                "tensor_peak_bytes": None if self.tensor_peak_bytes is None else round(self.tensor_peak_bytes),
                "malloc": self.malloc}  # fmt: skip


def _status_kib(field_name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _rss() -> float:
    kib = _status_kib("VmRSS")
    if kib is not None:
        return kib * 1024.0
    return _max_rss()


def _max_rss() -> float:
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return float(kib if sys.platform == "darwin" else kib * 1024)


def _reset_peak_rss() -> bool:
    """Reset the kernel's record of this process's peak RSS (Linux ≥ 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss() -> float:
    kib = _status_kib("VmHWM")
    return kib * 1024.0 if kib is not None else _max_rss()


def synthetic_rows(n: int, length: int, vocab: int, *, trained_fraction: float = 1.0, seed: int = 0,
                   attention_mask: bool = False) -> list[dict[str, list[int]]]:  # fmt: skip
    """Rows of `length` random token ids, labelled on their last `trained_fraction` of positions."""
    rng = random.Random(seed)
    skip = length - max(1, round(length * trained_fraction))
    rows = []
    for _ in range(n):
        ids = [rng.randrange(vocab) for _ in range(length)]
        row = {"input_ids": ids, "labels": [-100] * skip + ids[skip:]}
        if attention_mask:
            row["attention_mask"] = [1] * length
        rows.append(row)
    return rows


def tensor_peak(train: Any, alive_before: float) -> float:
    """The most bytes CPU tensors held at once while `train()` ran: `alive_before` (what was allocated
    when it started: the weights) plus the peak of torch's own running total of what it allocated since
    (the profiler's memory events, "Total Allocated"). The CPU analogue of torch.cuda.max_memory_allocated:
    what the allocator kept of freed memory (glibc's heap) is not in it, as the CUDA cache is not."""
    import json

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        train()
    with tempfile.TemporaryDirectory(prefix="tunelab-trace-") as tmp:
        trace = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text(encoding="utf-8")).get("traceEvents", [])
    totals = [e["args"]["Total Allocated"] for e in events if e.get("name") == "[memory]" and
              "Total Allocated" in e.get("args", {}) and e["args"].get("Device Type", 0) == 0]  # fmt: skip
    return alive_before + max(totals, default=0)


def _storage_bytes(model: Any) -> float:
    """Bytes of the distinct storages behind a model's parameters and buffers (tied weights once)."""
    seen: dict[int, int] = {}
    for t in [*model.parameters(), *model.buffers()]:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return float(sum(seen.values()))


def measure(cfg: Any, *, steps: int = MEASURE_STEPS, trained_fraction: float = 1.0, tensors: bool = False) -> Measured:
    """Train `steps` optimizer steps of a resolved RunConfig (check_before_loading already run) and
    read its peak memory. `tensors` (CPU): also count the peak of live tensor bytes with torch's profiler
    (`tensor_peak`); the profiler's own buffers then inflate the RSS figures."""
    import torch
    from transformers import set_seed
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from tunelab.config import resolve_config
    from tunelab.methods.registry import METHODS
    from tunelab.models.kinds import MODEL_KINDS
    from tunelab.models.loading import load_model, load_tokenizer, resolve_model
    from tunelab.progress import quiet_libraries
    from tunelab.stages.base import base_model_kwargs
    from tunelab.stages.registry import STAGES
    from tunelab.training.device import autocast_dtype, choose_precision
    from tunelab.training.frozen_weights import frozen_weights_in
    from tunelab.training.losses import LOSSES, loss_trainer
    from tunelab.training.packed_attention import packed_attention
    from tunelab.training.trainer import training_arguments

    stage, method = STAGES[cfg.task], METHODS[cfg.method]
    if stage.model_kind != "causal_lm" or LOSSES[stage.loss].compute is None:
        raise TunelabError(f"--measure trains causal-LM stages only (sft, pretrain), not {cfg.task}", field="task",
                           expected="an sft or pretrain config, or the estimate without --measure")  # fmt: skip
    if steps < 1:
        raise TunelabError(f"is {steps}", field="--steps", expected="1 or more")
    quiet_libraries()
    t = cfg.training
    if t.threads:
        torch.set_num_threads(t.threads)
    set_seed(t.seed)
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    notes: list[str] = []
    cfg = resolve_config(cfg, [f"training.max_steps={steps}", "training.save_steps=null", "training.eval_steps=null",
                               f"training.logging_steps={steps}", "training.early_stopping_patience=null"])  # fmt: skip
    precision = choose_precision(t.precision)
    kind = MODEL_KINDS[stage.model_kind]
    packed = t.padding_free and kind.packs and method.packs_rows
    path = resolve_model(cfg.model.name).path
    tokenizer = None if packed else load_tokenizer(path, trust_remote_code=cfg.model.trust_remote_code)

    if cuda:
        torch.cuda.synchronize()
        baseline = float(torch.cuda.memory_allocated())
    else:
        baseline = _rss()
    kwargs = base_model_kwargs(stage, method, cfg, precision, tokenizer, None)
    model = load_model(path, stage.model_kind, **kwargs)
    if method.prepare_for_training is not None:
        model = method.prepare_for_training(model)
    model = method.apply(model, cfg.method_options(), kind)
    vocab = int(model.get_input_embeddings().num_embeddings)
    rows = synthetic_rows(t.batch_size * t.grad_accum * steps, cfg.data.max_length, vocab,
                          trained_fraction=trained_fraction, seed=t.seed, attention_mask=not packed)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="tunelab-measure-") as tmp:
        args = training_arguments(cfg, Path(tmp), precision, has_eval=False, n_train=len(rows), report_to="none")
        make = loss_trainer(stage.loss, sliced_logits=method.sliced_logits)
        collator = kind.collator(tokenizer, padding_free=packed)
        if hasattr(model, "config"):
            model.config.use_cache = False
        trainer = make(model=model, args=args, train_dataset=rows, data_collator=collator, processing_class=tokenizer)
        for callback in (PrinterCallback, ProgressCallback):
            trainer.remove_callback(callback)
        if LOSSES[stage.loss].per_batch_mean:
            trainer.model_accepts_loss_kwargs = False
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            how = "torch.cuda.max_memory_allocated over the training steps"
        elif _reset_peak_rss():
            how = "peak RSS (VmHWM) over the training steps, reset after loading"
        else:
            how = "peak RSS over the whole process (getrusage): includes loading"
            notes.append("the peak could not be reset after loading: it may be the load's, not training's")
        start = time.perf_counter()
        from contextlib import nullcontext

        tensor_bytes = None
        held = autocast_dtype(precision) if method.holds_frozen_in_half else None

        def train() -> None:  # as `stages.common.fit` trains: frozen weights held in the autocast dtype
            with frozen_weights_in(model, held):
                trainer.train()

        with packed_attention(model) if packed else nullcontext():
            if tensors and not cuda:
                tensor_bytes = tensor_peak(train, _storage_bytes(model))
                how += "; live tensor bytes from torch's profiler (its buffers are in the RSS)"
            else:
                train()
        seconds = time.perf_counter() - start
        if cuda:
            torch.cuda.synchronize()
            peak = float(torch.cuda.max_memory_allocated())
        else:
            peak = _peak_rss()
    if device == "cpu" and "MALLOC_MMAP_THRESHOLD_" in os.environ:
        how += f" (MALLOC_MMAP_THRESHOLD_={os.environ['MALLOC_MMAP_THRESHOLD_']}: freed tensors leave the RSS)"
    tokens = len(rows) * cfg.data.max_length
    return Measured(device=device, peak_bytes=peak, baseline_bytes=baseline, steps=steps, seconds=seconds,
                    tokens=tokens, how=how, notes=notes, tensor_peak_bytes=tensor_bytes,
                    malloc=running())  # fmt: skip
