"""Reading files into rows: every format, line numbers, and user-fixable errors."""

from __future__ import annotations

import json

import pytest

from tunelab.data.sources import Row, apply_columns, read_rows
from tunelab.errors import TunelabError


def test_jsonl_skips_blank_lines_and_keeps_line_numbers(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(
        '{"question": "a", "answer": "b"}\n\n{"question": "c", "answer": "d"}\n', encoding="utf-8"
    )
    rows = read_rows(path)
    assert [r.line for r in rows] == [1, 3]
    assert rows[1].data == {"question": "c", "answer": "d"}
    assert rows[0].file == str(path)


def test_jsonl_malformed_line_reports_its_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "a"}\n{"text": "b"}\n{"text": "c",}\n', encoding="utf-8")
    with pytest.raises(TunelabError) as info:
        read_rows(path)
    assert str(info.value).startswith(f"{path}:3:")
    assert "invalid JSON" in str(info.value)


def test_jsonl_non_object_line(tmp_path):
    path = tmp_path / "list.jsonl"
    path.write_text('{"text": "a"}\n["not", "an", "object"]\n', encoding="utf-8")
    with pytest.raises(TunelabError, match=r":2: line is a JSON list, not an object"):
        read_rows(path)


def test_json_list_and_data_wrapper_report_real_lines(tmp_path):
    items = [{"text": "a"}, {"text": "b"}]
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps(items, indent=2), encoding="utf-8")
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"version": [1, 2], "data": items}, indent=2), encoding="utf-8")
    assert [r.line for r in read_rows(plain)] == [2, 5]
    rows = read_rows(wrapped)
    assert [r.data["text"] for r in rows] == ["a", "b"]
    assert [r.line for r in rows] == [7, 10]


def test_json_errors(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('[{"text": "a"},\n "oops"]', encoding="utf-8")
    with pytest.raises(TunelabError, match=r"d.json:2: item 2 is a JSON string, not an object"):
        read_rows(path)
    path.write_text('{"rows": []}', encoding="utf-8")
    with pytest.raises(TunelabError, match=r'without a "data" list'):
        read_rows(path)
    path.write_text('[{"text": "a"}\n{"text": "b"}]', encoding="utf-8")
    with pytest.raises(TunelabError, match=r"d.json:2: invalid JSON"):
        read_rows(path)


def test_csv_keeps_strings_and_counts_header_as_line_one(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('question,answer,n\n"multi\nline",x,007\n,,\nq2,,\n', encoding="utf-8")
    rows = read_rows(path)
    assert [r.line for r in rows] == [2, 5]  # the all-empty row on line 4 is skipped
    assert rows[0].data == {"question": "multi\nline", "answer": "x", "n": "007"}
    assert rows[1].data["answer"] == ""


def test_csv_too_many_cells(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("question,answer\na,b\nc,d,e\n", encoding="utf-8")
    with pytest.raises(TunelabError, match=r"d.csv:3: row has 3 cells but the header has 2"):
        read_rows(path)


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"prompt": ["p1", "p2"], "completion": ["c1", "c2"]}), path)
    rows = read_rows(path)
    assert [(r.data["prompt"], r.line) for r in rows] == [("p1", 1), ("p2", 2)]


def test_parquet_corrupt(tmp_path):
    path = tmp_path / "d.parquet"
    path.write_bytes(b"not parquet")
    with pytest.raises(TunelabError, match="cannot read Parquet"):
        read_rows(path)


def test_txt_is_one_document(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text("line one\nline two\n", encoding="utf-8")
    assert read_rows(path) == [Row({"text": "line one\nline two\n"}, str(path), 1)]
    path.write_text("  \n", encoding="utf-8")
    assert read_rows(path) == []


@pytest.mark.parametrize("name", ["e.jsonl", "e.json", "e.csv", "e.txt"])
def test_empty_files_have_no_rows(tmp_path, name):
    path = tmp_path / name
    path.write_text("", encoding="utf-8")
    assert read_rows(path) == []


def test_missing_file_and_unknown_extension(tmp_path):
    with pytest.raises(TunelabError, match="nope.jsonl: file not found"):
        read_rows(tmp_path / "nope.jsonl")
    path = tmp_path / "d.xlsx"
    path.write_text("x", encoding="utf-8")
    with pytest.raises(TunelabError, match="unsupported file type '.xlsx'"):
        read_rows(path)


def test_undecodable_bytes_report_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(TunelabError) as info:
        read_rows(path)
    assert str(info.value).startswith(f"{path}:2: byte 0xe9 is not valid UTF-8")


def test_column_mapping_csv_to_qa(tmp_path):
    path = tmp_path / "doctor.csv"
    path.write_text(
        "Description,Doctor,Speciality\nMy head hurts,Rest and drink water,general\n", encoding="utf-8"
    )
    rows = apply_columns(read_rows(path), {"Description": "question", "Doctor": "answer"})
    assert rows[0].data == {
        "question": "My head hurts",
        "answer": "Rest and drink water",
        "Speciality": "general",
    }
    assert rows[0].line == 2


def test_missing_mapped_column_says_where_and_suggests(tmp_path):
    path = tmp_path / "doctor.csv"
    path.write_text("Description,Doctor\na,b\n", encoding="utf-8")
    with pytest.raises(TunelabError) as info:
        apply_columns(read_rows(path), {"Descripton": "question", "Doctor": "answer"})
    message = str(info.value)
    assert message.startswith(f"{path}:2: Descripton: column 'Descripton' not found")
    assert "'Description', 'Doctor'" in message
    assert "did you mean 'Description'?" in message


def test_column_mapping_conflict_and_swap(tmp_path):
    rows = [Row({"a": "1", "b": "2"}, "f.jsonl", 1)]
    assert apply_columns(rows, {"a": "b", "b": "a"})[0].data == {"b": "1", "a": "2"}
    with pytest.raises(TunelabError, match="two columns would both be called 'b'"):
        apply_columns(rows, {"a": "b"})


def test_every_error_carries_the_kind_it_was_raised_with(tmp_path):
    """The doctor groups problems by `err.kind`, set where each error is raised (not read off the message)."""
    cases = {
        "a.jsonl": ('{"q": 1}\n{oops}\n[1]\n', ["invalid_json", "not_an_object"]),
        "b.json": ('{"rows": []}', ["not_an_object"]),
        "c.csv": ("a,a\n1,2\n", ["csv"]),
        "d.csv": ("a,b\n1,2,3\n", ["csv"]),
        "e.xlsx": ("", ["file"]),
    }
    for name, (text, kinds) in cases.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
        found: list[TunelabError] = []
        read_rows(tmp_path / name, problems=found)
        assert [e.kind for e in found] == kinds, name
    (tmp_path / "f.jsonl").write_bytes(b'{"text": "caf\xe9"}\n')
    found = []
    read_rows(tmp_path / "f.jsonl", problems=found)
    assert [e.kind for e in found] == ["encoding"]
    with pytest.raises(TunelabError) as info:
        read_rows(tmp_path / "missing.jsonl")
    assert info.value.kind == "file"
    found = []
    rows = apply_columns([Row({"Q": "a"}, "f", 1), Row({"A": "b"}, "f", 2)], {"Q": "question"}, problems=found)
    assert [r.line for r in rows] == [1] and [(e.line, e.kind) for e in found] == [(2, "column_mapping")]


def test_read_text_is_public(tmp_path):
    from tunelab.data.sources import _read_text, read_text

    path = tmp_path / "t.txt"
    path.write_bytes("\ufeffhé".encode())
    assert read_text(path) == read_text(str(path)) == "hé"
    assert _read_text is read_text  # the old name, until inference/batch.py moves over
