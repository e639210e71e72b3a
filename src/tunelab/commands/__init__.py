"""CLI command groups, one module each, so a feature's commands live beside nothing else.

Each module listed in COMMAND_MODULES defines `register(app: typer.Typer) -> None`. Modules must be
cheap to import (no torch/transformers at module level): `tunelab --help` imports them all.
"""

from __future__ import annotations

import importlib

import typer

COMMAND_MODULES: tuple[str, ...] = ("data", "evaluate", "use", "plan", "ui")


def register_all(app: typer.Typer) -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(f"tunelab.commands.{name}").register(app)
