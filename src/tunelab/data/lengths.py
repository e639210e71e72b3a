"""Token lengths of rows exactly as the trainer builds them, what truncation to max_length does to them, and
whether the prompt format teaches the model to stop and builds the same prompt at inference."""

from __future__ import annotations

from typing import Any

from tunelab.data.problems import WARNING, DoctorReport, Lengths, Problem, RowTokens, split_source
from tunelab.data.shapes import Example, kind_of
from tunelab.data.templates import PromptFormat, token_ids
from tunelab.errors import TunelabError

TEMPLATE_CHECK_ROWS = 20  # rows whose inference prompt is compared token by token with the training prompt


def check_tokens(
    report: DoctorReport,
    tokenizer: Any,
    *,
    template: str | None,
    system_prompt: str | None,
    train_on_prompt: bool,
    max_length: int | None,
) -> None:
    """Token lengths of every valid row of the report as the trainer builds them, and template/EOS problems."""
    shape = report.shape
    if shape is None:
        return
    examples = [ex for split in report.examples.values() for ex in split]
    if kind_of(shape) == "classification":
        report.lengths = classification_lengths(examples, tokenizer, max_length)
        _length_problems(report)
        return
    try:
        fmt = PromptFormat.build(tokenizer, shape=shape, template=template, system_prompt=system_prompt,
                                 train_on_prompt=train_on_prompt)  # fmt: skip
    except TunelabError as err:
        report.add_error(err, "template")
        return
    report.problems += template_problems(fmt, tokenizer, examples[:TEMPLATE_CHECK_ROWS])
    rows, failures = measure(examples, fmt, tokenizer, max_length)
    for err in failures:
        report.add_error(err, "template")
    report.lengths = Lengths(rows, max_length, truncates=fmt.kind != "text")
    _length_problems(report)


def _length_problems(report: DoctorReport) -> None:
    """Warnings for rows truncation cuts or skips, and a note on how many."""
    lengths = report.lengths
    if lengths is None or not lengths.truncates or not lengths.max_length:
        return
    m = lengths.max_length
    for r in lengths.rows:
        file, line = split_source(r.source)
        if r.skipped:
            report.add(WARNING, "no_answer_left",
                       f"is {r.total} tokens and the answer starts after max_length {m}: no trained token "
                       "is left after truncation, so training skips this row",
                       file=file, line=line, field="tokens",
                       expected=f"a prompt shorter than {m} tokens, or a larger data.max_length")  # fmt: skip
        elif r.cut:
            eos = ", including the EOS, so it teaches the model not to stop" if r.eos_cut else ""
            report.add(WARNING, "too_long",
                       f"is {r.total} tokens, longer than max_length {m}: truncation cuts the last "
                       f"{r.cut} tokens ({r.cut_trained} of them trained){eos}",
                       file=file, line=line, field="tokens",
                       expected=f"at most {m} tokens; raise data.max_length or shorten the row")  # fmt: skip
    s = lengths.summary()
    if s.get("over"):
        report.notes.append(
            f"{s['over']:,} of {s['rows']:,} rows ({s['over_percent']}%) are longer than max_length {m}: "
            f"truncation would cut {s['cut_tokens']:,} tokens ({s['cut_trained_tokens']:,} trained), "
            f"{s['eos_cut']:,} rows lose their EOS, {s['skipped']:,} rows would be skipped"
        )


def measure(
    examples: list[Example], fmt: Any, tokenizer: Any, max_length: int | None
) -> tuple[list[RowTokens], list[TunelabError]]:
    """Token counts of each row exactly as `PromptFormat.encode` builds it (segments tokenized separately,
    the tokenizer's specials on the first piece of non-chat formats), but in two batched tokenizer calls."""
    pieces: list[list[tuple[str, bool]]] = []
    sources: list[str] = []
    failures: list[TunelabError] = []
    for ex, parts in zip(examples, fmt.segments_many(examples, tokenizer), strict=True):
        file, line = split_source(ex.source)
        if isinstance(parts, TunelabError):  # templates name the row as "FILE:LINE" in `file`
            failures.append(TunelabError(parts.message, file=file, line=line, field=parts.field, expected=parts.expected))
            continue
        if isinstance(parts, Exception):  # a chat template may raise anything (jinja exceptions)
            failures.append(TunelabError(f"the chat template fails on this row: {type(parts).__name__}: {parts}",
                                         file=file, line=line, field="messages",
                                         expected="a conversation the model's chat template accepts"))  # fmt: skip
            continue
        pieces.append(parts or [("", False)])
        sources.append(ex.source)
    first_lengths = _lengths(tokenizer, [p[0][0] for p in pieces], special=fmt.kind != "chat")
    rest_lengths = iter(_lengths(tokenizer, [text for p in pieces for text, _ in p[1:]], special=False))
    rows = []
    for source, parts, first in zip(sources, pieces, first_lengths, strict=True):
        spans = [(first, parts[0][1])] + [(next(rest_lengths), trained) for _, trained in parts[1:]]
        rows.append(_row_tokens(source, spans, max_length))
    return rows, failures


def _lengths(tokenizer: Any, texts: list[str], *, special: bool) -> list[int]:
    return [len(ids) for ids in token_ids(tokenizer, texts, special=special)]


def _row_tokens(source: str, spans: list[tuple[int, bool]], max_length: int | None) -> RowTokens:
    total = sum(n for n, _ in spans)
    trained = sum(n for n, t in spans if t)
    end = min(total, max_length) if max_length else total
    kept = kept_after_first = pos = 0
    for n, is_trained in spans:
        if is_trained:
            kept += max(0, min(pos + n, end) - pos)
            kept_after_first += max(0, min(pos + n, end) - max(pos, 1))
        pos += n
    row = RowTokens(source, total, trained, cut=total - end, cut_trained=trained - kept)
    row.eos_cut = row.cut > 0 and spans[-1][1]  # the last piece is the trained answer ending in EOS
    row.skipped = kept_after_first == 0  # the sft recipe keeps a row only with a label in labels[1:]
    return row


def classification_lengths(examples: list[Example], tokenizer: Any, max_length: int | None) -> Lengths:
    """Tokens of each text as the classify recipe encodes it (with the tokenizer's specials)."""
    counts = _lengths(tokenizer, [ex.text or "" for ex in examples], special=True)
    rows = []
    for ex, n in zip(examples, counts, strict=True):
        row = RowTokens(ex.source, n, n)
        if max_length and n > max_length:
            row.cut = row.cut_trained = n - max_length
        rows.append(row)
    return Lengths(rows, max_length, truncates=True)


def template_problems(fmt: Any, tokenizer: Any, sample: list[Example]) -> list[Problem]:
    """Does the format teach the model to stop, and does inference build the same prompt as training?"""
    problems: list[Problem] = []
    if fmt.kind == "text":
        return problems
    eos = getattr(tokenizer, "eos_token", None)
    if not eos:
        problems.append(Problem(WARNING, "eos", "the tokenizer has no EOS token, so nothing marks the end of an "
                                "answer: the model may never learn to stop", field="model",
                                expected="a tokenizer with an eos_token"))  # fmt: skip
    else:
        if fmt.kind == "custom" and eos not in (fmt.template or ""):
            problems.append(Problem(WARNING, "eos", f"custom template has no EOS: on its own the model may never "
                                    f"learn to stop; tunelab appends {eos!r} to every answer (the last trained token "
                                    "in `tunelab data preview`)", field="data.template"))  # fmt: skip
        ids = tokenizer(eos, add_special_tokens=False)["input_ids"]
        if ids != [tokenizer.eos_token_id]:
            problems.append(Problem(WARNING, "eos", f"the EOS text {eos!r} tokenizes to {ids}, not to the EOS id "
                                    f"{tokenizer.eos_token_id}: the model may never learn to emit the stop token",
                                    field="model", expected="an EOS that is a single special token"))  # fmt: skip
    for ex in sample:
        try:
            mismatch = prompt_mismatch(ex, fmt, tokenizer)
        except Exception:  # noqa: BLE001 - rows that fail to render are reported by `measure`
            continue
        if mismatch is not None:
            file, line = split_source(ex.source)
            problems.append(Problem(WARNING, "template_mismatch", f"the inference prompt differs from the training "
                                    f"prompt at token {mismatch}", file=file, line=line, field="data.template",
                                    expected="training and inference to build the same prompt tokens"))  # fmt: skip
            break
    return problems


def prompt_mismatch(ex: Example, fmt: Any, tokenizer: Any) -> int | None:
    """Index of the first token where the inference prompt differs from the training sequence's prompt part
    (everything before the last answer), or None when they match."""
    full = fmt.encode(ex, tokenizer, 10**9)
    prompt = fmt.prompt_ids(ex, tokenizer)
    ids, labels = full["input_ids"], full["labels"]
    if fmt.train_on_prompt:  # every token is trained: compare against the prompt text alone
        limit = len(prompt)
    else:
        last = len(labels)
        while last > 0 and labels[last - 1] != -100:
            last -= 1  # start of the last trained run: the last answer
        limit = last
    head = ids[:limit]
    for i, (a, b) in enumerate(zip(head, prompt, strict=False)):
        if a != b:
            return i
    return None if len(head) == len(prompt) else min(len(head), len(prompt))


_READ_KINDS = (
    ("invalid JSON", "invalid_json"),
    ("not valid UTF-8", "encoding"),
    ("not an object", "not_an_object"),
    ("top level is", "not_an_object"),
    ("cells but the header", "csv"),
    ("cannot parse CSV", "csv"),
    ("quote opened", "csv"),
    ("header has duplicate", "csv"),
)
_ROW_KINDS = (
    ("missing", "missing_field"),
    ("is empty", "empty_field"),
    ("is an empty list", "empty_field"),
    ("unknown role", "unknown_role"),
    ("turn, so there is nothing", "no_assistant"),
    ("not a string", "wrong_type"),
    ("not an object", "wrong_type"),
    ("unknown shape", "config"),
)
