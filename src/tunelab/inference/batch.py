"""`tunelab generate --input FILE --output FILE`: greedy answers for every row of a file.

Any row shape tunelab trains on is accepted; only its prompt part is used (a response field, if
present, is ignored), so a held-out file can be fed straight back. Rows that only carry a prompt
(`{"question": ...}`, `{"prompt": ...}`, `{"instruction": ...}`) work as well, and a `.txt` file
gives one prompt per non-empty line. Prompts are formatted with the run's template and decoded by
the same batched greedy generation as evaluation and `tunelab generate --prompt`.

Each output row is the input row with `generated` (the answer), `new_tokens` and `hit_limit`
added, in input order.
"""

from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.data.shapes import ROW_SHAPES, SHAREGPT_ROLES, Example
from tunelab.errors import TunelabError
from tunelab.inference.prompts import prompt_example

OUTPUT_FORMATS = ".jsonl, .json or .csv"
# the prompt field of each pair shape, tried in the table's detection order (alpaca before
# input/output, so an Alpaca row's `input` is folded into its instruction, as in training)
PROMPT_FIELDS = tuple((s.prompt_field, name) for name, s in ROW_SHAPES.items() if s.kind == "pair" and s.prompt_field)


@dataclass
class FileResult:
    rows: int
    output: Path
    seconds: float
    new_tokens: int
    hit_limit: int


def read_prompt_rows(path: str | Path) -> list[tuple[dict[str, Any], str, int]]:
    """(row, file, line) for every row; a .txt file is one prompt per non-empty line."""
    from tunelab.data.sources import read_rows, read_text

    path = Path(path)
    if path.suffix.lower() == ".txt" and path.is_file():
        text = read_text(path)
        return [({"prompt": line.strip()}, str(path), n) for n, line in enumerate(text.split("\n"), 1) if line.strip()]
    return [(r.data, r.file, r.line) for r in read_rows(path)]


def _turns(value: Any, *, file: str, line: int, field: str) -> list[dict[str, str]]:
    role_key, text_key = ("from", "value") if field == "conversations" else ("role", "content")
    if not isinstance(value, list) or not value:
        raise TunelabError("is not a non-empty list of turns", file=file, line=line, field=field,
                           expected=f"[{{{role_key!r}: ..., {text_key!r}: ...}}, ...]")
    turns = []
    for i, turn in enumerate(value):
        if not isinstance(turn, dict) or role_key not in turn or not isinstance(turn.get(text_key), str):
            raise TunelabError("is not a turn", file=file, line=line, field=f"{field}[{i}]",
                               expected=f"{{{role_key!r}: ..., {text_key!r}: \"...\"}}")
        raw = str(turn[role_key])
        role = SHAREGPT_ROLES.get(raw.lower()) if field == "conversations" else raw
        if role not in ("system", "user", "assistant"):
            raise TunelabError(f"unknown role {raw!r}", file=file, line=line, field=f"{field}[{i}].{role_key}",
                               expected="system, user or assistant")
        turns.append({"role": role, "content": turn[text_key]})
    # the prompt is everything up to the last user turn (a trailing answer is the reference)
    while turns and turns[-1]["role"] == "assistant":
        turns.pop()
    if not turns or turns[-1]["role"] != "user":
        raise TunelabError("has no user turn to answer", file=file, line=line, field=field,
                           expected="a conversation that contains a user turn")
    return turns


def row_prompt(row: dict[str, Any], fmt: Any, shape: str, *, file: str, line: int,
               columns: dict[str, str] | None = None) -> Example:
    """The prompt part of a row as an Example the run's PromptFormat renders."""
    if columns:
        row = {columns.get(k, k): v for k, v in row.items()}
    where = f"{file}:{line}"
    for field in ("messages", "conversations"):
        if field in row:
            turns = _turns(row[field], file=file, line=line, field=field)
            return prompt_example(fmt, shape, messages=turns, source=where)
    if fmt.kind == "text":
        text = next((row[k] for k in ("text", "prompt", "input", "question") if isinstance(row.get(k), str)), None)
        if text is None:
            raise TunelabError("no text to continue", file=file, line=line, field="text",
                               expected="a `text` (or `prompt`) field: this run continues raw text")
        return prompt_example(fmt, shape, text, source=where)
    if fmt.kind == "custom":
        # a row that carries the template's own prompt fields fills them all, exactly as in training
        import string

        cut = fmt.template.index("{" + fmt.response_field + "}")
        names = [n for _, n, _, _ in string.Formatter().parse(fmt.template[:cut]) if n]
        if names and all(n in row for n in names):
            fields = {n: "" if row[n] is None else row[n] for n in names}
            return Example(shape=shape, fields=fields, messages=None, text=None, source=where, meta={})
    for field, _shape in PROMPT_FIELDS:
        value = row.get(field)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if isinstance(value, str) and value.strip():
            prompt = value
            if field == "instruction" and isinstance(row.get("input"), str) and row["input"].strip():
                prompt += "\n\n" + row["input"]
            return prompt_example(fmt, shape, prompt, source=where)
    keys = ", ".join(map(repr, row)) or "(none)"
    raise TunelabError(
        f"no prompt in this row; it has keys {keys}",
        file=file,
        line=line,
        expected="one of the fields messages, conversations, instruction, question, prompt, input",
    )


def generate_file(
    run: Any,
    input_path: str | Path,
    output_path: str | Path,
    *,
    max_new_tokens: int = 128,
    batch_size: int = 8,
    show_progress: bool = True,
) -> FileResult:
    """Answer every row of INPUT with the run's model and write the rows with their answers to OUTPUT."""
    from tunelab.inference.decoding import generate_from_ids

    output_path = Path(output_path)
    suffix = output_path.suffix.lower()
    if suffix not in (".jsonl", ".json", ".csv"):
        raise TunelabError(f"unsupported output type {suffix or '(no extension)'!r}", file=str(output_path),
                           expected=OUTPUT_FORMATS)
    if Path(input_path).resolve() == output_path.resolve():
        raise TunelabError("output would overwrite the input", file=str(output_path), expected="another file")
    rows = read_prompt_rows(input_path)
    if not rows:
        raise TunelabError("no rows", file=str(input_path), expected="at least one prompt")
    loaded = run() if callable(run) else run  # a loader: the model is loaded only once the files are fine
    loaded.require_generative()
    columns = dict(getattr(loaded.cfg.data, "columns", None) or {})
    examples = [row_prompt(row, loaded.fmt, loaded.shape, file=f, line=n, columns=columns) for row, f, n in rows]
    ids = [loaded.fmt.prompt_ids(e, loaded.tokenizer) for e in examples]
    started = time.time()
    outs = generate_from_ids(loaded.model, loaded.tokenizer, ids, max_new_tokens=max_new_tokens,
                             batch_size=batch_size, description="generate", show_progress=show_progress)
    seconds = time.time() - started
    records = [
        {**row, "generated": o.text, "new_tokens": o.new_tokens, "hit_limit": o.hit_limit}
        for (row, _, _), o in zip(rows, outs, strict=True)
    ]
    _write(output_path, records)
    return FileResult(rows=len(records), output=output_path, seconds=round(seconds, 2),
                      new_tokens=sum(o.new_tokens for o in outs), hit_limit=sum(o.hit_limit for o in outs))


def _write(path: Path, records: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    suffix = path.suffix.lower()
    with tmp.open("w", encoding="utf-8", newline="") as f:
        if suffix == ".jsonl":
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False, default=str) + "\n")
        elif suffix == ".json":
            json.dump(records, f, ensure_ascii=False, indent=2, default=str)
        else:
            names = list(dict.fromkeys(k for r in records for k in r))
            writer = csv.DictWriter(f, fieldnames=names)
            writer.writeheader()
            for r in records:
                writer.writerow({k: json.dumps(v, ensure_ascii=False) if isinstance(v, (list, dict)) else v
                                 for k, v in r.items()})
    os.replace(tmp, path)
