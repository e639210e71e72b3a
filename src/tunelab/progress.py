"""Progress display shared by every stage: rich bars with ETA, and a spinner for one-off waits."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True, soft_wrap=True)


def quiet() -> bool:
    """No bars or notes: asked for (TUNELAB_QUIET=1), or a process other than rank 0 of a run in
    several (torchrun's RANK): one process speaks for the run."""
    return os.environ.get("TUNELAB_QUIET", "") not in ("", "0") or os.environ.get("RANK", "0") not in ("", "0")


def make_progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
        disable=quiet(),
    )


@contextlib.contextmanager
def progress_bar(description: str | None, total: int) -> Iterator[Callable[[int], None]]:
    """A bar with ETA over `total` items (none when `description` is None); yields `advance(n)`."""
    if not description:
        yield lambda n: None
        return
    progress = make_progress()
    progress.start()
    task = progress.add_task(description, total=total, info="")
    try:
        yield lambda n: progress.advance(task, n)
    finally:
        progress.stop()


@contextlib.contextmanager
def status(message: str) -> Iterator[None]:
    if quiet() or not sys.stderr.isatty():
        console.print(f"[dim]{message}…[/dim]") if not quiet() else None
        yield
        return
    with console.status(message):
        yield


def info(message: str) -> None:
    if not quiet():
        console.print(message)


def quiet_loggers() -> None:
    """The cheap part of `quiet_libraries` (imports nothing), for the CLI to do before any command runs:
    a library's import-time notices (bitsandbytes' "Failed to load CPU gemm_4bit_forward …") then stay
    out of sight unless --debug."""
    if os.environ.get("TUNELAB_DEBUG", "") not in ("", "0"):
        return
    import logging

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # ORPO and CPO live in trl.experimental
    for name in ("transformers", "peft", "accelerate", "bitsandbytes", "torch", "datasets", "lm_eval", "lm-eval"):
        logging.getLogger(name).setLevel(logging.ERROR)


def quiet_libraries() -> None:
    """Keep library chatter (deprecations, optional-kernel notices, weight-loading bars) out of the
    user's terminal; TUNELAB_DEBUG=1 (the CLI's --debug) shows everything."""
    if os.environ.get("TUNELAB_DEBUG", "") not in ("", "0"):
        return
    import warnings

    quiet_loggers()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(torch|transformers|peft|accelerate)\b.*")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass
    if "DS_ACCELERATOR" not in os.environ and importlib.util.find_spec("deepspeed") is not None:
        import torch

        # accelerate imports DeepSpeed whenever it is installed, and DeepSpeed warns when it finds no GPU
        if not torch.cuda.is_available():
            os.environ["DS_ACCELERATOR"] = "cpu"
    if importlib.util.find_spec("datasets") is not None:
        import datasets  # its map() bars, which TRL's trainers run while tokenizing

        datasets.disable_progress_bars()
