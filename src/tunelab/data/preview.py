"""What the trainer will see: rendered rows (trained vs masked tokens), token-length statistics, and the
data doctor's report, for a terminal (colour) or a log (brackets, plain text).

Every row is built by the same `PromptFormat.encode` the trainer calls, and its inference prompt by the
same `PromptFormat.prompt_ids` that `tunelab generate` calls, so what is shown is what is trained and used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.text import Text

from tunelab.data.doctor import check_for_training
from tunelab.data.lengths import classification_lengths, measure, prompt_mismatch, template_problems
from tunelab.data.problems import ERROR, WARNING, DataErrors, DoctorReport, Lengths, Problem
from tunelab.data.shapes import Example, describe_shape, kind_of
from tunelab.data.splits import Splits

IGNORE_INDEX = -100
TRAINED_STYLE = "bold green"
MASKED_STYLE = "dim"
SPECIAL_STYLE = "bold magenta"
OPEN, CLOSE = "[[", "]]"  # around trained text when colour is off


# -- loading what the trainer loads ------------------------------------------------------------


def load_checked_splits(cfg: Any, *, task_shapes: tuple[str, ...] | None = None) -> Splits:
    """The splits training will use, from the training preflight: bad data raises every error at once.
    `task_shapes`: the row shapes `cfg.task` trains on (None: not checked)."""
    report = check_for_training(cfg, task_shapes=task_shapes)
    report.raise_for_errors()
    assert report.splits is not None  # carved whenever there are no errors
    return report.splits


def build_format(cfg: Any, tokenizer: Any, shape: str) -> Any:
    """The run's PromptFormat (None for classification, which has no prompt template)."""
    from tunelab.data.templates import PromptFormat

    if kind_of(shape) == "classification":
        return None
    d = cfg.data
    return PromptFormat.build(tokenizer, shape=shape, template=d.template, system_prompt=d.system_prompt,
                              train_on_prompt=d.train_on_prompt)  # fmt: skip


# -- preview -----------------------------------------------------------------------------------


@dataclass
class RowPreview:
    """One row as the trainer will see it."""

    source: str
    input_ids: list[int]  # after truncation to max_length
    labels: list[int]  # IGNORE_INDEX where no loss is computed
    cut_ids: list[int]  # tokens truncation removes
    cut_labels: list[int]
    prompt_ids: list[int] | None  # what inference feeds the model for this row
    mismatch: int | None  # first token where the inference prompt differs from the training prompt
    label: str | None = None  # classification target

    @property
    def trained(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)

    @property
    def masked(self) -> int:
        return len(self.labels) - self.trained


@dataclass
class Preview:
    rows: list[RowPreview]
    shape: str
    split: str
    format_kind: str  # chat | custom | text | classification
    max_length: int
    warnings: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def build_preview(
    cfg: Any, tokenizer: Any, *, n: int = 3, split: str = "train", task_shapes: tuple[str, ...] | None = None
) -> Preview:
    """The first `n` rows of a split, encoded exactly as the trainer will encode them."""
    splits = load_checked_splits(cfg, task_shapes=task_shapes)
    examples: list[Example] = getattr(splits, split)[:n]
    max_length = cfg.data.max_length
    fmt = build_format(cfg, tokenizer, splits.shape)
    if fmt is None:
        rows = []
        for ex in examples:
            ids = tokenizer(ex.text or "", truncation=False)["input_ids"]
            rows.append(RowPreview(ex.source, ids[:max_length], [IGNORE_INDEX] * min(len(ids), max_length),
                                   ids[max_length:], [IGNORE_INDEX] * len(ids[max_length:]), None, None,
                                   label=str(ex.fields.get("label"))))  # fmt: skip
        return Preview(rows, splits.shape, split, "classification", max_length, notes=splits.notes)
    rows = []
    for ex in examples:
        full = fmt.encode(ex, tokenizer, 10**9)
        ids, labels = full["input_ids"], full["labels"]
        prompt = None if fmt.kind == "text" else fmt.prompt_ids(ex, tokenizer)
        mismatch = None if fmt.kind == "text" else prompt_mismatch(ex, fmt, tokenizer)
        rows.append(RowPreview(ex.source, ids[:max_length], labels[:max_length], ids[max_length:],
                               labels[max_length:], prompt, mismatch))  # fmt: skip
    warnings = template_problems(fmt, tokenizer, examples)
    return Preview(rows, splits.shape, split, fmt.kind, max_length, warnings=warnings, notes=splits.notes)


def render_preview(preview: Preview, tokenizer: Any, console: Console, *, plain: bool, tokens: bool = False) -> None:
    """Trained tokens green (or inside [[ ]]), masked tokens dim, special tokens such as the EOS highlighted."""
    eos = getattr(tokenizer, "eos_token", None)
    legend = (f"masked (no loss): plain · trained: {OPEN}…{CLOSE}" if plain
              else "[dim]masked (no loss)[/dim] · [bold green]trained[/bold green] · [bold magenta]special tokens[/bold magenta]")  # fmt: skip
    console.print(f"{preview.split} rows as the trainer sees them · {describe_shape(preview.shape)} · "
                  f"{preview.format_kind} format · max_length {preview.max_length}", markup=False, highlight=False)  # fmt: skip
    console.print(f"legend: {legend}", markup=not plain, highlight=False)
    for w in preview.warnings:
        _print_problem(console, w, plain)
    for i, row in enumerate(preview.rows, start=1):
        console.print()
        counts = (f"{len(row.input_ids)} tokens into the classifier" if row.label is not None
                  else f"{len(row.input_ids)} tokens: {row.masked} masked, {row.trained} trained")  # fmt: skip
        head = (f"── row {i} · {row.source} · {counts}"
                + (f" · {len(row.cut_ids)} more cut by max_length {preview.max_length}" if row.cut_ids else ""))  # fmt: skip
        console.print(head, markup=False, highlight=False, style=None if plain else "bold")
        console.print(_spans(row.input_ids, row.labels, tokenizer, plain), soft_wrap=True)
        if row.cut_ids:
            cut = _spans(row.cut_ids, row.cut_labels, tokenizer, plain)
            console.print(Text(f"✂ cut by max_length ({len(row.cut_ids)} tokens): ", style="red" if not plain else ""), cut,
                          soft_wrap=True)  # fmt: skip
        if row.label is not None:
            console.print(f"label: {row.label} (the classification head is trained on it)", markup=False)
        else:
            console.print(_eos_line(row, tokenizer, eos), markup=False, highlight=False)
        if row.prompt_ids is not None:
            same = ("identical to the masked training prompt" if row.mismatch is None
                    else f"DIFFERS from the training prompt at token {row.mismatch}")  # fmt: skip
            console.print(f"inference prompt ({len(row.prompt_ids)} tokens, as `tunelab generate` builds it): {same}",
                          markup=False, highlight=False)  # fmt: skip
            console.print(_spans(row.prompt_ids, [IGNORE_INDEX] * len(row.prompt_ids), tokenizer, plain), soft_wrap=True)
        if tokens:
            _token_table(row, tokenizer, console)


def _eos_line(row: RowPreview, tokenizer: Any, eos: str | None) -> str:
    eos_id = getattr(tokenizer, "eos_token_id", None)
    if not eos:
        return "EOS: the tokenizer has none — nothing teaches the model to stop"
    trained_ids = [i for i, label in zip(row.input_ids, row.labels, strict=True) if label != IGNORE_INDEX]
    if trained_ids and trained_ids[-1] == eos_id:
        return f"EOS: {eos!r} (id {eos_id}) is the last trained token: the model learns to stop here"
    if eos_id in row.cut_ids:
        return f"EOS: {eos!r} (id {eos_id}) is cut by max_length: this row teaches the model not to stop"
    return f"EOS: {eos!r} (id {eos_id}) is not trained in this row: the model may never learn to stop"


def _spans(ids: list[int], labels: list[int], tokenizer: Any, plain: bool) -> Text:
    """Decode runs of trained / masked tokens; special tokens are their own runs so they stand out."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    text = Text()
    run: list[int] = []
    state: tuple[bool, bool] | None = None

    def flush() -> None:
        if not run:
            return
        trained, is_special = state  # type: ignore[misc]
        piece = tokenizer.decode(run, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if plain:
            text.append(piece)
        else:
            style = SPECIAL_STYLE if is_special else (TRAINED_STYLE if trained else MASKED_STYLE)
            if is_special and not trained:
                style += " dim"
            text.append(piece, style=style)

    opened = False
    for token, label in zip(ids, labels, strict=True):
        key = (label != IGNORE_INDEX, token in special)
        if key != state:
            flush()
            if plain and key[0] != opened:
                text.append(OPEN if key[0] else CLOSE)
                opened = key[0]
            run, state = [], key
        run.append(token)
    flush()
    if plain and opened:
        text.append(CLOSE)
    return text


def _token_table(row: RowPreview, tokenizer: Any, console: Console) -> None:
    pieces = tokenizer.convert_ids_to_tokens(row.input_ids)
    for pos, (token, piece, label) in enumerate(zip(row.input_ids, pieces, row.labels, strict=True)):
        console.print(f"  {pos:>5} {token:>7} {'T' if label != IGNORE_INDEX else 'm'} {piece!r}", markup=False,
                      highlight=False)  # fmt: skip


# -- stats -------------------------------------------------------------------------------------


@dataclass
class Stats:
    shape: str
    counts: dict[str, int]
    lengths: Lengths
    per_split: dict[str, Lengths]
    notes: list[str]


def compute_stats(cfg: Any, tokenizer: Any, *, task_shapes: tuple[str, ...] | None = None) -> Stats:
    """Rows per split and token lengths of every row, as the trainer builds them."""
    splits = load_checked_splits(cfg, task_shapes=task_shapes)
    max_length = cfg.data.max_length
    fmt = build_format(cfg, tokenizer, splits.shape)
    per_split: dict[str, Lengths] = {}
    for name in ("train", "validation", "test"):
        examples = getattr(splits, name)
        if fmt is None:
            per_split[name] = classification_lengths(examples, tokenizer, max_length)
        else:
            rows, failures = measure(examples, fmt, tokenizer, max_length)
            if failures:
                raise DataErrors([Problem(ERROR, "template", e.message, e.file, e.line, e.field, e.expected)
                                  for e in failures])  # fmt: skip
            per_split[name] = Lengths(rows, max_length, truncates=fmt.kind != "text")
    all_rows = [r for lengths in per_split.values() for r in lengths.rows]
    truncates = fmt is None or fmt.kind != "text"
    counts = {name: len(getattr(splits, name)) for name in ("train", "validation", "test")}
    return Stats(splits.shape, counts, Lengths(all_rows, max_length, truncates), per_split, splits.notes)


def histogram(values: list[int], bins: int = 12) -> list[tuple[int, int, int]]:
    """(low, high, count) for equal-width integer bins covering all values."""
    if not values:
        return []
    lo, hi = min(values), max(values)
    width = max(1, -(-(hi - lo + 1) // bins))
    edges = [(lo + i * width, lo + (i + 1) * width - 1) for i in range(-(-(hi - lo + 1) // width))]
    counts = [0] * len(edges)
    for v in values:
        counts[(v - lo) // width] += 1
    return [(a, b, c) for (a, b), c in zip(edges, counts, strict=True)]


def render_stats(stats: Stats, console: Console, *, png: Path | None = None) -> None:
    counts = " · ".join(f"{k} {v:,}" for k, v in stats.counts.items())
    console.print(f"rows: {counts} ({describe_shape(stats.shape)})", markup=False, highlight=False)
    s = stats.lengths.summary()
    if not s.get("rows"):
        return
    what = {"text": "tokens per document", "classification": "tokens per text"}.get(
        kind_of(stats.shape) or "", "tokens per row (prompt + answer, as trained)"
    )
    console.print(f"{what}: min {s['min']} · median {s['median']} · mean {s['mean']} · max {s['max']}",
                  markup=False, highlight=False)  # fmt: skip
    console.print(f"max_length covering 95% of rows: {s['p95']} · 99%: {s['p99']} · 100%: {s['max']}",
                  markup=False, highlight=False)  # fmt: skip
    m = stats.lengths.max_length
    if stats.lengths.truncates and m:
        fits = sum(v <= m for v in stats.lengths.totals) / s["rows"]
        console.print(f"current max_length {m} fits {100 * fits:.1f}% of rows whole; "
                      f"{s.get('over', 0):,} rows truncated, {s.get('skipped', 0):,} skipped", markup=False,
                      highlight=False)  # fmt: skip
    elif m:
        console.print(f"documents are packed into blocks of max_length {m} (no truncation)", markup=False)
    bars = histogram(stats.lengths.totals)
    top = max(c for _, _, c in bars)
    console.print("histogram:", markup=False)
    for a, b, c in bars:
        bar = "█" * (max(1, round(40 * c / top)) if c else 0)
        console.print(f"  {a:>6}–{b:<6} {bar} {c:,}", markup=False, highlight=False)
    for note in stats.notes:
        console.print(f"note: {note}", markup=False, highlight=False)
    if png is not None:
        console.print(f"histogram PNG: {png}", markup=False, highlight=False)


def plot_lengths(stats: Stats, path: Path) -> Path:
    """Token-length histogram with the 95% / 99% coverage and max_length marked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 4.0), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    values = stats.lengths.totals
    ax.hist(values, bins=min(50, max(5, len(set(values)))), color="#4c72b0")
    for x, label, colour in ((stats.lengths.covering(0.95), "95%", "#dd8452"),
                             (stats.lengths.covering(0.99), "99%", "#c44e52")):  # fmt: skip
        ax.axvline(x, color=colour, linestyle="--", label=f"{label} of rows ≤ {x}")
    if stats.lengths.max_length and stats.lengths.truncates:
        ax.axvline(stats.lengths.max_length, color="black", label=f"max_length {stats.lengths.max_length}")
    ax.set_xlabel("tokens per row")
    ax.set_ylabel("rows")
    ax.set_title(f"token lengths ({len(values):,} rows)")
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


# -- the doctor's report -----------------------------------------------------------------------


def render_report(report: DoctorReport, console: Console, *, limit: int | None = 20) -> None:
    """Errors, then warnings, one line each (at most `limit` per kind), then notes and a summary."""
    plain = not console.is_terminal
    for severity, title in ((ERROR, "errors"), (WARNING, "warnings")):
        problems = [p for p in report.problems if p.severity == severity]
        if not problems:
            continue
        console.print(f"{title} ({len(problems):,}):", markup=False, style=None if plain else "bold")
        shown: dict[str, int] = {}
        hidden: dict[str, list[Problem]] = {}
        for p in problems:
            if limit is None or shown.get(p.kind, 0) < limit:
                shown[p.kind] = shown.get(p.kind, 0) + 1
                _print_problem(console, p, plain)
            else:
                hidden.setdefault(p.kind, []).append(p)
        for kind, rest in hidden.items():
            where = ", ".join(f"{p.line}" for p in rest[:12] if p.line is not None)
            more = "…" if len(rest) > 12 else ""
            console.print(f"  … and {len(rest):,} more {kind} {title} (lines {where}{more}; --all lists every one)",
                          markup=False, highlight=False)  # fmt: skip
    for note in report.notes:
        console.print(f"note: {note}", markup=False, highlight=False)
    s = report.lengths.summary() if report.lengths else None
    if s and s.get("rows"):
        line = f"tokens per row: median {s['median']} · 95% ≤ {s['p95']} · 99% ≤ {s['p99']} · max {s['max']}"
        if s.get("max_length"):
            line += f" (max_length {s['max_length']})"
        console.print(line, markup=False, highlight=False)
    if report.split_counts:
        console.print("splits: " + " · ".join(f"{k} {v:,}" for k, v in report.split_counts.items()), markup=False)
    counts = report.counts()
    kinds = "; ".join(f"{n:,} {k}" for sev in (ERROR, WARNING) for k, n in sorted(counts[sev].items()))
    status = "[red]FAILED[/red]" if report.errors else "[green]ok[/green]"
    console.print(f"{status} {report.summary()}" + (f" ({kinds})" if kinds else ""), highlight=False)


def _print_problem(console: Console, p: Problem, plain: bool) -> None:
    if plain:
        console.print(str(p), markup=False, highlight=False, soft_wrap=True)
    else:
        colour = "red" if p.severity == ERROR else "yellow"
        console.print(Text(str(p), style=colour), soft_wrap=True)


__all__ = [
    "Preview",
    "RowPreview",
    "Stats",
    "build_preview",
    "compute_stats",
    "histogram",
    "plot_lengths",
    "render_preview",
    "render_report",
    "render_stats",
]
