"""The page: atomic write, embedded images, no remote resources or scripts, escaping, summary, metrics."""

from __future__ import annotations

import base64
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tunelab.evaluation.metrics import metric_display
from tunelab.evaluation.plots import plot_loss
from tunelab.reporting import (
    ConfigDump,
    Figures,
    MetricRow,
    MetricsTable,
    Notes,
    Report,
    Samples,
    Summary,
    write_report,
)

ROWS = [{"step": s, "loss": 3 - s / 100} for s in range(10, 101, 10)] + [{"step": 50, "eval_loss": 2.5}]

CONFIG = {
    "model": "smollm2-135m-instruct",
    "method": {"name": "lora", "r": 8, "target_modules": ["q_proj", "v_proj"]},
    "data": {"path": Path("data/train.jsonl"), "prompt": "<script>alert('cfg')</script>"},
    "output_dir": Path("runs/x"),
}
SUMMARY = {
    "model": "smollm2-135m-instruct",
    "method": "lora",
    "task": "sft",
    "status": "complete",
    "train tokens/s": 171.3,
    "peak memory (GiB)": 3.1,
    "trainable params": "trainable params: 4,884,480 || all params: 139,399,488 || trainable%: 3.5039",
}
METRICS = [
    {"metric": "rougeL", "base": 12.3, "tuned": 35.1},
    {"metric": "bleu", "base": 20.0, "tuned": 15.5},
    {"metric": "exact_match", "tuned": 40.0},
    {"metric": "perplexity", "base": 30.0, "tuned": 12.0},
    {"metric": "eval_loss", "base": 2.0, "tuned": 2.5},
]
SAMPLES = [
    {"input": "<script>alert(1)</script>", "reference": "a & b", "base": "meh", "tuned": "<b>bold</b>"},
    {"input": "second", "tuned": "only tuned"},
]


def metric_rows(rows: list[dict]) -> list[MetricRow]:
    return [MetricRow(metric_display(r["metric"]), r.get("base"), r.get("tuned")) for r in rows]


def _plain_page(*, summary=None, metrics=(), plots=None, samples=(), notes=(), config=None) -> list:
    """The sections of a run's page, in the run report's order."""
    return [
        Summary(summary or {}),
        MetricsTable(metric_rows(list(metrics))),
        Figures(plots or {}),
        Samples(list(samples)),
        Notes(list(notes)),
        ConfigDump(config or {}),
    ]


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.rows: list[list[str]] = []
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag == "tr":
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


@pytest.fixture
def report(tmp_path: Path) -> tuple[Path, str, _Collector]:
    loss = plot_loss(ROWS, tmp_path / "loss.png")
    out = Report(
        "Run <x> & report",
        _plain_page(
            config=CONFIG,
            summary=SUMMARY,
            metrics=METRICS,
            plots={"Loss": loss, "Learning rate": tmp_path / "missing-lr.png"},
            samples=SAMPLES,
            notes=["dropped 3 rows with empty <output>", "split 90/10"],
        ),
    ).write(tmp_path / "report.html")
    text = out.read_text(encoding="utf-8")
    parser = _Collector()
    parser.feed(text)
    return out, text, parser


def _metric_row(parser: _Collector, label: str) -> list[str]:
    matches = [r for r in parser.rows if r and r[0] == label]
    assert len(matches) == 1, (label, parser.rows)
    return matches[0]


def test_report_written_atomically(report, tmp_path: Path) -> None:
    out, text, _ = report
    assert out == tmp_path / "report.html"
    assert out.is_file()
    assert not (tmp_path / "report.html.tmp").exists()
    assert text.startswith("<!DOCTYPE html>")
    assert "<title>Run &lt;x&gt; &amp; report</title>" in text


def test_report_embeds_plot_and_skips_missing(report, tmp_path: Path) -> None:
    _, text, parser = report
    imgs = [attrs for tag, attrs in parser.tags if tag == "img"]
    assert len(imgs) == 1
    src = imgs[0]["src"]
    assert src.startswith("data:image/png;base64,")
    assert base64.b64decode(src.split(",", 1)[1]) == (tmp_path / "loss.png").read_bytes()
    assert "missing-lr.png" in text  # skipped with a note
    assert "Learning rate" in text


def test_report_has_no_remote_resources_or_scripts(report) -> None:
    _, text, parser = report
    assert "http://" not in text
    assert "https://" not in text
    for tag, attrs in parser.tags:
        assert tag not in ("script", "link", "iframe", "object", "embed"), tag
        for name in ("src", "href"):
            if name in attrs:
                assert attrs[name].startswith("data:"), (tag, attrs[name][:50])
    assert not re.search(r"<script", text, flags=re.IGNORECASE)
    assert not re.search(r"@import|url\(", text)


def test_report_escapes_data(report) -> None:
    _, text, parser = report
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "&lt;b&gt;bold&lt;/b&gt;" in text
    assert "<b>bold</b>" not in text
    assert "a &amp; b" in text
    assert "&lt;output&gt;" in text  # notes escaped
    # config rendered as YAML, escaped, Paths as plain strings, order kept
    assert "&lt;script&gt;alert(" in text.split('id="config"', 1)[1]
    cfg = text.split('id="config"', 1)[1]
    assert "path: data/train.jsonl" in cfg
    assert cfg.index("model:") < cfg.index("method:") < cfg.index("output_dir:")
    assert "- q_proj" in cfg
    # samples table: header + 2 rows, missing values shown as a dash
    sample_rows = [r for r in parser.rows if r and r[0] in ("#", "1", "2")]
    assert sample_rows[0] == ["#", "input", "reference", "base", "tuned"]
    assert sample_rows[2] == ["2", "second", "\u2014", "\u2014", "only tuned"]


def test_report_summary(report) -> None:
    _, text, parser = report
    assert ["model", "smollm2-135m-instruct"] in parser.rows
    assert ["train tokens/s", "171.3"] in parser.rows
    assert ["peak memory (GiB)", "3.1"] in parser.rows
    assert "trainable%: 3.5039" in text


def test_report_metrics_and_delta_signs(report) -> None:
    _, text, parser = report
    assert _metric_row(parser, "Metric") == ["Metric", "Base", "Tuned", "Delta"]
    assert _metric_row(parser, "ROUGE-L") == ["ROUGE-L", "12.30", "35.10", "+22.80"]
    assert _metric_row(parser, "BLEU") == ["BLEU", "20.00", "15.50", "-4.50"]
    assert _metric_row(parser, "Exact match") == ["Exact match", "\u2014", "40.00", "\u2014"]
    assert _metric_row(parser, "Perplexity") == ["Perplexity", "30.00", "12.00", "-18.00"]
    assert _metric_row(parser, "Eval loss") == ["Eval loss", "2.0000", "2.5000", "+0.5000"]
    # colouring: higher-is-better up → good; lower-is-better down → good; the others bad
    assert re.search(r'class="num good"[^>]*>\+22\.80<', text)
    assert re.search(r'class="num bad"[^>]*>-4\.50<', text)
    assert re.search(r'class="num good"[^>]*>-18\.00<', text)
    assert re.search(r'class="num bad"[^>]*>\+0\.5000<', text)


def test_report_minimal_inputs(tmp_path: Path) -> None:
    out = write_report(tmp_path / "nested" / "report.html", "empty", _plain_page())
    text = out.read_text(encoding="utf-8")
    assert "No metrics." in text
    assert "No samples." in text


def test_report_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "report.html"
    write_report(path, "first", _plain_page())
    write_report(path, "second", _plain_page())
    text = path.read_text(encoding="utf-8")
    assert "second" in text and "first" not in text
