"""load_examples / load_splits: formats end to end, shape consistency, seeded splits, notes."""

from __future__ import annotations

import json

import pytest

from tunelab.data.splits import load_examples, load_splits
from tunelab.errors import TunelabError


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def qa_rows(n):
    return [{"question": f"q{i}", "answer": f"a{i}"} for i in range(n)]


def write_format(tmp_path, suffix):
    rows = qa_rows(3)
    path = tmp_path / f"d{suffix}"
    if suffix == ".jsonl":
        write_jsonl(path, rows)
    elif suffix == ".json":
        path.write_text(json.dumps({"data": rows}), encoding="utf-8")
    elif suffix == ".csv":
        path.write_text(
            "question,answer\n" + "".join(f"{r['question']},{r['answer']}\n" for r in rows), encoding="utf-8"
        )
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_every_format_loads_as_qa(tmp_path, suffix):
    examples, shape, notes = load_examples(str(write_format(tmp_path, suffix)))
    assert shape == "qa"
    assert [e.fields["answer"] for e in examples] == ["a0", "a1", "a2"]
    assert notes[0].startswith("detected shape question/answer")


def test_txt_is_text_shape(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text("It was a dark and stormy night.", encoding="utf-8")
    examples, shape, _ = load_examples(str(path))
    assert shape == "text" and examples[0].text == "It was a dark and stormy night."


def test_csv_column_mapping_through_load_splits(tmp_path):
    path = tmp_path / "doctor.csv"
    body = "".join(f"complaint {i},advice {i},cardio\n" for i in range(20))
    path.write_text("Description,Doctor,Speciality\n" + body, encoding="utf-8")
    splits = load_splits(str(path), columns={"Description": "question", "Doctor": "answer"})
    assert splits.shape == "qa"
    example = splits.train[0]
    assert example.messages[0]["role"] == "user" and example.messages[0]["content"].startswith("complaint")
    assert example.meta == {"Speciality": "cardio"}


def test_seeded_split_is_deterministic_and_sized(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", qa_rows(100))
    first = load_splits(str(path))
    again = load_splits(str(path))
    other = load_splits(str(path), seed=7)
    assert (len(first.train), len(first.validation), len(first.test)) == (90, 5, 5)
    assert [e.source for e in first.test] == [e.source for e in again.test]
    assert [e.source for e in first.train] == [e.source for e in again.train]
    assert [e.source for e in first.test] != [e.source for e in other.test]
    everything = first.train + first.validation + first.test
    assert len({e.source for e in everything}) == 100
    assert "split 100 rows → 90/5/5 (seed 42)" in first.notes


@pytest.mark.parametrize(
    ("n", "val", "test", "sizes"),
    [
        (3, 0.05, 0.05, (1, 1, 1)),
        (10, 0.0, 0.2, (8, 0, 2)),
        (2, 0.05, 0.05, (2, 0, 0)),
        (3, 0.5, 0.45, (1, 1, 1)),
    ],
)
def test_split_sizes_for_small_data(tmp_path, n, val, test, sizes):
    path = write_jsonl(tmp_path / "d.jsonl", qa_rows(n))
    splits = load_splits(str(path), validation_fraction=val, test_fraction=test)
    assert (len(splits.train), len(splits.validation), len(splits.test)) == sizes


def test_limit_only_affects_train(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", qa_rows(100))
    full = load_splits(str(path))
    limited = load_splits(str(path), limit=10)
    assert [e.source for e in limited.train] == [e.source for e in full.train[:10]]
    assert len(limited.validation) == 5 and len(limited.test) == 5
    with pytest.raises(TunelabError, match="limit: is 0"):
        load_splits(str(path), limit=0)


def test_given_validation_and_test_files(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", qa_rows(10))
    val = write_jsonl(tmp_path / "val.jsonl", qa_rows(2))
    splits = load_splits(str(train), validation=str(val), test_fraction=0.2)
    assert len(splits.validation) == 2 and len(splits.test) == 2 and len(splits.train) == 8
    assert any(note.startswith("validation: 2 rows from") for note in splits.notes)
    texts = write_jsonl(tmp_path / "test.jsonl", [{"text": "x"}])
    with pytest.raises(TunelabError, match="test data is plain text"):
        load_splits(str(train), test=str(texts))


def test_base_dir_resolution(tmp_path, monkeypatch):
    (tmp_path / "cfg").mkdir()
    write_jsonl(tmp_path / "cfg" / "d.jsonl", qa_rows(5))
    monkeypatch.chdir(tmp_path)
    examples, _, _ = load_examples("d.jsonl", base_dir=tmp_path / "cfg")
    assert examples[0].source == f"{tmp_path / 'cfg' / 'd.jsonl'}:1"
    with pytest.raises(TunelabError, match="d.jsonl: file not found"):
        load_examples("d.jsonl")


def test_mixed_shapes_in_auto_mode_name_the_row(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [*qa_rows(2), {"prompt": "p", "completion": "c"}])
    with pytest.raises(TunelabError) as info:
        load_examples(str(path))
    assert str(info.value).startswith(f"{path}:3: row is prompt/completion")
    assert f"first row ({path}:1)" in str(info.value)


def test_explicit_shape_validates_every_row(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "q", "answer": "a", "text": "t"}, {"text": "t"}])
    examples, shape, notes = load_examples(str(path), shape="text")
    assert shape == "text" and len(examples) == 2 and notes[-1].startswith("using shape plain text")
    with pytest.raises(TunelabError, match=r"d.jsonl:2: question: missing for shape qa"):
        load_examples(str(path), shape="qa")
    with pytest.raises(TunelabError, match="shape: unknown shape 'chat'"):
        load_examples(str(path), shape="chat")


def test_empty_dataset(tmp_path):
    empty = tmp_path / "e.jsonl"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(TunelabError, match=r"e.jsonl: no rows \(expected at least one row of"):
        load_examples(str(empty))
    blank_rows = write_jsonl(tmp_path / "b.jsonl", [{"question": "", "answer": " "}, {}])
    with pytest.raises(TunelabError, match="no rows"):
        load_splits(str(blank_rows))


def test_empty_rows_are_skipped_with_a_note(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [*qa_rows(3), {"question": "", "answer": ""}])
    examples, _, notes = load_examples(str(path))
    assert len(examples) == 3 and any("skipped 1 empty rows" in n for n in notes)


def test_leakage_is_counted_not_dropped(tmp_path):
    rows = [{"question": "same", "answer": f"a{i}"} for i in range(40)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    splits = load_splits(str(path), validation_fraction=0.1, test_fraction=0.1)
    assert len(splits.train) + len(splits.validation) + len(splits.test) == 40
    assert "leakage: 4 of 4 test prompts also appear verbatim in train (kept)" in splits.notes


@pytest.mark.parametrize(("kwargs", "field"), [({"validation_fraction": 1.0}, "validation_fraction"),
                                               ({"test_fraction": -0.1}, "test_fraction"),
                                               ({"validation_fraction": 0.6, "test_fraction": 0.4}, "validation_fraction")])  # fmt: skip
def test_bad_fractions(tmp_path, kwargs, field):
    path = write_jsonl(tmp_path / "d.jsonl", qa_rows(5))
    with pytest.raises(TunelabError) as info:
        load_splits(str(path), **kwargs)
    assert info.value.field == field


def test_builtin_source(tmp_path):
    splits = load_splits("builtin:shakespeare", validation_fraction=0.1, test_fraction=0.0, limit=3)
    assert splits.shape == "text" and splits.source == "builtin:shakespeare"
    assert len(splits.train) == 3 and len(splits.validation) == 4 and splits.test == []
