"""Before a run starts: will it fit this machine? The planner's estimate against the memory here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.planning.memory import CUDA_USABLE_FRACTION, GIB
from tunelab.planning.plan import plan


def memory_warning(cfg: Any, *, world_size: int = 1, local_size: int = 1) -> str | None:
    """One line when the planner estimates that a run will not fit this machine's memory (None when
    it fits, or when there is no estimate: an unknown architecture is no reason to stop a run).
    `local_size` of the `world_size` processes share this machine's CPU memory; on GPUs each has its own."""
    try:
        estimate = plan(cfg, world_size=world_size, machines=False)
    except (TunelabError, ValueError, KeyError, TypeError):
        return None
    device = estimate.workload.device
    need = estimate.memory.peak * (local_size if device == "cpu" else 1)
    have = available_bytes(device)
    if have is None or need <= have:
        return None
    per = f" for {local_size} processes" if device == "cpu" and local_size > 1 else " per GPU" if device == "cuda" else ""
    return (f"the planner estimates {need / GIB:.1f} GiB at the peak{per} ({estimate.memory.peak_phase}) but this "
            f"machine has {have / GIB:.1f} GiB {'free on the GPU' if device == 'cuda' else 'available'}: the run will "
            "likely run out of memory; `tunelab plan CONFIG` shows what fits (a smaller batch or max_length, "
            "gradient checkpointing, QLoRA)")  # fmt: skip


def available_bytes(device: str) -> float | None:
    """Memory a new run can use here: the GPU's usable share of its total, or the CPU's MemAvailable."""
    if device == "cuda":
        import torch

        return torch.cuda.get_device_properties(0).total_memory * CUDA_USABLE_FRACTION
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None
