"""The one schema of `predictions.jsonl`: one row per held-out example, every model's output keyed by
the model's name ("base" and "tuned" in a run's own file; run names in a comparison's).

    {"source": "data.jsonl:12", "input": "...", "reference": "...",
     "outputs": {"base": "...", "tuned": "..."},
     "scores": {"tuned": {"rougeL": 41.2, ...}},               # per-example metrics
     "stats": {"tuned": {"new_tokens": 9, "hit_limit": false, "ref_nll": 3.1, "ref_tokens": 7}},
     "probabilities": {"tuned": {"fresh": 0.91, "rotten": 0.09}},   # classification runs
     "meta": {"topic": "ai"}}

`read_predictions` also reads the flat schema older runs wrote (`tuned`, `base_scores`, …).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.runs.layout import write_jsonl_atomic

BASE, TUNED = "base", "tuned"
_LEGACY_MODELS = (BASE, TUNED)


@dataclass
class Prediction:
    source: str
    input: str
    reference: str
    outputs: dict[str, str] = field(default_factory=dict)
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    probabilities: dict[str, dict[str, float]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        row: dict[str, Any] = {"source": self.source, "input": self.input, "reference": self.reference,
                               "outputs": self.outputs}  # fmt: skip
        for name in ("scores", "stats", "probabilities", "meta"):
            value = getattr(self, name)
            if value:
                row[name] = value
        return row

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> Prediction:
        if "outputs" in row:
            return cls(
                source=str(row.get("source", "")),
                input=str(row.get("input", "")),
                reference=str(row.get("reference", "")),
                outputs=dict(row.get("outputs") or {}),
                scores=dict(row.get("scores") or {}),
                stats=dict(row.get("stats") or {}),
                probabilities=dict(row.get("probabilities") or {}),
                meta=dict(row.get("meta") or {}),
            )
        # the flat schema of runs written before this one: `tuned`, `tuned_scores`, `base_stats`, …
        pick = {suffix: {m: row[f"{m}{suffix}"] for m in _LEGACY_MODELS if f"{m}{suffix}" in row}
                for suffix in ("", "_scores", "_stats", "_probabilities")}  # fmt: skip
        return cls(
            source=str(row.get("source", "")),
            input=str(row.get("input", "")),
            reference=str(row.get("reference", "")),
            outputs={m: v for m, v in pick[""].items() if isinstance(v, str)},
            scores=pick["_scores"],
            stats=pick["_stats"],
            probabilities=pick["_probabilities"],
            meta=dict(row.get("meta") or {}),
        )


def write_predictions(path: Path, rows: list[Prediction]) -> None:
    write_jsonl_atomic(Path(path), [r.to_json() for r in rows])


def read_predictions(path: Path) -> list[Prediction]:
    """Every row of a predictions file; [] when it is missing or not valid JSON lines."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            return []
        if isinstance(value, dict):
            rows.append(Prediction.from_json(value))
    return rows
