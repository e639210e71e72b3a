"""A comparison as report sections: which sections, in which order, with which rows and flags."""

from __future__ import annotations

import re
from pathlib import Path

from evaluation.fakes import WordTokenizer, rows, scored
from tunelab.evaluation.analysis import analyse
from tunelab.evaluation.views import comparison_section, comparison_view, delta_text
from tunelab.reporting import Report

REFS = [f"answer number {i}" for i in range(12)]
META = [{"topic": ("a", "b", "c")[i % 3]} for i in range(12)]


def _view(tmp_path: Path, **kwargs):
    data = rows(REFS, meta=META)
    tuned_out = [REFS[i] if i % 4 else "nothing" for i in range(12)]
    results = [scored("base", ["answer"] * 12, data, is_base=True), scored("tuned", tuned_out, data)]
    comp = analyse(results, data, baseline="base", primary="rougeL", resamples=100, out_dir=tmp_path, worst=3)
    return comp, comparison_view(comp, tmp_path, WordTokenizer(), 4, 20, resamples=100, **kwargs)


def test_sections_and_page_order(tmp_path: Path) -> None:
    comp, view = _view(tmp_path)
    assert view.plots is None and view.confusion is None  # no run logged curves; not a classifier
    assert set(view.figures.images) == {"Token lengths", "Prompt lengths"}
    assert [t.id for t in view.analysis.tables] == ["regressions-tuned", "worst-base", "worst-tuned", "slices"]
    text = Report("t", view.page(["n"], {"seed": 0})).write(tmp_path / "r.html").read_text(encoding="utf-8")
    ids = re.findall(r'<section id="([^"]+)"', text)
    assert ids == ["summary", "comparison", "figures", "analysis", "examples", "notes", "config"]


def test_examples_table_flags_and_deltas(tmp_path: Path) -> None:
    comp, view = _view(tmp_path)
    ex = view.examples
    keys = [c.key for c in ex.columns]
    assert keys == ["id", "topic", "input", "reference", "base", "tuned", "base rougeL", "tuned rougeL", "delta tuned"]
    assert ex.flags == ["regression", "improvement", "tie"] and ex.primary == "rougeL"
    flags = [row.flags for row in ex.rows]
    assert flags.count(("regression",)) == comp.counts["tuned"]["worse"]
    assert flags.count(("improvement",)) == comp.counts["tuned"]["better"]
    assert all(row.cells["delta tuned"] == row.cells["tuned rougeL"] - row.cells["base rougeL"] for row in ex.rows)


def test_comparison_section_carries_metric_labels_and_directions() -> None:
    table = [{"metric": "perplexity", "values": {"a": 3.0}, "intervals": {}, "deltas": {}}]
    section = comparison_section(table, ["a"], None, 4, None)
    assert section.rows[0].metric.label == "Perplexity" and section.rows[0].metric.lower_is_better
    assert section.id == "comparison" and section.title == "Metrics"
    assert delta_text({"delta": 1.5}) == "+1.50 (too few rows for an interval)"
    assert delta_text({"delta": -1.0, "low": -2.0, "high": -0.5, "excludes_zero": True}) == "-1.00 [-2.00, -0.50] *"
