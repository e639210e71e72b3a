"""`tunelab eval`, `compare`, `cv` and `bench`: is the fine-tuned model better, by how much, and is it real?

Cheap to import: everything heavy is imported inside the commands.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import typer

_RUNS_HELP = "run directories to compare; 'base' = the base model of the first run"


def _console() -> Any:
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=200)


def _fmt(metric: str, value: Any) -> str:
    if value is None or not isinstance(value, int | float) or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if metric in ("hit_token_limit", "n") and float(value).is_integer():
        return f"{int(value)}"
    return f"{value:.2f}"


def _print_table(out: Any, title: str, table: list[dict], models: list[str], baseline: str | None) -> None:
    from rich.table import Table

    from tunelab.evaluation.metrics import LOWER_IS_BETTER, METRIC_LABELS, NEUTRAL_METRICS

    t = Table(title=title)
    t.add_column("metric")
    for m in models:
        t.add_column(m, justify="right")
    others = [m for m in models if baseline and m != baseline]
    for m in others:
        t.add_column(f"Δ {m} [95% CI]", justify="right")
    for row in table:
        key = row["metric"]
        cells = [METRIC_LABELS.get(key, key) + (" ↓" if key in LOWER_IS_BETTER else "")]
        cells += [_fmt(key, row["values"].get(m)) for m in models]
        for m in others:
            d = row["deltas"].get(m)
            if not d:
                cells.append("—")
                continue
            text = f"{d['delta']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]"
            if d["excludes_zero"] and key not in NEUTRAL_METRICS:
                better = d["delta"] < 0 if key in LOWER_IS_BETTER else d["delta"] > 0
                text = f"[{'green' if better else 'red'}]{text} *[/]"
            cells.append(text)
        t.add_row(*cells)
    out.print(t)
    if others:
        out.print("[dim]* the paired bootstrap 95% interval excludes zero; ↓ lower is better[/dim]")


def _print_comparison(comp: Any) -> None:
    out = _console()
    _print_table(out, f"{comp.data.description}", comp.table, comp.models, comp.baseline)
    for name, rows in comp.regressions.items():
        c = comp.counts.get(name, {})
        out.print(
            f"{name} vs {comp.baseline} on per-example {comp.primary}: "
            f"[green]{c.get('better', 0)} better[/green], [red]{c.get('worse', 0)} worse[/red], {c.get('tied', 0)} tied"
        )
        for row in rows[:5]:
            text = str(row.get("input", "")).replace("\n", " ")
            out.print(f"  [red]{row['drop']:+.1f}[/red] #{row['id']} {text[:90]}", markup=True, highlight=False)
        if len(rows) > 5:
            out.print(f"  … {len(rows) - 5} more regressions in the report and comparison.csv")
    if comp.slices:
        out.print(f"slices by '{comp.slices['field']}': {len(comp.slices['rows'])} (in the report)")
    if comp.probes:
        _print_probes(out, comp)
    out.print(f"written: [bold]{comp.out_dir}[/bold] (comparison.json, comparison.csv, predictions.jsonl"
              f"{', probes.json' if comp.probes else ''})")  # fmt: skip
    out.print(f"report:  [bold]{comp.report}[/bold]")


def _print_probes(out: Any, comp: Any) -> None:
    """The off-task probes: each model's answer (cut short) and flags, then who was flagged how often."""
    from rich.table import Table

    from tunelab.evaluation.probes import probe_regression

    found = comp.probes
    t = Table(title="off-task probes (general prompts far from the training data)")
    t.add_column("prompt", max_width=28)
    for name in comp.models:
        t.add_column(name, max_width=40)
    for row in found["rows"]:
        cells = [row["prompt"]]
        for name in comp.models:
            said = row[name]
            text = said["output"].replace("\n", " ")
            text = text if len(text) <= 80 else text[:79] + "…"
            cells.append(text + (f" [yellow]({', '.join(said['flags'])})[/yellow]" if said["flags"] else ""))
        t.add_row(*cells)
    out.print(t)
    out.print("flagged: " + ", ".join(f"{n} {s['flagged']}/{s['of']}" for n, s in found["summary"].items()))
    if comp.baseline is not None:
        for name in comp.models:
            warning = probe_regression(found, base=comp.baseline, tuned=name) if name != comp.baseline else None
            if warning:
                out.print(f"[yellow]warning: {warning.replace('tuned answers', name + ' answers')}[/yellow]",
                          highlight=False)  # fmt: skip


def eval_command(
    run: Path = typer.Argument(..., help="a finished run directory"),
    data: str = typer.Option(None, "--data", help="evaluate on this file (any supported format) instead of the held-out split"),
    base: bool = typer.Option(False, "--base", help="also evaluate the base model and compare"),
    out: Path = typer.Option(None, "--out", help="output folder (default RUN/eval/<data>)"),
    max_examples: int = typer.Option(None, "--max-examples", min=1, help="use only the first N rows"),
    max_new_tokens: int = typer.Option(None, "--max-new-tokens", min=1, help="default: the run's evaluation setting"),
    batch_size: int = typer.Option(None, "--batch-size", min=1, help="generation batch size"),
    regenerate: bool = typer.Option(False, "--regenerate", help="generate again even when the run's predictions match"),
    perplexity: bool = typer.Option(True, "--perplexity/--no-perplexity", help="perplexity of the references"),
    metric: str = typer.Option("rougeL", "--metric", help="per-example metric for regressions, worst N and slices"),
    slice_by: str = typer.Option(None, "--slice-by", help="field to slice by (default: detected, e.g. topic)"),
) -> None:
    """Evaluate a run (and with --base its base model) on its held-out split or on any data file."""
    options = dict(locals())
    from tunelab.evaluation.compare import BASE

    models = ([BASE] if options.pop("base") else []) + [str(options.pop("run"))]
    _compare_and_print(models, **options)


def _compare_and_print(models: list[str], *, out: Path | None, perplexity: bool, **options: Any) -> None:
    from tunelab.evaluation.compare import compare

    _print_comparison(compare(models, out_dir=out, with_perplexity=perplexity, **options))


def compare_command(
    runs: list[str] = typer.Argument(..., help=_RUNS_HELP),
    data: str = typer.Option(None, "--data", help="compare on this file instead of the first run's held-out split"),
    baseline: str = typer.Option(None, "--baseline", help="model the others are compared with (default: base, else the first)"),
    out: Path = typer.Option(None, "--out", help="output folder (default: next to the first run)"),
    max_examples: int = typer.Option(None, "--max-examples", min=1),
    max_new_tokens: int = typer.Option(None, "--max-new-tokens", min=1),
    batch_size: int = typer.Option(None, "--batch-size", min=1),
    regenerate: bool = typer.Option(False, "--regenerate", help="generate again even when a run's predictions match"),
    perplexity: bool = typer.Option(True, "--perplexity/--no-perplexity"),
    metric: str = typer.Option("rougeL", "--metric", help="per-example metric for regressions, worst N and slices"),
    worst: int = typer.Option(10, "--worst", min=1, help="how many worst outputs to list per model"),
    slice_by: str = typer.Option(None, "--slice-by", help="field to slice by (default: detected, e.g. topic)"),
    resamples: int = typer.Option(1000, "--resamples", min=100, help="bootstrap resamples"),
) -> None:
    """Run the same held-out rows through several runs (and 'base'): one table with paired bootstrap CIs, one report."""
    options = dict(locals())
    from tunelab.errors import TunelabError
    from tunelab.evaluation.compare import BASE

    runs = options.pop("runs")
    if len(runs) == 1 and runs[0] != BASE:
        runs = [BASE, runs[0]]  # one run: compare it with its base model
    if not runs:
        raise TunelabError("no runs given", expected="tunelab compare RUN_A [RUN_B …] [base]")
    _compare_and_print(runs, **options)


def cv_command(
    config: Path = typer.Argument(..., help="run config (YAML)"),
    folds: int = typer.Option(5, "--folds", "-k", min=2, help="number of folds K"),
    set_: list[str] = typer.Option(None, "--set", metavar="KEY=VALUE", help="override a config key: --set training.max_steps=50"),
    out: Path = typer.Option(None, "--out", help="output folder (default OUTPUT_DIR/NAME-cv)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing cross-validation folder"),
) -> None:
    """k-fold cross-validation: K trainings, each metric as mean ± std over folds, a per-fold table."""
    from rich.table import Table

    from tunelab.evaluation.crossval import cross_validate
    from tunelab.evaluation.metrics import METRIC_LABELS

    result = cross_validate(config, folds=folds, overrides=set_, out_dir=out, overwrite=overwrite)
    console = _console()
    t = Table(title=f"{folds}-fold cross-validation ({result['n']} rows)")
    for col in ("metric", "base", "tuned", "Δ tuned − base"):
        t.add_column(col, justify="left" if col == "metric" else "right")

    def pm(s: dict) -> str:
        return "—" if s.get("mean") is None else f"{s['mean']:.2f} ± {s['std']:.2f}"

    for row in result["summary"]:
        t.add_row(METRIC_LABELS.get(row["metric"], row["metric"]), pm(row["base"]), pm(row["tuned"]), pm(row["delta"]))
    console.print(t)
    console.print(f"folds:  [bold]{result['dir']}[/bold] (fold-1 … fold-{folds}, cv.json, cv.csv)")
    console.print(f"report: [bold]{result['report']}[/bold]")


def bench_command(
    run: Path = typer.Argument(..., help="a finished run directory"),
    task: str = typer.Option("builtin:mini_mc", "--task", help="multiple-choice .jsonl file, or builtin:mini_mc"),
    base: bool = typer.Option(False, "--base", help="also score the base model and compare"),
    tasks: str = typer.Option(None, "--tasks", help="lm-evaluation-harness tasks instead, comma-separated (needs lm-eval)"),
    include_path: list[Path] = typer.Option(None, "--include-path", help="a folder of lm-eval task YAMLs (repeatable)"),
    chat_template: bool = typer.Option(False, "--chat-template", help="lm-eval: put prompts in the chat template"),
    limit: int = typer.Option(None, "--limit", min=1, help="use only the first N questions (per task)"),
    out: Path = typer.Option(None, "--out", help="output folder (default RUN/bench/TASK)"),
    batch_size: int = typer.Option(16, "--batch-size", min=1),
) -> None:
    """Multiple-choice benchmark scored by log-likelihood (acc and length-normalised acc) in the run's own
    prompt format; or, with --tasks, lm-evaluation-harness tasks as lm-eval scores them."""
    from tunelab.evaluation import bench as B

    console = _console()
    if tasks:
        from tunelab.evaluation.harness import harness_bench

        result = harness_bench(run, [t.strip() for t in tasks.split(",") if t.strip()], with_base=base, limit=limit,
                               batch_size=batch_size, include_path=include_path, chat_template=chat_template,
                               out_dir=out)  # fmt: skip
        names = list(result["models"])
        _print_table(console, f"lm-eval: {', '.join(result['tasks'])}", result["table"], names, result["baseline"])
        console.print(f"written: [bold]{result['out_dir']}[/bold] (bench.json)")
        console.print(f"report:  [bold]{result['report']}[/bold]")
        return
    result = B.bench(run, task=task, with_base=base, out_dir=out, limit=limit, batch_size=batch_size)
    names = list(result["models"])
    _print_table(
        console,
        f"{result['task']}: {result['n']} questions, chance {result['chance']:.1f}%",
        result["table"],
        names,
        result["baseline"],
    )
    console.print(f"written: [bold]{result['out_dir']}[/bold] (bench.json, predictions.jsonl)")
    console.print(f"report:  [bold]{result['report']}[/bold]")


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
    app.command("compare")(compare_command)
    app.command("cv")(cv_command)
    app.command("bench")(bench_command)
