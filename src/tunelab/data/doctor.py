"""The data doctor: read every row, report every problem at once, each as `FILE:LINE: field: problem (expected …)`.

Training reads data with the raising loaders in `sources`/`shapes`/`splits`, which stop at the first bad
row. The doctor reads the same sources with the same functions but keeps going, so one run of
`tunelab data check` lists every bad row, plus what no loader complains about: duplicates, held-out rows
leaking from train, rows that truncation would cut, a template that never teaches the model to stop.
Training runs `check_for_training` first and refuses to start on errors, with the same messages; on clean
data its report carries the splits training uses (`report.splits`), so the data is read once.

Severity: an *error* is a row training cannot use (it would fail on it, or silently lose it); a *warning*
is a row that trains but probably not as intended (duplicates, leakage, truncation). Rows dropped on
purpose (empty rows, built-in pairs without an answer, rows with no answer left after truncation) are
counted and reported, never dropped silently.

Layout: `problems` (Problem, DoctorReport, DataErrors), `checks` (the row, file and split checks),
`lengths` (token lengths and template checks); this module holds the entry points.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.data.checks import Doctor
from tunelab.data.lengths import (
    TEMPLATE_CHECK_ROWS,
    check_tokens,
    classification_lengths,
    measure,
    prompt_mismatch,
    template_problems,
)
from tunelab.data.problems import (
    ERROR,
    WARNING,
    DataErrors,
    DoctorReport,
    Lengths,
    Problem,
    RowTokens,
    SourceSummary,
    split_source,
)
from tunelab.data.shapes import RESPONSE_FIELD
from tunelab.data.templates import custom_template_error, template_fields_error

__all__ = [
    "ERROR",
    "TEMPLATE_CHECK_ROWS",
    "WARNING",
    "DataErrors",
    "Doctor",
    "DoctorReport",
    "Lengths",
    "Problem",
    "RowTokens",
    "SourceSummary",
    "check_config",
    "check_file",
    "check_for_training",
    "classification_lengths",
    "measure",
    "prompt_mismatch",
    "split_source",
    "template_problems",
]


def check_file(
    path: str | Path,
    *,
    columns: dict[str, str] | None = None,
    shape: str = "auto",
    task: str | None = None,
    task_shapes: tuple[str, ...] | None = None,
    labels: list[str] | None = None,
    tokenizer: Any = None,
    template: str | None = None,
    system_prompt: str | None = None,
    train_on_prompt: bool = False,
    max_length: int | None = None,
) -> DoctorReport:
    """Check one data file (or builtin:NAME) on its own; with a tokenizer, also token lengths and the template.
    `task_shapes`: the row shapes `task` trains on (the stage table's `shapes`); None skips that check."""
    doctor = Doctor(columns=columns or {}, shape=shape, task=task, labels=labels, task_shapes=task_shapes)
    doctor.check_sources({"train": str(path)}, base_dir=None)
    if tokenizer is not None:
        check_tokens(doctor.report, tokenizer, template=template, system_prompt=system_prompt,
                     train_on_prompt=train_on_prompt, max_length=max_length)  # fmt: skip
    return doctor.finish()


def check_config(
    cfg: Any, *, tokenizer: Any = None, splits: bool = True, task_shapes: tuple[str, ...] | None = None
) -> DoctorReport:
    """Check a run config's data: every file, the shape for the task, labels and, with a tokenizer, token
    lengths against data.max_length and the prompt template. Without errors, `report.splits` holds the
    splits exactly as training carves them (from the rows already read: the data is read once).

    splits=True also checks those splits: rows per split, held-out rows leaking from train, labels left
    only in a carved split. `task_shapes`: the row shapes `cfg.task` trains on; None skips that check.
    """
    d = cfg.data
    options = _task_options(cfg)
    labels = list(options.labels) if options is not None and getattr(options, "labels", None) else None
    doctor = Doctor(columns=dict(d.columns or {}), shape=d.shape, task=cfg.task, labels=labels,
                    task_shapes=task_shapes)  # fmt: skip
    sources = {"train": d.train, "validation": d.validation, "test": d.test}
    doctor.check_sources({k: v for k, v in sources.items() if v}, base_dir=getattr(cfg, "_source_dir", None))
    if tokenizer is not None:
        check_tokens(doctor.report, tokenizer, template=d.template, system_prompt=d.system_prompt,
                     train_on_prompt=d.train_on_prompt, max_length=d.max_length)  # fmt: skip
    elif d.template is not None:
        _check_template(doctor.report, d.template)
    carving = {"validation_fraction": d.split.validation, "test_fraction": d.split.test, "seed": d.split.seed,
               "limit": d.limit}  # fmt: skip
    if splits:
        doctor.check_splits(**carving)
    else:
        doctor.carve_splits(**carving)
    return _name_the_config(doctor.finish(), cfg)


def _check_template(report: DoctorReport, template: str) -> None:
    """Without a tokenizer (training's preflight): a custom template fits the data's shape and every row
    fills its placeholders — what the recipe would find only after loading the tokenizer."""
    if report.shape is None:
        return
    problem = custom_template_error(template, report.shape)
    if problem is not None:
        report.add_error(problem)
        return
    if RESPONSE_FIELD.get(report.shape) is None:
        return
    for examples in report.examples.values():
        for example in examples:
            err = template_fields_error(example, template)
            if err is not None:
                file, line = split_source(err.file or example.source)
                report.add(ERROR, "template", err.message, file=file, line=line, field=err.field, expected=err.expected)


def _name_the_config(report: DoctorReport, cfg: Any) -> DoctorReport:
    """A problem with a config key (data.template, …) that names no file names the config's file and line."""
    where = getattr(cfg, "_where", None)
    if where is None:
        return report
    for problem in report.problems:
        if problem.file is None and problem.field and not problem.field.startswith("-"):
            named = where.attach(problem.as_error())
            problem.file, problem.line = named.file, named.line
    return report


def check_for_training(cfg: Any, *, task_shapes: tuple[str, ...] | None = None) -> DoctorReport:
    """The training preflight: `report = check_for_training(cfg, task_shapes=...)`, then
    `report.raise_for_errors()` refuses bad data before any work starts, and `report.splits` is what
    `splits.splits_from_config(cfg.data, cfg._source_dir)` would return, without reading the data again."""
    return check_config(cfg, splits=False, task_shapes=task_shapes)


def _task_options(cfg: Any) -> Any:
    getter = getattr(cfg, "task_options", None)
    return getter() if callable(getter) else None
