"""`plan(config)`: what a training config needs — memory, compute, time, which machines it fits — from
the model's config.json alone (a model folder with only config.json, a built-in, or a hub id whose
config.json is in the Hugging Face cache). No weights are read and nothing is trained;
`planning.measure` trains a few steps to check the estimate.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tunelab.allocator import running
from tunelab.errors import TunelabError
from tunelab.planning.architecture import Architecture, architecture, from_config
from tunelab.planning.flops import Flops, training_flops
from tunelab.planning.hardware import MACHINES, REFERENCE_MODELS, Machine
from tunelab.planning.memory import CUDA_USABLE_FRACTION, GIB, Memory, inference_memory, training_memory
from tunelab.planning.trainable import ADAPTER_METHODS, Trainables, trainables
from tunelab.planning.workload import Workload

DEFAULT_MFU = 0.4  # model FLOPs utilisation assumed for time estimates on a GPU (a stated assumption)
MAX_BATCH = 4096  # the largest batch the "largest batch that fits" search tries
# the workload "the largest model a machine can fine-tune" is read at: one 2048-token row, gradient
# checkpointing on, fused AdamW (the default), the machine's precision, FSDP across a multi-GPU machine's cards
REFERENCE_WORKLOAD = {"batch_size": 1, "seq_len": 2048, "gradient_checkpointing": True, "optimizer": "adamw_torch_fused"}
SERVE_CONTEXT = 4096  # tokens of KV cache for "serve": one sequence this long


@dataclass
class FitRow:
    machine: str
    fits: bool
    peak_gib: float  # per GPU, framework overhead included
    usable_gib: float
    largest_batch: int  # 0: not even batch 1 fits
    seconds_per_step: float | None
    hours_per_epoch: float | None
    precision: str
    strategy: str


@dataclass
class CapacityRow:
    machine: str
    full: str | None  # the largest reference model each use fits
    lora: str | None
    qlora: str | None
    serve_bf16: str | None
    serve_4bit: str | None


@dataclass
class Plan:
    config: str
    model: str
    task: str
    method: str
    arch: Architecture
    trainables: Trainables
    workload: Workload
    memory: Memory
    flops: Flops
    mfu: float
    seconds_per_step: float | None  # on `gpu`
    gpu: str | None
    train_rows: int | None
    steps_per_epoch: int | None
    total_steps: int | None
    fits: list[FitRow] = field(default_factory=list)
    capacity: list[CapacityRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    measured: Any = None  # planning.measure.Measured, when measured

    @property
    def flops_per_epoch(self) -> float | None:
        if self.steps_per_epoch is None:
            return None
        return self.flops.per_step_all_ranks * self.steps_per_epoch

    def rows(self) -> list[tuple[str, str, str, str]]:
        """(section, item, value, detail) for a table."""
        a, t, w, m, f = self.arch, self.trainables, self.workload, self.memory, self.flops
        out: list[tuple[str, str, str, str]] = []
        add = out.append
        add(("model", "architecture", a.model_type, f"{a.summary()} (from {a.source})"))
        add(("model", "parameters", f"{a.total_params:,}", f"{a.matmul_params:,} in matmuls (N)"))
        share = 100 * t.trainable / t.total if t.total else 0.0
        add(("model", "trained parameters", f"{t.trainable:,}", f"{share:.3f}% of {t.total:,} ({self.method})"))
        seq = f"{w.batch_size} × {w.seq_len} tokens" + (f" × {w.sequences_per_row} sequences" if w.sequences_per_row > 1 else "")
        add(("workload", "micro-batch", seq, f"grad_accum {w.grad_accum}, precision {w.precision}, {w.optimizer}, "
             f"{'packed' if w.packed else 'padded'}, checkpointing {'on' if w.gradient_checkpointing else 'off'}"))  # fmt: skip
        add(("workload", "device", w.device, f"world size {w.world_size} ({w.strategy})" if w.world_size > 1 else "one process"))
        for term in m.terms:
            add(("memory", term.label, size_text(term.bytes), term.detail))
        for phase, value in m.phases.items():
            add(("memory", f"at {phase}", size_text(value + m.overhead), "with framework overhead"))
        add(("memory", "peak", size_text(m.peak), f"at {m.peak_phase}; {size_text(m.peak_allocated)} allocated by torch"))
        add(("compute", "FLOPs per token", _num(f.per_token), f"textbook 6·N: {_num(f.dense_6n / max(1, f.tokens_per_micro_batch))}; "
             f"attention {100 * f.attention / max(1.0, f.per_micro_batch):.1f}% of the step"))  # fmt: skip
        add(("compute", "FLOPs per step", _num(f.per_step), f"{f.grad_accum} micro-batch(es) of "
             f"{f.tokens_per_micro_batch:,} positions" + (f"; {_num(f.per_step_all_ranks)} on all {f.world_size} ranks" if f.world_size > 1 else "")))  # fmt: skip
        if self.flops_per_epoch is not None:
            add(("compute", "FLOPs per epoch", _num(self.flops_per_epoch), f"{self.steps_per_epoch:,} steps of "
                 f"{self.train_rows:,} training rows at full length"))  # fmt: skip
        if self.seconds_per_step is not None:
            add(("time", f"per step on {self.gpu}", f"{self.seconds_per_step:.3g} s", f"at {self.mfu:.0%} MFU"))
            if self.total_steps:
                add(("time", "whole run", f"{self.seconds_per_step * self.total_steps / 3600:.3g} h",
                     f"{self.total_steps:,} steps"))  # fmt: skip
        return out

    def to_dict(self) -> dict[str, Any]:
        a, t, m, f = self.arch, self.trainables, self.memory, self.flops
        out = {
            "config": self.config, "model": self.model, "task": self.task, "method": self.method,
            "architecture": {"model_type": a.model_type, "source": a.source, "layers": a.layers, "hidden": a.hidden,
                             "heads": a.heads, "kv_heads": a.kv_heads, "head_dim": a.head_dim,
                             "intermediate": a.intermediate, "vocab": a.vocab, "tied_embeddings": a.tied_embeddings,
                             "parameters": a.total_params, "matmul_parameters": a.matmul_params},
            "trainable": {"trainable": t.trainable, "total": t.total, "added": t.added,
                          "quantized": t.quantized_params, "virtual_tokens": t.virtual_tokens},
            "workload": self.workload.__dict__ | {"tokens_per_micro_batch": f.tokens_per_micro_batch,
                                                  "logit_positions": f.logit_positions},
            "memory": {"terms": [{"key": x.key, "label": x.label, "bytes": round(x.bytes), "detail": x.detail}
                                 for x in m.terms],
                       "phases": {k: round(v) for k, v in m.phases.items()}, "peak_phase": m.peak_phase,
                       "peak_allocated_bytes": round(m.peak_allocated), "overhead_bytes": round(m.overhead),
                       "peak_bytes": round(m.peak)},
            "flops": {"per_token": f.per_token, "forward": f.forward, "backward": f.backward, "recompute": f.recompute,
                      "reference": f.reference, "attention": f.attention, "adapters": f.adapters,
                      "per_micro_batch": f.per_micro_batch, "per_step": f.per_step,
                      "per_step_all_ranks": f.per_step_all_ranks, "per_epoch": self.flops_per_epoch,
                      "dense_6n_per_micro_batch": f.dense_6n},
            "time": {"mfu": self.mfu, "gpu": self.gpu, "seconds_per_step": self.seconds_per_step,
                     "steps_per_epoch": self.steps_per_epoch, "total_steps": self.total_steps},
            "fits": [r.__dict__ for r in self.fits],
            "capacity": [r.__dict__ for r in self.capacity],
            "notes": self.notes,
        }  # fmt: skip
        if self.measured is not None:
            out["measured"] = self.measured.to_dict()
        return out


def size_text(n: float) -> str:
    return f"{n / GIB:.3f} GiB" if abs(n) >= GIB / 10 else f"{n / 2**20:.2f} MiB"


def _num(x: float) -> str:
    for unit, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {unit}FLOP"
    return f"{x:.3g} FLOP"


# -- reading the config -----------------------------------------------------------------------------


def checkpoint_bytes_per_param(files: Any, arch: Architecture) -> float:
    """Bytes per parameter of the model's safetensors files on disk (their size, not their content;
    0 when there are none here, e.g. a folder with only config.json)."""
    directory = getattr(files, "directory", None)
    if directory is None or not arch.total_params:
        return 0.0
    size = sum(f.stat().st_size for f in Path(directory).glob("*.safetensors"))
    return size / arch.total_params


def model_files_for(name: str) -> Any:
    """The model's config.json: `models.loading.model_files`, or for a hub id that cannot be reached its
    config.json in the Hugging Face cache."""
    from tunelab.models.loading import ModelFiles, model_files

    try:
        files = model_files(name)
    except TunelabError as err:
        if err.kind != "model_unavailable" or "/" not in name:
            raise
        files = None
    if files is not None:
        return files
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name, "config.json")
    except Exception:  # noqa: BLE001 - a malformed id or a broken cache: the same answer as no cache
        cached = None
    if not isinstance(cached, str):
        raise TunelabError(f"{name}'s config.json is not in the Hugging Face cache (the hub is not used to plan)",
                           field="model.name", expected="a local model directory, a built-in name, or a hub id "
                           "whose config.json was downloaded once (hf download NAME config.json)",
                           kind="model_unavailable")  # fmt: skip
    try:
        config = json.loads(Path(cached).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise TunelabError(f"cannot read the cached config.json: {err}", file=cached, field="model.name") from None
    return ModelFiles(name, config, Path(cached).parent)


def detect_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_precision(requested: str, device: str, gpu: Machine | None = None) -> str:
    if requested != "auto":
        return requested
    if device == "cuda":
        if gpu is not None:
            return gpu.precision
        import torch

        if torch.cuda.is_available():
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16"
    from tunelab.training.device import cpu_supports_bf16

    return "bf16" if cpu_supports_bf16() else "fp32"


def _overrides(**values: Any) -> list[str]:
    keys = {"batch_size": "training.batch_size", "max_length": "data.max_length", "grad_accum": "training.grad_accum",
            "optimizer": "training.optimizer", "precision": "training.precision",
            "gradient_checkpointing": "training.gradient_checkpointing"}  # fmt: skip
    return [f"{keys[k]}={str(v).lower() if isinstance(v, bool) else v}" for k, v in values.items() if v is not None]


def plan(config: Any, *, overrides: list[str] | None = None, batch_size: int | None = None,
         max_length: int | None = None, grad_accum: int | None = None, optimizer: str | None = None,
         precision: str | None = None, gradient_checkpointing: bool | None = None, world_size: int = 1,
         strategy: str | None = None, device: str | None = None, mfu: float = DEFAULT_MFU,
         trained_fraction: float = 1.0, rows: int | None = None, gpu: str | None = None,
         machines: bool = True) -> Plan:  # fmt: skip
    """Plan a training config (a YAML path, a mapping or a RunConfig): memory per rank, FLOPs, time at
    `mfu`, what fits on common GPUs. `world_size` ranks train together: `strategy` "ddp" (the default)
    replicates everything on each, "fsdp" shards weights, gradients and optimizer states across them.
    `trained_fraction`: the share of positions with a loss (1.0, the worst case: every token; SFT trains
    on responses only). `rows`: training rows, for per-epoch figures (default: `data.limit`)."""
    from tunelab.config import check_before_loading, resolve_config
    from tunelab.methods.registry import METHODS
    from tunelab.models.kinds import MODEL_KINDS
    from tunelab.progress import quiet_libraries
    from tunelab.stages.registry import STAGES
    from tunelab.training.losses import LOSSES

    if world_size < 1:
        raise TunelabError(f"is {world_size}", field="--world-size", expected="a number of processes, 1 or more")
    if strategy not in (None, "ddp", "fsdp"):
        raise TunelabError(f"unknown strategy {strategy!r}", field="--strategy", expected="ddp or fsdp")
    if not 0 < mfu <= 1:
        raise TunelabError(f"is {mfu}", field="--mfu", expected="a fraction of the GPU's peak, in (0, 1], e.g. 0.4")
    if not 0 < trained_fraction <= 1:
        raise TunelabError(f"is {trained_fraction}", field="--trained-fraction", expected="a share in (0, 1]")
    if device not in (None, "cpu", "cuda"):
        raise TunelabError(f"unknown device {device!r}", field="--device", expected="cpu or cuda")
    quiet_libraries()
    extra = _overrides(batch_size=batch_size, max_length=max_length, grad_accum=grad_accum, optimizer=optimizer,
                       precision=precision, gradient_checkpointing=gradient_checkpointing)  # fmt: skip
    cfg = resolve_config(config, list(overrides or []) + extra)
    notes = [f"not checked: {n}" for n in check_before_loading(cfg, output_dir=False, strict=False)]
    stage, method = STAGES[cfg.task], METHODS[cfg.method]
    kind = MODEL_KINDS[stage.model_kind]
    files = model_files_for(cfg.model.name)
    labels = getattr(cfg.task_options(), "labels", None)
    arch = architecture(files, stage.model_kind, trust_remote_code=cfg.model.trust_remote_code,
                        num_labels=len(labels) if labels else None)  # fmt: skip
    if kind.classifier and not labels and kind.num_labels is None:
        notes.append("the classifier's labels come from the data (not read): its head is counted with 2 labels")
    options = cfg.method_options()
    tr = trainables(arch, cfg.method, options, stage.model_kind)
    notes += tr.notes + list(arch.notes)
    device = device or detect_device()
    gpu_machine = _gpu(gpu) if gpu else (_this_gpu() if device == "cuda" else None)
    loss = LOSSES[stage.loss]
    t = cfg.training
    w = Workload(
        batch_size=t.batch_size, seq_len=cfg.data.max_length, grad_accum=t.grad_accum,
        precision=resolve_precision(t.precision, device, gpu_machine), optimizer=t.optimizer,
        gradient_checkpointing=t.gradient_checkpointing,
        packed=t.padding_free and kind.packs and method.packs_rows,
        sliced_logits=loss.compute is not None and loss.needs_positions and method.sliced_logits,
        trained_fraction=trained_fraction, sequences_per_row=2 if stage.model_kind in ("reward", "policy_lm") and
        not stage.generates_in_loop else 1, reference_forward=stage.reference_model,
        reference_weights=stage.reference_model and cfg.method in ("full", "freeze"), device=device,
        world_size=world_size, strategy=strategy or _strategy(cfg.distributed), malloc=running(),
    )  # fmt: skip
    if stage.generates_in_loop:
        notes.append(f"{cfg.task} samples answers inside the loop: generation is not counted, only the training "
                     "forward and backward on max_length tokens")  # fmt: skip
    if stage.reference_model:
        notes.append("a frozen reference forward per micro-batch is counted in FLOPs"
                     + ("; the reference is the base with the adapter switched off (no extra weights)"
                        if cfg.method not in ("full", "freeze") else "; its weights, a copy of the base, in memory"))
    extras = _method_extras(cfg.method, options)
    extras["checkpoint_bytes_per_param"] = checkpoint_bytes_per_param(files, arch)
    memory = training_memory(arch, tr, w, **extras)
    flops = training_flops(arch, tr, w)
    notes += memory.notes + flops.notes
    if cfg.method == "dora":
        notes.append("DoRA's activations are approximate (its magnitude path keeps tensors that depend on the layer type)")
    if cfg.method == "ptuning":
        notes.append("P-tuning's prompt-encoder activations are approximate")
    train_rows = rows if rows is not None else cfg.data.limit
    steps_per_epoch = total_steps = None
    if train_rows is not None:
        held = (cfg.data.validation is None) * cfg.data.split.validation + (cfg.data.test is None) * cfg.data.split.test
        if rows is None:  # data.limit counts the rows before the validation and test splits are carved
            train_rows = max(1, math.floor(train_rows * (1 - held)))
        steps_per_epoch = max(1, math.ceil(train_rows / (t.batch_size * t.grad_accum * world_size)))
    if t.max_steps:
        total_steps = t.max_steps
    elif steps_per_epoch is not None:
        total_steps = math.ceil(steps_per_epoch * t.epochs)
    seconds = None
    if gpu_machine is not None:
        seconds = flops.per_step / (gpu_machine.tflops * 1e12 * mfu)
    result = Plan(config=str(config) if isinstance(config, str | Path) else "<config>", model=cfg.model.name,
                  task=cfg.task, method=cfg.method, arch=arch, trainables=tr, workload=w, memory=memory, flops=flops,
                  mfu=mfu, seconds_per_step=seconds, gpu=gpu_machine.name if gpu_machine else None,
                  train_rows=train_rows, steps_per_epoch=steps_per_epoch, total_steps=total_steps, notes=notes)  # fmt: skip
    if machines:
        explicit = cfg.training.precision
        result.fits = [_fit(arch, tr, w, m, explicit, extras, mfu, train_rows, strategy) for m in MACHINES]
        result.capacity = capacity()
    return result


def _method_extras(method: str, options: Any) -> dict[str, Any]:
    extras: dict[str, Any] = {}
    if method in ADAPTER_METHODS:
        extras["lora_dropout"] = float(options.dropout)
    if method == "qlora":
        extras["double_quant"] = bool(options.double_quant)
    if method == "ptuning":
        extras["encoder_hidden"] = int(options.encoder_hidden_size)
    return extras


def _strategy(options: Any) -> str:
    """The planner's memory model of a config's `distributed:` strategy: weights, gradients and states
    sharded (FSDP, ZeRO-3) or each process holding them all (DDP; ZeRO-2 shards only the states and
    gradients, so counting it as DDP overestimates)."""
    sharded = options.strategy == "fsdp" or (options.strategy == "deepspeed" and options.deepspeed.zero_stage == 3)
    return "fsdp" if sharded else "ddp"


def _gpu(name: str) -> Machine:
    key = name.lower().replace(" ", "")
    for m in MACHINES:
        if m.gpus == 1 and (m.name.lower().replace(" ", "").startswith(key) or key in m.name.lower().replace(" ", "")):
            return m
    raise TunelabError(f"unknown GPU {name!r}", field="--gpu",
                       expected="one of " + ", ".join(m.name for m in MACHINES if m.gpus == 1))  # fmt: skip


def _this_gpu() -> Machine | None:
    """The table's entry for the GPU this process sees (by its name), if any."""
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        name = torch.cuda.get_device_name(0).upper()
        total = torch.cuda.get_device_properties(0).total_memory / 2**20
    except Exception:  # noqa: BLE001 - no usable GPU: no time estimate
        return None
    for m in MACHINES:
        if m.gpus == 1 and m.name.split()[0] in name and abs(m.memory_mib - total) < 0.15 * m.memory_mib:
            return m
    return None


def _fits(memory: Memory, m: Machine) -> bool:
    return memory.peak <= m.memory_bytes * CUDA_USABLE_FRACTION


def _fit(arch: Architecture, tr: Trainables, w: Workload, m: Machine, precision: str, extras: dict[str, Any],
         mfu: float, train_rows: int | None, strategy: str | None) -> FitRow:  # fmt: skip
    strat = (strategy or "fsdp") if m.gpus > 1 else "ddp"
    base = replace(w, device="cuda", precision=m.precision if precision == "auto" else precision, world_size=m.gpus,
                   strategy=strat)  # fmt: skip
    memory = training_memory(arch, tr, base, **extras)
    fits = _fits(memory, m)

    def ok(batch: int) -> bool:
        return _fits(training_memory(arch, tr, replace(base, batch_size=batch), **extras), m)

    largest = _largest(ok)
    flops = training_flops(arch, tr, base)
    seconds = flops.per_step / (m.tflops * 1e12 * mfu)
    hours = None
    if train_rows is not None:
        steps = math.ceil(train_rows / (w.batch_size * w.grad_accum * m.gpus))
        hours = seconds * steps / 3600
    return FitRow(machine=m.name, fits=fits, peak_gib=round(memory.peak / GIB, 3),
                  usable_gib=round(m.memory_bytes * CUDA_USABLE_FRACTION / GIB, 1), largest_batch=largest,
                  seconds_per_step=seconds, hours_per_epoch=hours, precision=base.precision, strategy=strat)  # fmt: skip


def _largest(ok: Any, limit: int = MAX_BATCH) -> int:
    """The largest n ≤ limit with ok(n), for ok monotone (true up to some n); 0 when ok(1) is false."""
    if not ok(1):
        return 0
    low, high = 1, 2
    while high <= limit and ok(high):
        low, high = high, high * 2
    high = min(high, limit + 1)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if ok(mid) else (low, mid)
    return low


def capacity() -> list[CapacityRow]:
    """Per machine, the largest reference model (hardware.REFERENCE_MODELS) it can fine-tune with full,
    LoRA and QLoRA at REFERENCE_WORKLOAD, and serve in bf16 and 4-bit (one SERVE_CONTEXT-token sequence)."""
    from tunelab.methods.registry import METHODS

    archs = [(name, from_config(config)) for name, config in REFERENCE_MODELS]
    options = {"full": None, "lora": METHODS["lora"].options(), "qlora": METHODS["qlora"].options()}
    trained = {(name, method): trainables(arch, method, opts) for name, arch in archs for method, opts in options.items()}
    rows = []
    for m in MACHINES:
        strat = "fsdp" if m.gpus > 1 else "ddp"
        w = Workload(**REFERENCE_WORKLOAD, precision=m.precision, device="cuda", world_size=m.gpus, strategy=strat)

        def best(method: str, m: Machine = m, w: Workload = w) -> str | None:
            found = None
            for name, arch in archs:
                if _fits(training_memory(arch, trained[name, method], w), m):
                    found = name
            return found

        def serve(bits: int, m: Machine = m) -> str | None:
            found = None
            for name, arch in archs:  # tensor-parallel serving across a machine's GPUs: their memory adds up
                if inference_memory(arch, bits=bits, context=SERVE_CONTEXT) <= m.gpus * m.memory_bytes * CUDA_USABLE_FRACTION:
                    found = name
            return found

        rows.append(CapacityRow(machine=m.name, full=best("full"), lora=best("lora"), qlora=best("qlora"),
                                serve_bf16=serve(16), serve_4bit=serve(4)))  # fmt: skip
    return rows
