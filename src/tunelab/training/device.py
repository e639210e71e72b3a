"""Which precision to train and run in, and how much memory the process used: one place for the
device questions every stage and every loader asks (no transformers import, so loading stays cheap)."""

from __future__ import annotations

import resource
import sys
from pathlib import Path


def cpu_supports_bf16() -> bool:
    """bf16 autocast is only a win on CPUs with native bf16 math (measured 1.5–1.7× here)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags for f in ("avx512_bf16", "amx_bf16"))


def choose_precision(requested: str) -> str:
    import torch

    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_supports_bf16() else "fp32"


def autocast_dtype(precision: str) -> object:
    """The torch dtype autocast computes in for a chosen precision (None: fp32, no autocast)."""
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def peak_memory_gib() -> float:
    """Peak resident memory of this process (ru_maxrss is KiB on Linux)."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / (1024 * 1024) if sys.platform != "darwin" else kib / 1024**3
