"""One entry point from a data source to validated train/validation/test examples, with notes for the user.

The steps are public so the data doctor reads a source exactly as training does: `read_source` (a file
or builtin:NAME) → `drop_empty` → `sources.apply_columns` → `shape_rows` (one shape, every row an
Example) gives a `LoadedSource`; `carve` turns the training source (and any given validation/test
sources) into `Splits` with a seeded, prompt-grouped shuffle.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.data.builtin import load_builtin_with_notes
from tunelab.data.shapes import (
    ROW_SHAPES,
    Example,
    check_shape_name,
    describe_shape,
    detect_shape,
    kind_of,
    prompt_key,
    to_example,
)
from tunelab.data.sources import BUILTIN_PREFIX, Problems, Row, apply_columns, read_rows, resolve_source
from tunelab.errors import TunelabError


@dataclass
class Splits:
    """The three splits in one shape, plus what was read and what was done to it."""

    train: list[Example]
    validation: list[Example]
    test: list[Example]
    shape: str
    source: str
    notes: list[str] = field(default_factory=list)


@dataclass
class LoadedSource:
    """One source read and checked as training reads it: every example in one shape, and the notes."""

    examples: list[Example]
    shape: str
    label: str  # the file as read, or builtin:NAME
    notes: list[str]


def load_examples(
    source: str, *, columns: dict[str, str] | None = None, shape: str = "auto", base_dir: Path | None = None
) -> tuple[list[Example], str, list[str]]:
    """Read a file or "builtin:NAME", map columns, check every row against one shape; returns (examples, shape, notes)."""
    loaded = _load(source, columns, shape, base_dir)
    return loaded.examples, loaded.shape, loaded.notes


def load_splits(
    train: str,
    *,
    validation: str | None = None,
    test: str | None = None,
    columns: dict[str, str] | None = None,
    shape: str = "auto",
    validation_fraction: float = 0.05,
    test_fraction: float = 0.05,
    seed: int = 42,
    limit: int | None = None,
    base_dir: Path | None = None,
) -> Splits:
    """Load training data and carve missing validation/test splits out of it with a seeded, deterministic shuffle."""
    given_names = [name for name, src in (("validation", validation), ("test", test)) if src is not None]
    check_carving(validation_fraction, test_fraction, limit, given=given_names)  # before any reading
    pool = _load(train, columns, shape, base_dir)
    given: dict[str, LoadedSource] = {}
    for name, src in (("validation", validation), ("test", test)):
        if src is None:
            continue
        given[name] = _load(src, columns, shape, base_dir)
        if given[name].shape != pool.shape:
            raise shape_mismatch(name, given[name].shape, pool.shape, given[name].label)
    return carve(pool, given, validation_fraction=validation_fraction, test_fraction=test_fraction, seed=seed,
                 limit=limit)  # fmt: skip


def splits_from_config(data: Any, base_dir: Path | None = None) -> Splits:
    """`load_splits` driven by a run config's `data:` section (the same rows every time for a config)."""
    return load_splits(
        data.train,
        validation=data.validation,
        test=data.test,
        columns=data.columns or None,
        shape=data.shape,
        validation_fraction=data.split.validation,
        test_fraction=data.split.test,
        seed=data.split.seed,
        limit=data.limit,
        base_dir=base_dir,
    )


# -- reading one source -------------------------------------------------------------------------


def read_source(label: str, *, problems: Problems = None) -> tuple[list[Row], list[str]]:
    """Rows of a resolved source (a file, or builtin:NAME) and the built-in's notes on what it skipped.
    With `problems` (a list), nothing is raised: every problem is recorded there (see `sources.read_rows`)."""
    if not label.startswith(BUILTIN_PREFIX):
        return read_rows(label, problems=problems), []
    try:
        return load_builtin_with_notes(label[len(BUILTIN_PREFIX) :])
    except TunelabError as err:
        if problems is None:
            raise
        problems.append(err)
        return [], []


def drop_empty(rows: list[Row], label: str, notes: list[str]) -> tuple[list[Row], list[Row]]:
    """(kept, empty): rows whose every value is blank are skipped, with a note saying how many."""
    kept: list[Row] = []
    empty: list[Row] = []
    for row in rows:
        (empty if _is_empty(row.data) else kept).append(row)
    if empty:
        notes.append(f"skipped {len(empty)} empty rows in {label}")
    return kept, empty


def shape_rows(rows: list[Row], shape: str, label: str) -> tuple[list[Example], str, list[str]]:
    """Every row as an Example of one shape: the requested one, or in auto mode the first row's (a row of
    another shape is an error); returns (examples, shape, notes)."""
    first = rows[0]
    if shape == "auto":
        shape = detect_shape(first.data, file=first.file, line=first.line)
        note = f"detected shape {describe_shape(shape)} in {label}"
        for row in rows[1:]:
            _check_same_shape(row, shape, first)
    else:
        note = f"using shape {describe_shape(shape)} for {label}"
    return [to_example(row.data, shape, file=row.file, line=row.line) for row in rows], shape, [note]


def shape_mismatch(split: str, shape: str, train_shape: str, label: str) -> TunelabError:
    """A validation or test source whose shape is not the training data's."""
    return TunelabError(
        f"{split} data is {describe_shape(shape)} but the training data is {describe_shape(train_shape)}",
        file=label,
        expected=f"{split} data in the same shape as the training data",
        kind="mixed_shapes",
    )


def _load(source: str, columns: dict[str, str] | None, shape: str, base_dir: Path | None) -> LoadedSource:
    check_shape_name(shape)
    label = resolve_source(source, base_dir)
    rows, notes = read_source(label)
    rows, _ = drop_empty(rows, label, notes)
    if not rows:
        want = f"data in one of the shapes {', '.join(ROW_SHAPES)}" if shape == "auto" else describe_shape(shape)
        raise TunelabError("no rows", file=label, expected=f"at least one row of {want}", kind="no_rows")
    examples, shape, more = shape_rows(apply_columns(rows, columns or {}), shape, label)
    return LoadedSource(examples, shape, label, notes + more)


def _is_empty(data: dict[str, Any]) -> bool:
    return all(v is None or (isinstance(v, str) and not v.strip()) for v in data.values())


def _check_same_shape(row: Row, shape: str, first: Row) -> None:
    """In auto mode, a row of another shape gets a clearer error than 'missing field'."""
    try:
        other = detect_shape(row.data, file=row.file, line=row.line)
    except TunelabError:
        return  # to_example reports the missing field
    if other != shape and not all(name in row.data for name in ROW_SHAPES[shape].required):
        raise TunelabError(
            f"row is {describe_shape(other)}, but the first row ({first.file}:{first.line}) is {describe_shape(shape)}",
            file=row.file,
            line=row.line,
            expected="every row in the same shape",
            kind="mixed_shapes",
        )


# -- carving the splits ---------------------------------------------------------------------------


def check_carving(
    validation_fraction: float, test_fraction: float, limit: int | None, *, given: list[str] | tuple = ()
) -> None:
    """Refuse fractions and a limit that cannot be carved; `given` names the splits that come from files."""
    _check_fraction("validation_fraction", validation_fraction)
    _check_fraction("test_fraction", test_fraction)
    carved = ("validation" not in given) * validation_fraction + ("test" not in given) * test_fraction
    if carved >= 1:
        raise TunelabError(
            f"validation_fraction + test_fraction is {carved:g}, leaving nothing to train on",
            field="validation_fraction",
            expected="fractions that add up to less than 1",
            kind="config",
        )
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise TunelabError(f"is {limit!r}", field="limit", expected="a whole number of at least 1, or no limit",
                           kind="config")  # fmt: skip


def carve(
    train: LoadedSource,
    given: dict[str, LoadedSource],
    *,
    validation_fraction: float,
    test_fraction: float,
    seed: int,
    limit: int | None = None,
) -> Splits:
    """The splits training uses: `given` validation/test sources as they are, the missing ones carved out of
    the training examples (rows sharing a prompt stay together), the rest shuffled; `limit` caps train."""
    check_carving(validation_fraction, test_fraction, limit, given=list(given))
    carve_val, carve_test = "validation" not in given, "test" not in given
    notes = list(train.notes)
    for name in ("validation", "test"):
        if name in given:
            notes.extend(given[name].notes)
    order = _grouped_shuffle(train.examples, seed)
    n = len(order)
    n_val = 0 if not carve_val else _carve_size(n, validation_fraction)
    n_test = 0 if not carve_test else _carve_size(n, test_fraction)
    while n_val + n_test > n - 1 and n_val + n_test > 0:  # always leave at least one training row
        if n_val >= n_test:
            n_val -= 1
        else:
            n_test -= 1
    n_val, n_test = _snap_to_groups(order, n_val, n_test)
    val = given["validation"].examples if not carve_val else order[:n_val]
    tst = given["test"].examples if not carve_test else order[n_val : n_val + n_test]
    train_rows = order[n_val + n_test :]
    if carve_val or carve_test:
        random.Random(seed).shuffle(train_rows)  # groups were kept together only to carve the held-out rows
    notes.append(f"split {n} rows → {len(train_rows)}/{len(val)}/{len(tst)} (seed {seed})")
    for name, cut, fraction, got in (("validation", carve_val, validation_fraction, val),
                                     ("test", carve_test, test_fraction, tst)):  # fmt: skip
        if cut and fraction > 0 and not got:
            notes.append(f"too few rows ({n}) to carve a {name} split; it is empty")
        elif not cut:
            notes.append(f"{name}: {len(got)} rows from {given[name].label}")
    if limit is not None and limit < len(train_rows):
        notes.append(f"limit: training on the first {limit} of {len(train_rows)} shuffled rows")
        train_rows = train_rows[:limit]
    notes.extend(_leakage_notes(train_rows, val, tst, train.shape))
    return Splits(train_rows, val, tst, train.shape, train.label, notes)


def _check_fraction(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
        raise TunelabError(f"is {value!r}", field=name, expected="a number from 0 up to (not including) 1",
                           kind="config")  # fmt: skip


def _carve_size(n: int, fraction: float) -> int:
    """Rounded share of n; at least one row when the fraction is positive and there are 3+ rows."""
    size = math.floor(n * fraction + 0.5)
    return max(1, size) if fraction > 0 and n >= 3 else size


def _grouped_shuffle(pool: list[Example], seed: int) -> list[Example]:
    """Seeded shuffle that keeps rows with the same prompt adjacent, so carving held-out splits never
    puts one answer to a question in train and another in test (chatterbot repeats many questions)."""
    groups: dict[Any, list[Example]] = {}
    for e in pool:
        groups.setdefault(prompt_key(e), []).append(e)
    keys = list(groups)
    random.Random(seed).shuffle(keys)
    return [e for k in keys for e in groups[k]]


def _snap_to_groups(order: list[Example], n_val: int, n_test: int) -> tuple[int, int]:
    """Move each cut to the nearest prompt-group boundary that keeps the split non-empty and leaves a
    training row; when no such boundary exists (one huge group), keep the plain cut (leakage is noted)."""

    def snap(cut: int, lo: int) -> int:
        def boundary(i: int) -> bool:
            return lo < i < len(order) and prompt_key(order[i]) != prompt_key(order[i - 1])

        for step in range(len(order)):
            for i in (cut - step, cut + step):
                if boundary(i):
                    return i
        return cut

    cut_val = snap(n_val, 0) if n_val else 0
    cut_test = snap(cut_val + n_test, cut_val) if n_test else cut_val
    return cut_val, cut_test - cut_val


def _leakage_notes(train: list[Example], val: list[Example], test: list[Example], shape: str) -> list[str]:
    """Count (not drop) held-out prompts that also appear verbatim in training data."""
    seen = {prompt_key(e) for e in train}
    what = "documents" if kind_of(shape) == "text" else "prompts"
    notes = []
    for name, examples in (("test", test), ("validation", val)):
        if examples:
            leaked = sum(prompt_key(e) in seen for e in examples)
            notes.append(
                f"leakage: {leaked} of {len(examples)} {name} {what} also appear verbatim in train (kept)"
            )
    return notes
