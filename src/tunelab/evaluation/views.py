"""A comparison as report sections: the interval table, confusion matrices, training curves,
length histograms, the regressions / worst N / slices tables and the per-example table. The
metrics' labels and directions are filled in here, from `tunelab.evaluation.metrics`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.evaluation.analysis import Comparison, example_row
from tunelab.evaluation.metrics import metric_display
from tunelab.evaluation.outputs import ModelResult
from tunelab.evaluation.rows import EvalData
from tunelab.reporting import (
    Column,
    ComparisonRow,
    ComparisonTable,
    ConfigDump,
    ConfusionMatrices,
    ConfusionMatrix,
    ExampleRow,
    ExamplesTable,
    Figures,
    Notes,
    Samples,
    Section,
    StaticTable,
    StaticTables,
    Summary,
)

__all__ = ["FLAGS", "ComparisonView", "comparison_section", "comparison_view", "delta_text", "flag", "training_curves"]

DASH = "\u2014"
FLAGS = ["regression", "improvement", "tie"]


def flag(delta: float) -> str:
    return "regression" if delta < 0 else "improvement" if delta > 0 else "tie"


def comparison_section(
    table: list[dict[str, Any]], models: list[str], baseline: str | None, n: int, resamples: int | None,
    *, title: str = "Metrics",
) -> ComparisonTable:  # fmt: skip
    """The `interval_table` rows as the report's comparison table."""
    rows = [ComparisonRow(metric_display(r["metric"]), r["values"], r["intervals"], r["deltas"]) for r in table]
    return ComparisonTable(models=list(models), baseline=baseline, rows=rows, n=n, resamples=resamples, title=title)


def delta_text(d: dict[str, Any]) -> str:
    if not d or d.get("delta") is None or not math.isfinite(d["delta"]):
        return DASH
    if "low" not in d:
        return f"{d['delta']:+.2f} (too few rows for an interval)"
    mark = " *" if d.get("excludes_zero") else ""
    return f"{d['delta']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]{mark}"


@dataclass
class ComparisonView:
    summary: Summary
    comparison: ComparisonTable
    confusion: ConfusionMatrices | None
    plots: Figures | None  # training curves of the runs
    figures: Figures  # token-length histograms
    analysis: StaticTables  # regressions, worst N, slices
    examples: ExamplesTable
    probes: Section | None = None  # the off-task probes' answers

    def page(self, notes: list[str], config: dict[str, Any]) -> list[Section]:
        """The sections of a comparison's own report.html, in page order."""
        parts: list[Section | None] = [
            self.summary,
            self.comparison,
            self.confusion,
            self.plots,
            self.figures if self.figures.images else None,
            self.analysis if self.analysis.tables else None,
            self.examples if self.examples.rows else Samples([]),
            self.probes,
            Notes(notes),
            ConfigDump(config),
        ]
        return [p for p in parts if p is not None]


def comparison_view(
    comp: Comparison, out_dir: Path, tokenizer: Any, max_new_tokens: int, limit: int, *,
    resamples: int | None = None, curves: bool = True,
) -> ComparisonView:  # fmt: skip
    """Every report section of a comparison (figures are written to ``out_dir``; ``curves`` False:
    no loss/lr plots of the runs, e.g. for a run's own report, which draws its own)."""
    results = [comp.results[n] for n in comp.models]
    runs = {r.name: r.run_dir / "metrics.jsonl" for r in results if not r.is_base}
    plots = training_curves(runs, out_dir) if curves else None
    figures = _figures(out_dir, results, comp.data, tokenizer, max_new_tokens)
    summary = {
        "data": comp.data.description,
        "models": ", ".join(comp.models),
        "baseline": comp.baseline or DASH,
        "primary metric (error analysis)": comp.primary,
        **{f"outputs of {n}": comp.results[n].origin or DASH for n in comp.models},
        **{f"generation time of {n} (s)": comp.results[n].seconds for n in comp.models if comp.results[n].seconds is not None},
    }
    confusion = {
        r.name: ConfusionMatrix(r.metrics["label_names"], r.metrics["confusion_matrix"])
        for r in results
        if "confusion_matrix" in r.metrics
    }
    return ComparisonView(
        summary=Summary(summary),
        comparison=comparison_section(comp.table, comp.models, comp.baseline, len(comp.data), resamples),
        confusion=ConfusionMatrices(confusion) if confusion else None,
        plots=plots,
        figures=figures,
        analysis=StaticTables(_analysis_tables(comp, limit)),
        examples=_examples(comp, results),
    )


def _examples(comp: Comparison, results: list[ModelResult]) -> ExamplesTable:
    primary, baseline = comp.primary, comp.baseline
    meta_keys = sorted({k for m in comp.data.meta for k in m if isinstance(m.get(k), str | int | float | bool)})
    columns = [
        Column("id", "#", "num"),
        *(Column(k) for k in meta_keys),
        Column("input"),
        Column("reference"),
        *(Column(r.name) for r in results if r.outputs),
        *(Column(f"{r.name} {primary}", kind="num") for r in results if r.per_example),
    ]
    base = comp.results[baseline] if baseline else None
    others = [r for r in results if base is not None and base.per_example and r.name != baseline and r.per_example]
    rows = []
    for i in range(len(comp.data)):
        cells = example_row(i, comp.data, results, primary)
        row_flags = set()
        for r in others:
            assert base is not None
            d = r.per_example[i][primary] - base.per_example[i][primary]
            cells[f"delta {r.name}"] = d
            row_flags.add(flag(d))
        rows.append(ExampleRow(cells, tuple(sorted(row_flags))))
    columns += [Column(f"delta {r.name}", f"\u0394 {r.name}", "num") for r in others]
    return ExamplesTable(columns, rows, flags=FLAGS if others else [], primary=primary)


def _analysis_tables(comp: Comparison, limit: int) -> list[StaticTable]:
    tables = []
    primary, baseline = comp.primary, comp.baseline
    text = [Column("input"), Column("reference")]
    for name, rows in comp.regressions.items():
        c = comp.counts.get(name, {})
        note = f"{c.get('worse', 0)} worse, {c.get('better', 0)} better, {c.get('tied', 0)} tied of {len(comp.data)}"
        if len(rows) > limit:
            note += f"; the {limit} largest drops shown, all in comparison.csv"
        columns = [Column("id", "#", "num"), *text, *([Column(baseline)] if baseline else [])]
        columns += [*([Column(name)] if name != baseline else []), Column("drop", f"\u0394 {primary}", "num")]
        tables.append(StaticTable(columns, rows[:limit], title=f"Regressions: {baseline} better than {name} ({primary})",
                                  note=note, id=f"regressions-{name}", empty="No regressions."))  # fmt: skip
    for name, rows in comp.worst.items():
        columns = [Column("id", "#", "num"), *text, Column(name), Column(f"{name} {primary}", primary, "num")]
        tables.append(StaticTable(columns, rows, title=f"Worst {len(rows)} outputs of {name} ({primary})",
                                  id=f"worst-{name}", empty="No rows."))  # fmt: skip
    if comp.slices:
        tables.append(_slice_table(comp))
    return tables


def _slice_table(comp: Comparison) -> StaticTable:
    s = comp.slices
    assert s is not None
    field, metric = s["field"], s["metric"]
    names = [n for n in comp.models if any(n in row["means"] for row in s["rows"])]
    others = [n for n in names if n != comp.baseline and comp.baseline]
    columns = [Column(field), Column("n", kind="num")]
    columns += [Column(f"mean {n}", f"{n} {metric}", "num") for n in names]
    columns += [Column(f"delta {n}", f"\u0394 {n} [95% CI]") for n in others]
    rows = []
    for row in s["rows"]:
        flat = {field: row[field], "n": row["n"], **{f"mean {n}": row["means"].get(n) for n in names}}
        for n in others:
            d = row["deltas"].get(n)
            flat[f"delta {n}"] = delta_text(d) if d else ""
        rows.append(flat)
    note = f"mean per-example {metric} per slice"
    if comp.baseline:
        note += f"; \u0394 against {comp.baseline} with a paired bootstrap 95% interval"
    return StaticTable(columns, rows, title=f"By {field}", note=note, id="slices", empty="No slices.")


def training_curves(metrics_files: dict[str, Path], out_dir: Path, *, per: str = "") -> Figures | None:
    """Loss and learning-rate curves of several runs (``{name: metrics.jsonl}``) on one plot each,
    written to ``out_dir``; None when none of the files can be read. ``per``: "fold" → "Loss per fold"."""
    from tunelab.evaluation.plots import plot_runs
    from tunelab.runs.layout import read_metrics

    curves: dict[str, list[dict]] = {}
    for name, path in metrics_files.items():
        if path.is_file():
            try:
                curves[name] = read_metrics(path)
            except TunelabError:
                continue
    if not curves:
        return None
    suffix = f" per {per}" if per else ""
    return Figures({
        "Loss": plot_runs(curves, out_dir / "loss.png", key="loss", title="Loss" + suffix),
        "Learning rate": plot_runs(curves, out_dir / "lr.png", key="learning_rate", title="Learning rate" + suffix),
    })  # fmt: skip


def _figures(out_dir: Path, results: list[ModelResult], data: EvalData, tokenizer: Any, max_new_tokens: int) -> Figures:
    """Token-length histograms of the references and outputs, and of the prompts."""
    from tunelab.evaluation.plots import plot_histograms

    images: dict[str, Path] = {}
    series: dict[str, list[float]] = {}
    if tokenizer is not None and any(data.references) and data.kind != "classification":
        series["references"] = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in data.references]
    for r in results:
        if r.new_tokens:
            series[f"{r.name} outputs"] = [float(n) for n in r.new_tokens]
    if series:
        images["Token lengths"] = plot_histograms(
            series,
            out_dir / "token_lengths.png",
            title="Token lengths: references and outputs",
            xlabel="tokens",
            marker=(max_new_tokens, "max_new_tokens") if any(r.new_tokens for r in results) else None,
        )
    if tokenizer is not None:
        prompts = [float(len(tokenizer(t, add_special_tokens=False)["input_ids"])) for t in data.inputs]
        images["Prompt lengths"] = plot_histograms(
            {"prompts": prompts}, out_dir / "prompt_lengths.png", title="Prompt lengths", xlabel="tokens"
        )
    return Figures(images, title="Distributions", id="figures")
