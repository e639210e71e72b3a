"""Read data files into rows that remember their file and line, so every later error can point at them.

Only regular files are read (a FIFO or a device would hang or never end); JSON is read strictly
(`parse_json`): what Python's json module accepts but no data row means (a key twice in one object,
NaN/Infinity, a lone surrogate escape such as "\\ud800") or crashes on (nesting a thousand levels deep,
an integer of 4300+ digits) is an error with its line."""

from __future__ import annotations

import csv
import difflib
import io
import json
import json.decoder
import json.scanner
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.files import bad_utf8, check_file, read_bytes

FORMATS = ".jsonl, .json, .csv, .tsv, .parquet or .txt"
BUILTIN_PREFIX = "builtin:"  # data.train: builtin:NAME names a packaged dataset (data/builtin.py)
_WS = re.compile(r"[ \t\n\r]*")
MAX_JSON_DEPTH = 100  # nesting levels a JSON value may have (a chat row has three)
CSV_FIELD_LIMIT = 64 * 2**20  # characters one CSV cell may have (the csv module's default is 128 KiB)


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
    try:
        path = check_file(path, expected=f"an existing {FORMATS} file")
    except TunelabError as err:  # missing, a folder, a FIFO or device, a NUL in the name
        return _fail(problems, err)
    name = str(path)
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
    try:
        raw = read_bytes(path, expected=f"a readable {FORMATS} file")
    except TunelabError as err:
        _fail(problems, err)
        return ""
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
    return bad_utf8(str(path), byte, reason, line)


# -- strict JSON ----------------------------------------------------------------------------------


class JsonProblem(Exception):
    """What `parse_json` refuses, with the character position it is at (None when unknown)."""

    def __init__(self, message: str, pos: int | None = None, *, expected: str = "valid JSON") -> None:
        super().__init__(message)
        self.message, self.pos, self.expected = message, pos, expected

    def where(self, text: str) -> tuple[int | None, int | None]:
        """(line, column), 1-based, of the problem in `text`."""
        if self.pos is None:
            return None, None
        return text.count("\n", 0, self.pos) + 1, self.pos - text.rfind("\n", 0, self.pos)


class _Duplicate(Exception):
    pass


class _Constant(Exception):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Duplicate(key)
            seen.add(key)
    return value


def _no_constant(name: str) -> Any:
    raise _Constant(name)


_DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys, parse_constant=_no_constant)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
_LONE_ESCAPE = re.compile(r"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
                          r"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}")  # fmt: skip
_SURROGATE = re.compile("[\ud800-\udfff]")


def parse_json(text: str) -> Any:
    """`json.loads`, refusing what Python accepts but no data means (a key twice in one object: JSON keeps
    the last; NaN/Infinity, which are not JSON; a lone surrogate escape, which is no character and breaks
    every tokenizer) and what it crashes on (nesting deeper than the stack, an integer beyond Python's
    4300 digits); nesting deeper than MAX_JSON_DEPTH is refused too. Raises JsonProblem."""
    try:
        value = _DECODER.decode(text)
    except json.JSONDecodeError as err:
        raise JsonProblem(f"invalid JSON: {err.msg}", err.pos) from None
    except _Duplicate as err:
        raise JsonProblem(f"key {err.args[0]!r} appears twice in one object (JSON keeps only the last)",
                          _duplicate_position(text), expected="each key once per object") from None  # fmt: skip
    except _Constant as err:
        found = re.search(r"NaN|-?Infinity", _masked(text))
        raise JsonProblem(f"{err.args[0]} is not valid JSON", found.start() if found else None,
                          expected="a number, or null") from None  # fmt: skip
    except RecursionError:
        raise JsonProblem(f"nested more than {MAX_JSON_DEPTH} levels deep", _deep_position(text),
                          expected=f"at most {MAX_JSON_DEPTH} levels of nested lists and objects") from None  # fmt: skip
    except ValueError:  # an integer too long for int(): Python refuses more than 4300 digits
        limit = sys.get_int_max_str_digits() or 4300
        found = re.search(r"\d{" + str(limit + 1) + ",}", _masked(text))
        size = f"of {len(found.group())} digits " if found else ""
        raise JsonProblem(f"a number {size}is too long", found.start() if found else None,
                          expected=f"numbers of at most {limit} digits, or the number as a string") from None  # fmt: skip
    if (text.count("[") + text.count("{") > MAX_JSON_DEPTH) and _too_deep(value, MAX_JSON_DEPTH):
        raise JsonProblem(f"nested more than {MAX_JSON_DEPTH} levels deep", _deep_position(text),
                          expected=f"at most {MAX_JSON_DEPTH} levels of nested lists and objects")  # fmt: skip
    if "\\u" in text:
        escape = _LONE_ESCAPE.search(text)
        if escape and _has_surrogate(value):
            raise JsonProblem(f"{escape.group()} is a lone UTF-16 surrogate, not a character", escape.start(),
                              expected="a surrogate pair such as \\ud83d\\ude00, or the character itself")  # fmt: skip
    return value


def _masked(text: str) -> str:
    """`text` with every JSON string's content blanked out (same length), to search the rest."""
    return _STRING.sub(lambda m: '"' + " " * (len(m.group()) - 2) + '"', text)


def _deep_position(text: str) -> int | None:
    depth = 0
    for pos, char in enumerate(_masked(text)):
        if char in "[{":
            depth += 1
            if depth > MAX_JSON_DEPTH:
                return pos
        elif char in "]}":
            depth -= 1
    return None


def _too_deep(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if depth > limit:
            return True
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False


def _has_surrogate(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _duplicate_position(text: str) -> int | None:
    """Where the first repeated key of an object starts: the text is read again by json's pure-Python
    scanner with an object reader that knows positions (only after the fast reader found a repeat)."""
    found: list[int] = []
    space = json.decoder.WHITESPACE.match

    def parse_object(s_and_end: tuple[str, int], strict: bool, scan_once: Any, *_: Any) -> tuple[dict, int]:
        s, pos = s_and_end
        pos = space(s, pos).end()
        keys: set[str] = set()
        while s[pos] != "}":
            start = pos
            key, pos = json.decoder.scanstring(s, pos + 1, strict)
            if key in keys and not found:
                found.append(start)
            keys.add(key)
            pos = space(s, space(s, pos).end() + 1).end()  # past ':'
            pos = space(s, scan_once(s, pos)[1]).end()
            if s[pos] == ",":
                pos = space(s, pos + 1).end()
        return {}, pos + 1

    decoder = json.JSONDecoder()
    decoder.parse_object = parse_object
    decoder.scan_once = json.scanner.py_make_scanner(decoder)
    try:
        decoder.decode(text)
    except Exception:  # noqa: BLE001 - only a position is sought; without one the row's line is reported
        pass
    return found[0] if found else None


def _read_jsonl(text: str, name: str, problems: Problems = None) -> list[Row]:
    rows = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            value = parse_json(line)
        except JsonProblem as err:
            at = f" at column {err.pos + 1}" if err.pos is not None else ""
            _fail(
                problems,
                TunelabError(
                    f"{err.message}{at}",
                    file=name,
                    line=number,
                    expected="one JSON object per line" if err.expected == "valid JSON" else err.expected,
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
        value = parse_json(text)
    except JsonProblem as err:
        line, column = err.where(text)
        return _fail(
            problems,
            TunelabError(
                f"{err.message} at column {column}" if column is not None else err.message,
                file=name,
                line=line,
                expected=err.expected,
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
    if csv.field_size_limit() < CSV_FIELD_LIMIT:  # a long document in one cell is real data
        csv.field_size_limit(CSV_FIELD_LIMIT)
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
