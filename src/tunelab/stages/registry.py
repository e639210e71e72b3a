"""The one table of training tasks. A task's recipe module is imported only when a run starts,
so reading a config (and `tunelab --help`) never pays for torch."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class ClassifyOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    labels: list[str] | None = Field(None, description="label order (default: sorted labels found in the data)")
    class_weights: Literal["none", "balanced"] = Field("none", description="balanced: weight classes by 1/frequency")


@dataclass(frozen=True)
class Task:
    name: str
    summary: str
    recipe: str  # module with `run(ctx) -> dict` (the readable top-to-bottom training script)
    model_kind: str  # what `models.loading.load_model` builds: "causal_lm", "seq_cls"
    peft_task_type: str  # peft's TaskType name for adapters on this task
    head_modules: tuple[str, ...]  # the task head, trained by `freeze`
    shapes: tuple[str, ...]  # row shapes it trains on (data.shapes names)
    options: type[BaseModel] | None = None  # the task's own config section (`classify:`)
    packs_rows: bool = True  # rows may be packed into one sequence (padding-free batches)

    def recipe_module(self) -> ModuleType:
        return importlib.import_module(self.recipe)

    def load_model(self, path: str | Path, **kwargs: Any) -> Any:
        from tunelab.models.loading import load_model

        return load_model(path, self.model_kind, **kwargs)


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("sft", "supervised instruction tuning on prompt/response rows", "tunelab.stages.sft", "causal_lm",
             "CAUSAL_LM", ("lm_head",),
             ("qa", "alpaca", "prompt_completion", "input_output", "messages", "conversations")),
        Task("pretrain", "continued pretraining on raw text (packed blocks)", "tunelab.stages.pretrain", "causal_lm",
             "CAUSAL_LM", ("lm_head",), ("text",)),
        Task("classify", "sequence classification with a classification head", "tunelab.stages.classify", "seq_cls",
             "SEQ_CLS", ("score", "classifier", "pooler"), ("classification",), ClassifyOptions, packs_rows=False),
    )
}
