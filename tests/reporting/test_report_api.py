"""The reporting API itself: the caller's section order, notices, assets shipped as package files,
and a rendering layer that imports nothing of tunelab above it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import tunelab.reporting as R
from tunelab.reporting.page import asset

PACKAGE = Path(R.__file__).parent


def test_sections_appear_in_the_order_given(tmp_path: Path) -> None:
    sections = [R.Notes(["n"]), R.ConfigDump({"a": 1}), R.Summary({"k": "v"}), R.Samples([{"input": "x"}])]
    text = R.Report("t", sections).write(tmp_path / "a.html").read_text(encoding="utf-8")
    assert re.findall(r'<section id="([^"]+)"', text) == ["notes", "config", "summary", "samples"]
    text = R.write_report(tmp_path / "b.html", "t", sections[::-1]).read_text(encoding="utf-8")
    assert re.findall(r'<section id="([^"]+)"', text) == ["samples", "summary", "config", "notes"]


def test_notice_is_escaped_and_announced(tmp_path: Path) -> None:
    notice = R.Notice("analysis <failed>", detail="KeyError: '<x>'", title="Oops & co", id="analysis-error")
    text = R.Report("t", [notice]).write(tmp_path / "n.html").read_text(encoding="utf-8")
    assert '<section id="analysis-error"><h2>Oops &amp; co</h2>' in text and 'role="alert"' in text
    assert "analysis &lt;failed&gt;" in text and "KeyError: &#x27;&lt;x&gt;&#x27;" in text


def test_one_script_only_with_a_filled_examples_table(tmp_path: Path) -> None:
    cols = [R.Column("id", "#", "num")]
    empty = R.Report("t", [R.ExamplesTable(cols, [])]).render()
    assert "<script" not in empty and "No examples." in empty and "script-src" not in empty
    filled = R.ExamplesTable(cols, [R.ExampleRow({"id": 1})])
    page = R.Report("t", [filled, R.Summary({})]).render()
    assert page.count("<script>") == 1 and f"<script>{asset('examples.js')}</script>" in page


def test_assets_are_package_files() -> None:
    for name in ("report.css", "examples.js", "page.html"):
        assert (PACKAGE / "assets" / name).is_file(), name
    css = asset("report.css")
    assert '" \\25B2"' in css and '" \\25BC"' in css  # CSS escapes of ▲ ▼, not Python octal escapes
    assert not re.search(r"[\x00-\x08\x0b-\x1f]", css + asset("examples.js"))
    pyproject = (PACKAGE.parents[2] / "pyproject.toml").read_text(encoding="utf-8")
    assert "reporting/assets/*.css" in pyproject and "reporting/assets/*.js" in pyproject


def test_reporting_imports_nothing_above_it() -> None:
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            for name in names:
                if name.startswith("tunelab"):
                    assert name.startswith("tunelab.reporting") or name == "tunelab.errors", (path.name, name)
