"""predictions.jsonl: one schema, written atomically, read back the same, and older runs' flat rows still read."""

import json

from tunelab.runs.artifacts import Prediction, read_predictions, write_predictions


def test_round_trip(tmp_path):
    rows = [
        Prediction(source="d.jsonl:1", input="What is AI?", reference="A field.", outputs={"base": "x", "tuned": "A field."},
                   scores={"tuned": {"rougeL": 100.0}}, stats={"tuned": {"new_tokens": 3, "hit_limit": False}},
                   meta={"topic": "ai"}),
        Prediction(source="d.jsonl:2", input="good film", reference="fresh", outputs={"tuned": "fresh"},
                   probabilities={"tuned": {"fresh": 0.9, "rotten": 0.1}}),
    ]
    path = tmp_path / "predictions.jsonl"
    write_predictions(path, rows)
    assert read_predictions(path) == rows
    first = json.loads(path.read_text().splitlines()[0])
    assert first["outputs"] == {"base": "x", "tuned": "A field."} and "probabilities" not in first
    assert not (tmp_path / "predictions.jsonl.tmp").exists()


def test_reads_the_flat_schema_of_older_runs(tmp_path):
    path = tmp_path / "predictions.jsonl"
    old = {"source": "s:1", "input": "q", "reference": "r", "tuned": "t", "tuned_scores": {"rougeL": 1.0},
           "tuned_stats": {"new_tokens": 2, "hit_limit": True}, "base": "b", "base_scores": {"rougeL": 0.0},
           "meta": {"topic": "x"}}
    path.write_text(json.dumps(old) + "\n")
    (row,) = read_predictions(path)
    assert row.outputs == {"base": "b", "tuned": "t"}
    assert row.scores == {"tuned": {"rougeL": 1.0}, "base": {"rougeL": 0.0}}
    assert row.stats == {"tuned": {"new_tokens": 2, "hit_limit": True}} and row.meta == {"topic": "x"}


def test_missing_or_broken_file_reads_as_no_rows(tmp_path):
    assert read_predictions(tmp_path / "nope.jsonl") == []
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"source": "a"}\n{not json\n')
    assert read_predictions(bad) == []
