"""Blind A/B human evaluation: matches, the vote file, the leaderboard and the export to preference rows.

A match shows one prompt and two anonymised answers from two contestants (runs or a run's base model,
named "RUN" and "RUN:base"), in random order. Votes go to a plain JSONL file beside the runs
(`arena_votes.jsonl`), one line per vote, appended and flushed as it is cast:

    {"id", "when", "who", "prompt", "a": {"model", "output"}, "b": {"model", "output"}, "vote"}

with vote one of "a", "b", "tie", "both_bad". The leaderboard fits Bradley–Terry and Elo ratings with
bootstrap intervals (`ratings`) next to each run's automatic metrics; the export turns decided votes
into preference rows (prompt/chosen/rejected) that the preference stages (`task: dpo`, …) train on.
"""

from __future__ import annotations

import json
import os
import random
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.evaluation.ratings import OUTCOMES, Match, ratings
from tunelab.runs.layout import write_jsonl_atomic

VOTES_FILE = "arena_votes.jsonl"
VOTES = tuple(OUTCOMES)  # a, b, tie, both_bad
BASE_SUFFIX = ":base"


def votes_path(runs_dir: str | Path) -> Path:
    return Path(runs_dir) / VOTES_FILE


def contestant_run(name: str) -> tuple[str, bool]:
    """(run folder name, whether it is that run's base model) of a contestant name."""
    return (name[: -len(BASE_SUFFIX)], True) if name.endswith(BASE_SUFFIX) else (name, False)


def draw_pair(contestants: Sequence[str], rng: random.Random | None = None) -> tuple[str, str]:
    """Two different contestants in random order (which is shown as A is part of the blinding)."""
    names = list(dict.fromkeys(contestants))
    if len(names) < 2:
        raise TunelabError(f"{len(names)} contestant(s) chosen", field="contestants",
                           expected="at least two runs (or a run and its base model) to compare")
    a, b = (rng or random).sample(names, 2)
    return a, b


def make_vote(prompt: str, a: tuple[str, str], b: tuple[str, str], vote: str, *, who: str = "anonymous") -> dict:
    """A vote record: A and B are (contestant, output) as they were shown."""
    if vote not in VOTES:
        raise TunelabError(f"unknown vote {vote!r}", field="vote", expected=f"one of {', '.join(VOTES)}")
    return {"id": uuid.uuid4().hex[:12], "when": time.strftime("%Y-%m-%dT%H:%M:%S"), "who": who or "anonymous",
            "prompt": prompt, "a": {"model": a[0], "output": a[1]}, "b": {"model": b[0], "output": b[1]},
            "vote": vote}  # fmt: skip


def record_vote(path: str | Path, vote: dict) -> None:
    """Append one vote and flush it to disk (a crash loses at most the vote being written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(vote, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_votes(path: str | Path) -> list[dict]:
    """Every vote in the file; a bad line is a TunelabError naming the file, line and field."""
    path = Path(path)
    if not path.is_file():
        return []
    votes = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = {"file": str(path), "line": number}
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise TunelabError(f"invalid JSON ({err.msg})", **where, expected="one vote object per line") from None
        if not isinstance(row, dict):
            raise TunelabError("not an object", **where, expected="one vote object per line")
        for side in ("a", "b"):
            shown = row.get(side)
            if not (isinstance(shown, dict) and isinstance(shown.get("model"), str)
                    and isinstance(shown.get("output"), str)):  # fmt: skip
                raise TunelabError("missing or malformed", **where, field=side,
                                   expected='{"model": NAME, "output": TEXT}')  # fmt: skip
        if row.get("vote") not in VOTES:
            raise TunelabError(f"unknown vote {row.get('vote')!r}", **where, field="vote",
                               expected=f"one of {', '.join(VOTES)}")  # fmt: skip
        if not isinstance(row.get("prompt"), str):
            raise TunelabError("missing or not a string", **where, field="prompt", expected="the prompt shown")
        if row["a"]["model"] == row["b"]["model"]:
            raise TunelabError("a and b are the same model", **where, field="b.model", expected="two different models")
        votes.append(row)
    return votes


def matches(votes: Sequence[dict]) -> list[Match]:
    return [Match(v["a"]["model"], v["b"]["model"], v["vote"]) for v in votes]


def leaderboard(votes: Sequence[dict], *, metrics: dict[str, dict[str, float]] | None = None,
                resamples: int = 1000, seed: int = 0) -> list[dict[str, Any]]:
    """One row per contestant, best Bradley–Terry rating first: both ratings with 95% intervals, games,
    wins (ties half), and the contestant's automatic metrics when given."""
    played = matches(votes)
    elo = {r.model: r for r in ratings(played, method="elo", resamples=resamples, seed=seed)}
    rows = []
    for r in ratings(played, method="bradley_terry", resamples=resamples, seed=seed):
        e = elo[r.model]
        rows.append({"model": r.model, "bt": r.rating, "bt_low": r.low, "bt_high": r.high, "elo": e.rating,
                     "elo_low": e.low, "elo_high": e.high, "games": r.games, "wins": r.wins,
                     "win_rate": r.wins / r.games if r.games else None,
                     "metrics": (metrics or {}).get(r.model, {})})  # fmt: skip
    return rows


def preference_rows(votes: Sequence[dict]) -> list[dict[str, Any]]:
    """Decided votes as preference rows. Ties, "both bad" and identical answers carry no preference; a
    blank answer (the model stopped at once) is left out too, as the preference stages refuse empty text."""
    rows, seen = [], set()
    for v in votes:
        if v["vote"] not in ("a", "b"):
            continue
        win, lose = (v["a"], v["b"]) if v["vote"] == "a" else (v["b"], v["a"])
        if win["output"].strip() == lose["output"].strip() or not (win["output"].strip() and lose["output"].strip()):
            continue
        key = (v["prompt"], win["output"], lose["output"])
        if key in seen:
            continue
        seen.add(key)
        rows.append({"prompt": v["prompt"], "chosen": win["output"], "rejected": lose["output"],
                     "chosen_model": win["model"], "rejected_model": lose["model"], "vote_id": v.get("id")})  # fmt: skip
    return rows


def export_preferences(votes_file: str | Path, out: str | Path) -> int:
    """Write the votes' preference rows to OUT (JSONL, written whole or not at all); returns how many."""
    rows = preference_rows(read_votes(votes_file))
    if not rows:
        raise TunelabError("no decided votes to export (ties and \"both bad\" prefer nothing)", file=str(votes_file),
                           expected="at least one vote for A or B")  # fmt: skip
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    write_jsonl_atomic(Path(out), rows)
    return len(rows)
