"""The memory terms' arithmetic: optimizer states, 4-bit weights, logits, sharding, accumulation."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from planning.tiny import configs
from tunelab.methods.registry import METHODS
from tunelab.planning.architecture import from_config
from tunelab.planning.hardware import REFERENCE_MODELS
from tunelab.planning.memory import (
    ALLOCATOR_CACHE_SHARE,
    CPU_ADAPTER_HALF_RUNTIME_BYTES,
    CPU_PROCESS_BYTES,
    CPU_TRAINING_RUNTIME_BYTES,
    four_bit_bytes_per_param,
    optimizer_state_bytes,
    training_memory,
)
from tunelab.planning.plan import _largest
from tunelab.planning.trainable import trainables
from tunelab.planning.workload import Workload


def test_optimizer_states_per_kind():
    shapes = [(4096, 1024), (1024,)]
    n = sum(math.prod(s) for s in shapes)
    assert optimizer_state_bytes("adamw_torch", shapes)[0] == 8 * n
    assert optimizer_state_bytes("sgd", shapes)[0] == 0
    # Adafactor: rows + columns for a matrix, the whole vector for a vector, no first moment
    assert optimizer_state_bytes("adafactor", shapes)[0] == 4 * (4096 + 1024) + 4 * 1024
    # bitsandbytes 8-bit: 2 bytes + a constant per 256 for big tensors, 32-bit states under 4096 elements
    assert optimizer_state_bytes("adamw_bnb_8bit", shapes)[0] == pytest.approx(2 * (1 + 4 / 256) * 4096 * 1024 + 8 * 1024)
    assert "not modelled" in optimizer_state_bytes("some_new_optimizer", shapes)[1]


def test_four_bit_weights_with_and_without_double_quantization():
    assert four_bit_bytes_per_param(False) == 0.5 + 4 / 64
    assert 0.515 < four_bit_bytes_per_param(True) < 0.516


def _smollm2():
    return from_config(dict(REFERENCE_MODELS[0][1]))


def test_full_fine_tuning_holds_weights_gradients_and_adam_in_fp32():
    arch = _smollm2()
    tr = trainables(arch, "full", None)
    m = training_memory(arch, tr, Workload(batch_size=1, seq_len=64, device="cuda"))
    assert m.term("weights") == 4 * arch.total_params
    assert m.term("gradients") == 4 * arch.total_params
    assert m.term("optimizer") == 8 * arch.total_params
    assert m.peak == m.peak_allocated + m.overhead


def test_logits_are_twelve_bytes_per_position_and_vocabulary_entry():
    arch = _smollm2()
    tr = trainables(arch, "lora", METHODS["lora"].options())
    w = Workload(batch_size=4, seq_len=128, device="cpu", trained_fraction=0.5)
    m = training_memory(arch, tr, w)
    assert m.term("logits") == 12 * (4 * 128 // 2) * arch.vocab
    assert m.overhead == CPU_PROCESS_BYTES


def test_fsdp_shards_and_ddp_replicates():
    arch = _smollm2()
    tr = trainables(arch, "full", None)
    one = training_memory(arch, tr, Workload(batch_size=1, seq_len=64))
    ddp = training_memory(arch, tr, Workload(batch_size=1, seq_len=64, world_size=8, strategy="ddp"))
    fsdp = training_memory(arch, tr, Workload(batch_size=1, seq_len=64, world_size=8, strategy="fsdp"))
    assert ddp.term("weights") == one.term("weights") and ddp.term("gradients") == 2 * one.term("gradients")
    assert fsdp.term("weights") == pytest.approx(one.term("weights") / 8)
    assert fsdp.term("optimizer") == pytest.approx(one.term("optimizer") / 8)
    assert fsdp.peak < one.peak < ddp.peak


def test_accumulation_holds_gradients_through_the_next_backward():
    arch = from_config(configs()["llama"].to_dict())
    tr = trainables(arch, "full", None)
    w = Workload(batch_size=2, seq_len=32)
    once, twice = training_memory(arch, tr, w), training_memory(arch, tr, replace(w, grad_accum=2))
    assert twice.phases["backward start"] - once.phases["backward start"] == pytest.approx(4 * tr.trainable)


def test_checkpointing_keeps_less_and_memory_grows_with_the_batch():
    arch = _smollm2()
    tr = trainables(arch, "lora", METHODS["lora"].options())
    w = Workload(batch_size=4, seq_len=256)
    assert training_memory(arch, tr, replace(w, gradient_checkpointing=True)).term("activations") < (
        training_memory(arch, tr, w).term("activations") / 5)
    peaks = [training_memory(arch, tr, replace(w, batch_size=b)).peak for b in (1, 2, 4, 8)]
    assert peaks == sorted(peaks)


def test_largest_batch_search():
    assert _largest(lambda b: b <= 37) == 37
    assert _largest(lambda b: False) == 0
    assert _largest(lambda b: True, limit=100) == 100


@pytest.mark.parametrize("kept", [True, False])
def test_the_batched_packed_attention_backward_holds_two_or_three_score_tensors(monkeypatch, kept):
    """The planner's "attention backward" phase: the backward of `training.packed_attention`'s batched
    path holds two fp32 rows × heads × s × s tensors beside the weights it kept from the forward, or three
    when it recomputes them, read with torch's profiler."""
    import torch

    from tunelab.planning.measure import tensor_peak
    from tunelab.training import packed_attention as pa

    monkeypatch.setattr(pa, "KEPT_SCORES_LIMIT", 2**20 if kept else 0)
    rows, heads, kv_heads, longest, dim = 4, 4, 2, 128, 8
    assert pa.batched(rows, longest, heads)
    position_ids = torch.arange(longest).repeat(rows)[None]
    layout = pa._layout(position_ids, heads)
    total = rows * longest
    q = torch.randn(1, heads, total, dim, requires_grad=True)
    k = torch.randn(1, kv_heads, total, dim, requires_grad=True)
    v = torch.randn(1, kv_heads, total, dim, requires_grad=True)
    (group,) = layout.groups  # equal rows: one group
    out = pa._batched_attention(q, k, v, group, None)
    grad = torch.randn_like(out)
    scores = 4 * rows * heads * longest * longest
    peak = tensor_peak(lambda: out.backward(grad), 0.0)
    # the rest (padded q, k, v, the output's gradient and theirs) is under a third of a score tensor here;
    # a second profiled window in one process reads 128 KiB more (as in test_planning_measure.py)
    held = 2 if kept else 3
    assert pa.kept_weights(rows, longest, heads) == kept
    assert held * scores <= peak <= (held + 0.33) * scores + 2**17


def test_cpu_estimates_count_the_runtime_and_the_allocator_cache():
    arch = _smollm2()
    tr = trainables(arch, "lora", METHODS["lora"].options())
    w = Workload(batch_size=2, seq_len=128, device="cpu", precision="bf16")
    plain = training_memory(arch, tr, replace(w, malloc="glibc-mmap"))
    cuda = training_memory(arch, tr, replace(w, device="cuda"))
    assert plain.term("allocator") == 0 and cuda.term("runtime") == 0 and cuda.term("allocator") == 0
    assert plain.term("runtime") == CPU_TRAINING_RUNTIME_BYTES["bf16"] + CPU_ADAPTER_HALF_RUNTIME_BYTES
    full = trainables(arch, "full", None)
    assert training_memory(arch, full, replace(w, malloc="glibc-mmap")).term("runtime") == CPU_TRAINING_RUNTIME_BYTES["bf16"]
    for name, share in ALLOCATOR_CACHE_SHARE.items():
        m = training_memory(arch, tr, replace(w, malloc=name))
        freed = m.activations.saved_bytes + m.term("logits")
        assert m.term("allocator") == pytest.approx(share * freed)
        assert m.peak_allocated == pytest.approx(plain.peak_allocated + share * freed)
    unknown = training_memory(arch, tr, replace(w, malloc="mimalloc"))
    assert unknown.term("allocator") == 0 and any("mimalloc" in n for n in unknown.notes)
