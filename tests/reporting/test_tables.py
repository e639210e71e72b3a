"""The table sections: CI columns, comparison, confusion matrix, figures, static tables, per-example table;
and the page in headless Chromium: renders, no console errors, sorting/filtering work, screenshot."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

from tunelab.evaluation.metrics import metric_display
from tunelab.evaluation.plots import plot_histograms, plot_loss
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
    MetricRow,
    MetricsTable,
    Notes,
    Report,
    StaticTable,
    StaticTables,
    Summary,
)

XSS = "<script>alert('x')</script>"
ROWS = [
    {"id": 1, "topic": "trivia", "input": "Capital of France?", "reference": "Paris", "base": "Lyon", "tuned": "Paris",
     "base rougeL": 0.0, "tuned rougeL": 100.0, "delta tuned": 100.0, "_flags": "improvement"},
    {"id": 2, "topic": "humor", "input": XSS, "reference": "a & b", "base": "ha", "tuned": "",
     "base rougeL": 40.0, "tuned rougeL": 0.0, "delta tuned": -40.0, "_flags": "regression"},
    {"id": 3, "topic": "trivia", "input": "needle in a haystack", "reference": "x", "base": "x", "tuned": "x",
     "base rougeL": 100.0, "tuned rougeL": 100.0, "delta tuned": 0.0, "_flags": "tie"},
    {"id": 4, "topic": "ai", "input": "What is AI? needle", "reference": "software", "base": None, "tuned": "a program",
     "base rougeL": None, "tuned rougeL": 12.5, "delta tuned": 12.5, "_flags": "improvement"},
]
COLUMNS = [
    {"key": "id", "label": "#", "kind": "num"},
    {"key": "topic", "label": "topic", "kind": "text"},
    {"key": "input", "label": "input", "kind": "text"},
    {"key": "reference", "label": "reference", "kind": "text"},
    {"key": "base", "label": "base", "kind": "text"},
    {"key": "tuned", "label": "tuned", "kind": "text"},
    {"key": "base rougeL", "label": "base rougeL", "kind": "num"},
    {"key": "tuned rougeL", "label": "tuned rougeL", "kind": "num"},
    {"key": "delta tuned", "label": "Δ tuned", "kind": "num"},
]
DELTA = {"a": 10.0, "b": 17.4, "delta": 7.4, "low": 4.1, "high": 11.3, "excludes_zero": True, "p_value": 0.001}
COMPARISON = {
    "models": ["base", "tuned"],
    "baseline": "base",
    "n": 4,
    "resamples": 1000,
    "rows": [
        {"metric": "rougeL", "values": {"base": 10.0, "tuned": 17.4},
         "intervals": {"base": {"low": 5.0, "high": 15.0}, "tuned": {"low": 11.0, "high": 22.0}},
         "deltas": {"tuned": DELTA}},
        {"metric": "perplexity", "values": {"base": 29.5, "tuned": 16.2}, "intervals": {},
         "deltas": {"tuned": {"delta": -13.3, "low": -26.1, "high": -7.1, "excludes_zero": True, "p_value": 0.002}}},
        {"metric": "chrf", "values": {"base": 13.6, "tuned": 17.6}, "intervals": {},
         "deltas": {"tuned": {"delta": 4.0, "low": -0.6, "high": 8.7, "excludes_zero": False, "p_value": 0.1}}},
        {"metric": "hit_token_limit", "values": {"base": 61, "tuned": 5}, "intervals": {},
         "deltas": {"tuned": {"delta": -56, "low": -66, "high": -46, "excludes_zero": True, "p_value": 0.001}}},
    ],
}


COLS = [Column(c["key"], c["label"], c["kind"]) for c in COLUMNS]


def _cells(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "_flags"}


def _comparison(spec: dict, title: str = "Metrics") -> ComparisonTable:
    rows = [ComparisonRow(metric_display(r["metric"]), r["values"], r["intervals"], r["deltas"]) for r in spec["rows"]]
    return ComparisonTable(spec["models"], spec["baseline"], rows, n=spec["n"], resamples=spec["resamples"], title=title)


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag):
        self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.scripts.append(data)


def _full_report(tmp_path: Path) -> Path:
    loss = plot_loss([{"step": s, "loss": 3 - s / 50} for s in range(1, 60, 5)], tmp_path / "loss.png")
    hist = plot_histograms({"references": [3, 4, 5, 9], "tuned outputs": [2, 3, 12, 12]}, tmp_path / "h.png",
                           title="Token lengths", xlabel="tokens", marker=(12, "max_new_tokens"))
    examples = ExamplesTable(COLS, [ExampleRow(_cells(r), (r["_flags"],)) for r in ROWS],
                             flags=["regression", "improvement", "tie"], primary="rougeL")
    return Report("full <report>", [
        Summary({"model": "tiny"}),
        MetricsTable([MetricRow(metric_display("rougeL"), 10.0, 17.4, DELTA), MetricRow(metric_display("bleu"), 3.0, 2.0)]),
        _comparison(COMPARISON, title="Comparison"),
        ConfusionMatrices({"": ConfusionMatrix(["neg", "pos"], [[5, 1], [2, 7]])}),
        Figures({"Loss": loss}),
        Figures({"Token lengths": hist}, title="Distributions", id="figures"),
        StaticTables([StaticTable(COLS[:6], [_cells(ROWS[1])], title="Regressions", note="1 worse", id="regressions",
                                  empty="none"),
                      StaticTable(COLS[:2], [], title="Nothing here", id="empty-list", empty="No rows.")]),
        examples,
        Notes(["a note"]),
        ConfigDump({"model": "tiny"}),
    ]).write(tmp_path / "report.html")


def test_full_report_structure_and_csp(tmp_path: Path) -> None:
    text = _full_report(tmp_path).read_text(encoding="utf-8")
    parser = _Tags()
    parser.feed(text)
    # exactly one inline script, allowed by its hash — no 'unsafe-inline' for scripts, no external anything
    assert len(parser.scripts) == 1
    digest = base64.b64encode(hashlib.sha256(parser.scripts[0].encode()).digest()).decode()
    csp = next(a["content"] for t, a in parser.tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy")
    assert f"script-src 'sha256-{digest}'" in csp and "default-src 'none'" in csp
    assert "'unsafe-inline'" not in csp.split("script-src", 1)[1]
    assert "http://" not in text and "https://" not in text
    for tag, attrs in parser.tags:
        assert tag not in ("link", "iframe", "object", "embed")
        assert not any(k.startswith("on") for k in attrs), (tag, attrs)  # no inline handlers
        for name in ("src", "href"):
            if name in attrs:
                assert attrs[name].startswith("data:")
    # data is escaped everywhere, never executed
    assert XSS not in text and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in text
    # sections
    for section in ("summary", "metrics", "comparison", "confusion", "plots", "figures", "analysis", "examples", "notes"):
        assert f'id="{section}"' in text, section
    assert 'id="samples"' not in text  # replaced by the per-example table
    # CI columns on the base/tuned table
    assert "95% CI of delta" in text and "[+4.10, +11.30]" in text
    # comparison: perplexity lower is better → green; chrF interval includes zero → not coloured
    assert re.search(r'class="num good">-13\.30<', text)
    assert re.search(r'class="num">\+4\.00<', text)
    assert re.search(r'class="num">-56<', text) or re.search(r'class="num">-56\.00<', text)  # neutral count
    # confusion matrix counts, rows = true label
    assert re.search(r">5</td>.*?>1</td>", text, flags=re.S)
    # per-example table: numeric cells carry sortable values, empty and missing are marked
    assert 'data-v="100.0"' in text and "(empty)" in text
    assert text.count("<tr data-flags=") == len(ROWS)


def test_report_without_examples_has_no_script(tmp_path: Path) -> None:
    out = Report("t", [Summary({}), _comparison(COMPARISON), Notes([]), ConfigDump({})]).write(tmp_path / "r.html")
    text = out.read_text(encoding="utf-8")
    assert "<script" not in text and "script-src" not in text
    assert "No metrics." not in text  # the comparison table takes the metrics' place


# -- in a real browser --------------------------------------------------------------------------------


def _visible_ids(dom: str) -> list[int]:
    body = dom.split('id="examples-table"', 1)[1].split("</tbody>", 1)[0]
    ids = []
    for row in re.findall(r"<tr([^>]*)>(.*?)</tr>", body, flags=re.S):
        attrs, cells = row
        if "hidden" in attrs:
            continue
        first = re.search(r'<td class="num" data-v="([^"]*)"', cells)
        if first:
            ids.append(int(float(first.group(1))))
    return ids


def test_chromium_detects_console_errors(chromium, tmp_path: Path) -> None:
    """The check below is only worth something if a broken page does fail it."""
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><html><body><script>notDefined()</script></body></html>", encoding="utf-8")
    assert any("notDefined" in line for line in chromium.load(bad).console)


def test_report_in_headless_chromium(chromium, tmp_path: Path) -> None:
    report = _full_report(tmp_path)
    page = chromium.load(report)
    assert page.console == [], page.console
    assert 'data-ready="1"' in page.dom  # the script ran
    assert _visible_ids(page.dom) == [1, 2, 3, 4]
    assert "4 of 4 rows shown" in page.dom

    # filter (any text) + sort descending by tuned rougeL (column 7), as set from the URL fragment
    page = chromium.load(report, "q=needle&sort=7&desc=1")
    assert page.console == [], page.console
    assert _visible_ids(page.dom) == [3, 4]
    assert "2 of 4 rows shown" in page.dom and 'data-sort="7:desc"' in page.dom

    # missing values sort last in either direction; the flag selector combines with sorting
    assert _visible_ids(chromium.load(report, "sort=6&desc=1").dom) == [3, 2, 1, 4]
    assert _visible_ids(chromium.load(report, "flag=improvement&sort=0&desc=1").dom) == [4, 1]

    shot = tmp_path / "report.png"
    page = chromium.screenshot(report, shot)
    assert page.console == [], page.console
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    keep = os.environ.get("TUNELAB_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / "report.png")


def test_odd_fragments_do_not_break_the_page(chromium, tmp_path: Path) -> None:
    page = chromium.load(_full_report(tmp_path), "q=%3Cscript%3E&sort=99&flag=nonsense&desc=x")
    assert page.console == [], page.console
    # an unknown flag is ignored; the filter finds the row whose input is the literal text <script>
    assert 'data-ready="1"' in page.dom and _visible_ids(page.dom) == [2]
