"""Small stand-ins for the model-free unit tests: rows, a whitespace tokenizer, scored results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.evaluation.outputs import ModelResult
from tunelab.evaluation.rows import EvalData
from tunelab.evaluation.scoring import score


class WordTokenizer:
    """`tokenizer(text, add_special_tokens=False)["input_ids"]`: one id per whitespace-separated word."""

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, Any]:
        return {"input_ids": list(range(len(text.split())))}


def rows(references: list[str], *, meta: list[dict] | None = None, kind: str = "generation",
         labels: list[str] | None = None) -> EvalData:  # fmt: skip
    n = len(references)
    return EvalData(
        examples=[], inputs=[f"question {i}" for i in range(n)], references=list(references),
        sources=[f"data.jsonl:{i + 1}" for i in range(n)], meta=meta or [{} for _ in range(n)],
        description=f"{n} test rows", key="test", kind=kind, label_names=labels,
    )  # fmt: skip


def scored(name: str, outputs: list[str], data: EvalData, *, is_base: bool = False) -> ModelResult:
    r = ModelResult(name=name, run_dir=Path("runs/x"), is_base=is_base, outputs=list(outputs))
    if data.kind != "classification":
        r.new_tokens = [len(o.split()) for o in outputs]
        r.hit_limit = [n >= 4 for n in r.new_tokens]
    score(r, data, data.kind != "text")
    return r
