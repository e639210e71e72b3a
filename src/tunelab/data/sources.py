"""Read data files into rows that remember their file and line, so every later error can point at them."""

from __future__ import annotations

import csv
import difflib
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError

FORMATS = ".jsonl, .json, .csv, .tsv, .parquet or .txt"
BUILTIN_PREFIX = "builtin:"  # data.train: builtin:NAME names a packaged dataset (data/builtin.py)
_WS = re.compile(r"[ \t\n\r]*")


@dataclass
class Row:
    """One record of a source, with where it came from (for error messages)."""

    data: dict[str, Any]
    file: str
    line: int


Problems = list[TunelabError] | None  # None: raise the first problem; a list: collect them all, keep reading


def resolve_source(source: str, base_dir: Path | None) -> str:
    """A data path as training reads it: next to the config when it exists there, else as given."""
    if source.startswith(BUILTIN_PREFIX):
        return source
    path = Path(source).expanduser()
    if base_dir is not None and not path.is_absolute() and (Path(base_dir) / path).exists():
        return str(Path(base_dir) / path)
    return str(path)


def read_rows(path: str | Path, *, problems: Problems = None) -> list[Row]:
    """Read a data file by extension; any problem a user can fix becomes a TunelabError with file and line.

    With `problems` (a list), nothing is raised: every problem is appended to it and reading goes on past
    the bad line, so the data doctor can report all of them at once; the rows that could be read are returned.
    """
    path = Path(path)
    name = str(path)
    if not path.exists():
        return _fail(
            problems, TunelabError("file not found", file=name, expected=f"an existing {FORMATS} file", kind="file")
        )
    if path.is_dir():
        return _fail(
            problems, TunelabError("is a directory, not a file", file=name, expected=f"a {FORMATS} file", kind="file")
        )
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _read_parquet(path, problems)
    readers = {
        ".jsonl": _read_jsonl,
        ".json": _read_json,
        ".csv": _read_csv,
        ".tsv": _read_csv,
        ".txt": _read_txt,
    }
    if suffix not in readers:
        return _fail(
            problems,
            TunelabError(
                f"unsupported file type {suffix or '(no extension)'!r}", file=name, expected=FORMATS, kind="file"
            ),
        )
    return readers[suffix](read_text(path, problems), name, problems)


def _fail(problems: Problems, error: TunelabError) -> list[Row]:
    """Raise `error`, or record it when collecting; returns no rows (for problems that end a file)."""
    if problems is None:
        raise error
    problems.append(error)
    return []


def apply_columns(rows: list[Row], columns: dict[str, str], *, problems: Problems = None) -> list[Row]:
    """Rename source columns to canonical fields so any file layout can map onto a known shape.
    With `problems` (a list), a row that cannot be mapped is recorded there and left out."""
    if not columns:
        return rows
    out: list[Row] = []
    for row in rows:
        try:
            out.append(_map_row(row, columns))
        except TunelabError as err:
            _fail(problems, err)
    return out


def _map_row(row: Row, columns: dict[str, str]) -> Row:
    for src, dst in columns.items():
        if src not in row.data:
            raise TunelabError(
                f"column {src!r} not found; the row has columns {_names(row.data)}{_did_you_mean(src, row.data)}",
                file=row.file,
                line=row.line,
                field=src,
                expected=f"a column {src!r} to map to {dst!r}",
                kind="column_mapping",
            )
    data: dict[str, Any] = {}
    for key, value in row.data.items():
        new = columns.get(key, key)
        if new in data:
            raise TunelabError(
                f"two columns would both be called {new!r} after the column mapping",
                file=row.file,
                line=row.line,
                field=new,
                expected="each field to come from exactly one column",
                kind="column_mapping",
            )
        data[new] = value
    return Row(data, row.file, row.line)


def _names(data: dict[str, Any]) -> str:
    return ", ".join(repr(k) for k in data) or "(none)"


def _did_you_mean(name: str, candidates: dict[str, Any]) -> str:
    keys = [str(k) for k in candidates]
    folded = {k.lower(): k for k in keys}
    match = [folded[name.lower()]] if name.lower() in folded else difflib.get_close_matches(name, keys, n=1)
    return f"; did you mean {match[0]!r}?" if match else ""


def read_text(path: str | Path, problems: Problems = None) -> str:
    """Decode UTF-8 (BOM allowed); bad bytes are reported with their line, not as a UnicodeDecodeError.
    When collecting, every line with bad bytes is reported and those bytes read as U+FFFD."""
    path = Path(path)
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        if problems is None:
            raise _bad_bytes(path, raw[err.start], err.reason, raw[: err.start].count(b"\n") + 1) from None
    for number, line in enumerate(raw.split(b"\n"), start=1):
        try:
            line.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as err:
            problems.append(_bad_bytes(path, line[err.start], err.reason, number))
    return raw.decode("utf-8-sig", errors="replace")


_read_text = read_text  # the old private name, until its last user (inference/batch.py) moves to read_text


def _bad_bytes(path: Path, byte: int, reason: str, line: int) -> TunelabError:
    return TunelabError(
        f"byte 0x{byte:02x} is not valid UTF-8 ({reason})",
        file=str(path),
        line=line,
        expected="UTF-8 encoded text (re-save the file as UTF-8)",
        kind="encoding",
    )


def _read_jsonl(text: str, name: str, problems: Problems = None) -> list[Row]:
    rows = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as err:
            _fail(
                problems,
                TunelabError(
                    f"invalid JSON: {err.msg} at column {err.colno}",
                    file=name,
                    line=number,
                    expected="one JSON object per line",
                    kind="invalid_json",
                ),
            )
            continue
        if not isinstance(value, dict):
            _fail(
                problems,
                TunelabError(
                    f"line is a JSON {_json_type(value)}, not an object",
                    file=name,
                    line=number,
                    expected='one JSON object per line, e.g. {"question": "...", "answer": "..."}',
                    kind="not_an_object",
                ),
            )
            continue
        rows.append(Row(value, name, number))
    return rows


def _read_json(text: str, name: str, problems: Problems = None) -> list[Row]:
    if not text.strip():
        return []
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        return _fail(
            problems,
            TunelabError(
                f"invalid JSON: {err.msg} at column {err.colno}",
                file=name,
                line=err.lineno,
                expected="valid JSON",
                kind="invalid_json",
            ),
        )
    expected = 'a JSON list of objects, or {"data": [...]}'
    items = value.get("data") if isinstance(value, dict) else value
    if not isinstance(items, list):
        what = 'an object without a "data" list' if isinstance(value, dict) else f"a JSON {_json_type(value)}"
        return _fail(problems, TunelabError(f"top level is {what}", file=name, line=1, expected=expected, kind="not_an_object"))
    lines = _item_lines(text)
    rows = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            _fail(
                problems,
                TunelabError(
                    f"item {index + 1} is a JSON {_json_type(item)}, not an object",
                    file=name,
                    line=lines[index],
                    expected=expected,
                    kind="not_an_object",
                ),
            )
            continue
        rows.append(Row(item, name, lines[index]))
    return rows


def _item_lines(text: str) -> list[int]:
    """Line where each element of the (already valid) top-level list or "data" list starts."""
    decoder = json.JSONDecoder()
    pos = _WS.match(text).end()
    if text[pos] == "{":  # walk the object's keys up to the last "data" value, as json.loads keeps the last
        start, pos = None, _WS.match(text, pos + 1).end()
        while text[pos] != "}":
            key, pos = decoder.raw_decode(text, pos)
            pos = _WS.match(text, _WS.match(text, pos).end() + 1).end()  # skip ':'
            if key == "data":
                start = pos
            pos = _WS.match(text, decoder.raw_decode(text, pos)[1]).end()
            if text[pos] == ",":
                pos = _WS.match(text, pos + 1).end()
        pos = start
    lines, line, last = [], 1, 0
    pos = _WS.match(text, pos + 1).end()
    while text[pos] != "]":
        line += text.count("\n", last, pos)
        lines.append(line)
        last = pos
        pos = _WS.match(text, decoder.raw_decode(text, pos)[1]).end()
        if text[pos] == ",":
            pos = _WS.match(text, pos + 1).end()
    return lines


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "list", str: "string", bool: "boolean", int: "number", float: "number"}
    return names.get(type(value), "null")


def _read_csv(text: str, name: str, problems: Problems = None) -> list[Row]:
    """Read with the csv module so every cell stays a string and each row knows its first line."""
    reader = csv.reader(
        io.StringIO(text, newline=""), delimiter="\t" if name.lower().endswith(".tsv") else ","
    )
    rows: list[Row] = []
    header: list[str] | None = None
    start = 1
    try:
        for record in reader:
            line, start = start, reader.line_num + 1
            if not any(cell.strip() for cell in record):
                continue
            if header is None:
                header = [cell.strip() or f"column_{i + 1}" for i, cell in enumerate(record)]
                dupes = sorted({h for h in header if header.count(h) > 1})
                for dupe in dupes:
                    _fail(
                        problems,
                        TunelabError(
                            f"header has duplicate column {dupe!r}",
                            file=name,
                            line=line,
                            expected="unique column names",
                            kind="csv",
                        ),
                    )
                if dupes:
                    return []  # which cell belongs to which column is unknowable
                continue
            if len(record) > len(header):
                _fail(
                    problems,
                    TunelabError(
                        f"row has {len(record)} cells but the header has {len(header)} columns",
                        file=name,
                        line=line,
                        expected=f"at most {len(header)} cells (quote cells that contain commas)",
                        kind="csv",
                    ),
                )
                continue
            if problems is not None and start - line > 1 and _unclosed_quote(text, line, start - 1):
                problems.append(
                    TunelabError(
                        f"a quote opened in this row is never closed, so lines {line}-{start - 1} "
                        "(the rest of the file) were read as one row",
                        file=name,
                        line=line,
                        expected='balanced quotes: a quoted cell ends with " before the next row',
                        kind="csv",
                    )
                )
                continue
            record += [""] * (len(header) - len(record))
            rows.append(Row(dict(zip(header, record, strict=True)), name, line))
    except csv.Error as err:
        _fail(
            problems,
            TunelabError(
                f"cannot parse CSV: {err}", file=name, line=reader.line_num, expected="valid CSV", kind="csv"
            ),
        )
    return rows


def _unclosed_quote(text: str, first: int, last: int) -> bool:
    """Whether a record that runs over several lines up to the end of the file has an odd number of
    quotes: the csv module then silently reads the whole rest of the file into one cell."""
    lines = text.split("\n")
    if any(line.strip() for line in lines[last:]):
        return False  # the record ended before the end of the file
    return "\n".join(lines[first - 1 : last]).count('"') % 2 == 1


def _read_parquet(path: Path, problems: Problems = None) -> list[Row]:
    import pyarrow.parquet as pq  # imported here: pyarrow is slow to import and only needed for parquet

    try:
        records = pq.read_table(path).to_pylist()
    except Exception as err:  # pyarrow raises many types for corrupt or non-parquet files
        return _fail(
            problems,
            TunelabError(
                f"cannot read Parquet file: {err}", file=str(path), expected="a valid Parquet file", kind="file"
            ),
        )
    return [Row(record, str(path), index + 1) for index, record in enumerate(records)]


def _read_txt(text: str, name: str, problems: Problems = None) -> list[Row]:
    """A .txt file is one pretraining document."""
    return [Row({"text": text}, name, 1)] if text.strip() else []
