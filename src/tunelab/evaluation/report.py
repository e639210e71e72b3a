"""A self-contained ``report.html`` for one run or one comparison.

The page loads nothing over the network: styles are inline, images are embedded as base64 data
URIs, and a Content-Security-Policy meta tag forbids any other fetch. Every piece of run data
(config, summary, samples, notes, outputs) is HTML-escaped.

Optional parts (keyword arguments of `write_report`): confidence intervals on the metric table, a
multi-model comparison table with paired bootstrap intervals, a confusion matrix, more figures
(token-length histograms), static error-analysis tables (regressions, worst N, slices) and a
per-example table that sorts and filters in the page. Only that last one adds a script: one small
inline script, allowed by its SHA-256 hash in the CSP (no ``'unsafe-inline'``), which reads the
table already in the DOM — no data is ever embedded as code. Without a per-example table the page
has no script at all.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import html
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tunelab.evaluation.metrics import LOWER_IS_BETTER, METRIC_LABELS, NEUTRAL_METRICS

__all__ = ["write_report"]

_DASH = "\u2014"
_SAMPLE_COLUMNS = ("input", "reference", "base", "tuned")
_MIME = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".svg": "image/svg+xml",
    ".webp": "image/webp",
}

_CSS = """
:root { --fg:#1d2430; --muted:#5b6573; --line:#d9dee5; --bg:#ffffff; --soft:#f5f7fa;
        --good:#137333; --bad:#b3261e; }
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 1100px; padding: 24px; color: var(--fg); background: var(--bg);
       font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; }
h1 { font-size: 22px; margin: 0 0 16px; }
h2 { font-size: 17px; margin: 28px 0 10px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
table { border-collapse: collapse; width: 100%; }
th, td { border: 1px solid var(--line); padding: 6px 8px; text-align: left; vertical-align: top; }
th { background: var(--soft); font-weight: 600; }
table.summary th { width: 220px; }
table.metrics { width: auto; min-width: 420px; }
table.metrics td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.good { color: var(--good); font-weight: 600; }
td.bad { color: var(--bad); font-weight: 600; }
table.samples td { white-space: pre-wrap; word-break: break-word; font-size: 13px; }
.plots { display: flex; flex-wrap: wrap; gap: 16px; }
figure { margin: 0; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); }
figcaption { color: var(--muted); font-size: 13px; }
pre { background: var(--soft); border: 1px solid var(--line); padding: 10px; overflow-x: auto;
      font: 12.5px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
.muted { color: var(--muted); }
footer { margin-top: 32px; color: var(--muted); font-size: 12px; }
.ci { display: block; color: var(--muted); font-size: 12px; white-space: nowrap; }
table.compare { width: auto; }
table.compare td.num, table.data td.num, table.confusion td { text-align: right; font-variant-numeric: tabular-nums; }
table.data td { white-space: pre-wrap; overflow-wrap: break-word; font-size: 13px; min-width: 4.5em; }
table.data td.num { white-space: nowrap; }
table.confusion { width: auto; }
table.confusion td { min-width: 56px; }
.tablewrap { max-height: 720px; overflow: auto; border: 1px solid var(--line); }
.tablewrap table { border: none; }
.tablewrap thead th { position: sticky; top: 0; z-index: 1; }
th button { all: unset; cursor: pointer; display: block; width: 100%; }
th button:focus-visible { outline: 2px solid #1a73e8; }
th[aria-sort="ascending"] button::after { content: " \25B2"; font-size: 10px; }
th[aria-sort="descending"] button::after { content: " \25BC"; font-size: 10px; }
.controls { display: flex; gap: 12px; align-items: center; margin: 8px 0; flex-wrap: wrap; }
.controls input[type=search] { min-width: 280px; padding: 4px 6px; font: inherit; }
.controls select { padding: 3px 4px; font: inherit; }
"""

# Sorting and filtering of the per-example table. It only reads and reorders the table already in
# the page. Initial state can come from the URL fragment: #q=TEXT&flag=regression&sort=COL&desc=1.
_EXAMPLES_JS = """(function () {
  "use strict";
  var table = document.getElementById("examples-table");
  if (!table) { return; }
  var body = table.tBodies[0];
  var original = Array.prototype.slice.call(body.rows);
  var rows = original.slice();
  var heads = Array.prototype.slice.call(table.tHead.rows[0].cells);
  var filter = document.getElementById("examples-filter");
  var flag = document.getElementById("examples-flag");
  var count = document.getElementById("examples-count");
  var state = { col: -1, desc: false };
  function value(row, col, numeric) {
    var cell = row.cells[col];
    var raw = cell.getAttribute("data-v");
    var text = raw === null ? cell.textContent : raw;
    if (numeric) {
      var x = parseFloat(text);
      return isNaN(x) ? null : x;
    }
    return text.toLowerCase();
  }
  function apply() {
    var q = filter.value.trim().toLowerCase();
    var f = flag ? flag.value : "";
    var shown = 0;
    original.forEach(function (row) {
      var flags = " " + (row.getAttribute("data-flags") || "") + " ";
      var ok = (!q || row.textContent.toLowerCase().indexOf(q) !== -1) && (!f || flags.indexOf(" " + f + " ") !== -1);
      row.hidden = !ok;
      if (ok) { shown += 1; }
    });
    count.textContent = shown + " of " + original.length + " rows shown";
    table.setAttribute("data-shown", String(shown));
  }
  function sortBy(col, desc) {
    state.col = col;
    state.desc = desc;
    var numeric = col >= 0 && heads[col].getAttribute("data-kind") === "num";
    rows = original.slice();
    if (col >= 0) {
      rows.sort(function (a, b) {
        var x = value(a, col, numeric);
        var y = value(b, col, numeric);
        if (x === y) { return 0; }
        if (x === null) { return 1; }
        if (y === null) { return -1; }
        var c = x < y ? -1 : 1;
        return desc ? -c : c;
      });
    }
    rows.forEach(function (row) { body.appendChild(row); });
    heads.forEach(function (th, i) {
      th.setAttribute("aria-sort", i === col ? (desc ? "descending" : "ascending") : "none");
    });
    table.setAttribute("data-sort", col < 0 ? "" : col + (desc ? ":desc" : ":asc"));
  }
  heads.forEach(function (th, i) {
    var button = th.querySelector("button");
    if (button) {
      button.addEventListener("click", function () {
        sortBy(i, state.col === i ? !state.desc : false);
      });
    }
  });
  filter.addEventListener("input", apply);
  if (flag) { flag.addEventListener("change", apply); }
  var hash = window.location.hash.replace(/^#/, "");
  if (hash) {
    var params = new URLSearchParams(hash);
    if (params.has("q")) { filter.value = params.get("q"); }
    if (flag && params.has("flag")) { flag.value = params.get("flag"); }
    var col = parseInt(params.get("sort") || "", 10);
    if (!isNaN(col) && col >= 0 && col < heads.length) { sortBy(col, params.get("desc") === "1"); }
  }
  apply();
  table.setAttribute("data-ready", "1");
})();
"""


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _fmt_metric(key: str, value: Any) -> str:
    """A metric value for the table: 2 decimals (4 for losses); missing/None → an em dash."""
    if value is None:
        return _DASH
    if not _is_number(value):
        return _esc(value)
    value = float(value)
    if math.isnan(value):
        return _DASH
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if key in _COUNTS and value.is_integer():
        return f"{int(value):,}"
    digits = 4 if key.endswith("loss") or key == "mcc" else 2
    return f"{value:.{digits}f}"


_COUNTS = frozenset({"hit_token_limit", "n"})


def _fmt_value(value: Any) -> str:
    """A summary value: ints with thousands separators, floats rounded, everything else as str."""
    if value is None:
        return _DASH
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value != 0 and abs(value) < 0.01:
            return f"{value:.3g}"
        text = f"{value:,.2f}".rstrip("0").rstrip(".")
        return text or "0"
    return _esc(value)


def _plain(obj: Any) -> Any:
    """Make a config safe for yaml.safe_dump (Paths, tuples, enums, sets … → plain types)."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, set | frozenset):
        return sorted((_plain(v) for v in obj), key=str)
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if hasattr(obj, "model_dump"):  # a pydantic model
        return _plain(obj.model_dump())
    value = getattr(obj, "value", None)  # an Enum
    if isinstance(value, str | int | float):
        return value
    return str(obj)


def _config_yaml(config: dict) -> str:
    import yaml

    try:
        return yaml.safe_dump(_plain(config), sort_keys=False, allow_unicode=True, default_flow_style=False)
    except yaml.YAMLError as exc:  # pragma: no cover - _plain should make this unreachable
        return f"# config could not be rendered as YAML: {exc}\n{config!r}"


def _section_summary(summary: dict) -> str:
    if not summary:
        return '<p class="muted">No summary.</p>'
    rows = "".join(f"<tr><th>{_esc(k)}</th><td>{_fmt_value(v)}</td></tr>" for k, v in summary.items())
    return f'<table class="summary">{rows}</table>'


def _delta_cell(key: str, base: Any, tuned: Any) -> str:
    if not (_is_number(base) and _is_number(tuned)):
        return f'<td class="num">{_DASH}</td>'
    delta = float(tuned) - float(base)
    if math.isnan(delta):
        return f'<td class="num">{_DASH}</td>'
    if math.isinf(delta):
        text = "+inf" if delta > 0 else "-inf"
    else:
        digits = 4 if key.endswith("loss") else 2
        text = f"{delta:+.{digits}f}"
    better = delta < 0 if key in LOWER_IS_BETTER else delta > 0
    worse = delta > 0 if key in LOWER_IS_BETTER else delta < 0
    cls = "num good" if better else "num bad" if worse else "num"
    hint = "lower is better" if key in LOWER_IS_BETTER else "higher is better"
    return f'<td class="{cls}" title="{hint}">{text}</td>'


def _section_metrics(metrics_table: list[dict], intervals: dict[str, dict] | None = None) -> str:
    if not metrics_table:
        return '<p class="muted">No metrics.</p>'
    intervals = intervals or {}
    with_ci = any(row.get("metric") in intervals for row in metrics_table)
    body = []
    for row in metrics_table:
        key = str(row.get("metric", ""))
        label = METRIC_LABELS.get(key, key)
        base, tuned = row.get("base"), row.get("tuned")
        ci = ""
        if with_ci:
            ci = _ci_cells(key, intervals.get(key))
        body.append(
            f"<tr><td>{_esc(label)}</td>"
            f'<td class="num">{_fmt_metric(key, base)}</td>'
            f'<td class="num">{_fmt_metric(key, tuned)}</td>'
            f"{_delta_cell(key, base, tuned)}{ci}</tr>"
        )
    head = "<tr><th>Metric</th><th>Base</th><th>Tuned</th><th>Delta</th>"
    if with_ci:
        head += '<th title="paired bootstrap over the held-out rows">95% CI of delta</th><th>Excludes 0</th>'
    head += "</tr>"
    return f'<table class="metrics"><thead>{head}</thead><tbody>{"".join(body)}</tbody></table>'


def _fmt_signed(key: str, value: Any) -> str:
    if not _is_number(value) or not math.isfinite(float(value)):
        return _DASH
    digits = 4 if key.endswith("loss") or key == "mcc" else 2
    return f"{float(value):+.{digits}f}"


def _ci_cells(key: str, ci: dict | None) -> str:
    """Two cells: "[low, high]" and whether it excludes zero (coloured by direction when it does)."""
    if not ci or not _is_number(ci.get("low")) or not _is_number(ci.get("high")):
        return f'<td class="num">{_DASH}</td><td>{_DASH}</td>'
    text = f"[{_fmt_signed(key, ci['low'])}, {_fmt_signed(key, ci['high'])}]"
    excludes = bool(ci.get("excludes_zero"))
    cls = ""
    if excludes and key not in NEUTRAL_METRICS and _is_number(ci.get("delta")):
        better = (ci["delta"] < 0) if key in LOWER_IS_BETTER else (ci["delta"] > 0)
        cls = ' class="good"' if better else ' class="bad"'
    p = ci.get("p_value")
    title = f' title="p = {float(p):.3g} (two-sided, bootstrap)"' if _is_number(p) and math.isfinite(float(p)) else ""
    return f'<td class="num">{text}</td><td{cls}{title}>{"yes" if excludes else "no"}</td>'


def _section_comparison(comparison: dict) -> str:
    """Models side by side; each non-baseline model's difference from the baseline with its CI."""
    models = [str(m) for m in comparison.get("models", [])]
    baseline = comparison.get("baseline")
    rows = comparison.get("rows") or []
    if not models or not rows:
        return '<p class="muted">No metrics.</p>'
    others = [m for m in models if baseline and m != baseline]
    head = "<tr><th>Metric</th>" + "".join(f"<th>{_esc(m)}</th>" for m in models)
    for m in others:
        head += f"<th>\u0394 {_esc(m)} \u2212 {_esc(baseline)}</th><th>95% CI</th><th>Excludes 0</th>"
    head += "</tr>"
    body = []
    for row in rows:
        key = str(row.get("metric", ""))
        label = METRIC_LABELS.get(key, key)
        hint = " (lower is better)" if key in LOWER_IS_BETTER else ""
        cells = [f'<td title="{_esc(label + hint)}">{_esc(label)}</td>']
        for m in models:
            value = (row.get("values") or {}).get(m)
            ci = (row.get("intervals") or {}).get(m) or {}
            extra = ""
            if _is_number(ci.get("low")) and _is_number(ci.get("high")) and len(models) >= 1:
                extra = f'<span class="ci">[{_fmt_metric(key, ci["low"])}, {_fmt_metric(key, ci["high"])}]</span>'
            cells.append(f'<td class="num">{_fmt_metric(key, value)}{extra}</td>')
        for m in others:
            d = (row.get("deltas") or {}).get(m)
            if not d:
                cells.append(f'<td class="num">{_DASH}</td><td class="num">{_DASH}</td><td>{_DASH}</td>')
                continue
            delta = d.get("delta")
            cls = "num"
            if _is_number(delta) and key not in NEUTRAL_METRICS and d.get("excludes_zero"):
                better = delta < 0 if key in LOWER_IS_BETTER else delta > 0
                cls = "num good" if better else "num bad"
            cells.append(f'<td class="{cls}">{_fmt_signed(key, delta)}</td>' + _ci_cells(key, d))
        body.append("<tr>" + "".join(cells) + "</tr>")
    n = comparison.get("n")
    resamples = comparison.get("resamples")
    note = ""
    if baseline:
        note = (
            f'<p class="muted">Values over {_fmt_value(n)} rows; under each value its 95% bootstrap interval. '
            f"\u0394 = model \u2212 {_esc(baseline)}, with a paired bootstrap 95% interval"
            f"{' over ' + _fmt_value(resamples) + ' resamples' if resamples else ''}; "
            "green/red only where the interval excludes zero.</p>"
        )
    else:
        note = f'<p class="muted">Values over {_fmt_value(n)} rows; under each value its 95% bootstrap interval.</p>'

    return f'<table class="compare"><thead>{head}</thead><tbody>{"".join(body)}</tbody></table>{note}'


def _section_confusion(confusion: dict) -> str:
    """One confusion matrix (rows = true label, columns = predicted) or several, keyed by model."""
    if "matrix" in confusion:
        confusion = {"": confusion}
    parts = []
    for name, cm in confusion.items():
        labels = [str(x) for x in cm.get("label_names", [])]
        matrix = cm.get("matrix") or []
        if not labels or not matrix:
            continue
        head = '<tr><th>true \\ predicted</th>' + "".join(f"<th>{_esc(lab)}</th>" for lab in labels) + "</tr>"
        body = []
        for i, row in enumerate(matrix):
            total = sum(row) or 1
            cells = []
            for j, count in enumerate(row):
                share = count / total
                colour = "19,115,51" if i == j else "179,38,30"
                style = f"background: rgba({colour},{0.08 + 0.6 * share:.3f})" if count else ""
                cells.append(f'<td style="{style}" title="{100 * share:.1f}% of true {_esc(labels[i])}">{count:,}</td>')
            label = labels[i] if i < len(labels) else str(i)
            body.append(f"<tr><th>{_esc(label)}</th>{''.join(cells)}</tr>")
        caption = f"<h3>{_esc(name)}</h3>" if name else ""
        parts.append(f'{caption}<table class="confusion"><thead>{head}</thead><tbody>{"".join(body)}</tbody></table>')
    return "".join(parts) or '<p class="muted">No confusion matrix.</p>'


def _cell(value: Any, kind: str) -> str:
    if kind == "num":
        if value is None or not _is_number(value) or not math.isfinite(float(value)):
            return f'<td class="num" data-v="">{_DASH if value is None else _esc(value)}</td>'
        text = f"{value:,}" if isinstance(value, int) else f"{float(value):.2f}"
        return f'<td class="num" data-v="{float(value)!r}">{text}</td>'
    if value is None:
        return f"<td>{_DASH}</td>"
    if value == "":
        return '<td class="muted" data-v="">(empty)</td>'
    return f"<td>{_esc(value)}</td>"


def _static_table(spec: dict) -> str:
    columns = spec.get("columns") or []
    rows = spec.get("rows") or []
    title = f"<h3>{_esc(spec.get('title', ''))}</h3>" if spec.get("title") else ""
    note = f'<p class="muted">{_esc(spec["note"])}</p>' if spec.get("note") else ""
    if not rows:
        return f'{title}{note}<p class="muted">{_esc(spec.get("empty", "None."))}</p>'
    head = "".join(f"<th>{_esc(c.get('label', c['key']))}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(_cell(row.get(c["key"]), c.get("kind", "text")) for c in columns) + "</tr>" for row in rows
    )
    sid = f' id="{_esc(spec["id"])}"' if spec.get("id") else ""
    return f'{title}{note}<div class="tablewrap"><table class="data"{sid}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _section_examples(examples: dict) -> str:
    columns = examples.get("columns") or []
    rows = examples.get("rows") or []
    if not columns or not rows:
        return '<p class="muted">No examples.</p>'
    head = "".join(
        f'<th data-kind="{_esc(c.get("kind", "text"))}" aria-sort="none"><button type="button">'
        f"{_esc(c.get('label', c['key']))}</button></th>"
        for c in columns
    )
    body = []
    for row in rows:
        flags = row.get("_flags") or ""
        attr = f' data-flags="{_esc(flags)}"' if flags else ""
        body.append(f"<tr{attr}>" + "".join(_cell(row.get(c["key"]), c.get("kind", "text")) for c in columns) + "</tr>")
    flag_names = examples.get("flags") or []
    select = ""
    if flag_names:
        options = '<option value="">all rows</option>' + "".join(
            f'<option value="{_esc(f)}">{_esc(f)}s only</option>' for f in flag_names
        )
        select = f'<label>show <select id="examples-flag">{options}</select></label>'
    primary = examples.get("primary")
    hint = (
        f'<p class="muted">Click a column header to sort; type to filter. Regression / improvement / tie compare '
        f"each model with the baseline on per-example {_esc(primary)}.</p>"
        if primary
        else '<p class="muted">Click a column header to sort; type to filter.</p>'
    )
    controls = (
        '<div class="controls"><input type="search" id="examples-filter" placeholder="filter rows (any text)" '
        f'aria-label="filter rows">{select}<span id="examples-count" class="muted">'
        f"{len(rows)} of {len(rows)} rows shown</span></div>"
    )
    return (
        f"{hint}{controls}<div class=\"tablewrap\"><table class=\"data\" id=\"examples-table\">"
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
    )


def _section_plots(plots: dict[str, Path]) -> str:
    if not plots:
        return '<p class="muted">No plots.</p>'
    figures, missing = [], []
    for name, plot_path in plots.items():
        plot_path = Path(plot_path)
        try:
            data = plot_path.read_bytes()
        except OSError as exc:
            reason = "file missing" if isinstance(exc, FileNotFoundError) else "unreadable"
            missing.append(f"Plot {_esc(name)} skipped ({reason}: {_esc(plot_path.name)}).")
            continue
        if not data:
            missing.append(f"Plot {_esc(name)} skipped (empty file: {_esc(plot_path.name)}).")
            continue
        mime = _MIME.get(plot_path.suffix.lower(), "image/png")
        uri = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
        figures.append(
            f'<figure><img src="{uri}" alt="{_esc(name)}"><figcaption>{_esc(name)}</figcaption></figure>'
        )
    out = f'<div class="plots">{"".join(figures)}</div>' if figures else ""
    if missing:
        out += '<ul class="muted">' + "".join(f"<li>{m}</li>" for m in missing) + "</ul>"
    return out


def _section_samples(samples: list[dict]) -> str:
    if not samples:
        return '<p class="muted">No samples.</p>'
    columns = [c for c in _SAMPLE_COLUMNS if any(c in s for s in samples)]
    for sample in samples:  # any extra keys go after the usual four, in first-seen order
        columns += [k for k in sample if k not in columns]
    head = "<tr><th>#</th>" + "".join(f"<th>{_esc(c)}</th>" for c in columns) + "</tr>"
    body = []
    for i, sample in enumerate(samples, start=1):
        cells = "".join(
            f"<td>{_esc(sample[c]) if sample.get(c) is not None else _DASH}</td>" for c in columns
        )
        body.append(f"<tr><td>{i}</td>{cells}</tr>")
    return f'<table class="samples"><thead>{head}</thead><tbody>{"".join(body)}</tbody></table>'


def _section_notes(notes: list[str] | None) -> str:
    if not notes:
        return '<p class="muted">No notes.</p>'
    return "<ul>" + "".join(f"<li>{_esc(n)}</li>" for n in notes) + "</ul>"


def _csp(script: str | None) -> str:
    policy = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
    if script:
        digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
        policy += f"; script-src 'sha256-{digest}'"
    return policy


def write_report(
    path: Path,
    *,
    title: str,
    config: dict,
    summary: dict,
    metrics_table: list[dict],
    plots: dict[str, Path],
    samples: list[dict],
    notes: list[str] | None = None,
    intervals: dict[str, dict] | None = None,
    comparison: dict | None = None,
    confusion: dict | None = None,
    figures: dict[str, Path] | None = None,
    lists: list[dict] | None = None,
    examples: dict | None = None,
    lists_title: str = "Error analysis",
) -> Path:
    """Write one self-contained HTML report to ``path`` (atomically) and return ``path``.

    Optional parts, each shown only when given:

    * ``intervals`` — ``{metric: {delta, low, high, excludes_zero, p_value}}``: a 95% CI column for
      the tuned − base delta of ``metrics_table`` (see `tunelab.evaluation.bootstrap`).
    * ``comparison`` — ``{models, baseline, rows: [{metric, values: {model: v}, intervals: {model:
      {low, high}}, deltas: {model: paired_bootstrap(...)}}], n, resamples}``: several models side by
      side, in place of (or under) the base/tuned table.
    * ``confusion`` — ``{label_names, matrix}`` or ``{model: {label_names, matrix}}``.
    * ``figures`` — more images (e.g. token-length histograms), ``{caption: png path}``.
    * ``lists`` — static tables ``[{id, title, note, columns: [{key, label, kind}], rows, empty}]``
      (regressions, worst N, slices); ``kind`` is ``"text"`` or ``"num"``; shown under ``lists_title``.
    * ``examples`` — the per-example table ``{columns, rows, flags, primary}``, sortable and
      filterable in the page; a row's ``_flags`` (e.g. "regression") feeds the flag selector.
    """
    path = Path(path)
    generated = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    has_examples = bool(examples and examples.get("rows") and examples.get("columns"))
    script = _EXAMPLES_JS if has_examples else None
    sections = [f"""<section id="summary"><h2>Summary</h2>
{_section_summary(summary or {})}
</section>"""]
    if metrics_table or not (comparison or lists or has_examples):
        sections.append(f"""<section id="metrics"><h2>Metrics</h2>
{_section_metrics(metrics_table or [], intervals)}
</section>""")
    if comparison:
        sections.append(f"""<section id="comparison"><h2>{"Metrics" if not metrics_table else "Comparison"}</h2>
{_section_comparison(comparison)}
</section>""")
    if confusion:
        sections.append(f"""<section id="confusion"><h2>Confusion matrix</h2>
{_section_confusion(confusion)}
</section>""")
    if plots or not (comparison or lists or has_examples):
        sections.append(f"""<section id="plots"><h2>Training curves</h2>
{_section_plots(plots or {})}
</section>""")
    if figures:
        sections.append(f"""<section id="figures"><h2>Distributions</h2>
{_section_plots(figures)}
</section>""")
    if lists:
        sections.append(
            f'<section id="analysis"><h2>{_esc(lists_title)}</h2>\n' + "\n".join(_static_table(t) for t in lists) + "\n</section>"
        )
    if has_examples:
        sections.append(f"""<section id="examples"><h2>Per-example results</h2>
{_section_examples(examples or {})}
</section>""")
    if samples or not has_examples:
        sections.append(f"""<section id="samples"><h2>Samples</h2>
{_section_samples(samples or [])}
</section>""")
    sections.append(f"""<section id="notes"><h2>Notes</h2>
{_section_notes(notes)}
</section>
<section id="config"><h2>Config</h2>
<pre>{_esc(_config_yaml(config or {}))}</pre>
</section>""")
    script_tag = f"<script>{script}</script>\n" if script else ""
    body = "\n".join(sections)
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="{_csp(script)}">
<title>{_esc(title)}</title>
<style>{_CSS}</style>
</head>
<body>
<h1>{_esc(title)}</h1>
{body}
<footer>Generated by tunelab on {generated}.</footer>
{script_tag}</body>
</html>
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".html.tmp")
    try:
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
