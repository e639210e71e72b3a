"""The table sections of a report: base/tuned metrics, a multi-model comparison, confusion matrices,
static data tables (regressions, worst N, slices …) and the sortable, filterable per-example table.

Metric directions, labels and precision come in as `Metric` data: this layer knows no metric."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from tunelab.reporting.format import DASH, Metric, cell, esc, fmt_metric, fmt_signed, fmt_value, is_number
from tunelab.reporting.sections import Section, muted

__all__ = [
    "Column",
    "ComparisonRow",
    "ComparisonTable",
    "ConfusionMatrices",
    "ConfusionMatrix",
    "ExampleRow",
    "ExamplesTable",
    "MetricRow",
    "MetricsTable",
    "StaticTable",
    "StaticTables",
]

EXAMPLES_SCRIPT = "examples.js"


@dataclass(frozen=True)
class Column:
    key: str
    label: str = ""  # the key when empty
    kind: str = "text"  # "text" | "num" (right-aligned, sorted numerically)


def _better(metric: Metric, delta: float) -> bool:
    return delta < 0 if metric.lower_is_better else delta > 0


def _ci_cells(metric: Metric, ci: dict[str, Any] | None) -> str:
    """Two cells: "[low, high]" and whether it excludes zero (coloured by direction when it does)."""
    if not ci or not is_number(ci.get("low")) or not is_number(ci.get("high")):
        return f'<td class="num">{DASH}</td><td>{DASH}</td>'
    text = f"[{fmt_signed(metric, ci['low'])}, {fmt_signed(metric, ci['high'])}]"
    excludes = bool(ci.get("excludes_zero"))
    cls = ""
    if excludes and not metric.neutral and is_number(ci.get("delta")):
        cls = ' class="good"' if _better(metric, ci["delta"]) else ' class="bad"'
    p = ci.get("p_value")
    title = f' title="p = {float(p):.3g} (two-sided, bootstrap)"' if is_number(p) and math.isfinite(float(p)) else ""
    return f'<td class="num">{text}</td><td{cls}{title}>{"yes" if excludes else "no"}</td>'


@dataclass
class MetricRow:
    metric: Metric
    base: Any = None
    tuned: Any = None
    interval: dict[str, Any] | None = None  # paired bootstrap of tuned − base: {delta, low, high, excludes_zero, p_value}


@dataclass
class MetricsTable(Section, title="Metrics", id="metrics"):
    """Base, tuned and their difference per metric; a 95% CI column when any row has an interval."""

    rows: list[MetricRow] = field(default_factory=list)

    def body(self) -> str:
        if not self.rows:
            return muted("No metrics.")
        with_ci = any(row.interval is not None for row in self.rows)
        body = []
        for row in self.rows:
            m = row.metric
            ci = _ci_cells(m, row.interval) if with_ci else ""
            body.append(
                f"<tr><td>{esc(m.name)}</td>"
                f'<td class="num">{fmt_metric(m, row.base)}</td>'
                f'<td class="num">{fmt_metric(m, row.tuned)}</td>'
                f"{_delta_cell(m, row.base, row.tuned)}{ci}</tr>"
            )
        head = "<tr><th>Metric</th><th>Base</th><th>Tuned</th><th>Delta</th>"
        if with_ci:
            head += '<th title="paired bootstrap over the held-out rows">95% CI of delta</th><th>Excludes 0</th>'
        head += "</tr>"
        return f'<table class="metrics"><thead>{head}</thead><tbody>{"".join(body)}</tbody></table>'


def _delta_cell(metric: Metric, base: Any, tuned: Any) -> str:
    if not (is_number(base) and is_number(tuned)):
        return f'<td class="num">{DASH}</td>'
    delta = float(tuned) - float(base)
    if math.isnan(delta):
        return f'<td class="num">{DASH}</td>'
    text = ("+inf" if delta > 0 else "-inf") if math.isinf(delta) else fmt_signed(metric, delta)
    cls = "num"
    if delta != 0 and not metric.neutral:
        cls = "num good" if _better(metric, delta) else "num bad"
    hint = "lower is better" if metric.lower_is_better else "higher is better"
    return f'<td class="{cls}" title="{hint}">{text}</td>'


@dataclass
class ComparisonRow:
    metric: Metric
    values: dict[str, Any] = field(default_factory=dict)  # model → value
    intervals: dict[str, dict[str, Any]] = field(default_factory=dict)  # model → {low, high}
    deltas: dict[str, dict[str, Any]] = field(default_factory=dict)  # model → paired bootstrap against the baseline


@dataclass
class ComparisonTable(Section, title="Metrics", id="comparison"):
    """Models side by side, each value with its 95% interval; every other model's difference from the
    baseline with its paired interval, green/red only where that interval excludes zero."""

    models: list[str] = field(default_factory=list)
    baseline: str | None = None
    rows: list[ComparisonRow] = field(default_factory=list)
    n: int | None = None
    resamples: int | None = None

    def body(self) -> str:
        models = [str(m) for m in self.models]
        if not models or not self.rows:
            return muted("No metrics.")
        baseline = self.baseline
        others = [m for m in models if baseline and m != baseline]
        head = "<tr><th>Metric</th>" + "".join(f"<th>{esc(m)}</th>" for m in models)
        for m in others:
            head += f"<th>\u0394 {esc(m)} \u2212 {esc(baseline)}</th><th>95% CI</th><th>Excludes 0</th>"
        head += "</tr>"
        body = []
        for row in self.rows:
            metric = row.metric
            hint = " (lower is better)" if metric.lower_is_better else ""
            cells = [f'<td title="{esc(metric.name + hint)}">{esc(metric.name)}</td>']
            for m in models:
                ci = row.intervals.get(m) or {}
                extra = ""
                if is_number(ci.get("low")) and is_number(ci.get("high")):
                    extra = f'<span class="ci">[{fmt_metric(metric, ci["low"])}, {fmt_metric(metric, ci["high"])}]</span>'
                cells.append(f'<td class="num">{fmt_metric(metric, row.values.get(m))}{extra}</td>')
            for m in others:
                d = row.deltas.get(m)
                if not d:
                    cells.append(f'<td class="num">{DASH}</td><td class="num">{DASH}</td><td>{DASH}</td>')
                    continue
                delta = d.get("delta")
                cls = "num"
                if is_number(delta) and not metric.neutral and d.get("excludes_zero"):
                    cls = "num good" if _better(metric, delta) else "num bad"
                cells.append(f'<td class="{cls}">{fmt_signed(metric, delta)}</td>' + _ci_cells(metric, d))
            body.append("<tr>" + "".join(cells) + "</tr>")
        note = f"Values over {fmt_value(self.n)} rows; under each value its 95% bootstrap interval."
        if baseline:
            over = f" over {fmt_value(self.resamples)} resamples" if self.resamples else ""
            note += (
                f" \u0394 = model \u2212 {esc(baseline)}, with a paired bootstrap 95% interval{over}; "
                "green/red only where the interval excludes zero."
            )
        return f'<table class="compare"><thead>{head}</thead><tbody>{"".join(body)}</tbody></table><p class="muted">{note}</p>'


@dataclass
class ConfusionMatrix:
    labels: list[str]
    matrix: list[list[int]]  # rows = true label, columns = predicted


@dataclass
class ConfusionMatrices(Section, title="Confusion matrix", id="confusion"):
    """One confusion matrix per model (``""``: a single matrix without a caption)."""

    matrices: dict[str, ConfusionMatrix] = field(default_factory=dict)

    def body(self) -> str:
        parts = []
        for name, cm in self.matrices.items():
            labels = [str(x) for x in cm.labels]
            if not labels or not cm.matrix:
                continue
            head = "<tr><th>true \\ predicted</th>" + "".join(f"<th>{esc(lab)}</th>" for lab in labels) + "</tr>"
            body = []
            for i, row in enumerate(cm.matrix):
                total = sum(row) or 1
                label = labels[i] if i < len(labels) else str(i)
                cells = []
                for j, count in enumerate(row):
                    share = count / total
                    colour = "19,115,51" if i == j else "179,38,30"
                    style = f"background: rgba({colour},{0.08 + 0.6 * share:.3f})" if count else ""
                    cells.append(f'<td style="{style}" title="{100 * share:.1f}% of true {esc(label)}">{count:,}</td>')
                body.append(f"<tr><th>{esc(label)}</th>{''.join(cells)}</tr>")
            caption = f"<h3>{esc(name)}</h3>" if name else ""
            parts.append(f'{caption}<table class="confusion"><thead>{head}</thead><tbody>{"".join(body)}</tbody></table>')
        return "".join(parts) or muted("No confusion matrix.")


def _head(c: Column) -> str:
    return esc(c.label or c.key)


@dataclass
class StaticTable:
    """A data table shown as is (no script): rows are ``{column key: value}``."""

    columns: list[Column]
    rows: list[dict[str, Any]]
    title: str = ""
    note: str = ""
    id: str = ""
    empty: str = "None."

    def html(self) -> str:
        title = f"<h3>{esc(self.title)}</h3>" if self.title else ""
        note = muted(self.note) if self.note else ""
        if not self.rows:
            return f"{title}{note}{muted(self.empty)}"
        head = "".join(f"<th>{_head(c)}</th>" for c in self.columns)
        body = "".join("<tr>" + "".join(cell(row.get(c.key), c.kind) for c in self.columns) + "</tr>" for row in self.rows)
        sid = f' id="{esc(self.id)}"' if self.id else ""
        return (
            f'{title}{note}<div class="tablewrap"><table class="data"{sid}><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>"
        )


@dataclass
class StaticTables(Section, title="Error analysis", id="analysis"):
    tables: list[StaticTable] = field(default_factory=list)

    def body(self) -> str:
        return "\n".join(t.html() for t in self.tables)


@dataclass
class ExampleRow:
    cells: dict[str, Any]  # column key → value
    flags: tuple[str, ...] = ()  # e.g. ("regression",): what the flag selector matches


@dataclass
class ExamplesTable(Section, title="Per-example results", id="examples"):
    """Every example, sortable by any column and filterable by text and flag in the page (one small
    script, which only reads and reorders the table; at most one such table per page). Initial state
    can come from the URL fragment: ``#q=TEXT&flag=regression&sort=COL&desc=1``."""

    columns: list[Column] = field(default_factory=list)
    rows: list[ExampleRow] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)  # the flag selector's choices (none: no selector)
    primary: str | None = None  # the per-example metric the flags compare, for the hint

    @property
    def script(self) -> str | None:
        return EXAMPLES_SCRIPT if self.columns and self.rows else None

    def body(self) -> str:
        if not self.script:
            return muted("No examples.")
        head = "".join(
            f'<th data-kind="{esc(c.kind)}" aria-sort="none"><button type="button">{_head(c)}</button></th>'
            for c in self.columns
        )
        body = []
        for row in self.rows:
            attr = f' data-flags="{esc(" ".join(row.flags))}"' if row.flags else ""
            body.append(f"<tr{attr}>" + "".join(cell(row.cells.get(c.key), c.kind) for c in self.columns) + "</tr>")
        select = ""
        if self.flags:
            options = '<option value="">all rows</option>' + "".join(
                f'<option value="{esc(f)}">{esc(f)}s only</option>' for f in self.flags
            )
            select = f'<label>show <select id="examples-flag">{options}</select></label>'
        hint = "Click a column header to sort; type to filter."
        if self.primary:
            hint += (
                " Regression / improvement / tie compare each model with the baseline on per-example "
                f"{self.primary}."
            )
        n = len(self.rows)
        controls = (
            '<div class="controls"><input type="search" id="examples-filter" placeholder="filter rows (any text)" '
            f'aria-label="filter rows">{select}<span id="examples-count" class="muted">{n} of {n} rows shown</span></div>'
        )
        return (
            f'{muted(hint)}{controls}<div class="tablewrap"><table class="data" id="examples-table">'
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
        )
