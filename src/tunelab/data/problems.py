"""What the data doctor reports: each finding as a `Problem` (formatted exactly like a `TunelabError`),
token `Lengths` per row, all of it in a `DoctorReport`, and `DataErrors` to raise the errors at once."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tunelab.data.shapes import Example, describe_shape
from tunelab.errors import TunelabError

if TYPE_CHECKING:
    from tunelab.data.splits import Splits

ERROR, WARNING = "error", "warning"


@dataclass
class Problem:
    """One finding, formatted exactly like a `TunelabError`."""

    severity: str  # "error" | "warning"
    kind: str  # short id for grouping: "invalid_json", "missing_field", "duplicate", …
    message: str
    file: str | None = None
    line: int | None = None
    field: str | None = None
    expected: str | None = None

    def as_error(self) -> TunelabError:
        return TunelabError(self.message, file=self.file, line=self.line, field=self.field, expected=self.expected,
                            kind=self.kind)  # fmt: skip

    def __str__(self) -> str:
        return str(self.as_error())

    def to_dict(self) -> dict[str, Any]:
        return {
            "severity": self.severity,
            "kind": self.kind,
            "file": self.file,
            "line": self.line,
            "field": self.field,
            "message": self.message,
            "expected": self.expected,
            "text": str(self),
        }


@dataclass
class RowTokens:
    """Token counts of one row as the trainer will build it."""

    source: str  # FILE:LINE
    total: int  # tokens before truncation
    trained: int  # tokens with a label (the loss is on them)
    cut: int = 0  # tokens truncation removes
    cut_trained: int = 0
    eos_cut: bool = False  # the final EOS is among the cut tokens
    skipped: bool = False  # no trained token left after truncation: the recipe skips the row


@dataclass
class Lengths:
    """Token lengths of every checked row, and what truncation to max_length does to them."""

    rows: list[RowTokens]
    max_length: int | None
    truncates: bool  # False for pretraining, which packs documents instead of truncating them

    @property
    def totals(self) -> list[int]:
        return [r.total for r in self.rows]

    def covering(self, fraction: float) -> int:
        """The smallest max_length that fits `fraction` of the rows whole (nearest rank)."""
        values = sorted(self.totals)
        if not values:
            return 0
        return values[max(0, math.ceil(fraction * len(values)) - 1)]

    def summary(self) -> dict[str, Any]:
        values = sorted(self.totals)
        if not values:
            return {"rows": 0}
        over = [r for r in self.rows if r.cut]
        out = {
            "rows": len(values),
            "min": values[0],
            "median": values[len(values) // 2],
            "mean": round(sum(values) / len(values), 1),
            "max": values[-1],
            "p95": self.covering(0.95),
            "p99": self.covering(0.99),
            "max_length": self.max_length,
        }
        if self.truncates and self.max_length:
            out.update(
                over=len(over),
                over_percent=round(100 * len(over) / len(values), 2),
                cut_tokens=sum(r.cut for r in over),
                cut_trained_tokens=sum(r.cut_trained for r in over),
                eos_cut=sum(r.eos_cut for r in over),
                skipped=sum(r.skipped for r in self.rows),
            )
        return out



@dataclass
class SourceSummary:
    split: str  # train | validation | test
    source: str  # the file as read, or builtin:NAME
    rows: int = 0  # rows read (records, not blank lines)
    valid: int = 0  # rows that passed every row check
    shape: str | None = None


@dataclass
class DoctorReport:
    """Everything the doctor found; `raise_for_errors` turns it into one TunelabError. `splits` holds the
    splits training uses (carved exactly as `splits.load_splits` carves them) when the data has no errors."""

    problems: list[Problem] = field(default_factory=list)
    sources: list[SourceSummary] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what was done on purpose (skipped rows, detected shape, …)
    shape: str | None = None
    lengths: Lengths | None = None
    split_counts: dict[str, int] | None = None
    examples: dict[str, list[Example]] = field(default_factory=dict, repr=False)  # valid rows per source
    splits: Splits | None = field(default=None, repr=False)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == ERROR]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == WARNING]

    @property
    def ok(self) -> bool:
        return not self.errors

    def add(self, severity: str, kind: str, message: str, **where: Any) -> None:
        self.problems.append(Problem(severity, kind, message, **where))

    def add_error(self, err: TunelabError, kind: str | None = None, severity: str = ERROR) -> None:
        """Record a raised error; its kind is the one given, else the one it was raised with."""
        self.add(severity, kind or err.kind or "invalid_row", err.message, file=err.file, line=err.line,
                 field=err.field, expected=err.expected)  # fmt: skip

    def counts(self) -> dict[str, dict[str, int]]:
        """Problems per kind, per severity."""
        out: dict[str, dict[str, int]] = {ERROR: {}, WARNING: {}}
        for p in self.problems:
            out[p.severity][p.kind] = out[p.severity].get(p.kind, 0) + 1
        return out

    def summary(self) -> str:
        rows = sum(s.rows for s in self.sources)
        parts = [f"{len(self.sources)} source{'s' if len(self.sources) != 1 else ''}, {rows:,} rows"]
        if self.shape:
            parts.append(describe_shape(self.shape).split(" (")[0])
        e, w = len(self.errors), len(self.warnings)
        parts.append(f"{e} error{'s' if e != 1 else ''}, {w} warning{'s' if w != 1 else ''}")
        return " · ".join(parts)

    def raise_for_errors(self) -> None:
        if self.errors:
            raise DataErrors(self.errors)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "counts": self.counts(),
            "shape": self.shape,
            "sources": [vars(s) for s in self.sources],
            "split_counts": self.split_counts,
            "lengths": self.lengths.summary() if self.lengths else None,
            "notes": self.notes,
            "problems": [p.to_dict() for p in self.problems],
        }


class DataErrors(TunelabError):
    """All the data errors at once: one line each (the CLI prints them and exits 2)."""

    SHOWN = 20

    def __init__(self, errors: list[Problem], hint: str = "`tunelab data check CONFIG` lists every problem") -> None:
        first = errors[0]
        self.problems = errors
        self.hint = hint
        super().__init__(first.message, file=first.file, line=first.line, field=first.field, expected=first.expected,
                         kind=first.kind)  # fmt: skip

    def __str__(self) -> str:
        if not getattr(self, "problems", None) or len(self.problems) == 1:
            return super().__str__()
        lines = [str(p) for p in self.problems[: self.SHOWN]]
        more = len(self.problems) - self.SHOWN
        tail = f"; {more} more not shown" if more > 0 else ""
        lines.append(f"{len(self.problems)} errors in the data{tail} ({self.hint})")
        return "\n".join(lines)


def split_source(source: str) -> tuple[str, int | None]:
    """An Example's "FILE:LINE" source as (file, line)."""
    file, _, line = source.rpartition(":")
    return (file, int(line)) if line.isdecimal() and line.isascii() else (source, None)
