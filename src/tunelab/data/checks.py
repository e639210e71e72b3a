"""The data doctor's row, file and split checks.

`Doctor` reads every source with training's own steps (`splits.read_source`, `splits.drop_empty`,
`sources.apply_columns`, `shapes.to_example` through `shapes.row_problems`), but collects every problem
instead of stopping at the first, and checks what no loader complains about: duplicates, held-out rows
leaking from train, labels. A source without errors is also loaded exactly as training loads it
(`splits.shape_rows`), so `carve_splits` can hand over the splits training will use without reading again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.data.problems import ERROR, WARNING, DoctorReport, Problem, SourceSummary, split_source
from tunelab.data.shapes import (
    ROW_SHAPES,
    Example,
    check_shape_name,
    content_key,
    describe_shape,
    detect_shape,
    detect_shapes,
    kind_of,
    prompt_key,
    row_problems,
)
from tunelab.data.sources import BUILTIN_PREFIX, Row, apply_columns, resolve_source
from tunelab.data.splits import LoadedSource, carve, drop_empty, read_source, shape_mismatch, shape_rows
from tunelab.errors import TunelabError


class Doctor:
    """Runs the checks into one `DoctorReport` (`doctor.check_file` / `check_config` drive it)."""

    def __init__(
        self,
        *,
        columns: dict[str, str],
        shape: str,
        task: str | None,
        labels: list[str] | None,
        task_shapes: tuple[str, ...] | None = None,
    ) -> None:
        self.columns = columns
        self.requested_shape = shape
        self.task = task
        self.labels = labels
        self.task_shapes = task_shapes  # the shapes `task` trains on; None: not checked
        self.report = DoctorReport()
        self.loaded: dict[str, LoadedSource] = {}  # sources without errors, as training loads them

    # reading and row checks ---------------------------------------------------------------------
    def check_sources(self, sources: dict[str, str], base_dir: Path | None) -> None:
        report = self.report
        try:
            check_shape_name(self.requested_shape, field="data.shape")
        except TunelabError as err:
            report.add_error(err)
            return
        train_shape: str | None = None
        for split, source in sources.items():
            label = resolve_source(source, base_dir)
            summary = SourceSummary(split, label)
            report.sources.append(summary)
            errors_before = len(report.errors)
            rows, notes = self._read(label)
            summary.rows = len(rows)
            rows = self._drop_empty(rows, label, notes)
            report.notes += notes
            found: list[TunelabError] = []
            rows = apply_columns(rows, self.columns, problems=found)
            for err in found:
                report.add_error(err)
            if not rows:
                if not any(p.file == label for p in report.errors):  # empty, or only empty rows
                    report.add(ERROR, "no_rows", "no rows", file=label, expected="at least one row of data")
                continue
            shape, kept = self._shape(rows, label)
            summary.shape = shape
            if shape is None:
                continue
            if split == "train":
                train_shape = report.shape = shape
                self._check_task_shape(shape, label)
            elif train_shape is not None and shape != train_shape:
                report.add_error(shape_mismatch(split, shape, train_shape, label))
                continue
            examples = self._examples(kept, shape)
            summary.valid = len(examples)
            report.examples[split] = examples
            self._duplicates(examples)
            if len(report.errors) == errors_before:
                self._load_as_training(split, rows, label, notes)
        self._check_labels()
        self._leakage()

    def _read(self, label: str) -> tuple[list[Row], list[str]]:
        found: list[TunelabError] = []
        rows, notes = read_source(label, problems=found)
        for err in found:
            self.report.add_error(err)
        return rows, list(notes)

    def _drop_empty(self, rows: list[Row], label: str, notes: list[str]) -> list[Row]:
        kept, empty = drop_empty(rows, label, notes)
        for row in empty:
            self.report.add(WARNING, "empty_row", "row is empty (every field is blank); it is skipped",
                            file=row.file, line=row.line, expected="a row with data")  # fmt: skip
        return kept

    def _shape(self, rows: list[Row], label: str) -> tuple[str | None, list[Row]]:
        """The requested shape, or the most common detected one, and the rows to check against it
        (rows of another shape are reported here)."""
        report = self.report
        if self.requested_shape != "auto":
            report.notes.append(f"using shape {describe_shape(self.requested_shape)} for {label}")
            return self.requested_shape, rows
        shape, detected = detect_shapes(rows)
        if shape is None:
            first = rows[0]
            try:
                detect_shape(first.data, file=first.file, line=first.line)
            except TunelabError as err:
                report.add_error(err)
            if len(rows) > 1:
                report.notes.append(f"{label}: no row has a recognised shape; only the first is reported")
            return None, []
        count, first = detected.count(shape), rows[detected.index(shape)]
        report.notes.append(f"detected shape {describe_shape(shape)} in {label}")
        kept = []
        for row, other in zip(rows, detected, strict=True):
            if other is not None and other != shape and not all(k in row.data for k in ROW_SHAPES[shape].required):
                report.add(ERROR, "mixed_shapes",
                           f"row is {describe_shape(other)}, but most rows of the file ({count} of "
                           f"{len(rows)}, first at line {first.line}) are {describe_shape(shape)}",
                           file=row.file, line=row.line, expected="every row in the same shape")  # fmt: skip
            else:
                kept.append(row)
        return shape, kept

    def _check_task_shape(self, shape: str, label: str) -> None:
        allowed = self.task_shapes
        if allowed is not None and shape not in allowed:
            self.report.add(ERROR, "task_shape", f"task {self.task!r} cannot train on rows of shape {shape!r}",
                            file=label, field="data", expected=f"rows of shape {', '.join(allowed)}")  # fmt: skip

    def _examples(self, rows: list[Row], shape: str) -> list[Example]:
        examples = []
        for row in rows:
            example, errors = row_problems(row.data, shape, file=row.file, line=row.line)
            for err in errors:
                self.report.add_error(err)
            if example is not None:
                examples.append(example)
        return examples

    def _load_as_training(self, split: str, rows: list[Row], label: str, notes: list[str]) -> None:
        """The source as `splits.load_splits` builds it (the rows are not read again)."""
        try:
            examples, shape, more = shape_rows(rows, self.requested_shape, label)
        except TunelabError as err:  # training refuses what the doctor's majority vote let through
            self.report.add_error(err)
            return
        self.loaded[split] = LoadedSource(examples, shape, label, notes + more)

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
        what = "document" if kind_of(self.report.shape) == "text" else "prompt"
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
        if kind_of(self.report.shape) != "classification":
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

    # splits -----------------------------------------------------------------------------------
    def carve_splits(self, *, validation_fraction: float, test_fraction: float, seed: int, limit: int | None) -> None:
        """`report.splits`: the splits training will use, carved from the sources already read (with
        `splits.carve`, as `load_splits` does); only when there are no errors."""
        if self.report.errors or "train" not in self.loaded:
            return
        given = {name: self.loaded[name] for name in ("validation", "test") if name in self.loaded}
        try:
            self.report.splits = carve(self.loaded["train"], given, validation_fraction=validation_fraction,
                                       test_fraction=test_fraction, seed=seed, limit=limit)  # fmt: skip
        except TunelabError as err:  # fractions that leave nothing to train on, a bad limit
            self.report.add_error(err)

    def check_splits(self, **carving: Any) -> None:
        """Carve the splits as training does: rows per split, and held-out rows leaking from train."""
        report = self.report
        if report.errors or not report.examples.get("train"):
            if report.errors:
                report.notes.append("split sizes and leakage are checked once the errors are fixed")
            return
        self.carve_splits(**carving)
        splits = report.splits
        if splits is None:
            return
        report.split_counts = {"train": len(splits.train), "validation": len(splits.validation),
                               "test": len(splits.test)}  # fmt: skip
        report.notes += [n for n in splits.notes if n.startswith(("split ", "limit", "too few"))]
        # leakage again, between the splits training will really use (carved rows, limit applied)
        report.problems = [p for p in report.problems if p.kind != "leakage"]
        self._leakage({"validation": splits.validation, "test": splits.test}, splits.train)
        if kind_of(splits.shape) == "classification" and self.labels is None:  # a rare label carved out of train
            carved = {n: getattr(splits, n) for n in ("validation", "test") if n not in self.loaded}
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
