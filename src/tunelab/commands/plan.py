"""`tunelab plan CONFIG`: what a training config needs in memory and compute, and where it fits, from
the model's config.json alone; `--measure` trains a few steps and sets the measured peak beside it.

Cheap to import: torch and transformers are imported inside the command.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from tunelab.errors import TunelabError


def _console() -> Any:
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=200)


def plan(
    config: Path = typer.Argument(..., help="run config (YAML)"),
    set_: list[str] = typer.Option(None, "--set", metavar="KEY=VALUE", help="override a config key: --set training.batch_size=16"),
    measure: bool = typer.Option(False, "--measure", help="also train a few real steps and print the measured peak"),
    steps: int = typer.Option(3, "--steps", min=1, help="optimizer steps --measure trains"),
    mfu: float = typer.Option(0.4, "--mfu", help="model FLOPs utilisation assumed for GPU times (0–1)"),
    world_size: int = typer.Option(1, "--world-size", min=1, help="processes training together"),
    strategy: str = typer.Option(None, "--strategy", help="ddp (replicate; default) or fsdp (shard, ZeRO-3-like)"),
    device: str = typer.Option(None, "--device", help="cpu or cuda (default: this machine's)"),
    gpu: str = typer.Option(None, "--gpu", help="GPU of the per-step time, e.g. H100 (default: this machine's)"),
    rows: int = typer.Option(None, "--rows", min=1, help="training rows, for per-epoch figures (default: data.limit)"),
    trained_fraction: float = typer.Option(1.0, "--trained-fraction",
                                           help="share of positions with a loss (1: every token, the worst case)"),
    as_json: bool = typer.Option(False, "--json", help="print the plan as JSON"),
    tensors: bool = typer.Option(False, "--tensors", help="with --measure on CPU: also the peak of live tensor bytes "
                                 "(torch's profiler; slower), the figure that compares with CUDA's max allocated"),
) -> None:
    """Estimate memory, FLOPs and time of a training config without loading weights, and what fits where."""
    from tunelab.planning import plan as make_plan

    if measure and device is not None:
        from tunelab.planning.plan import detect_device

        if device != detect_device():
            raise TunelabError(f"--measure trains on this machine's {detect_device()}, not {device}", field="--device",
                               expected="no --device with --measure")  # fmt: skip
    result = make_plan(config, overrides=set_, mfu=mfu, world_size=world_size, strategy=strategy, device=device,
                       gpu=gpu, rows=rows, trained_fraction=trained_fraction)  # fmt: skip
    if measure:
        from tunelab.config import check_before_loading, resolve_config
        from tunelab.planning.measure import measure as run_steps

        cfg = resolve_config(config, set_)
        check_before_loading(cfg, output_dir=False)
        result.measured = run_steps(cfg, steps=steps, trained_fraction=trained_fraction, tensors=tensors)
    if as_json:
        print(json.dumps(result.to_dict(), indent=2, default=str))
        return
    _print(result)


def _print(result: Any) -> None:
    from rich.table import Table

    from tunelab.planning.plan import REFERENCE_WORKLOAD, SERVE_CONTEXT, size_text

    out = _console()
    table = Table(title=f"plan: {result.config} ({result.model}, {result.task}, {result.method})")
    for col in ("", "item", "value", "detail"):
        table.add_column(col, justify="right" if col == "value" else "left")
    last = None
    for section, item, value, detail in result.rows():
        table.add_row(section if section != last else "", item, value, detail)
        last = section
    m = result.measured
    if m is not None:
        estimate = result.memory.peak_allocated
        error = 100 * (estimate - m.growth_bytes) / m.growth_bytes if m.growth_bytes > 0 else float("nan")
        table.add_row("measured", "peak", size_text(m.peak_bytes),
                      f"{m.how} ({m.malloc} malloc); {m.steps} steps in {m.seconds:.1f} s")
        table.add_row("", "growth over baseline", size_text(m.growth_bytes),
                      f"baseline {size_text(m.baseline_bytes)}; estimate {size_text(estimate)} ({error:+.1f}%)")  # fmt: skip
        if m.tensor_peak_bytes:
            live = estimate - result.memory.term("mapped") - result.memory.term("runtime")  # RSS terms, not tensors
            table.add_row("", "live tensors at the peak", size_text(m.tensor_peak_bytes),
                          f"estimate {size_text(live)} ({100 * (live - m.tensor_peak_bytes) / m.tensor_peak_bytes:+.1f}%)")  # fmt: skip
    out.print(table)
    if result.fits:
        fits = Table(title="what fits where (this config; per GPU, at "
                     f"{result.mfu:.0%} MFU; multi-GPU: {result.fits[-1].strategy})")  # fmt: skip
        for col in ("machine", "precision", "peak / GPU", "usable", "fits", "largest batch", "s / step", "h / epoch"):
            fits.add_column(col, justify="left" if col == "machine" else "right")
        for r in result.fits:
            largest = "—" if not r.largest_batch else (f"≥{r.largest_batch}" if r.largest_batch >= 4096 else str(r.largest_batch))
            fits.add_row(r.machine, r.precision, f"{r.peak_gib:.2f} GiB", f"{r.usable_gib:.1f} GiB",
                         "[green]yes[/green]" if r.fits else "[red]no[/red]", largest,
                         f"{r.seconds_per_step:.3g}" if r.seconds_per_step is not None else "—",
                         f"{r.hours_per_epoch:.3g}" if r.hours_per_epoch is not None else "—")  # fmt: skip
        out.print(fits)
    if result.capacity:
        w = REFERENCE_WORKLOAD
        cap = Table(title=f"largest model each machine can fine-tune ({w['batch_size']} × {w['seq_len']} tokens, "
                    f"checkpointing, {w['optimizer']}, FSDP across GPUs) and serve ({SERVE_CONTEXT}-token context)")  # fmt: skip
        for col in ("machine", "full", "LoRA", "QLoRA", "serve bf16", "serve 4-bit"):
            cap.add_column(col)
        for r in result.capacity:
            cap.add_row(r.machine, *(x or "—" for x in (r.full, r.lora, r.qlora, r.serve_bf16, r.serve_4bit)))
        out.print(cap)
    for note in result.notes + (m.notes if m is not None else []):
        out.print(f"note: {note}", markup=False, highlight=False)


def register(app: typer.Typer) -> None:
    app.command("plan")(plan)
