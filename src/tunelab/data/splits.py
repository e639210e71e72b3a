"""One entry point from a data source to validated train/validation/test examples, with notes for the user."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.data.builtin import load_builtin_with_notes
from tunelab.data.shapes import (
    REQUIRED,
    SHAPES,
    Example,
    describe_shape,
    detect_shape,
    to_example,
)
from tunelab.data.sources import BUILTIN_PREFIX, Row, apply_columns, read_rows, resolve_source
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


def load_examples(
    source: str, *, columns: dict[str, str] | None = None, shape: str = "auto", base_dir: Path | None = None
) -> tuple[list[Example], str, list[str]]:
    """Read a file or "builtin:NAME", map columns, check every row against one shape; returns (examples, shape, notes)."""
    examples, shape, notes, _ = _load(source, columns, shape, base_dir)
    return examples, shape, notes


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
    _check_fraction("validation_fraction", validation_fraction)
    _check_fraction("test_fraction", test_fraction)
    carve_val, carve_test = validation is None, test is None
    carved = carve_val * validation_fraction + carve_test * test_fraction
    if carved >= 1:
        raise TunelabError(
            f"validation_fraction + test_fraction is {carved:g}, leaving nothing to train on",
            field="validation_fraction",
            expected="fractions that add up to less than 1",
        )
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise TunelabError(
            f"is {limit!r}", field="limit", expected="a whole number of at least 1, or no limit"
        )

    requested = shape
    pool, shape, notes, label = _load(train, columns, requested, base_dir)
    given: dict[str, list[Example]] = {}
    given_labels: dict[str, str] = {}
    for name, src in (("validation", validation), ("test", test)):
        if src is None:
            continue
        examples, other, more, other_label = _load(src, columns, requested, base_dir)
        if other != shape:
            raise TunelabError(
                f"{name} data is {describe_shape(other)} but the training data is {describe_shape(shape)}",
                file=other_label,
                expected=f"{name} data in the same shape as the training data",
            )
        notes.extend(more)
        given[name], given_labels[name] = examples, other_label

    order = _grouped_shuffle(pool, seed)
    n = len(order)
    n_val = 0 if not carve_val else _carve_size(n, validation_fraction)
    n_test = 0 if not carve_test else _carve_size(n, test_fraction)
    while n_val + n_test > n - 1 and n_val + n_test > 0:  # always leave at least one training row
        if n_val >= n_test:
            n_val -= 1
        else:
            n_test -= 1
    n_val, n_test = _snap_to_groups(order, n_val, n_test)
    val = given.get("validation", order[:n_val])
    tst = given.get("test", order[n_val : n_val + n_test])
    train_rows = order[n_val + n_test :]
    if carve_val or carve_test:
        random.Random(seed).shuffle(train_rows)  # groups were kept together only to carve the held-out rows
    notes.append(f"split {n} rows → {len(train_rows)}/{len(val)}/{len(tst)} (seed {seed})")
    for name, carve, fraction, got in (("validation", carve_val, validation_fraction, val),
                                       ("test", carve_test, test_fraction, tst)):  # fmt: skip
        if carve and fraction > 0 and not got:
            notes.append(f"too few rows ({n}) to carve a {name} split; it is empty")
        elif not carve:
            notes.append(f"{name}: {len(got)} rows from {given_labels[name]}")
    if limit is not None and limit < len(train_rows):
        notes.append(f"limit: training on the first {limit} of {len(train_rows)} shuffled rows")
        train_rows = train_rows[:limit]
    notes.extend(_leakage_notes(train_rows, val, tst, shape))
    return Splits(train_rows, val, tst, shape, label, notes)


def _load(
    source: str, columns: dict[str, str] | None, shape: str, base_dir: Path | None
) -> tuple[list[Example], str, list[str], str]:
    if shape != "auto" and shape not in SHAPES:
        raise TunelabError(
            f"unknown shape {shape!r}", field="shape", expected=f"auto or one of {', '.join(SHAPES)}"
        )
    label = resolve_source(source, base_dir)
    if source.startswith(BUILTIN_PREFIX):
        rows, notes = load_builtin_with_notes(source[len(BUILTIN_PREFIX) :])
    else:
        rows, notes = read_rows(label), []
    kept = [row for row in rows if not _is_empty(row.data)]
    if len(kept) < len(rows):
        notes.append(f"skipped {len(rows) - len(kept)} empty rows in {label}")
    if not kept:
        want = f"data in one of the shapes {', '.join(SHAPES)}" if shape == "auto" else describe_shape(shape)
        raise TunelabError("no rows", file=label, expected=f"at least one row of {want}")
    rows = apply_columns(kept, columns or {})
    first = rows[0]
    if shape == "auto":
        shape = detect_shape(first.data, file=first.file, line=first.line)
        notes.append(f"detected shape {describe_shape(shape)} in {label}")
        for row in rows[1:]:
            _check_same_shape(row, shape, first)
    else:
        notes.append(f"using shape {describe_shape(shape)} for {label}")
    examples = [to_example(row.data, shape, file=row.file, line=row.line) for row in rows]
    return examples, shape, notes, label


def _is_empty(data: dict[str, Any]) -> bool:
    return all(v is None or (isinstance(v, str) and not v.strip()) for v in data.values())


def _check_same_shape(row: Row, shape: str, first: Row) -> None:
    """In auto mode, a row of another shape gets a clearer error than 'missing field'."""
    try:
        other = detect_shape(row.data, file=row.file, line=row.line)
    except TunelabError:
        return  # to_example reports the missing field
    if other != shape and not _has_fields(row.data, shape):
        raise TunelabError(
            f"row is {describe_shape(other)}, but the first row ({first.file}:{first.line}) is {describe_shape(shape)}",
            file=row.file,
            line=row.line,
            expected="every row in the same shape",
        )


def _has_fields(data: dict[str, Any], shape: str) -> bool:
    return all(name in data for name in REQUIRED[shape])


def _check_fraction(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
        raise TunelabError(f"is {value!r}", field=name, expected="a number from 0 up to (not including) 1")


def _carve_size(n: int, fraction: float) -> int:
    """Rounded share of n; at least one row when the fraction is positive and there are 3+ rows."""
    size = math.floor(n * fraction + 0.5)
    return max(1, size) if fraction > 0 and n >= 3 else size


def _prompt_key(example: Example) -> Any:
    """What a leak looks like: the same document, or the same conversation up to the last answer."""
    if example.messages is None:
        return (example.text or "").strip()
    last = max(i for i, m in enumerate(example.messages) if m["role"] == "assistant")
    return tuple((m["role"], m["content"].strip()) for m in example.messages[:last])


def _grouped_shuffle(pool: list[Example], seed: int) -> list[Example]:
    """Seeded shuffle that keeps rows with the same prompt adjacent, so carving held-out splits never
    puts one answer to a question in train and another in test (chatterbot repeats many questions)."""
    groups: dict[str, list[Example]] = {}
    for e in pool:
        groups.setdefault(_prompt_key(e), []).append(e)
    keys = list(groups)
    random.Random(seed).shuffle(keys)
    return [e for k in keys for e in groups[k]]


def _snap_to_groups(order: list[Example], n_val: int, n_test: int) -> tuple[int, int]:
    """Move each cut to the nearest prompt-group boundary that keeps the split non-empty and leaves a
    training row; when no such boundary exists (one huge group), keep the plain cut (leakage is noted)."""

    def snap(cut: int, lo: int) -> int:
        def boundary(i: int) -> bool:
            return lo < i < len(order) and _prompt_key(order[i]) != _prompt_key(order[i - 1])

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
    seen = {_prompt_key(e) for e in train}
    what = "documents" if shape == "text" else "prompts"
    notes = []
    for name, examples in (("test", test), ("validation", val)):
        if examples:
            leaked = sum(_prompt_key(e) in seen for e in examples)
            notes.append(
                f"leakage: {leaked} of {len(examples)} {name} {what} also appear verbatim in train (kept)"
            )
    return notes


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
