"""`tunelab data …`: check, preview, stats, prepare. Thin: parse arguments, call `tunelab.data.*`, print.

Importing this module stays cheap (`tunelab --help` imports every command module): the data modules,
torch and transformers are imported inside the commands.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console

from tunelab.errors import TunelabError

CONFIG_SUFFIXES = (".yaml", ".yml")


def _console() -> Console:
    # off a terminal (pipes, CI logs) rich would wrap at 80 columns and split messages across lines
    return Console() if sys.stdout.isatty() else Console(width=200, no_color=True)


def _pairs(items: list[str] | None, what: str) -> dict[str, str]:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise TunelabError(f"bad {what} {item!r}", expected=f"{what} SOURCE=FIELD, e.g. {what} Doctor=answer")
        src, dst = item.split("=", 1)
        out[src.strip()] = dst.strip()
    return out


def _load_config(path: Path, overrides: list[str] | None):  # noqa: ANN202 - RunConfig is built at runtime
    from tunelab.config import load_config

    return load_config(path, overrides)


def _tokenizer(name: str, trust_remote_code: bool = False):  # noqa: ANN202
    from tunelab.models.loading import load_tokenizer, resolve_model
    from tunelab.progress import quiet_libraries

    quiet_libraries()
    return load_tokenizer(resolve_model(name).path, trust_remote_code=trust_remote_code)


def _task_shapes(task: str | None) -> tuple[str, ...] | None:
    """The row shapes a stage trains on (None: no stage given, so any shape is fine)."""
    if task is None:
        return None
    from tunelab.stages.registry import STAGES

    if task not in STAGES:
        raise TunelabError(f"unknown task {task!r}", field="--task", expected=f"one of {', '.join(STAGES)}")
    return STAGES[task].shapes


def _try_tokenizer(name: str | None, trust_remote_code: bool = False):  # noqa: ANN202
    if name is None:
        return None, None
    try:
        return _tokenizer(name, trust_remote_code), None
    except TunelabError as err:
        return None, err


def _check_file_options(template: str | None, labels: str | None) -> None:
    """The options `data check FILE` takes in place of a config's, checked as the config's are."""
    from tunelab.data.templates import parse_template

    if template is not None:
        parse_template(template, field="--template")
    names = [x.strip() for x in labels.split(",") if x.strip()] if labels is not None else None
    if names is not None and len(set(names)) < 2:
        raise TunelabError(f"{labels!r} has {len(set(names))} distinct label(s)", field="--labels",
                           expected="at least two distinct labels, comma-separated")  # fmt: skip
    if names is not None and len(set(names)) != len(names):
        twice = next(x for i, x in enumerate(names) if x in names[:i])
        raise TunelabError(f"label {twice!r} is given twice", field="--labels", expected="each label once")


def check(
    target: Path = typer.Argument(..., help="a data file (.jsonl/.json/.csv/.tsv/.parquet/.txt) or a run config (YAML)"),
    fmt: str = typer.Option("text", "--format", help="text, or json for machines"),
    set_: list[str] = typer.Option(None, "--set", metavar="KEY=VALUE", help="override a config key: --set data.max_length=512"),
    column: list[str] = typer.Option(None, "--column", help="map a column (files only): --column Doctor=answer"),
    shape: str = typer.Option("auto", "--shape", help="row shape (files only; default: detect)"),
    task: str = typer.Option(None, "--task", help="check the shape fits this task (files only): sft, pretrain, …"),
    labels: str = typer.Option(None, "--labels", help="the label set, comma-separated (files only)"),
    model: str = typer.Option(None, "--model", help="count tokens with this model's tokenizer (files only)"),
    max_length: int = typer.Option(None, "--max-length", min=1, help="token limit to check rows against (with --model)"),
    template: str = typer.Option(None, "--template", help="custom prompt template (files only, with --model)"),
    no_tokens: bool = typer.Option(False, "--no-tokens", help="skip the tokenizer: no length or template checks"),
    all_: bool = typer.Option(False, "--all", help="list every problem (default: 20 of each kind)"),
) -> None:
    """Read every row and report ALL problems at once, as FILE:LINE: field: problem (expected …).

    Exit code 2 when there are errors, 0 with warnings only.
    """
    from tunelab.data import doctor
    from tunelab.data.preview import render_report

    if fmt not in ("text", "json"):
        raise TunelabError(f"unknown format {fmt!r}", field="--format", expected="text or json")
    report, failed = doctor.DoctorReport(), None
    try:
        if target.suffix.lower() in CONFIG_SUFFIXES:
            from tunelab.config import check_before_loading

            cfg = _load_config(target, set_)
            notes: list[str] = []
            try:  # the config against the model's config.json (max_length, module names); the rows are checked anyway
                notes = check_before_loading(cfg, output_dir=False, strict=False)
            except TunelabError as err:
                failed = err
            skip = no_tokens or (failed is not None and failed.field == "model.name")
            tokenizer, unloadable = _try_tokenizer(None if skip else cfg.model.name, cfg.model.trust_remote_code)
            failed = failed or unloadable
            report = doctor.check_config(cfg, tokenizer=tokenizer, task_shapes=_task_shapes(cfg.task))
            report.notes[:0] = notes
        else:
            _check_file_options(template, labels)
            tokenizer, failed = _try_tokenizer(None if no_tokens else model)
            report = doctor.check_file(
                target, columns=_pairs(column, "--column"), shape=shape, task=task, task_shapes=_task_shapes(task),
                labels=[x.strip() for x in labels.split(",") if x.strip()] if labels else None,
                tokenizer=tokenizer, template=template, max_length=max_length,
            )  # fmt: skip
    except TunelabError as err:  # a bad config: reported like any other problem
        report.add_error(err, "config")
    if failed is not None:  # an unknown model, a module name it lacks: the rows are still checked
        report.problems.insert(0, doctor.Problem("error", failed.kind if failed.kind == "config" else "model",
                                                 failed.message, failed.file, failed.line, failed.field,
                                                 failed.expected))  # fmt: skip
    if fmt == "json":
        print(json.dumps(report.to_dict(), ensure_ascii=False, indent=1))
    else:
        render_report(report, _console(), limit=None if all_ else 20)
    raise typer.Exit(2 if report.errors else 0)


def preview(
    config: Path = typer.Argument(..., help="run config (YAML)"),
    n: int = typer.Option(3, "--n", min=1, help="rows to show"),
    split: str = typer.Option("train", "--split", help="train, validation or test"),
    set_: list[str] = typer.Option(None, "--set", metavar="KEY=VALUE", help="override a config key"),
    plain: bool = typer.Option(False, "--plain", help="mark trained text with [[ ]] instead of colour"),
    tokens: bool = typer.Option(False, "--tokens", help="also list every token: position, id, trained?, piece"),
) -> None:
    """Show the exact token sequence the trainer will see: masked prompt, trained answer, EOS, counts,
    and the inference-time prompt for the same row."""
    from tunelab.data.preview import build_preview, render_preview

    if split not in ("train", "validation", "test"):
        raise TunelabError(f"unknown split {split!r}", field="--split", expected="train, validation or test")
    cfg = _load_config(config, set_)
    tokenizer = _tokenizer(cfg.model.name, cfg.model.trust_remote_code)
    console = _console()
    result = build_preview(cfg, tokenizer, n=n, split=split, task_shapes=_task_shapes(cfg.task))
    render_preview(result, tokenizer, console, plain=plain or not console.is_terminal, tokens=tokens)


def stats(
    config: Path = typer.Argument(..., help="run config (YAML)"),
    png: Path = typer.Option(None, "--png", help="histogram image (default: OUTPUT_DIR/NAME.token_lengths.png)"),
    set_: list[str] = typer.Option(None, "--set", metavar="KEY=VALUE", help="override a config key"),
    fmt: str = typer.Option("text", "--format", help="text, or json"),
) -> None:
    """Rows per split, token-length histogram (terminal + PNG) and the max_length covering 95% / 99% of rows."""
    from tunelab.data.preview import compute_stats, plot_lengths, render_stats

    cfg = _load_config(config, set_)
    tokenizer = _tokenizer(cfg.model.name, cfg.model.trust_remote_code)
    result = compute_stats(cfg, tokenizer, task_shapes=_task_shapes(cfg.task))
    path = plot_lengths(result, png or Path(cfg.output_dir) / f"{cfg.name}.token_lengths.png")
    if fmt == "json":
        summary = result.lengths.summary()
        print(json.dumps({"rows": result.counts, "shape": result.shape, "lengths": summary,
                          "per_split": {k: v.summary() for k, v in result.per_split.items()},
                          "png": str(path)}, indent=1))  # fmt: skip
    else:
        render_stats(result, _console(), png=path)


def prepare(
    config: Path = typer.Argument(..., help="prepare config (YAML), or a data file with options from --set"),
    out: Path = typer.Option(..., "--out", help="folder for train.jsonl (validation.jsonl, test.jsonl) + prepare.json"),
    set_: list[str] = typer.Option(None, "--set", metavar="KEY=VALUE", help="override an option: --set first=1500 --set to=messages"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace prepared files already in --out"),
) -> None:
    """Select/rename columns, clean whitespace, strip a prefix, drop empty/duplicate rows, take N rows,
    convert shapes, split with a seed, and write normalised JSONL."""
    from tunelab.data.prepare import load_prepare_config
    from tunelab.data.prepare import prepare as run_prepare

    cfg, base_dir = load_prepare_config(config, set_)
    result = run_prepare(cfg, out, base_dir=base_dir, overwrite=overwrite)
    console = _console()
    console.print(f"read {result.read:,} rows ({result.shape_in}) → wrote " + ", ".join(
        f"{path} ({result.counts[k]:,} rows, {result.shape_out})" for k, path in result.files.items()),
        markup=False, highlight=False, soft_wrap=True)  # fmt: skip
    for step, n in result.changed.items():
        console.print(f"cleaned: {step} changed {n:,} rows", markup=False, highlight=False, soft_wrap=True)
    for reason, where in result.dropped.items():
        first = ", ".join(where[:5]) + (", …" if len(where) > 5 else "")
        console.print(f"dropped {len(where):,} rows: {reason} ({first})", markup=False, highlight=False, soft_wrap=True)
    for note in result.notes:
        console.print(f"note: {note}", markup=False, highlight=False, soft_wrap=True)
    console.print(f"report: {result.out_dir / 'prepare.json'}", markup=False, highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    data_app = typer.Typer(
        help="Check, preview, measure and prepare training data.", no_args_is_help=True, add_completion=False
    )
    data_app.command("check")(check)
    data_app.command("preview")(preview)
    data_app.command("stats")(stats)
    data_app.command("prepare")(prepare)
    app.add_typer(data_app, name="data")
