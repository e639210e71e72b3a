"""Peak memory of a training step, term by term, on one process (rank).

tunelab loads every float weight in fp32 and trains under autocast (mixed precision), so weights,
gradients and Adam's states are fp32 whatever `training.precision` says; precision changes the
activations and adds low-precision copies of the weights (see `activations`). The step's memory is
the largest of its moments:

- backward start: weights + optimizer states + gradients still held (grad_accum > 1, DDP buckets)
  + what the forward kept (activations, autocast's weight copies) + the loss's logits buffers;
- optimizer step: weights + optimizer states + gradients + the update's temporaries.

Gradients are freed after every step (Trainer zeroes them with set_to_none), so they do not add to
the backward start of the first micro-batch. Framework overhead (the Python process and its libraries
on CPU; the CUDA context on a GPU) is a named constant below, measured or typical as it says.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from tunelab.planning.activations import Activations, activations, logits_bytes
from tunelab.planning.architecture import Architecture
from tunelab.planning.trainable import Trainables
from tunelab.planning.workload import Workload

GIB = 2**30
FP32 = 4

# RSS of a Python process that has imported torch 2.13 (CPU build), transformers 5.23, peft 0.21,
# bitsandbytes 0.50 and tunelab's training modules, before any model: measured on this project's
# 2-core CPU machine (VmRSS, 525 MiB). Other builds differ by ±100s of MiB; `plan --measure` reads
# the real figure of the running process.
CPU_PROCESS_BYTES = 525 * 2**20
# What a CPU process's RSS gains besides tensors once it trains: the Trainer, accelerate, optimizer and
# dataloader set-up, and what the first forward and backward leave resident for good (kernels' code and
# caches, OpenMP's threads; oneDNN's bf16 kernels add more). Read as RSS growth minus the peak of live
# tensors (torch's profiler) in a fresh process, as `tunelab train` starts, on the unit tests' tiny Llama
# (hidden 64, so its tensors are a few MiB) with glibc's mmap threshold fixed at 64 KiB so that freed
# tensors leave the RSS: LoRA and full, batch 2 and 8 × 64 and 256 tokens (benchmarks/plan_memory.py
# --tiny --malloc fixed tensors), in two sittings (December 2026): 23–27 MiB in fp32 whatever the method;
# under bf16 autocast 36–42 MiB for full training and 6.5 MiB more with LoRA (its rank-r matmuls are
# more shapes for oneDNN's bf16 kernels to build: our reading, not isolated). Within a sitting the cases
# agree to ±1 MiB; the second sitting read 2.5 MiB (fp32) and 5.5 MiB (bf16) less for every case; the
# constants are the two sittings' mean. The adapter's 6.5 MiB is added for every method that adds
# parameters under half precision (measured on LoRA only). Before tunelab kept accelerate from
# importing DeepSpeed (models/loading.py) they were 94 and 114–124 MiB. Not scaled with the model
# (unchecked on large ones).
CPU_TRAINING_RUNTIME_BYTES = {"fp32": 25 * 2**20, "bf16": 39 * 2**20, "fp16": 39 * 2**20}
CPU_ADAPTER_HALF_RUNTIME_BYTES = int(6.5 * 2**20)
# What the allocator holds at the step's peak beyond the live tensors — freed blocks it keeps for reuse
# (glibc's heap below its mmap threshold, tcmalloc's and jemalloc's caches) — as a share of the bytes a
# step allocates and frees again (activations, autocast's weight copies, logits). An empirical share,
# fitted to SmolLM2-135M (12 cases: LoRA, full, QLoRA × batch 2, 8 × 64, 256 tokens; benchmarks/
# plan_memory.py --malloc NAME) as the median of (RSS growth − the rest of the estimate) ÷ those bytes;
# tcmalloc 0.14 (the cases ranged 0.07–0.32), glibc 0.33 (0.14–0.59). `glibc-mmap` is glibc with
# MALLOC_MMAP_THRESHOLD_ set, which hands freed tensors back at once. jemalloc is not measured yet.
ALLOCATOR_CACHE_SHARE = {"tcmalloc": 0.14, "glibc": 0.33, "glibc-mmap": 0.0}
# CUDA context and the kernels torch loads (cuBLAS, cuDNN), outside torch's allocator: not in
# torch.cuda.max_memory_allocated, but in nvidia-smi. A typical figure for torch 2.x on recent GPUs,
# not measured here.
CUDA_CONTEXT_BYTES = 512 * 2**20
# The caching allocator rounds and fragments: the memory it reserves runs a few percent above what is
# allocated. A GPU "fits" when the estimate is within this share of its memory (a stated margin, not a
# measurement).
CUDA_USABLE_FRACTION = 0.95

# bitsandbytes 4-bit weights: two per byte, plus per block of 64 an absmax constant: fp32 (4 bytes), or
# with double quantization one byte, itself quantized with one fp32 constant per 256 blocks.
NF4_BLOCK = 64


def four_bit_bytes_per_param(double_quant: bool = True) -> float:
    if double_quant:
        return 0.5 + 1 / NF4_BLOCK + 4 / (NF4_BLOCK * 256)
    return 0.5 + 4 / NF4_BLOCK


# optimizer states: bytes per trained parameter (bitsandbytes keeps tensors under 4096 elements in
# 32 bits; its 8-bit states carry one fp32 constant per block of 256)
_BNB_BLOCK = 256
_ADAM = {"adamw_torch", "adamw_torch_fused", "adamw_torch_xla", "adamw_torch_npu_fused", "adamw_anyprecision",
         "paged_adamw_32bit", "stable_adamw", "grokadamw", "schedule_free_adamw", "schedule_free_radam",
         "galore_adamw", "galore_adamw_layerwise", "apollo_adamw", "apollo_adamw_layerwise"}  # fmt: skip
_ADAM_8BIT = {"adamw_bnb_8bit", "adamw_8bit", "paged_adamw_8bit", "adamw_torch_8bit", "galore_adamw_8bit",
              "galore_adamw_8bit_layerwise"}  # fmt: skip
_APPROXIMATED = {"galore_adamw", "galore_adamw_layerwise", "galore_adamw_8bit", "galore_adamw_8bit_layerwise",
                 "apollo_adamw", "apollo_adamw_layerwise", "galore_adafactor", "galore_adafactor_layerwise"}  # fmt: skip


def optimizer_state_bytes(optimizer: str, shapes: list[tuple[int, ...]]) -> tuple[float, str]:
    """(bytes of the optimizer's states for these trained tensors, how they are counted)."""
    sizes = [math.prod(s) for s in shapes]
    n = sum(sizes)
    if optimizer in _ADAM:
        how = "AdamW: two fp32 moments (8 B/param)"
        if optimizer in _APPROXIMATED:
            how += "; GaLore/APOLLO project them to low rank — not modelled, counted as AdamW"
        return 8.0 * n, how
    if optimizer in _ADAM_8BIT:
        total = sum(2 * (1 + 4 / _BNB_BLOCK) * k if k >= 4096 else 8 * k for k in sizes)
        return total, "8-bit AdamW: two 8-bit moments (≈2 B/param; tensors under 4096 elements in 32 bits)"
    if optimizer == "adamw_torch_4bit":
        return sum(2 * (0.5 + 4 / 128) * k for k in sizes), "4-bit AdamW (torchao): two 4-bit moments"
    if optimizer in ("adafactor", "galore_adafactor", "galore_adafactor_layerwise", "adalomo"):
        total = 0.0
        for s in shapes:
            if len(s) >= 2:  # factored second moment: one value per row and one per column
                rows, cols = math.prod(s[:-1]), math.prod(s[:-2]) * s[-1]
                total += FP32 * (rows + cols)
            else:
                total += FP32 * math.prod(s)
        return total, "Adafactor: factored second moment (rows + columns per matrix, fp32), no first moment"
    if optimizer in ("sgd", "lomo", "schedule_free_sgd"):
        extra = 4.0 * n if optimizer == "schedule_free_sgd" else 0.0
        return extra, "SGD: no state (momentum 0, transformers' default)" if not extra else "schedule-free SGD: z"
    if optimizer in ("adagrad", "rmsprop", "rmsprop_bnb_32bit", "lion_32bit", "paged_lion_32bit"):
        return 4.0 * n, f"{optimizer}: one fp32 state (4 B/param)"
    if optimizer in ("lion_8bit", "paged_lion_8bit", "rmsprop_bnb", "rmsprop_bnb_8bit", "rmsprop_8bit"):
        return sum((1 + 4 / _BNB_BLOCK) * k if k >= 4096 else 4 * k for k in sizes), f"{optimizer}: one 8-bit state"
    if optimizer in ("ademamix", "paged_ademamix_32bit"):
        return 12.0 * n, "AdEMAMix: three fp32 moments"
    if optimizer in ("ademamix_8bit", "paged_ademamix_8bit"):
        return sum(3 * (1 + 4 / _BNB_BLOCK) * k if k >= 4096 else 12 * k for k in sizes), "8-bit AdEMAMix"
    return 8.0 * n, f"{optimizer}: not modelled, counted as AdamW (8 B/param)"


def optimizer_step_temporaries(optimizer: str, shapes: list[tuple[int, ...]], device: str) -> tuple[float, str]:
    """Memory the update allocates while it runs: torch's AdamW on CUDA (foreach) computes √v for every
    tensor at once; elsewhere it goes tensor by tensor (two temporaries of the largest)."""
    sizes = [math.prod(s) for s in shapes] or [0]
    if optimizer in ("adamw_torch", "paged_adamw_32bit") and device == "cuda":
        return FP32 * sum(sizes), "AdamW foreach: √v of every trained tensor at once"
    if optimizer in ("adamw_torch", "adamw_anyprecision", "stable_adamw", "schedule_free_adamw", "schedule_free_radam",
                     "adafactor"):  # fmt: skip
        return 2 * FP32 * max(sizes), "per-tensor update: two temporaries of the largest tensor"
    return 0.0, "fused update: no temporaries"


@dataclass
class Term:
    key: str
    label: str
    bytes: float
    detail: str = ""


@dataclass
class Memory:
    terms: list[Term]
    phases: dict[str, float]  # moment → bytes alive (framework overhead excluded)
    overhead: float
    activations: Activations
    notes: list[str] = field(default_factory=list)

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=lambda k: self.phases[k])

    @property
    def peak_allocated(self) -> float:
        """What torch allocates at the peak: compare with torch.cuda.max_memory_allocated, or with the
        RSS a CPU process grows by over its baseline."""
        return self.phases[self.peak_phase]

    @property
    def peak(self) -> float:
        return self.peak_allocated + self.overhead

    def term(self, key: str) -> float:
        return sum(t.bytes for t in self.terms if t.key == key)


def training_memory(arch: Architecture, tr: Trainables, w: Workload, *, double_quant: bool = True,
                    lora_dropout: float = 0.0, encoder_hidden: int | None = None,
                    checkpoint_bytes_per_param: float = 0.0) -> Memory:  # fmt: skip
    ws = max(1, w.world_size)
    shard = ws if (w.strategy == "fsdp" and ws > 1) else 1
    notes: list[str] = []
    float_params = tr.total - tr.quantized_params
    q_bytes = tr.quantized_params * four_bit_bytes_per_param(double_quant)
    terms = [Term("weights", "weights fp32", FP32 * float_params / shard,
                  f"{float_params:,} parameters × 4 B (tunelab loads fp32 and autocasts)")]  # fmt: skip
    if tr.quantized_params:
        terms.append(Term("weights", "weights 4-bit NF4", q_bytes / shard,
                          f"{tr.quantized_params:,} parameters × {four_bit_bytes_per_param(double_quant):.3f} B "
                          f"({'double-quantized ' if double_quant else ''}absmax per {NF4_BLOCK})"))  # fmt: skip
    if w.reference_weights:
        terms.append(Term("weights", "reference model weights", FP32 * arch.total_params / shard,
                          "a frozen fp32 copy of the base (DPO/KTO without an adapter to switch off)"))  # fmt: skip
    grads = FP32 * tr.trainable / shard
    terms.append(Term("gradients", "gradients", grads, f"{tr.trainable:,} trained parameters × 4 B (fp32)"))
    buckets = 0.0
    if ws > 1 and w.strategy == "ddp":
        buckets = FP32 * tr.trainable
        terms.append(Term("gradients", "DDP gradient buckets", buckets, "all-reduce buckets: a second copy of the gradients"))
    states, how = optimizer_state_bytes(w.optimizer, tr.trainable_shapes)
    terms.append(Term("optimizer", f"optimizer states ({w.optimizer})", states / shard, how))
    acts = activations(arch, tr, w, lora_dropout=lora_dropout, encoder_hidden=encoder_hidden)
    act_detail = f"{acts.tokens:,} positions per micro-batch"
    if w.gradient_checkpointing:
        act_detail += "; checkpointed: each block keeps its input, one block is rebuilt at a time"
    terms.append(Term("activations", "activations", acts.activation_bytes, act_detail))
    if acts.copies_bytes:
        terms.append(Term("activations", f"autocast weight copies ({w.precision})", acts.copies_bytes,
                          "low-precision copies of the weights, kept for backward"))  # fmt: skip
    head = arch.head
    width = head.out_features if head is not None else 0
    logit_mem = logits_bytes(acts.logit_positions, width) if head is not None else 0.0
    terms.append(Term("logits", "logits and loss", logit_mem,
                      f"{acts.logit_positions:,} positions × {width:,} × 12 B (fp32 log-probs, their gradient, "
                      "the logits' gradient)"))  # fmt: skip
    # temporaries that live through forward and backward (4-bit dequantization, DoRA's weight norm)
    fb_temp, fb_detail = 0.0, []
    quantized = [p for p in tr.linears if p.quantized]
    if quantized:
        largest = max(p.part.weight_params for p in quantized)
        fb_temp = max(fb_temp, largest * (FP32 + (w.compute_bytes if w.autocast else 0)))
        fb_detail.append("the largest 4-bit weight de-quantized for its matmul")
    dora = [p for p in tr.linears if p.dora]
    if dora:
        largest = max(p.part.weight_params for p in dora)
        fb_temp = max(fb_temp, 2 * FP32 * largest)
        fb_detail.append("DoRA's W + BA for its weight norm")
    gather = 0.0
    if shard > 1:
        # FSDP (ZeRO-3-like), wrapping each block: the root unit (embeddings, final norm, head) stays
        # gathered through forward and backward; one block is gathered at a time and the next prefetched;
        # a trained block's full gradients exist until they are reduce-scattered
        qb = four_bit_bytes_per_param(double_quant)
        block_bytes = sum(p.part.params * (qb if p.quantized else FP32) for p in tr.linears if p.layer == 0)
        block_bytes += FP32 * sum(p.params for p in arch.block if p.kind != "linear")
        root = FP32 * sum(p.params for p in arch.top) - (
            FP32 * arch.head.weight_params if arch.tied_embeddings and arch.head is not None else 0)
        block_grads = FP32 * sum(math.prod(s) for s in tr.trainable_shapes) / max(1, arch.layers)
        gather = root * (1 - 1 / shard) + 2 * block_bytes + block_grads
        terms.append(Term("temporary", "FSDP gathered weights", gather,
                          "the root unit (embeddings, head) unsharded, two blocks gathered (current and prefetched), "
                          "one block's full gradients (approximate)"))  # fmt: skip
    if fb_temp:
        terms.append(Term("temporary", "forward/backward buffers", fb_temp, "; ".join(fb_detail)))
    step_temp, step_detail = optimizer_step_temporaries(w.optimizer, tr.trainable_shapes, w.device)
    embed_temp = FP32 * arch.embedding.params if tr.embedding_trainable else 0.0
    if step_temp:
        terms.append(Term("temporary", "optimizer step buffers", step_temp / shard, step_detail))
    if embed_temp:
        terms.append(Term("temporary", "embedding gradient buffer", embed_temp,
                          "the embedding's dense gradient before it is added to .grad"))  # fmt: skip
    weights = sum(t.bytes for t in terms if t.key == "weights")
    held = grads if w.grad_accum > 1 else 0.0  # later micro-batches start backward with gradients held
    backward_start = weights + states / shard + held + buckets + acts.saved_bytes + logit_mem + fb_temp + gather
    step = weights + states / shard + grads + buckets + max(step_temp / shard, embed_temp) + (gather if shard > 1 else 0)
    if w.device == "cpu" and tr.quantized_params and checkpoint_bytes_per_param:
        # a 4-bit load on CPU quantizes from the memory-mapped safetensors file, and the pages it read stay
        # mapped: file-backed, reclaimable under pressure, but in the RSS (probe on SmolLM2-135M: RssFile
        # +416 MiB, RssAnon +50 MiB after the load)
        mapped = tr.quantized_params * checkpoint_bytes_per_param
        terms.append(Term("mapped", "checkpoint pages still mapped (CPU, 4-bit load)", mapped,
                          f"{tr.quantized_params:,} quantized parameters × {checkpoint_bytes_per_param:.2f} B on "
                          "disk; page cache the kernel may reclaim, but counted in RSS"))  # fmt: skip
        backward_start += mapped
        step += mapped
    phases = {"backward start": backward_start, "optimizer step": step}
    if acts.attention_backward:
        # the last block's attention backward: the head's logits and their gradients are freed by then
        phases["attention backward"] = backward_start - logit_mem + acts.attention_backward
        if phases["attention backward"] > backward_start:
            terms.append(Term("temporary", "attention backward scores", phases["attention backward"] - backward_start,
                              "the batched packed attention's backward: two or three fp32 rows × heads × s × s "
                              "tensors, less the logits freed by then"))  # fmt: skip
    if w.device == "cpu":
        runtime = CPU_TRAINING_RUNTIME_BYTES[w.precision]
        if w.precision != "fp32" and tr.added:
            runtime += CPU_ADAPTER_HALF_RUNTIME_BYTES
        terms.append(Term("runtime", "training runtime (CPU)", runtime,
                          "Trainer set-up and the kernels' code and caches the first step leaves (measured)"))  # fmt: skip
        share = ALLOCATOR_CACHE_SHARE.get(w.malloc)
        if share is None:
            notes.append(f"CPU: what the {w.malloc} allocator keeps of freed tensors is not modelled")
            share = 0.0
        cached = share * (acts.saved_bytes + logit_mem)
        if cached:
            terms.append(Term("allocator", f"allocator cache ({w.malloc})", cached,
                              f"{share:.0%} of what a step frees again (activations, weight copies, logits): "
                              "freed blocks the allocator keeps; fitted on SmolLM2-135M (measured)"))  # fmt: skip
        phases = {k: v + runtime + cached for k, v in phases.items()}
    overhead = CPU_PROCESS_BYTES if w.device == "cpu" else CUDA_CONTEXT_BYTES
    terms.append(Term("overhead", "framework overhead", overhead,
                      "Python + torch + transformers + peft imported (measured RSS)" if w.device == "cpu"
                      else "CUDA context and kernels (typical; outside torch's allocator)"))  # fmt: skip
    notes += acts.notes
    return Memory(terms=terms, phases=phases, overhead=overhead, activations=acts, notes=notes)


def inference_memory(arch: Architecture, *, bits: int, context: int = 4096, batch: int = 1,
                     device: str = "cuda") -> float:  # fmt: skip
    """Serving: the weights (bf16, or 4-bit NF4 for the blocks' linear layers), a bf16 KV cache for
    `batch` sequences of `context` tokens, one row of fp32 logits, and the framework overhead."""
    from tunelab.planning.activations import kv_cache_bytes

    linear = arch.layers * arch.block_linear_params
    other = arch.total_params - linear
    weights = 2.0 * arch.total_params if bits == 16 else four_bit_bytes_per_param() * linear + 2.0 * other
    overhead = CPU_PROCESS_BYTES if device == "cpu" else CUDA_CONTEXT_BYTES
    return weights + kv_cache_bytes(arch, context * batch) + FP32 * arch.vocab * batch + overhead
