"""A self-contained ``report.html`` for one run.

The page has no scripts and loads nothing over the network: styles are inline, images are
embedded as base64 data URIs, and a Content-Security-Policy meta tag forbids any other fetch.
Every piece of run data (config, summary, samples, notes) is HTML-escaped.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tunelab.evaluation.metrics import LOWER_IS_BETTER, METRIC_LABELS

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
    digits = 4 if key.endswith("loss") else 2
    return f"{value:.{digits}f}"


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


def _section_metrics(metrics_table: list[dict]) -> str:
    if not metrics_table:
        return '<p class="muted">No metrics.</p>'
    body = []
    for row in metrics_table:
        key = str(row.get("metric", ""))
        label = METRIC_LABELS.get(key, key)
        base, tuned = row.get("base"), row.get("tuned")
        body.append(
            f"<tr><td>{_esc(label)}</td>"
            f'<td class="num">{_fmt_metric(key, base)}</td>'
            f'<td class="num">{_fmt_metric(key, tuned)}</td>'
            f"{_delta_cell(key, base, tuned)}</tr>"
        )
    head = "<tr><th>Metric</th><th>Base</th><th>Tuned</th><th>Delta</th></tr>"
    return f'<table class="metrics"><thead>{head}</thead><tbody>{"".join(body)}</tbody></table>'


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
) -> Path:
    """Write one self-contained HTML report to ``path`` (atomically) and return ``path``."""
    path = Path(path)
    generated = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<title>{_esc(title)}</title>
<style>{_CSS}</style>
</head>
<body>
<h1>{_esc(title)}</h1>
<section id="summary"><h2>Summary</h2>
{_section_summary(summary or {})}
</section>
<section id="metrics"><h2>Metrics</h2>
{_section_metrics(metrics_table or [])}
</section>
<section id="plots"><h2>Training curves</h2>
{_section_plots(plots or {})}
</section>
<section id="samples"><h2>Samples</h2>
{_section_samples(samples or [])}
</section>
<section id="notes"><h2>Notes</h2>
{_section_notes(notes)}
</section>
<section id="config"><h2>Config</h2>
<pre>{_esc(_config_yaml(config or {}))}</pre>
</section>
<footer>Generated by tunelab on {generated}.</footer>
</body>
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
