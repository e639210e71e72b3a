"""Multiple-choice benchmarks scored by log-likelihood, the way lm-evaluation-harness scores ARC,
HellaSwag and MMLU: for each choice, the summed log-probability of the choice's tokens after the
question; the prediction is the most likely choice (``acc``) or the most likely per byte of the
choice's text (``acc_norm``, which removes the bias towards short answers).

The question is put in the run's own prompt format (its chat template or custom template), exactly
as in training, and each choice is scored as the response. So a run fine-tuned on question → answer
rows is scored the way it was taught, and the base model is scored through the same format.

Rows (``.jsonl``), one question each, in any of these layouts:

* ``{"question": "...", "choices": ["...", ...], "answer": 2}`` — answer as index, letter ("C") or
  the text of the right choice (``label``/``gold`` are accepted for ``answer``);
* ARC: ``{"question": {"stem": "...", "choices": [{"label": "A", "text": "..."}]}, "answerKey": "A"}``
  or ``{"question": "...", "choices": {"label": [...], "text": [...]}, "answerKey": "A"}``;
* HellaSwag: ``{"ctx": "...", "endings": ["...", ...], "label": 0}``;
* MMLU as CSV-style columns: ``{"question": "...", "A": "...", "B": "...", ..., "answer": "B"}``.

``builtin:mini_mc`` (also the default) is a small task shipped with tunelab: 60 everyday
general-knowledge questions with four choices each, written for tunelab.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError

__all__ = ["BUILTIN_TASKS", "MCItem", "bench", "load_task", "score_items"]

TASKS_DIR = Path(__file__).parent / "tasks"
BUILTIN_TASKS = {"mini_mc": TASKS_DIR / "mini_mc.jsonl"}
_LETTERS = string.ascii_uppercase


@dataclass
class MCItem:
    question: str
    choices: list[str]
    gold: int
    source: str


def _task_path(task: str | Path) -> tuple[Path, str]:
    text = str(task)
    name = text.removeprefix("builtin:")
    if name in BUILTIN_TASKS and (text.startswith("builtin:") or not Path(text).exists()):
        return BUILTIN_TASKS[name], f"builtin:{name}"
    path = Path(text).expanduser()
    if not path.is_file():
        raise TunelabError(
            "task file not found",
            file=text,
            expected=f"a .jsonl file of multiple-choice rows, or a built-in task ({', '.join('builtin:' + n for n in BUILTIN_TASKS)})",
        )
    return path, str(path)


def _gold(value: Any, choices: list[str], labels: list[str] | None, where: dict) -> int:
    if isinstance(value, bool):
        value = None
    if isinstance(value, int):
        index = value
    elif isinstance(value, str) and labels and value.strip() in labels:
        index = labels.index(value.strip())
    elif isinstance(value, str) and value.strip().isdigit():
        index = int(value.strip())
    elif isinstance(value, str) and len(value.strip()) == 1 and value.strip().upper() in _LETTERS:
        index = _LETTERS.index(value.strip().upper())
    elif isinstance(value, str) and value in choices:
        index = choices.index(value)
    else:
        raise TunelabError(
            f"answer {value!r} is not an index, a letter or one of the choices",
            **where,
            field="answer",
            expected="the right choice as an index (0-based), a letter (A, B, …) or its text",
        )
    if not 0 <= index < len(choices):
        raise TunelabError(
            f"answer {value!r} is out of range for {len(choices)} choices", **where, field="answer",
            expected=f"an index from 0 to {len(choices) - 1}",
        )
    return index


def _parse(row: Any, where: dict) -> MCItem:
    if not isinstance(row, dict):
        raise TunelabError(f"a line holds a {type(row).__name__}", **where, expected="a JSON object")
    labels: list[str] | None = None
    question: Any
    if isinstance(row.get("question"), dict):  # ARC (original JSONL)
        q = row["question"]
        question = q.get("stem")
        items = q.get("choices") or []
        choices = [c.get("text") for c in items if isinstance(c, dict)]
        labels = [str(c.get("label")) for c in items if isinstance(c, dict)]
        answer = row.get("answerKey")
    elif "ctx" in row and "endings" in row:  # HellaSwag
        question, choices, answer = row["ctx"], row["endings"], row.get("label")
    elif isinstance(row.get("choices"), dict):  # ARC (HF datasets layout)
        question = row.get("question")
        choices = list(row["choices"].get("text") or [])
        labels = [str(x) for x in row["choices"].get("label") or []]
        answer = row.get("answerKey", row.get("answer"))
    elif "choices" in row or "options" in row:
        question = row.get("question", row.get("prompt"))
        choices = row.get("choices", row.get("options"))
        answer = next((row[k] for k in ("answer", "label", "gold", "answerKey") if k in row), None)
    elif "A" in row and "B" in row:  # MMLU columns
        question = row.get("question")
        labels = [c for c in _LETTERS if c in row]
        choices = [row[c] for c in labels]
        answer = row.get("answer", row.get("target"))
    else:
        keys = ", ".join(map(repr, row)) or "(none)"
        raise TunelabError(
            f"not a multiple-choice row; the row has keys {keys}",
            **where,
            expected='{"question": ..., "choices": [...], "answer": index or letter} (or ARC/HellaSwag/MMLU layouts)',
        )
    if not isinstance(question, str) or not question.strip():
        raise TunelabError("missing or empty question", **where, field="question", expected="a non-empty string")
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c.strip() for c in choices):
        raise TunelabError(
            "choices must be a list of at least two non-empty strings", **where, field="choices",
            expected='["first choice", "second choice", ...]',
        )
    if answer is None:
        raise TunelabError("missing answer", **where, field="answer", expected="the right choice as an index or letter")
    gold = _gold(answer, choices, labels, where)
    return MCItem(question=question.strip(), choices=[c.strip() for c in choices], gold=gold,
                  source=f"{where['file']}:{where['line']}")


def load_task(task: str | Path, *, limit: int | None = None) -> tuple[list[MCItem], str]:
    """(items, task label) from a built-in name or a ``.jsonl`` file; bad rows raise with file:line."""
    path, label = _task_path(task)
    items: list[MCItem] = []
    from tunelab.data.sources import JsonProblem, parse_json
    from tunelab.files import decode_utf8, read_bytes

    text = decode_utf8(read_bytes(path, expected="a multiple-choice .jsonl file"), label)
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = {"file": label, "line": n}
        try:
            row = parse_json(line)
        except JsonProblem as exc:
            raise TunelabError(exc.message, **where, expected=exc.expected) from None
        items.append(_parse(row, where))
        if limit and len(items) >= limit:
            break
    if not items:
        raise TunelabError("no rows", file=label, expected="at least one multiple-choice row")
    return items, label


def _continuation_ids(choice: str, fmt: Any, tokenizer: Any) -> list[int]:
    # the response is encoded on its own, as training encodes the response segment
    text = " " + choice if fmt.kind == "text" else choice
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def score_items(
    model: Any, tokenizer: Any, fmt: Any, shape: str, items: list[MCItem], *, batch_size: int = 16,
    max_batch_tokens: int = 2048,
) -> list[list[float]]:
    """Summed log-likelihood of every choice of every item (nats), teacher-forced in padded batches."""
    from tunelab.data.templates import IGNORE_INDEX
    from tunelab.inference.prompts import prompt_ids
    from tunelab.inference.scoring import sequence_nll

    config = getattr(model, "config", None)
    limit = int(getattr(config, "max_position_embeddings", 2048) or 2048)
    rows: list[dict] = []  # one per (item, choice): only the continuation (the choice) is scored
    for item in items:
        ctx = prompt_ids(fmt, tokenizer, shape, item.question)
        for j, choice in enumerate(item.choices):
            cont = _continuation_ids(choice, fmt, tokenizer)
            if not cont:
                raise TunelabError(f"choice {j} tokenizes to nothing", file=item.source, field="choices")
            ids = (ctx + cont)[-limit:]
            n_cont = min(len(cont), len(ids) - 1)
            rows.append({"input_ids": ids, "labels": [IGNORE_INDEX] * (len(ids) - n_cont) + ids[len(ids) - n_cont :]})
    nll = iter(sequence_nll(model, tokenizer, rows, batch_size=batch_size, max_batch_tokens=max_batch_tokens))
    return [[-next(nll)[0] for _ in item.choices] for item in items]


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=lambda k: (values[k], -k))


def summarise(items: list[MCItem], lls: list[list[float]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """acc / acc_norm (×100), chance level, and one row per item."""
    rows = []
    for item, ll in zip(items, lls, strict=True):
        norm = [v / max(1, len(c.encode("utf-8"))) for v, c in zip(ll, item.choices, strict=True)]
        pred, pred_norm = _argmax(ll), _argmax(norm)
        rows.append(
            {
                "source": item.source,
                "question": item.question,
                "choices": item.choices,
                "gold": item.gold,
                "pred": pred,
                "pred_norm": pred_norm,
                "acc": 100.0 if pred == item.gold else 0.0,
                "acc_norm": 100.0 if pred_norm == item.gold else 0.0,
                "loglikelihoods": ll,
            }
        )
    n = len(rows)
    metrics = {
        "acc": sum(r["acc"] for r in rows) / n,
        "acc_norm": sum(r["acc_norm"] for r in rows) / n,
        "chance": 100.0 * sum(1 / len(it.choices) for it in items) / n,
        "n": n,
    }
    return metrics, rows


def bench(
    run_dir: str | Path,
    *,
    task: str | Path = "builtin:mini_mc",
    with_base: bool = False,
    out_dir: str | Path | None = None,
    limit: int | None = None,
    batch_size: int = 16,
    resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Score a run's model (and optionally its base model) on a multiple-choice task; writes bench.json,
    predictions.jsonl and report.html to ``out_dir`` (default RUN/bench/TASK)."""
    from tunelab.evaluation import bootstrap as B
    from tunelab.evaluation.scoring import interval_table
    from tunelab.progress import info, quiet_libraries
    from tunelab.runs.artifacts import BASE, write_predictions
    from tunelab.runs.layout import write_json_atomic
    from tunelab.runs.loading import load_run, run_config

    quiet_libraries()
    items, label = load_task(task, limit=limit)
    run, cfg = run_config(Path(run_dir))
    if not run.template.is_file():
        raise TunelabError(
            f"a {cfg.task} run has no language-model head to score answers with",
            file=str(run.path),
            expected="a run of a causal language model (task sft or pretrain)",
        )
    models: dict[str, dict[str, Any]] = {}
    specs = ([BASE] if with_base else []) + [run.path.name]
    for name in specs:
        info(f"[cyan]bench[/cyan] {name} on {label} ({len(items)} questions)")
        loaded = load_run(run.path, base=name == BASE)
        lls = score_items(loaded.model, loaded.tokenizer, loaded.fmt, loaded.shape, items, batch_size=batch_size)
        del loaded
        metrics, rows = summarise(items, lls)
        models[name] = {"metrics": metrics, "rows": rows}

    names = list(models)
    baseline = BASE if with_base else None
    stats = {
        name: {m: (B.mean_metric(m), [r[m] for r in models[name]["rows"]]) for m in ("acc", "acc_norm")} for name in names
    }
    table = interval_table(stats, ("acc", "acc_norm"), baseline=baseline, n=len(items), resamples=resamples, seed=seed)

    out = Path(out_dir) if out_dir else run.path / "bench" / _slug(label)
    out.mkdir(parents=True, exist_ok=True)
    chance = models[names[-1]]["metrics"]["chance"]
    result = {
        "task": label,
        "n": len(items),
        "chance": chance,
        "models": {name: m["metrics"] for name, m in models.items()},
        "table": table,
        "baseline": baseline,
        "scoring": "log-likelihood of each choice as the response to the question in the run's prompt format; "
        "acc_norm divides by the choice's length in UTF-8 bytes",
    }
    write_json_atomic(out / "bench.json", result)
    write_predictions(out / "predictions.jsonl", [_prediction(k, item, models) for k, item in enumerate(items)])
    result["out_dir"] = str(out)
    result["report"] = str(_report(out, label, names, baseline, table, items, models, chance, resamples))
    return result


def _prediction(k: int, item: MCItem, models: dict[str, dict[str, Any]]) -> Any:
    """Question ``k`` as a predictions row: each model's pick, acc / acc_norm, and how it chose."""
    from tunelab.runs.artifacts import Prediction

    rows = {name: m["rows"][k] for name, m in models.items()}
    return Prediction(
        source=item.source,
        input=item.question,
        reference=item.choices[item.gold],
        outputs={name: item.choices[r["pred"]] for name, r in rows.items()},
        scores={name: {"acc": r["acc"], "acc_norm": r["acc_norm"]} for name, r in rows.items()},
        stats={name: {key: r[key] for key in ("pred", "pred_norm", "loglikelihoods")} for name, r in rows.items()},
        meta={"choices": item.choices, "gold": item.gold},
    )


def _slug(label: str) -> str:
    name = Path(label.removeprefix("builtin:")).stem
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name) or "task"


def _report(out: Path, label: str, names: list[str], baseline: str | None, table: list, items: list[MCItem],
            models: dict, chance: float, resamples: int) -> Path:
    from tunelab.evaluation.views import FLAGS, comparison_section, flag
    from tunelab.reporting import Column, ConfigDump, ExampleRow, ExamplesTable, Notes, Report, Summary

    columns = [Column("id", "#", "num"), Column("question"), Column("answer")]
    for name in names:
        columns += [Column(f"{name} pick"), Column(f"{name} acc", kind="num"), Column(f"{name} pick (norm)")]
    rows = []
    for k, item in enumerate(items):
        cells: dict[str, Any] = {"id": k + 1, "question": item.question, "answer": item.choices[item.gold]}
        for name in names:
            r = models[name]["rows"][k]
            cells[f"{name} pick"] = item.choices[r["pred"]]
            cells[f"{name} acc"] = r["acc"]
            cells[f"{name} pick (norm)"] = item.choices[r["pred_norm"]]
        flags = set()
        if baseline:
            b = models[baseline]["rows"][k]["acc"]
            flags = {flag(models[name]["rows"][k]["acc"] - b) for name in names if name != baseline}
        rows.append(ExampleRow(cells, tuple(sorted(flags))))
    notes = [
        "acc: the choice with the highest summed log-likelihood; acc_norm: highest log-likelihood per byte",
        f"95% intervals: percentile bootstrap over {resamples} resamples of the questions; differences paired",
    ]
    summary = {"task": label, "questions": len(items), "chance level (%)": round(chance, 2), "models": ", ".join(names)}
    sections = [
        Summary(summary),
        comparison_section(table, names, baseline, len(items), resamples),
        ExamplesTable(columns, rows, flags=FLAGS if baseline else [], primary="acc"),
        Notes(notes),
        ConfigDump({"task": label, "models": names, "scoring": "log-likelihood (lm-evaluation-harness style)"}),
    ]
    return Report(f"tunelab bench: {label}", sections).write(out / "report.html")
