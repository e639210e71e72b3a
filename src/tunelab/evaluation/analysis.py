"""Error analysis of scored models on the same rows: one row per example, the regressions (the
baseline better than another model on the primary per-example metric), the worst N outputs of each
model, and per-slice scores when the rows carry a field such as chatterbot's ``topic``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.evaluation import bootstrap as B
from tunelab.evaluation.outputs import ModelResult
from tunelab.evaluation.rows import EvalData
from tunelab.evaluation.scoring import comparison_table

__all__ = ["MIN_SLICE_FOR_CI", "Comparison", "analyse", "example_row", "slice_field", "slices"]

MIN_SLICE_FOR_CI = 5  # slices with fewer rows get the difference without an interval


@dataclass
class Comparison:
    out_dir: Path
    models: list[str]
    baseline: str | None
    data: EvalData
    primary: str
    table: list[dict[str, Any]]
    regressions: dict[str, list[dict[str, Any]]]
    worst: dict[str, list[dict[str, Any]]]
    slices: dict[str, Any] | None
    counts: dict[str, dict[str, int]]
    notes: list[str]
    report: Path
    results: dict[str, ModelResult]
    probes: dict[str, Any] | None = None  # probes.json: the models' answers to the off-task probes

    def to_json(self) -> dict[str, Any]:
        return {
            "models": self.models,
            "baseline": self.baseline,
            "data": self.data.description,
            "n": len(self.data),
            "primary_metric": self.primary,
            "metrics": self.table,
            "counts": self.counts,
            "regressions": self.regressions,
            "worst": self.worst,
            "slices": self.slices,
            "origins": {name: r.origin for name, r in self.results.items()},
            "generation_seconds": {name: r.seconds for name, r in self.results.items()},
            "notes": self.notes,
        }


def example_row(i: int, data: EvalData, results: list[ModelResult], primary: str) -> dict[str, Any]:
    """Row ``i``: id, source, input, reference, its plain extra fields, each model's output and score."""
    row: dict[str, Any] = {
        "id": i + 1,
        "source": data.sources[i],
        "input": data.inputs[i],
        "reference": data.references[i],
    }
    for key, value in data.meta[i].items():
        if isinstance(value, str | int | float | bool) or value is None:
            row.setdefault(key, value)
    for r in results:
        if r.outputs:
            row[r.name] = r.outputs[i]
        if r.per_example:
            row[f"{r.name} {primary}"] = r.per_example[i][primary]
    return row


def slice_field(data: EvalData, requested: str | None) -> str | None:
    """The field to slice by: the one requested, else the first with 2 … min(50, n/2) distinct values."""
    if requested:
        if not any(requested in m for m in data.meta):
            raise TunelabError(
                f"no row has a field {requested!r} to slice by",
                field="--slice-by",
                expected=f"one of: {', '.join(sorted({k for m in data.meta for k in m})) or '(the rows have no extra fields)'}",
            )
        return requested
    n = len(data)
    for key in sorted({k for m in data.meta for k in m}):
        values = [m.get(key) for m in data.meta]
        if not all(isinstance(v, str | int | bool) for v in values):
            continue
        distinct = len(set(values))
        if 2 <= distinct <= min(50, max(2, n // 2)):
            return key
    return None


def slices(
    data: EvalData, results: list[ModelResult], baseline: str | None, primary: str, field: str, resamples: int, seed: int
) -> dict[str, Any]:
    """Mean per-example ``primary`` per value of ``field``, and each model's paired difference from the baseline."""
    groups: dict[str, list[int]] = {}
    for i, m in enumerate(data.meta):
        groups.setdefault(str(m.get(field, "(none)")), []).append(i)
    base = next((r for r in results if r.name == baseline), None)
    spec = B.mean_metric(primary)
    rows = []
    for value, idx in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        row: dict[str, Any] = {field: value, "n": len(idx), "means": {}, "deltas": {}}
        for r in results:
            if not r.per_example:
                continue
            vals = [r.per_example[i][primary] for i in idx]
            row["means"][r.name] = sum(vals) / len(vals)
            if base is not None and r is not base and base.per_example:
                ref = [base.per_example[i][primary] for i in idx]
                if len(idx) >= MIN_SLICE_FOR_CI:
                    row["deltas"][r.name] = B.paired_bootstrap(spec, ref, vals, resamples=resamples, seed=seed)
                else:  # too few rows for a meaningful interval: the difference alone
                    row["deltas"][r.name] = {"delta": sum(vals) / len(vals) - sum(ref) / len(ref)}
        rows.append(row)
    return {"field": field, "metric": primary, "rows": rows}


def analyse(
    results: list[ModelResult],
    rows: EvalData,
    *,
    baseline: str | None,
    primary: str,
    generative: bool = True,
    worst: int = 10,
    slice_by: str | None = None,
    resamples: int = 1000,
    seed: int = 0,
    out_dir: Path,
    notes: list[str] | None = None,
) -> Comparison:
    """Metrics with bootstrap intervals, regressions, worst N and slices for scored models."""
    table = comparison_table(results, baseline, rows, resamples, seed)
    by_name = {r.name: r for r in results}
    regressions: dict[str, list[dict[str, Any]]] = {}
    counts: dict[str, dict[str, int]] = {}
    worst_rows: dict[str, list[dict[str, Any]]] = {}
    if generative:
        example_rows = [example_row(i, rows, results, primary) for i in range(len(rows))]
        if baseline:
            b = by_name[baseline]
            for r in results:
                if r.name == baseline:
                    continue
                diffs = [r.per_example[i][primary] - b.per_example[i][primary] for i in range(len(rows))]
                counts[r.name] = {
                    "worse": sum(d < 0 for d in diffs),
                    "better": sum(d > 0 for d in diffs),
                    "tied": sum(d == 0 for d in diffs),
                }
                order = sorted((i for i, d in enumerate(diffs) if d < 0), key=lambda i: (diffs[i], i))
                regressions[r.name] = [{**example_rows[i], "drop": diffs[i]} for i in order]
        for r in results:
            order = sorted(range(len(rows)), key=lambda i: (r.per_example[i][primary], i))[:worst]
            worst_rows[r.name] = [example_rows[i] for i in order]
    field = slice_field(rows, slice_by) if generative else None
    sliced = slices(rows, results, baseline, primary, field, resamples, seed) if field else None
    all_notes = [
        f"{len(rows)} rows: {rows.description}",
        f"95% intervals: percentile bootstrap over {resamples} resamples of the rows (seed {seed}); "
        "differences are paired (every model scored on the same resample); * = the interval excludes zero",
        "BLEU and chrF are corpus scores recomputed on each resample from sacrebleu's sufficient statistics; "
        "perplexity is of the reference responses (teacher-forced), lower is better",
        *(notes or []),
    ]
    return Comparison(out_dir=out_dir, models=[r.name for r in results], baseline=baseline, data=rows, primary=primary,
                      table=table, regressions=regressions, worst=worst_rows, slices=sliced, counts=counts,
                      notes=all_notes, report=out_dir / "report.html", results=by_name)  # fmt: skip
