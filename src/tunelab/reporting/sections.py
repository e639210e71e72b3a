"""The plain sections of a report: summary, figures, samples, notes, a notice, the config.

Every section has an ``id`` (the ``<section id=…>`` anchor), a ``title`` (its heading) and renders
its own body; `tunelab.reporting.page.Report` puts them on the page in the order it is given.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from tunelab.reporting.format import DASH, config_yaml, esc, fmt_value

__all__ = ["ConfigDump", "Figures", "Notes", "Notice", "Samples", "Section", "Summary"]

_MIME = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".svg": "image/svg+xml",
    ".webp": "image/webp",
}


@dataclass(kw_only=True)
class Section:
    """What `Report` needs of a section: ``id``, ``title``, ``body()``; ``script`` when it needs one.

    A subclass names its default heading and anchor in its class line
    (``class Notes(Section, title="Notes", id="notes")``); a caller may give others per instance.
    """

    title: str = ""
    id: str = ""
    default_title: ClassVar[str] = ""
    default_id: ClassVar[str] = ""

    def __init_subclass__(cls, *, title: str = "", id: str = "", **kwargs: Any) -> None:  # noqa: A002
        super().__init_subclass__(**kwargs)
        cls.default_title = title or cls.default_title
        cls.default_id = id or cls.default_id

    def __post_init__(self) -> None:
        self.title = self.title or self.default_title
        self.id = self.id or self.default_id

    def body(self) -> str:  # pragma: no cover - every section overrides it
        raise NotImplementedError

    @property
    def script(self) -> str | None:
        """The name of a script asset the section needs on the page (None: no script)."""
        return None

    def html(self) -> str:
        return f'<section id="{esc(self.id)}"><h2>{esc(self.title)}</h2>\n{self.body()}\n</section>'


def muted(text: str) -> str:
    return f'<p class="muted">{esc(text)}</p>'


@dataclass
class Summary(Section, title="Summary", id="summary"):
    """Key → value rows (numbers formatted, everything escaped)."""

    items: dict[str, Any] = field(default_factory=dict)

    def body(self) -> str:
        if not self.items:
            return muted("No summary.")
        rows = "".join(f"<tr><th>{esc(k)}</th><td>{fmt_value(v)}</td></tr>" for k, v in self.items.items())
        return f'<table class="summary">{rows}</table>'


@dataclass
class Figures(Section, title="Training curves", id="plots"):
    """Images embedded as data URIs, ``{caption: image path}``; a missing or empty file is named, not shown."""

    images: dict[str, Path] = field(default_factory=dict)
    empty: str = "No plots."

    def body(self) -> str:
        if not self.images:
            return muted(self.empty)
        figures, missing = [], []
        for name, image in self.images.items():
            image = Path(image)
            try:
                data = image.read_bytes()
            except OSError as exc:
                reason = "file missing" if isinstance(exc, FileNotFoundError) else "unreadable"
                missing.append(f"Plot {esc(name)} skipped ({reason}: {esc(image.name)}).")
                continue
            if not data:
                missing.append(f"Plot {esc(name)} skipped (empty file: {esc(image.name)}).")
                continue
            mime = _MIME.get(image.suffix.lower(), "image/png")
            uri = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
            figures.append(f'<figure><img src="{uri}" alt="{esc(name)}"><figcaption>{esc(name)}</figcaption></figure>')
        out = f'<div class="plots">{"".join(figures)}</div>' if figures else ""
        if missing:
            out += '<ul class="muted">' + "".join(f"<li>{m}</li>" for m in missing) + "</ul>"
        return out


@dataclass
class Samples(Section, title="Samples", id="samples"):
    """A few rows shown whole: the usual columns first, then any other key in first-seen order."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    columns: tuple[str, ...] = ("input", "reference", "base", "tuned")

    def body(self) -> str:
        if not self.rows:
            return muted("No samples.")
        columns = [c for c in self.columns if any(c in s for s in self.rows)]
        for sample in self.rows:
            columns += [k for k in sample if k not in columns]
        head = "<tr><th>#</th>" + "".join(f"<th>{esc(c)}</th>" for c in columns) + "</tr>"
        body = []
        for i, sample in enumerate(self.rows, start=1):
            cells = "".join(f"<td>{esc(sample[c]) if sample.get(c) is not None else DASH}</td>" for c in columns)
            body.append(f"<tr><td>{i}</td>{cells}</tr>")
        return f'<table class="samples"><thead>{head}</thead><tbody>{"".join(body)}</tbody></table>'


@dataclass
class Notes(Section, title="Notes", id="notes"):
    items: list[str] = field(default_factory=list)

    def body(self) -> str:
        if not self.items:
            return muted("No notes.")
        return "<ul>" + "".join(f"<li>{esc(n)}</li>" for n in self.items) + "</ul>"


@dataclass
class Notice(Section, title="Notice", id="notice"):
    """Something the reader must not miss, e.g. a part of the report that could not be computed."""

    message: str = ""
    detail: str = ""  # e.g. the error, shown verbatim

    def body(self) -> str:
        detail = f"<br><code>{esc(self.detail)}</code>" if self.detail else ""
        return f'<div class="notice" role="alert">{esc(self.message)}{detail}</div>'


@dataclass
class ConfigDump(Section, title="Config", id="config"):
    """A config rendered as YAML (Paths, enums, pydantic models made plain)."""

    config: dict[str, Any] = field(default_factory=dict)

    def body(self) -> str:
        return f"<pre>{esc(config_yaml(self.config))}</pre>"
