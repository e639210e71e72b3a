"""Data preparation as options: select and rename columns, clean text, drop empty and duplicate rows,
take N rows, convert between row shapes, split with a seed, and write normalised JSONL.

The steps are those of a typical fine-tuning tutorial (pandas: pick `Description`/`Doctor`, rename them
`question`/`answer`, collapse whitespace, strip a leading "Q. ", keep the first N rows, save JSONL), in
this order: read → columns → whitespace → strip_prefix → check rows (drop empty / invalid) → drop
duplicates → first / sample → convert → split → write. Every dropped row is counted, with its line, in
`prepare.json`; a row that is bad for another reason stops the run (all of them listed) unless
`drop_invalid: true`.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tunelab.data.problems import ERROR, DataErrors, Problem
from tunelab.data.shapes import (
    ROW_SHAPES,
    Example,
    content_key,
    describe_shape,
    detect_shape,
    detect_shapes,
    kind_of,
    known_shape,
    prompt_key,
    row_problems,
)
from tunelab.data.sources import Row, resolve_source
from tunelab.data.splits import read_source
from tunelab.errors import TunelabError
from tunelab.yaml_files import key_lines, merge_dicts, parse_overrides, read_mapping

OUTPUT_SHAPES = tuple(name for name, s in ROW_SHAPES.items() if s.kind != "classification")  # rows `to` can write
_SHAREGPT_FROM = {"user": "human", "assistant": "gpt", "system": "system"}


class SplitOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    validation: float = Field(0.0, ge=0, lt=1, description="fraction of rows written to validation.jsonl")
    test: float = Field(0.0, ge=0, lt=1, description="fraction of rows written to test.jsonl")
    seed: int = 42


class PrepareConfig(BaseModel):
    """What `tunelab data prepare` does; every step is optional."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    input: str = Field(..., description="data file (.jsonl/.json/.csv/.tsv/.parquet/.txt) or builtin:NAME")
    columns: dict[str, str] = Field(default_factory=dict, description="select and rename: {source column: field}")
    keep: list[str] = Field(default_factory=list, description="other source columns to keep unchanged (metadata)")
    shape: str = Field("auto", description="shape of the renamed rows (auto = detect)")
    whitespace: Literal["collapse", "strip", "none"] = Field(
        "strip", description="collapse: every run of whitespace → one space (and strip); strip: ends only"
    )
    strip_prefix: dict[str, str] = Field(default_factory=dict, description="{field: regex} removed from the start")
    drop_empty: bool = Field(True, description="drop rows whose required fields are empty after cleaning")
    drop_duplicates: bool = Field(True, description="drop exact duplicates (the first copy is kept)")
    drop_invalid: bool = Field(False, description="drop (and count) rows with other problems instead of stopping")
    first: int | None = Field(None, gt=0, description="keep the first N rows (after cleaning)")
    sample: int | None = Field(None, gt=0, description="keep N rows drawn at random with `seed`")
    seed: int = 42
    to: str | None = Field(None, description="output shape (default: the input's shape)")
    split: SplitOptions = Field(default_factory=SplitOptions)

    @field_validator("shape")
    @classmethod
    def _known_shape(cls, v: str) -> str:
        return known_shape(v)

    @field_validator("to")
    @classmethod
    def _known_output(cls, v: str | None) -> str | None:
        if v is not None and v not in OUTPUT_SHAPES:
            raise ValueError(f"unknown output shape {v!r}; expected one of {', '.join(OUTPUT_SHAPES)}")
        return v

    @field_validator("strip_prefix")
    @classmethod
    def _regexes(cls, v: dict[str, str]) -> dict[str, str]:
        for name, pattern in v.items():
            try:
                re.compile(pattern)
            except re.error as err:
                raise ValueError(f"strip_prefix.{name}: invalid regular expression {pattern!r}: {err}") from None
        return v

    @model_validator(mode="after")
    def _one_way_to_choose(self) -> PrepareConfig:
        if self.first is not None and self.sample is not None:
            raise ValueError("give either first (the first N rows) or sample (N random rows), not both")
        if self.split.validation + self.split.test >= 1:
            raise ValueError("split.validation + split.test must leave rows for training (sum below 1)")
        return self


@dataclass
class PrepareResult:
    out_dir: Path
    files: dict[str, Path]  # split → written file
    counts: dict[str, int]  # split → rows written
    dropped: dict[str, list[str]]  # reason → FILE:LINE of each dropped row
    changed: dict[str, int]  # cleaning step → rows it changed
    shape_in: str
    shape_out: str
    read: int
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "out_dir": str(self.out_dir),
            "files": {k: str(v) for k, v in self.files.items()},
            "read": self.read,
            "written": self.counts,
            "dropped": {k: {"rows": len(v), "where": v} for k, v in self.dropped.items()},
            "changed": self.changed,
            "shape_in": self.shape_in,
            "shape_out": self.shape_out,
            "notes": self.notes,
        }


# -- config -----------------------------------------------------------------------------------


def load_prepare_config(path: str | Path, overrides: list[str] | None = None) -> tuple[PrepareConfig, Path | None]:
    """A prepare YAML (or a data file, all options then from `--set`); returns it and the folder that
    relative input paths are read from."""
    path = Path(path)
    extra = parse_overrides(overrides)
    if path.suffix.lower() not in (".yaml", ".yml"):
        return _validate({"input": str(path), **extra}, "--set", {}), None
    raw, text = read_mapping(path, "a YAML prepare config")
    return _validate(merge_dicts(raw, extra), str(path), key_lines(text)), path.parent.resolve()


def _validate(raw: dict[str, Any], file: str, lines: dict[tuple[str, ...], int]) -> PrepareConfig:
    import difflib

    try:
        return PrepareConfig.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(str(p) for p in err["loc"])
        key = ".".join(loc) or "(top level)"
        line = next((lines[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in lines), None)
        if err["type"] == "extra_forbidden":
            names = list(SplitOptions.model_fields if loc[0] == "split" else PrepareConfig.model_fields)
            close = difflib.get_close_matches(loc[-1], names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise TunelabError(f"unknown key{hint}", file=file, line=line, field=key,
                               expected=f"one of {', '.join(names)}") from None  # fmt: skip
        if err["type"] == "missing":
            raise TunelabError("required key is missing", file=file, line=line, field=key) from None
        msg = err["msg"].removeprefix("Value error, ")
        if not loc:  # a rule across keys (first and sample, split fractions)
            raise TunelabError(msg, file=file) from None
        got = repr(err.get("input"))
        got = got if len(got) <= 80 else got[:79] + "…"
        raise TunelabError(f"{msg}; got {got}", file=file, line=line, field=key) from None


# -- the pipeline -----------------------------------------------------------------------------


def prepare(cfg: PrepareConfig, out_dir: str | Path, *, base_dir: Path | None = None,
            overwrite: bool = False) -> PrepareResult:  # fmt: skip
    """Run the pipeline and write OUT/train.jsonl (+ validation.jsonl, test.jsonl) and OUT/prepare.json."""
    out = Path(out_dir).expanduser()
    names = ["train", "validation", "test", "prepare"]
    existing = [out / f"{n}.{'json' if n == 'prepare' else 'jsonl'}" for n in names]
    if not overwrite and any(p.exists() for p in existing):
        raise TunelabError("output folder already holds prepared data", file=str(out),
                           expected="a new --out folder, or --overwrite")  # fmt: skip
    foreign = [p.name for p in existing[:3] if p.exists()] if not existing[3].exists() else []
    if foreign:  # --overwrite replaces what an earlier prepare wrote (it left prepare.json), nothing else
        raise TunelabError(f"refusing to replace {', '.join(foreign)}: no prepare.json beside it, so `tunelab data "
                           "prepare` did not write it", file=str(out), expected="a new --out folder")  # fmt: skip
    label = resolve_source(cfg.input, base_dir)
    problems: list[Problem] = []
    dropped: dict[str, list[str]] = {}
    changed: Counter[str] = Counter()
    notes: list[str] = []

    rows = _read(label, problems, notes)
    read = len(rows)
    rows = _select(rows, cfg, problems)
    rows = [_clean(row, cfg, changed) for row in rows]
    shape_in = _shape(rows, cfg, label)
    examples: list[tuple[Example, Row]] = []
    for row in rows:
        example, errors = row_problems(row.data, shape_in, file=row.file, line=row.line)
        if example is not None:
            examples.append((example, row))
        elif cfg.drop_empty and all(_is_emptiness(e) for e in errors):
            dropped.setdefault("empty", []).append(f"{row.file}:{row.line}")
        elif cfg.drop_invalid:
            dropped.setdefault("invalid", []).append(f"{row.file}:{row.line}: {errors[0]}")
        else:
            problems += [Problem(ERROR, "invalid_row", e.message, e.file, e.line, e.field, e.expected) for e in errors]
    if problems:
        raise DataErrors(problems, hint="fix them, or set drop_invalid: true to drop and count those rows")
    if cfg.drop_duplicates:
        examples = _dedupe(examples, dropped)
    examples = _choose(examples, cfg, dropped, notes)
    shape_out = cfg.to or shape_in
    records: list[tuple[dict[str, Any], Example]] = []
    for example, row in examples:
        try:
            records.append((convert(example, shape_out, row.data), example))
        except TunelabError as err:
            if not cfg.drop_invalid:
                problems.append(Problem(ERROR, "convert", err.message, err.file, err.line, err.field, err.expected))
            else:
                dropped.setdefault("not convertible", []).append(f"{err}")
    if problems:
        raise DataErrors(problems, hint="fix them, or set drop_invalid: true to drop and count those rows")
    if not records:
        raise TunelabError("no rows left to write", file=label, expected="at least one usable row")
    parts = _split(records, cfg.split)
    out.mkdir(parents=True, exist_ok=True)
    files, counts = {}, {}
    for split, recs in parts.items():
        if split != "train" and getattr(cfg.split, split) == 0:
            continue
        files[split] = out / f"{split}.jsonl"
        _write_jsonl(files[split], [r for r, _ in recs])
        counts[split] = len(recs)
    result = PrepareResult(out, files, counts, dropped, dict(changed), shape_in, shape_out, read, notes)
    report = {"config": cfg.model_dump(mode="json"), "input": label, **result.to_dict()}
    (out / "prepare.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return result


def _read(label: str, problems: list[Problem], notes: list[str]) -> list[Row]:
    found: list[TunelabError] = []
    rows, more = read_source(label, problems=found)
    notes += more
    problems += [Problem(ERROR, "read", e.message, e.file, e.line, e.field, e.expected) for e in found]
    if problems:
        raise DataErrors(problems, hint="fix the file; prepare reads every row")
    return rows


def _select(rows: list[Row], cfg: PrepareConfig, problems: list[Problem]) -> list[Row]:
    """Keep the mapped columns (renamed) and `keep` columns, in that order; no mapping keeps everything."""
    if not cfg.columns:
        return rows
    wanted = {**cfg.columns, **{k: k for k in cfg.keep}}
    out = []
    for row in rows:
        missing = [c for c in wanted if c not in row.data]
        for name in missing:
            problems.append(Problem(ERROR, "column_mapping", f"column {name!r} not found; the row has columns "
                                    f"{', '.join(map(repr, row.data)) or '(none)'}", row.file, row.line, name,
                                    f"a column {name!r} to keep"))  # fmt: skip
        if not missing:
            out.append(Row({dst: row.data[src] for src, dst in wanted.items()}, row.file, row.line))
    if problems:
        raise DataErrors(problems, hint="check `columns` and `keep` against the file's header")
    return out


def _clean(row: Row, cfg: PrepareConfig, changed: Counter[str]) -> Row:
    data = dict(row.data)
    if cfg.whitespace != "none":
        new = {k: _space(v, cfg.whitespace) for k, v in data.items()}
        if new != data:
            changed["whitespace"] += 1
        data = new
    for name, pattern in cfg.strip_prefix.items():
        value = data.get(name)
        if isinstance(value, str):
            match = re.match(pattern, value)
            if match and match.end():
                rest = value[match.end() :]
                data[name] = rest.strip() if cfg.whitespace != "none" else rest
                changed[f"strip_prefix.{name}"] += 1
    return Row(data, row.file, row.line)


def _space(value: Any, mode: str) -> Any:
    if isinstance(value, str):
        return re.sub(r"\s+", " ", value).strip() if mode == "collapse" else value.strip()
    if isinstance(value, list):
        return [_space(v, mode) for v in value]
    if isinstance(value, dict):  # message turns: clean the text, leave role names alone
        return {k: _space(v, mode) if k in ("content", "value") else v for k, v in value.items()}
    return value


def _shape(rows: list[Row], cfg: PrepareConfig, label: str) -> str:
    if cfg.shape != "auto":
        return cfg.shape
    if not rows:
        raise TunelabError("no rows", file=label, expected="at least one row")
    shape, _ = detect_shapes(rows)
    if shape is None:
        detect_shape(rows[0].data, file=rows[0].file, line=rows[0].line)  # raises the helpful message
    for field_name in cfg.strip_prefix:
        if not any(field_name in row.data for row in rows):
            raise TunelabError(f"no row has a field {field_name!r}", field=f"strip_prefix.{field_name}",
                               expected=f"a field of the rows, e.g. one of {', '.join(ROW_SHAPES[shape].required)}")  # fmt: skip
    return shape


def _is_emptiness(err: TunelabError) -> bool:
    """An empty field (an empty cell, "" or []), as opposed to a missing or wrongly typed one."""
    return err.kind == "empty_field"


def _dedupe(examples: list[tuple[Example, Row]], dropped: dict[str, list[str]]) -> list[tuple[Example, Row]]:
    seen: dict[Any, str] = {}
    out = []
    for example, row in examples:
        key = content_key(example)
        if key in seen:
            dropped.setdefault("duplicate", []).append(f"{example.source} (same as {seen[key]})")
        else:
            seen[key] = example.source
            out.append((example, row))
    return out


def _choose(examples: list, cfg: PrepareConfig, dropped: dict[str, list[str]], notes: list[str]) -> list:
    n = cfg.first or cfg.sample
    if n is None or n >= len(examples):
        if n is not None:
            notes.append(f"asked for {n} rows; only {len(examples)} are left after cleaning, all kept")
        return examples
    if cfg.first is not None:
        kept, rest = examples[:n], examples[n:]
        reason = f"beyond first {n}"
    else:
        picked = set(random.Random(cfg.seed).sample(range(len(examples)), n))
        kept = [e for i, e in enumerate(examples) if i in picked]  # file order is kept
        rest = [e for i, e in enumerate(examples) if i not in picked]
        reason = f"not in sample of {n}"
    dropped[reason] = [e.source for e, _ in rest]
    return kept


# -- shape conversion -------------------------------------------------------------------------


def convert(example: Example, shape: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
    """One row of `shape` from a validated example; metadata columns are kept after the shape's fields."""
    meta = dict(example.meta)
    if shape == example.shape:
        return dict(data) if data is not None else {**example.fields, **meta}
    if kind_of(shape) == "text":
        raise _cannot(example, shape, "only plain-text rows convert to text")
    if example.messages is None:
        raise _cannot(example, shape, f"{describe_shape(example.shape)} rows have no prompt and answer")
    messages = example.messages
    if shape == "messages":
        return {"messages": [dict(m) for m in messages], **meta}
    if shape == "conversations":
        return {"conversations": [{"from": _SHAREGPT_FROM[m["role"]], "value": m["content"]} for m in messages], **meta}
    system = [m for m in messages if m["role"] == "system"]
    turns = [m for m in messages if m["role"] != "system"]
    if system:
        raise _cannot(example, shape, f"the row has a system message, which {describe_shape(shape)} cannot hold")
    if [m["role"] for m in turns] != ["user", "assistant"]:
        raise _cannot(example, shape, f"the row has {len(turns)} turns; {describe_shape(shape)} holds one "
                      "question and one answer")  # fmt: skip
    spec = ROW_SHAPES[shape]  # a pair shape: its prompt and response fields, its optional ones empty
    answer = {spec.prompt_field: turns[0]["content"], spec.response_field: turns[1]["content"]}
    return {**{name: answer.get(name, "") for name in spec.fields}, **meta}


def _cannot(example: Example, shape: str, why: str) -> TunelabError:
    file, _, line = example.source.rpartition(":")
    return TunelabError(f"cannot convert to {shape}: {why}", file=file, line=int(line) if line.isdecimal() and line.isascii() else None,
                        expected=f"rows that fit {describe_shape(shape)}, or drop_invalid: true")  # fmt: skip


# -- split and write --------------------------------------------------------------------------


def _split(records: list[tuple[dict, Example]], options: SplitOptions) -> dict[str, list[tuple[dict, Example]]]:
    """Seeded split that keeps rows with the same prompt in the same split (held-out prompts are unseen)."""
    if options.validation == 0 and options.test == 0:
        return {"train": records}
    groups: dict[Any, list[tuple[dict, Example]]] = {}
    for rec in records:
        groups.setdefault(prompt_key(rec[1]), []).append(rec)
    keys = list(groups)
    random.Random(options.seed).shuffle(keys)
    n = len(records)
    want = {s: max(1, round(n * f)) if f > 0 and n >= 3 else round(n * f)
            for s, f in (("validation", options.validation), ("test", options.test))}
    parts: dict[str, list] = {"validation": [], "test": [], "train": []}
    for key in keys:
        group = groups[key]
        target = next((s for s in ("validation", "test") if len(parts[s]) < want[s]), "train")
        parts[target] += group
    if not parts["train"]:
        raise TunelabError("the split leaves no training rows", field="split",
                           expected="smaller validation/test fractions, or more rows")  # fmt: skip
    order = {id(rec): i for i, rec in enumerate(records)}
    return {k: sorted(parts[k], key=lambda rec: order[id(rec)]) for k in ("train", "validation", "test")}


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_suffix(".jsonl.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)
