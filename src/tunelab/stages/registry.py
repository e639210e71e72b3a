"""The one table of training tasks. A task's recipe module is imported only when a run starts,
so reading a config (and `tunelab --help`) never pays for torch."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any


@dataclass(frozen=True)
class Task:
    name: str
    summary: str
    recipe: str  # module with `run(ctx) -> dict` (the readable top-to-bottom training script)
    model_kind: str  # what `models.loading.load_model` builds: "causal_lm", …
    peft_task_type: str  # peft's TaskType name for adapters on this task

    def recipe_module(self) -> ModuleType:
        return importlib.import_module(self.recipe)

    def load_model(self, path: str | Path, *, dtype: Any = None, trust_remote_code: bool = False) -> Any:
        from tunelab.models.loading import load_model

        return load_model(path, self.model_kind, dtype=dtype, trust_remote_code=trust_remote_code)


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("sft", "supervised instruction tuning on prompt/response rows", "tunelab.stages.sft", "causal_lm", "CAUSAL_LM"),
        Task("pretrain", "continued pretraining on raw text (packed blocks)", "tunelab.stages.pretrain", "causal_lm", "CAUSAL_LM"),
    )
}
