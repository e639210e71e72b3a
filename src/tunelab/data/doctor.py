"""The data doctor: read every row, report every problem at once, each as `FILE:LINE: field: problem (expected …)`.

Training reads data with the raising loaders in `sources`/`shapes`/`splits`, which stop at the first bad
row. The doctor reads the same sources the same way but keeps going, so one run of `tunelab data check`
lists every bad row, plus what no loader complains about: duplicates, held-out rows leaking from train,
rows that truncation would cut, a template that never teaches the model to stop. Training runs
`check_for_training` first and refuses to start on errors, with the same messages.

Severity: an *error* is a row training cannot use (it would fail on it, or silently lose it); a *warning*
is a row that trains but probably not as intended (duplicates, leakage, truncation). Rows dropped on
purpose (empty rows, built-in pairs without an answer, rows with no answer left after truncation) are
counted and reported, never dropped silently.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.data.builtin import load_builtin_with_notes
from tunelab.data.shapes import FIELDS, REQUIRED, SHAPES, Example, describe_shape, detect_shape, to_example
from tunelab.data.sources import BUILTIN_PREFIX, Row, apply_columns, read_rows, resolve_source
from tunelab.data.templates import token_ids
from tunelab.errors import TunelabError

ERROR, WARNING = "error", "warning"

TEMPLATE_CHECK_ROWS = 20  # rows whose inference prompt is compared token by token with the training prompt


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
        return TunelabError(self.message, file=self.file, line=self.line, field=self.field, expected=self.expected)

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
    """Everything the doctor found; `raise_for_errors` turns it into one TunelabError."""

    problems: list[Problem] = field(default_factory=list)
    sources: list[SourceSummary] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what was done on purpose (skipped rows, detected shape, …)
    shape: str | None = None
    lengths: Lengths | None = None
    split_counts: dict[str, int] | None = None
    examples: dict[str, list[Example]] = field(default_factory=dict, repr=False)  # valid rows per split

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

    def add_error(self, err: TunelabError, kind: str, severity: str = ERROR) -> None:
        self.add(severity, kind, err.message, file=err.file, line=err.line, field=err.field, expected=err.expected)

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
        super().__init__(first.message, file=first.file, line=first.line, field=first.field, expected=first.expected)

    def __str__(self) -> str:
        if not getattr(self, "problems", None) or len(self.problems) == 1:
            return super().__str__()
        lines = [str(p) for p in self.problems[: self.SHOWN]]
        more = len(self.problems) - self.SHOWN
        tail = f"; {more} more not shown" if more > 0 else ""
        lines.append(f"{len(self.problems)} errors in the data{tail} ({self.hint})")
        return "\n".join(lines)


# -- entry points -------------------------------------------------------------------------------


def check_file(
    path: str | Path,
    *,
    columns: dict[str, str] | None = None,
    shape: str = "auto",
    task: str | None = None,
    labels: list[str] | None = None,
    tokenizer: Any = None,
    template: str | None = None,
    system_prompt: str | None = None,
    train_on_prompt: bool = False,
    max_length: int | None = None,
) -> DoctorReport:
    """Check one data file (or builtin:NAME) on its own; with a tokenizer, also token lengths and the template."""
    doctor = _Doctor(columns=columns or {}, shape=shape, task=task, labels=labels)
    doctor.check_sources({"train": str(path)}, base_dir=None)
    if tokenizer is not None:
        doctor.check_tokens(tokenizer, template=template, system_prompt=system_prompt,
                            train_on_prompt=train_on_prompt, max_length=max_length)  # fmt: skip
    return doctor.finish()


def check_config(cfg: Any, *, tokenizer: Any = None, splits: bool = True) -> DoctorReport:
    """Check a run config's data: every file, the shape for the task, labels, leakage between splits and,
    with a tokenizer, token lengths against data.max_length and the prompt template.

    splits=True also carves the splits exactly as training will (to count rows per split and find leaked
    held-out rows); it reads the data a second time, so the training preflight leaves it off.
    """
    d = cfg.data
    options = _task_options(cfg)
    labels = list(options.labels) if options is not None and getattr(options, "labels", None) else None
    doctor = _Doctor(columns=dict(d.columns or {}), shape=d.shape, task=cfg.task, labels=labels)
    sources = {"train": d.train, "validation": d.validation, "test": d.test}
    doctor.check_sources({k: v for k, v in sources.items() if v}, base_dir=getattr(cfg, "_source_dir", None))
    if tokenizer is not None:
        doctor.check_tokens(tokenizer, template=d.template, system_prompt=d.system_prompt,
                            train_on_prompt=d.train_on_prompt, max_length=d.max_length)  # fmt: skip
    if splits:
        doctor.check_splits(cfg)
    return doctor.finish()


def check_for_training(cfg: Any, tokenizer: Any = None) -> DoctorReport:
    """The training preflight: `check_for_training(cfg).raise_for_errors()` refuses bad data before any
    work starts. Reads the data once; pass the run's tokenizer to also check the template and lengths."""
    return check_config(cfg, tokenizer=tokenizer, splits=False)


# -- the checks ---------------------------------------------------------------------------------


def _task_options(cfg: Any) -> Any:
    getter = getattr(cfg, "task_options", None)
    return getter() if callable(getter) else None


class _Doctor:
    def __init__(self, *, columns: dict[str, str], shape: str, task: str | None, labels: list[str] | None) -> None:
        self.columns = columns
        self.requested_shape = shape
        self.task = task
        self.labels = labels
        self.report = DoctorReport()

    # reading and row checks ---------------------------------------------------------------------
    def check_sources(self, sources: dict[str, str], base_dir: Path | None) -> None:
        report = self.report
        if self.requested_shape != "auto" and self.requested_shape not in SHAPES:
            report.add(ERROR, "config", f"unknown shape {self.requested_shape!r}", field="data.shape",
                       expected=f"auto or one of {', '.join(SHAPES)}")  # fmt: skip
            return
        train_shape: str | None = None
        for split, source in sources.items():
            label = resolve_source(source, base_dir)
            summary = SourceSummary(split, label)
            report.sources.append(summary)
            rows = self._read(label)
            summary.rows = len(rows)
            rows = self._drop_empty(rows, label)
            rows = self._map_columns(rows)
            if not rows:
                if not any(p.file == label for p in report.errors):  # empty, or only empty rows
                    report.add(ERROR, "no_rows", "no rows", file=label, expected="at least one row of data")
                continue
            shape, rows = self._shape(rows, label)
            summary.shape = shape
            if shape is None:
                continue
            if split == "train":
                train_shape = report.shape = shape
                self._check_task_shape(shape, label)
            elif train_shape is not None and shape != train_shape:
                report.add(ERROR, "mixed_shapes",
                           f"{split} data is {describe_shape(shape)} but the training data is {describe_shape(train_shape)}",
                           file=label, expected=f"{split} data in the same shape as the training data")  # fmt: skip
                continue
            examples = self._examples(rows, shape)
            summary.valid = len(examples)
            report.examples[split] = examples
            self._duplicates(examples)
        self._check_labels()
        self._leakage()

    def _read(self, label: str) -> list[Row]:
        if label.startswith(BUILTIN_PREFIX):
            try:
                rows, notes = load_builtin_with_notes(label[len(BUILTIN_PREFIX) :])
            except TunelabError as err:
                self.report.add_error(err, "file")
                return []
            self.report.notes.extend(notes)
            return rows
        found: list[TunelabError] = []
        rows = read_rows(label, problems=found)
        for err in found:
            self.report.add_error(err, _read_kind(err))
        return rows

    def _drop_empty(self, rows: list[Row], label: str) -> list[Row]:
        kept = []
        for row in rows:
            if all(v is None or (isinstance(v, str) and not v.strip()) for v in row.data.values()):
                self.report.add(WARNING, "empty_row", "row is empty (every field is blank); it is skipped",
                                file=row.file, line=row.line, expected="a row with data")  # fmt: skip
            else:
                kept.append(row)
        if len(kept) < len(rows):
            self.report.notes.append(f"skipped {len(rows) - len(kept)} empty rows in {label}")
        return kept

    def _map_columns(self, rows: list[Row]) -> list[Row]:
        if not self.columns:
            return rows
        out = []
        for row in rows:
            try:
                out += apply_columns([row], self.columns)
            except TunelabError as err:
                self.report.add_error(err, "column_mapping")
        return out

    def _shape(self, rows: list[Row], label: str) -> tuple[str | None, list[Row]]:
        """The requested shape, or the most common detected one, and the rows to check against it
        (rows of another shape are reported here)."""
        report = self.report
        if self.requested_shape != "auto":
            report.notes.append(f"using shape {describe_shape(self.requested_shape)} for {label}")
            return self.requested_shape, rows
        detected: list[str | None] = []
        for row in rows:
            try:
                detected.append(detect_shape(row.data, file=row.file, line=row.line))
            except TunelabError:
                detected.append(None)
        counts = Counter(s for s in detected if s is not None)
        if not counts:
            first = rows[0]
            try:
                detect_shape(first.data, file=first.file, line=first.line)
            except TunelabError as err:
                report.add_error(err, "unknown_shape")
            if len(rows) > 1:
                report.notes.append(f"{label}: no row has a recognised shape; only the first is reported")
            return None, []
        shape = counts.most_common(1)[0][0]
        first = next(row for row, s in zip(rows, detected, strict=True) if s == shape)
        report.notes.append(f"detected shape {describe_shape(shape)} in {label}")
        kept = []
        for row, other in zip(rows, detected, strict=True):
            if other is not None and other != shape and not all(k in row.data for k in REQUIRED[shape]):
                report.add(ERROR, "mixed_shapes",
                           f"row is {describe_shape(other)}, but most rows of the file ({counts[shape]} of "
                           f"{len(rows)}, first at line {first.line}) are {describe_shape(shape)}",
                           file=row.file, line=row.line, expected="every row in the same shape")  # fmt: skip
            else:
                kept.append(row)
        return shape, kept

    def _check_task_shape(self, shape: str, label: str) -> None:
        from tunelab.stages.registry import TASKS

        allowed = TASKS[self.task].shapes if self.task in TASKS else None
        if allowed is not None and shape not in allowed:
            self.report.add(ERROR, "task_shape", f"task {self.task!r} cannot train on rows of shape {shape!r}",
                            file=label, field="data", expected=f"rows of shape {', '.join(allowed)}")  # fmt: skip

    def _examples(self, rows: list[Row], shape: str) -> list[Example]:
        examples = []
        for row in rows:
            example, errors = row_problems(row.data, shape, file=row.file, line=row.line)
            for err in errors:
                self.report.add_error(err, _row_kind(err))
            if example is not None:
                examples.append(example)
        return examples

    def _duplicates(self, examples: list[Example]) -> None:
        seen: dict[Any, str] = {}
        for ex in examples:
            key = content_key(ex)
            if key in seen:
                file, line = split_source(ex.source)
                first_file, first_line = split_source(seen[key])
                where = f"line {first_line}" if first_file == file else seen[key]
                self.report.add(WARNING, "duplicate", f"exact duplicate of {where}", file=file, line=line,
                                expected="each row once; a duplicate counts twice in training")  # fmt: skip
            else:
                seen[key] = ex.source

    def _leakage(self, held_out: dict[str, list[Example]] | None = None, train: list[Example] | None = None) -> None:
        """Held-out rows whose prompt is also in the training rows (kept, but the evaluation flatters)."""
        train = self.report.examples.get("train", []) if train is None else train
        if held_out is None:
            held_out = {k: v for k, v in self.report.examples.items() if k != "train"}
        if not train or not held_out:
            return
        seen: dict[Any, str] = {}
        for ex in train:
            seen.setdefault(prompt_key(ex), ex.source)
        what = "document" if self.report.shape == "text" else "prompt"
        for split, examples in held_out.items():
            for ex in examples:
                match = seen.get(prompt_key(ex))
                if match is not None:
                    file, line = split_source(ex.source)
                    self.report.add(WARNING, "leakage", f"{split} {what} also appears in the training data ({match})",
                                    file=file, line=line,
                                    expected=f"held-out rows whose {what} is not in the training data")  # fmt: skip

    def _check_labels(self) -> None:
        """Classification labels: inside the configured label set, or seen in training; at least two classes."""
        if self.report.shape != "classification":
            return
        examples = self.report.examples
        train = examples.get("train", [])
        if self.labels is not None:
            self._labels_outside(examples, {str(x) for x in self.labels}, "is not in the label set")
            return
        seen = {str(ex.fields["label"]) for ex in train}
        if train and len(seen) < 2:
            self.report.add(ERROR, "labels", f"only one label ({next(iter(seen))}) in the training data",
                            file=self.report.sources[0].source, field="label", expected="at least two classes")  # fmt: skip
        self._labels_outside({k: v for k, v in examples.items() if k != "train"}, seen,
                             "does not occur in the training data")  # fmt: skip

    def _labels_outside(self, splits: dict[str, list[Example]], allowed: set[str], verb: str) -> None:
        expected = f"one of {', '.join(sorted(allowed))}"
        for examples in splits.values():
            for ex in examples:
                value = str(ex.fields["label"])
                if value not in allowed:
                    file, line = split_source(ex.source)
                    self.report.add(ERROR, "labels", f"label {value!r} {verb}", file=file, line=line, field="label",
                                    expected=expected)  # fmt: skip

    # tokens -----------------------------------------------------------------------------------
    def check_tokens(
        self,
        tokenizer: Any,
        *,
        template: str | None,
        system_prompt: str | None,
        train_on_prompt: bool,
        max_length: int | None,
    ) -> None:
        """Token lengths of every valid row as the trainer builds them, and template/EOS problems."""
        shape = self.report.shape
        if shape is None:
            return
        examples = [ex for split in self.report.examples.values() for ex in split]
        if shape == "classification":
            self.report.lengths = classification_lengths(examples, tokenizer, max_length)
            self._length_problems()
            return
        from tunelab.data.templates import PromptFormat

        try:
            fmt = PromptFormat.build(tokenizer, shape=shape, template=template, system_prompt=system_prompt,
                                     train_on_prompt=train_on_prompt)  # fmt: skip
        except TunelabError as err:
            self.report.add_error(err, "template")
            return
        self.report.problems += template_problems(fmt, tokenizer, examples[:TEMPLATE_CHECK_ROWS])
        rows, failures = measure(examples, fmt, tokenizer, max_length)
        for err in failures:
            self.report.add_error(err, "template")
        self.report.lengths = Lengths(rows, max_length, truncates=fmt.kind != "text")
        self._length_problems()

    def _length_problems(self) -> None:
        lengths = self.report.lengths
        if lengths is None or not lengths.truncates or not lengths.max_length:
            return
        m = lengths.max_length
        for r in lengths.rows:
            file, line = split_source(r.source)
            if r.skipped:
                self.report.add(WARNING, "no_answer_left",
                                f"is {r.total} tokens and the answer starts after max_length {m}: no trained token "
                                "is left after truncation, so training skips this row",
                                file=file, line=line, field="tokens",
                                expected=f"a prompt shorter than {m} tokens, or a larger data.max_length")  # fmt: skip
            elif r.cut:
                eos = ", including the EOS, so it teaches the model not to stop" if r.eos_cut else ""
                self.report.add(WARNING, "too_long",
                                f"is {r.total} tokens, longer than max_length {m}: truncation cuts the last "
                                f"{r.cut} tokens ({r.cut_trained} of them trained){eos}",
                                file=file, line=line, field="tokens",
                                expected=f"at most {m} tokens; raise data.max_length or shorten the row")  # fmt: skip
        s = lengths.summary()
        if s.get("over"):
            self.report.notes.append(
                f"{s['over']:,} of {s['rows']:,} rows ({s['over_percent']}%) are longer than max_length {m}: "
                f"truncation would cut {s['cut_tokens']:,} tokens ({s['cut_trained_tokens']:,} trained), "
                f"{s['eos_cut']:,} rows lose their EOS, {s['skipped']:,} rows would be skipped"
            )

    # splits -----------------------------------------------------------------------------------
    def check_splits(self, cfg: Any) -> None:
        """Carve the splits as training does: rows per split, and held-out rows leaking from train."""
        if self.report.errors or not self.report.examples.get("train"):
            if self.report.errors:
                self.report.notes.append("split sizes and leakage are checked once the errors are fixed")
            return
        from tunelab.data.splits import load_splits

        d = cfg.data
        try:
            splits = load_splits(
                d.train, validation=d.validation, test=d.test, columns=d.columns or None, shape=d.shape,
                validation_fraction=d.split.validation, test_fraction=d.split.test, seed=d.split.seed,
                limit=d.limit, base_dir=getattr(cfg, "_source_dir", None),
            )  # fmt: skip
        except TunelabError as err:  # the doctor missed something the loader refuses: still one line, not a crash
            self.report.add_error(err, "invalid_row")
            return
        self.report.split_counts = {"train": len(splits.train), "validation": len(splits.validation),
                                    "test": len(splits.test)}  # fmt: skip
        self.report.notes += [n for n in splits.notes if n.startswith(("split ", "limit", "too few"))]
        # leakage again, between the splits training will really use (carved rows, limit applied)
        self.report.problems = [p for p in self.report.problems if p.kind != "leakage"]
        self._leakage({"validation": splits.validation, "test": splits.test}, splits.train)
        if splits.shape == "classification" and self.labels is None:  # a rare label carved out of train
            carved = {n: getattr(splits, n) for n in ("validation", "test") if getattr(d, n) is None}
            self._labels_outside(carved, {str(ex.fields["label"]) for ex in splits.train},
                                 "does not occur in the training rows left after carving the held-out splits")  # fmt: skip

    def finish(self) -> DoctorReport:
        """Problems in file order, then line order (each check appends its own kind of problem)."""
        rank = {s.source: i for i, s in enumerate(self.report.sources)}

        def key(p: Problem) -> tuple:
            file = p.file or ""
            base = file.split("/")[0] if file.startswith(BUILTIN_PREFIX) else file
            return (rank.get(file, rank.get(base, -1)), file, p.line or 0)

        self.report.problems.sort(key=key)
        return self.report


# -- helpers shared with preview / prepare --------------------------------------------------------

_PLACEHOLDERS: dict[str, Any] = {
    "messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "x"}],
    "conversations": [{"from": "human", "value": "x"}, {"from": "gpt", "value": "x"}],
}


def row_problems(data: dict, shape: str, *, file: str, line: int) -> tuple[Example | None, list[TunelabError]]:
    """`to_example`, but every bad field is reported, not only the first: after each error the field is
    replaced by a valid stand-in and the row checked again, so the messages are exactly training's."""
    try:
        return to_example(data, shape, file=file, line=line), []
    except TunelabError as err:
        errors = [err]
    patched, fixed = dict(data), set()
    while True:
        key = (errors[-1].field or "").split("[")[0].split(".")[0]
        if not key or key in fixed or len(fixed) > len(FIELDS.get(shape, ())):
            return None, errors
        fixed.add(key)
        patched[key] = _PLACEHOLDERS.get(key, "x")
        try:
            to_example(patched, shape, file=file, line=line)
            return None, errors
        except TunelabError as err:
            errors.append(err)


def content_key(ex: Example) -> Any:
    """What makes two rows the same row for training."""
    if ex.messages is not None:
        return tuple((m["role"], m["content"]) for m in ex.messages)
    return (ex.text, ex.fields.get("label"))


def prompt_key(ex: Example) -> Any:
    """What makes a held-out row leaked: the same document, or the same conversation up to the last answer
    (as in `splits`)."""
    if ex.messages is None:
        return (ex.text or "").strip()
    last = max(i for i, m in enumerate(ex.messages) if m["role"] == "assistant")
    return tuple((m["role"], m["content"].strip()) for m in ex.messages[:last])


def split_source(source: str) -> tuple[str, int | None]:
    file, _, line = source.rpartition(":")
    return (file, int(line)) if line.isdigit() else (source, None)


def measure(
    examples: list[Example], fmt: Any, tokenizer: Any, max_length: int | None
) -> tuple[list[RowTokens], list[TunelabError]]:
    """Token counts of each row exactly as `PromptFormat.encode` builds it (segments tokenized separately,
    the tokenizer's specials on the first piece of non-chat formats), but in two batched tokenizer calls."""
    pieces: list[list[tuple[str, bool]]] = []
    sources: list[str] = []
    failures: list[TunelabError] = []
    for ex, parts in zip(examples, fmt.segments_many(examples, tokenizer), strict=True):
        file, line = split_source(ex.source)
        if isinstance(parts, TunelabError):  # templates name the row as "FILE:LINE" in `file`
            failures.append(TunelabError(parts.message, file=file, line=line, field=parts.field, expected=parts.expected))
            continue
        if isinstance(parts, Exception):  # a chat template may raise anything (jinja exceptions)
            failures.append(TunelabError(f"the chat template fails on this row: {type(parts).__name__}: {parts}",
                                         file=file, line=line, field="messages",
                                         expected="a conversation the model's chat template accepts"))  # fmt: skip
            continue
        pieces.append(parts or [("", False)])
        sources.append(ex.source)
    first_lengths = _lengths(tokenizer, [p[0][0] for p in pieces], special=fmt.kind != "chat")
    rest_lengths = iter(_lengths(tokenizer, [text for p in pieces for text, _ in p[1:]], special=False))
    rows = []
    for source, parts, first in zip(sources, pieces, first_lengths, strict=True):
        spans = [(first, parts[0][1])] + [(next(rest_lengths), trained) for _, trained in parts[1:]]
        rows.append(_row_tokens(source, spans, max_length))
    return rows, failures


def _lengths(tokenizer: Any, texts: list[str], *, special: bool) -> list[int]:
    return [len(ids) for ids in token_ids(tokenizer, texts, special=special)]


def _row_tokens(source: str, spans: list[tuple[int, bool]], max_length: int | None) -> RowTokens:
    total = sum(n for n, _ in spans)
    trained = sum(n for n, t in spans if t)
    end = min(total, max_length) if max_length else total
    kept = kept_after_first = pos = 0
    for n, is_trained in spans:
        if is_trained:
            kept += max(0, min(pos + n, end) - pos)
            kept_after_first += max(0, min(pos + n, end) - max(pos, 1))
        pos += n
    row = RowTokens(source, total, trained, cut=total - end, cut_trained=trained - kept)
    row.eos_cut = row.cut > 0 and spans[-1][1]  # the last piece is the trained answer ending in EOS
    row.skipped = kept_after_first == 0  # the sft recipe keeps a row only with a label in labels[1:]
    return row


def classification_lengths(examples: list[Example], tokenizer: Any, max_length: int | None) -> Lengths:
    """Tokens of each text as the classify recipe encodes it (with the tokenizer's specials)."""
    counts = _lengths(tokenizer, [ex.text or "" for ex in examples], special=True)
    rows = []
    for ex, n in zip(examples, counts, strict=True):
        row = RowTokens(ex.source, n, n)
        if max_length and n > max_length:
            row.cut = row.cut_trained = n - max_length
        rows.append(row)
    return Lengths(rows, max_length, truncates=True)


def template_problems(fmt: Any, tokenizer: Any, sample: list[Example]) -> list[Problem]:
    """Does the format teach the model to stop, and does inference build the same prompt as training?"""
    problems: list[Problem] = []
    if fmt.kind == "text":
        return problems
    eos = getattr(tokenizer, "eos_token", None)
    if not eos:
        problems.append(Problem(WARNING, "eos", "the tokenizer has no EOS token, so nothing marks the end of an "
                                "answer: the model may never learn to stop", field="model",
                                expected="a tokenizer with an eos_token"))  # fmt: skip
    else:
        if fmt.kind == "custom" and eos not in (fmt.template or ""):
            problems.append(Problem(WARNING, "eos", f"custom template has no EOS: on its own the model may never "
                                    f"learn to stop; tunelab appends {eos!r} to every answer (the last trained token "
                                    "in `tunelab data preview`)", field="data.template"))  # fmt: skip
        ids = tokenizer(eos, add_special_tokens=False)["input_ids"]
        if ids != [tokenizer.eos_token_id]:
            problems.append(Problem(WARNING, "eos", f"the EOS text {eos!r} tokenizes to {ids}, not to the EOS id "
                                    f"{tokenizer.eos_token_id}: the model may never learn to emit the stop token",
                                    field="model", expected="an EOS that is a single special token"))  # fmt: skip
    for ex in sample:
        try:
            mismatch = prompt_mismatch(ex, fmt, tokenizer)
        except Exception:  # noqa: BLE001 - rows that fail to render are reported by `measure`
            continue
        if mismatch is not None:
            file, line = split_source(ex.source)
            problems.append(Problem(WARNING, "template_mismatch", f"the inference prompt differs from the training "
                                    f"prompt at token {mismatch}", file=file, line=line, field="data.template",
                                    expected="training and inference to build the same prompt tokens"))  # fmt: skip
            break
    return problems


def prompt_mismatch(ex: Example, fmt: Any, tokenizer: Any) -> int | None:
    """Index of the first token where the inference prompt differs from the training sequence's prompt part
    (everything before the last answer), or None when they match."""
    full = fmt.encode(ex, tokenizer, 10**9)
    prompt = fmt.prompt_ids(ex, tokenizer)
    ids, labels = full["input_ids"], full["labels"]
    if fmt.train_on_prompt:  # every token is trained: compare against the prompt text alone
        limit = len(prompt)
    else:
        last = len(labels)
        while last > 0 and labels[last - 1] != -100:
            last -= 1  # start of the last trained run: the last answer
        limit = last
    head = ids[:limit]
    for i, (a, b) in enumerate(zip(head, prompt, strict=False)):
        if a != b:
            return i
    return None if len(head) == len(prompt) else min(len(head), len(prompt))


_READ_KINDS = (
    ("invalid JSON", "invalid_json"),
    ("not valid UTF-8", "encoding"),
    ("not an object", "not_an_object"),
    ("top level is", "not_an_object"),
    ("cells but the header", "csv"),
    ("cannot parse CSV", "csv"),
    ("quote opened", "csv"),
    ("header has duplicate", "csv"),
)
_ROW_KINDS = (
    ("missing", "missing_field"),
    ("is empty", "empty_field"),
    ("is an empty list", "empty_field"),
    ("unknown role", "unknown_role"),
    ("turn, so there is nothing", "no_assistant"),
    ("not a string", "wrong_type"),
    ("not an object", "wrong_type"),
    ("unknown shape", "config"),
)


def _read_kind(err: TunelabError) -> str:
    return next((kind for text, kind in _READ_KINDS if text in err.message), "file")


def _row_kind(err: TunelabError) -> str:
    kind = next((kind for text, kind in _ROW_KINDS if text in err.message), None)
    return kind or ("labels" if err.field == "label" else "wrong_type")
