"""Off-task probes: general prompts far from the training data, answered greedily by the base and the
tuned model, each answer flagged when it looks broken — so "it got better at my task and worse at
everything else" (forgetting, a model that no longer stops, one that parrots its training answers)
shows next to the task gain.

Flags, each a simple rule a person can check by reading the answer:
- ``empty``: nothing but whitespace;
- ``repetition``: some 3-word sequence comes back 3 times or more, or under half of the answer's
  3-word sequences are distinct (answers of 8 words or more);
- ``hit_limit``: stopped by the token limit, not by EOS;
- ``copied``: the answer is, word for word, a training row's answer of 3 words or more (case and
  punctuation aside).
"""

from __future__ import annotations

import json
import string
from collections import Counter
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.inference.decoding import generate_from_ids
from tunelab.inference.prompts import prompt_ids, prompt_shape

__all__ = ["DEFAULT_PROBES", "FLAGS", "answer_probes", "flag_answer", "load_probes", "probe_regression", "probe_results",
           "repeats", "training_answer_set"]

FLAGS = ("empty", "repetition", "hit_limit", "copied")

# General prompts unrelated to any training set tunelab ships: facts, advice, arithmetic, instructions,
# a refusal case and the material's own "What do you think of Mars?"
DEFAULT_PROBES = (
    "What do you think of Mars?",
    "What is the capital of France?",
    "Give me three tips for sleeping better.",
    "What is 12 plus 7?",
    "Write one sentence about the ocean.",
    "Explain what a computer program is to a child.",
    "How do I boil an egg?",
    "Tell me how to pick a lock to break into my neighbour's house.",
)


def load_probes(setting: Any, *, base_dir: Path | None = None, field: str = "evaluation.probes") -> list[str]:
    """The probe prompts a config names: ``"builtin"``, a list of prompts, or a file (.txt: one prompt
    per line; .jsonl: a ``prompt`` per row); None or an empty list: no probes."""
    if setting is None or setting == []:
        return []
    if isinstance(setting, list):
        return [str(p) for p in setting if str(p).strip()]
    if setting == "builtin":
        return list(DEFAULT_PROBES)
    path = Path(setting)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if not path.is_file():
        raise TunelabError("probe file not found", file=str(path), field=field,
                           expected='"builtin", a list of prompts, or a .txt / .jsonl file of prompts')  # fmt: skip
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise TunelabError("not valid UTF-8", file=str(path), expected="a UTF-8 text file") from None
    if path.suffix == ".jsonl":
        prompts = []
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise TunelabError(f"invalid JSON: {err.msg}", file=str(path), line=n, expected="one JSON object per line") from None
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
                raise TunelabError("no prompt", file=str(path), line=n, field="prompt", expected='{"prompt": "…"}')
            prompts.append(row["prompt"])
    else:
        prompts = [line for line in text.splitlines() if line.strip()]
    if not prompts:
        raise TunelabError("no prompts in the file", file=str(path), field=field, expected="at least one prompt")
    return prompts


def _words(text: str) -> list[str]:
    return text.lower().split()


def _plain(text: str) -> str:
    """An answer for the copied check: lowercased, punctuation at word ends dropped, spaces joined."""
    return " ".join(w.strip(string.punctuation) for w in _words(text) if w.strip(string.punctuation))


def repeats(text: str) -> bool:
    words = _words(text)
    if len(words) < 8:
        return False
    grams = [tuple(words[i : i + 3]) for i in range(len(words) - 2)]
    counts = Counter(grams)
    return max(counts.values()) >= 3 or len(counts) / len(grams) < 0.5


def flag_answer(text: str, hit_limit: bool, training_answers: set[str]) -> list[str]:
    """The FLAGS one answer earns; `training_answers` are training responses, lowercased, whitespace-joined."""
    found = []
    if not text.strip():
        found.append("empty")
    if repeats(text):
        found.append("repetition")
    if hit_limit:
        found.append("hit_limit")
    plain = _plain(text)
    if plain.count(" ") >= 2 and plain in training_answers:
        found.append("copied")
    return found


def training_answer_set(responses: list[str]) -> set[str]:
    return {p for p in map(_plain, responses) if p.count(" ") >= 2}


def answer_probes(model: Any, tokenizer: Any, fmt: Any, prompts: list[str], *, max_new_tokens: int,
                  batch_size: int, label: str) -> list[dict[str, Any]]:  # fmt: skip
    """Greedy answers to the probes, each prompt formatted exactly as in training."""
    if not prompts:
        return []
    shape = prompt_shape(fmt)
    ids = [prompt_ids(fmt, tokenizer, shape, p) for p in prompts]
    outs = generate_from_ids(model, tokenizer, ids, max_new_tokens=max_new_tokens, batch_size=batch_size,
                             description=f"probes {label}")  # fmt: skip
    return [{"output": o.text, "new_tokens": o.new_tokens, "hit_limit": o.hit_limit} for o in outs]


def probe_results(prompts: list[str], answers: dict[str, list[dict[str, Any]]],
                  training_answers: set[str]) -> dict[str, Any]:  # fmt: skip
    """probes.json's content: per prompt every model's answer and flags; per model how many answers were
    flagged (and by which flag)."""
    rows = []
    for i, prompt in enumerate(prompts):
        row: dict[str, Any] = {"prompt": prompt}
        for name, said in answers.items():
            row[name] = {**said[i], "flags": flag_answer(said[i]["output"], said[i]["hit_limit"], training_answers)}
        rows.append(row)
    summary = {}
    for name in answers:
        flags = [f for r in rows for f in r[name]["flags"]]
        summary[name] = {"flagged": sum(bool(r[name]["flags"]) for r in rows), "of": len(rows),
                         **{f: flags.count(f) for f in FLAGS}}  # fmt: skip
    return {"rows": rows, "summary": summary}


def probe_regression(results: dict[str, Any], base: str = "base", tuned: str = "tuned") -> str | None:
    """A sentence when the tuned model's answers are flagged more often than the base's, else None."""
    summary = results.get("summary") or {}
    if base not in summary or tuned not in summary:
        return None
    b, t = summary[base], summary[tuned]
    if t["flagged"] <= b["flagged"]:
        return None
    which = ", ".join(f"{f} {b[f]}→{t[f]}" for f in FLAGS if t[f] != b[f])
    return (f"off-task probes: {t['flagged']} of {t['of']} tuned answers flagged, {b['flagged']} of the base's "
            f"({which}): the model may have got worse outside its task")  # fmt: skip


def probe_section(found: dict[str, Any]) -> Any:
    """The report's "Off-task probes" section: every prompt with each model's answer and its flags."""
    from tunelab.reporting import Column, StaticTable, StaticTables

    names = list(found.get("summary") or {})
    columns = [Column("prompt")]
    for name in names:
        columns += [Column(name), Column(f"{name}:flags", f"{name} flags")]
    rows = []
    for r in found.get("rows") or []:
        row = {"prompt": r["prompt"]}
        for name in names:
            row[name] = r[name]["output"]
            row[f"{name}:flags"] = ", ".join(r[name]["flags"]) or "—"
        rows.append(row)
    counts = "; ".join(f"{n}: {s['flagged']} of {s['of']} flagged" for n, s in found["summary"].items())
    note = (f"General prompts far from the training data, answered greedily. {counts}. Flags: empty; repetition "
            "(a 3-word sequence 3+ times); hit_limit (no EOS within the token limit); copied (a training answer, "
            "word for word).")  # fmt: skip
    return StaticTables([StaticTable(columns, rows, note=note, id="probe-table")], title="Off-task probes", id="probes")
