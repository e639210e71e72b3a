"""Which rows every model answers: the held-out split a run was evaluated on, any data file in the
run's shape, or the rows a run's ``predictions.jsonl`` already holds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.inference.prompts import display_input
from tunelab.runs.artifacts import Prediction
from tunelab.runs.loading import run_config

__all__ = ["EvalData", "eval_data", "file_data", "held_out_data", "predictions_data"]


@dataclass
class EvalData:
    """The rows every model answers."""

    examples: list[Any]
    inputs: list[str]
    references: list[str]
    sources: list[str]
    meta: list[dict[str, Any]]
    description: str  # for people: "held-out split of runs/demo (106 rows)"
    key: str  # for folder names: "heldout" or the file's stem
    kind: str = "generation"  # "generation" | "text" (perplexity only) | "classification"
    label_names: list[str] | None = None  # classification: the run's labels, in id order

    def __len__(self) -> int:
        return len(self.inputs)


def eval_data(examples: list, fmt: Any, labels: list[str] | None, description: str, key: str) -> EvalData:
    """Rows of a run's shape: prompt → reference with the run's format ``fmt``, or (``fmt`` None, a
    classification run) text → label, every label one of the run's ``labels``."""
    common = {
        "examples": examples,
        "sources": [ex.source for ex in examples],
        "meta": [dict(ex.meta or {}) for ex in examples],
        "description": description,
        "key": key,
    }
    if fmt is None:  # a classification run: text → label
        refs = [str(ex.fields.get("label", "")) for ex in examples]
        unknown = sorted({r for r in refs if labels is not None and r not in labels})
        if unknown:
            raise TunelabError(
                f"label {unknown[0]!r} is not one of the run's labels", file=examples[0].source if examples else None,
                field="label", expected=f"one of {', '.join(labels or [])}",
            )
        inputs = [ex.text or "" for ex in examples]
        return EvalData(inputs=inputs, references=refs, kind="classification", label_names=labels, **common)
    return EvalData(
        inputs=[display_input(ex) for ex in examples],
        references=[fmt.reference(ex) if fmt.kind != "text" else (ex.text or "") for ex in examples],
        kind="text" if fmt.kind == "text" else "generation",
        **common,
    )


def held_out_data(run_dir: str | Path, *, max_examples: int | None = None) -> EvalData:
    """The test split a run was evaluated on, rebuilt from its config (same seed, same rows)."""
    from tunelab.data.splits import splits_from_config

    run, cfg = run_config(Path(run_dir))
    splits = splits_from_config(cfg.data, cfg._source_dir)
    limit = max_examples or cfg.evaluation.max_examples
    test = splits.test[:limit] if limit else splits.test
    if not test:
        raise TunelabError(
            "the run has no held-out test rows", file=str(run.path), expected="a run with a test split, or --data FILE"
        )
    description = f"held-out split of {run.path} ({len(test)} rows)"
    return eval_data(test, run.read_format(), run.read_labels(), description, "heldout")


def file_data(path: str | Path, run_dir: str | Path, *, max_examples: int | None = None) -> EvalData:
    """Rows from any supported data file, in the shape the run was trained on (its column mapping applies)."""
    from tunelab.data.splits import load_examples

    run, cfg = run_config(Path(run_dir))
    p = Path(path)
    if not str(path).startswith("builtin:") and not p.is_file():
        raise TunelabError("data file not found", file=str(path), expected="a .jsonl/.json/.csv/.tsv/.parquet file")
    try:
        examples, _shape, _ = load_examples(str(path), columns=cfg.data.columns or None)
    except TunelabError as exc:
        if not cfg.data.columns:
            raise
        # the run's column mapping may not fit this file; try it as is
        try:
            examples, _shape, _ = load_examples(str(path))
        except TunelabError:
            raise exc from None
    if max_examples:
        examples = examples[:max_examples]
    stem = Path(str(path).replace("builtin:", "")).stem or "data"
    return eval_data(examples, run.read_format(), run.read_labels(), f"{path} ({len(examples)} rows)", stem)


def predictions_data(rows: list[Prediction], description: str, *, labels: list[str] | None = None) -> EvalData:
    """The rows a predictions file holds (no examples: nothing is generated for them again);
    ``labels`` given: a classification run's rows."""
    return EvalData(
        examples=[],
        inputs=[r.input for r in rows],
        references=[r.reference for r in rows],
        sources=[r.source for r in rows],
        meta=[dict(r.meta) for r in rows],
        description=description,
        key="heldout",
        kind="classification" if labels is not None else "generation",
        label_names=labels,
    )
