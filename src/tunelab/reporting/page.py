"""One self-contained ``report.html`` from a list of sections, in the order given.

The page loads nothing over the network: the style sheet is inline, images are embedded as base64
data URIs, and a Content-Security-Policy meta tag forbids any other fetch. A section that needs a
script (the per-example table) gets it inline, allowed by its SHA-256 hash in the CSP (no
``'unsafe-inline'``); the script only reads the table already in the DOM — no data is ever embedded
as code. A page without such a section has no script at all.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import os
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from string import Template

from tunelab.reporting.format import esc
from tunelab.reporting.sections import Section

__all__ = ["Report", "write_report"]


@cache
def asset(name: str) -> str:
    """A file of ``tunelab/reporting/assets`` (style sheet, script, page skeleton)."""
    return (resources.files("tunelab.reporting") / "assets" / name).read_text(encoding="utf-8")


def csp(scripts: list[str]) -> str:
    policy = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
    if scripts:
        digests = " ".join(
            f"'sha256-{base64.b64encode(hashlib.sha256(s.encode('utf-8')).digest()).decode('ascii')}'" for s in scripts
        )
        policy += f"; script-src {digests}"
    return policy


@dataclass
class Report:
    title: str
    sections: list[Section] = field(default_factory=list)

    def render(self) -> str:
        names: list[str] = []
        for section in self.sections:
            if section.script and section.script not in names:
                names.append(section.script)
        scripts = [asset(n) for n in names]
        generated = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return Template(asset("page.html")).substitute(
            csp=csp(scripts),
            title=esc(self.title),
            css=asset("report.css"),
            body="\n".join(s.html() for s in self.sections),
            generated=generated,
            script="".join(f"<script>{s}</script>\n" for s in scripts),
        )

    def write(self, path: str | Path) -> Path:
        """Write the page to ``path`` atomically (folders created) and return ``path``."""
        path = Path(path)
        page = self.render()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".html.tmp")
        try:
            tmp.write_text(page, encoding="utf-8")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path


def write_report(path: str | Path, title: str, sections: list[Section]) -> Path:
    return Report(title, list(sections)).write(path)
