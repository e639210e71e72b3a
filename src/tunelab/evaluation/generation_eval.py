"""Evaluate a generative model on held-out rows: batched greedy answers scored against references."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tunelab.evaluation.metrics import generation_metrics
from tunelab.inference.generation import generate_from_ids
from tunelab.run import write_jsonl_atomic


def evaluate_generation(model: Any, tokenizer: Any, fmt: Any, examples: list, options: Any, *, label: str) -> dict:
    """Generate for each example's prompt and score it; returns metrics and the outputs."""
    prompts = [fmt.prompt_ids(ex, tokenizer) for ex in examples]
    references = [fmt.reference(ex) for ex in examples]
    started = time.time()
    outputs = generate_from_ids(
        model,
        tokenizer,
        prompts,
        max_new_tokens=options.max_new_tokens,
        batch_size=options.batch_size,
        description=f"evaluate {label}",
    )
    seconds = time.time() - started
    scores = generation_metrics([o.text for o in outputs], references)
    per_example = scores.pop("per_example")
    scores["mean_output_tokens"] = round(sum(o.new_tokens for o in outputs) / len(outputs), 1)
    scores["hit_token_limit"] = sum(o.hit_limit for o in outputs)
    return {
        "label": label,
        "metrics": scores,
        "outputs": [o.text for o in outputs],
        "per_example": per_example,
        "seconds": round(seconds, 1),
    }


def write_predictions(path: Path, examples: list, fmt: Any, base: dict | None, tuned: dict) -> None:
    rows = []
    for i, ex in enumerate(examples):
        row: dict[str, Any] = {
            "source": ex.source,
            "input": _prompt_of(ex),
            "reference": fmt.reference(ex),
            "tuned": tuned["outputs"][i],
            "tuned_scores": tuned["per_example"][i],
        }
        if base is not None:
            row["base"] = base["outputs"][i]
            row["base_scores"] = base["per_example"][i]
        if ex.meta:
            row["meta"] = ex.meta
        rows.append(row)
    write_jsonl_atomic(path, rows)


def _prompt_of(example: Any) -> str:
    msgs = example.messages or []
    users = [m["content"] for m in msgs if m["role"] == "user"]
    if users:
        return users[-1]
    return next((str(v) for k, v in example.fields.items() if v), "")
