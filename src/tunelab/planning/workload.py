"""The shape of one training step, as the memory and compute estimates read it."""

from __future__ import annotations

from dataclasses import dataclass

BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


@dataclass(frozen=True)
class Workload:
    """One optimizer step of tunelab's training loop, seen from one process (rank).

    Rows are assumed `seq_len` tokens long each — the longest `data.max_length` allows, so the estimate
    is the step's worst case: shorter rows pack into fewer tokens and need less.
    """

    batch_size: int  # rows per micro-batch
    seq_len: int  # tokens per row (data.max_length)
    grad_accum: int = 1
    precision: str = "bf16"  # resolved: fp32 | bf16 | fp16 (tunelab keeps fp32 weights and autocasts: mixed precision)
    optimizer: str = "adamw_torch_fused"  # TrainConfig's default
    gradient_checkpointing: bool = False
    packed: bool = True  # rows packed padding-free into one sequence (no attention mask)
    sliced_logits: bool = True  # vocabulary logits only where a label is (tunelab's causal-LM loss)
    trained_fraction: float = 1.0  # share of positions with a label (1: every position, e.g. pretraining)
    sequences_per_row: int = 1  # preference pairs: chosen and rejected (2)
    reference_forward: bool = False  # a frozen reference model's forward per micro-batch (DPO, KTO)
    reference_weights: bool = False  # ... held as a copy of the base (full, freeze: no adapter to switch off)
    device: str = "cuda"  # cuda | cpu
    world_size: int = 1
    strategy: str = "ddp"  # ddp (each rank holds everything) | fsdp (weights, gradients, states sharded)
    malloc: str = "glibc"  # CPU: the allocator the process runs on (tcmalloc | jemalloc | glibc | glibc-mmap)

    @property
    def compute_bytes(self) -> int:
        """Bytes of a matmul's output: autocast's dtype under mixed precision, fp32 otherwise."""
        return BYTES[self.precision]

    @property
    def autocast(self) -> bool:
        return self.precision != "fp32"

    @property
    def rows(self) -> int:
        return self.batch_size * self.sequences_per_row
