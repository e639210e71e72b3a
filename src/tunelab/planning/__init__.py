"""Planning a run before it runs: what a training config needs in memory and compute, and where it
fits, from the model's config.json alone (no weights) — `plan(config)`; `measure` trains a few steps
to check it.

    from tunelab.planning import plan
    p = plan("examples/sft_lora.yaml", batch_size=16)
    print(p.memory.peak / 2**30, p.flops.per_step)
"""

from __future__ import annotations

from tunelab.planning.plan import Plan, plan

__all__ = ["Plan", "plan"]
