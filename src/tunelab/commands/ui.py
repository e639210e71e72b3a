"""`tunelab ui` (the web app) and `tunelab arena …` (the blind A/B votes: leaderboard, export).

Cheap to import: fastapi, uvicorn and the evaluation modules are imported inside the commands.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

out = Console() if sys.stdout.isatty() else Console(width=200)
err = Console(stderr=True, soft_wrap=True)
arena_app = typer.Typer(help="Blind A/B votes from `tunelab ui`: leaderboard and export as preference data.",
                        no_args_is_help=True)  # fmt: skip


def ui(
    runs: Path = typer.Option(Path("runs"), "--runs", help="the folder of runs to show (created if missing)"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to bind (default: this machine only)"),
    port: int = typer.Option(7860, "--port", min=0, max=65535),
    api_key: str = typer.Option(None, "--api-key", envvar="TUNELAB_API_KEY",
                                help="require this key (open the page once with ?key=KEY; or set TUNELAB_API_KEY)"),
) -> None:
    """A local web app: start runs from a form, watch them, compare, chat, and judge them blind (arena)."""
    from tunelab.ui.app import serve_ui

    serve_ui(runs, host=host, port=port, api_key=api_key or None,
             log=lambda line: err.print(line, markup=False, highlight=False))  # fmt: skip


def _votes(runs: Path, votes: Path | None) -> Path:
    from tunelab.errors import TunelabError
    from tunelab.evaluation.arena import votes_path

    path = votes or votes_path(runs)
    if not path.is_file():
        raise TunelabError("no vote file", file=str(path), expected="votes cast in `tunelab ui`'s arena (or --votes FILE)")
    return path


@arena_app.command("leaderboard")
def leaderboard(
    runs: Path = typer.Option(Path("runs"), "--runs", help="the folder of runs the votes sit beside"),
    votes: Path = typer.Option(None, "--votes", help="a vote file (default: RUNS/arena_votes.jsonl)"),
    resamples: int = typer.Option(1000, "--resamples", min=0, help="bootstrap resamples for the intervals"),
) -> None:
    """Bradley–Terry and Elo ratings with 95% bootstrap intervals, from the arena's votes."""
    from tunelab.evaluation.arena import leaderboard as board
    from tunelab.evaluation.arena import read_votes

    path = _votes(runs, votes)
    cast = read_votes(path)
    table = Table(title=f"{len(cast)} votes ({path})")
    for col in ("#", "model", "Bradley–Terry [95% CI]", "Elo [95% CI]", "games", "win rate"):
        table.add_column(col)
    for i, r in enumerate(board(cast, resamples=resamples), start=1):
        table.add_row(str(i), r["model"], f"{r['bt']:.0f} [{r['bt_low']:.0f}, {r['bt_high']:.0f}]",
                      f"{r['elo']:.0f} [{r['elo_low']:.0f}, {r['elo_high']:.0f}]", str(r["games"]),
                      f"{100 * r['win_rate']:.0f}%")  # fmt: skip
    out.print(table)


@arena_app.command("export")
def export(
    output: Path = typer.Argument(..., help="the preference file to write (JSONL: prompt, chosen, rejected)"),
    runs: Path = typer.Option(Path("runs"), "--runs", help="the folder of runs the votes sit beside"),
    votes: Path = typer.Option(None, "--votes", help="a vote file (default: RUNS/arena_votes.jsonl)"),
) -> None:
    """Write the decided votes as preference rows, for `task: dpo` (ties and "both bad" are left out)."""
    from tunelab.evaluation.arena import export_preferences

    n = export_preferences(_votes(runs, votes), output)
    out.print(f"{n} preference rows → {output} (train on them with task: dpo, data.train: {output})")


def register(app: typer.Typer) -> None:
    app.command()(ui)
    app.add_typer(arena_app, name="arena")
