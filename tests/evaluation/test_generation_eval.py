"""A run's predictions rows, in the one schema, from `evaluate_generation` results."""

from __future__ import annotations

from tunelab.data.shapes import Example
from tunelab.evaluation.generation_eval import prediction_rows
from tunelab.runs import Prediction, read_predictions, write_predictions


class QA:
    kind = "custom"

    def reference(self, ex: Example) -> str:
        return ex.fields["answer"]


def _result(outputs: list[str], *, stats: bool = True) -> dict:
    out = {"outputs": outputs, "per_example": [{"rougeL": float(len(o))} for o in outputs]}
    if stats:
        out["stats"] = [{"new_tokens": 1, "hit_limit": False, "ref_nll": 1.5, "ref_tokens": 2} for _ in outputs]
    return out


def test_prediction_rows_round_trip(tmp_path) -> None:
    examples = [Example(shape="qa", fields={"question": f"q{i}", "answer": f"a{i}"}, messages=None, text=None,
                        source=f"qa.jsonl:{i}", meta={"topic": "t"} if i else {}) for i in range(2)]  # fmt: skip
    rows = prediction_rows(examples, QA(), _result(["b0", "b1"], stats=False), _result(["t0", "tuned 1"]))
    assert [r.input for r in rows] == ["q0", "q1"] and [r.reference for r in rows] == ["a0", "a1"]
    assert rows[1].outputs == {"base": "b1", "tuned": "tuned 1"} and rows[1].scores["tuned"] == {"rougeL": 7.0}
    assert set(rows[0].stats) == {"tuned"} and rows[1].meta == {"topic": "t"} and rows[0].meta == {}
    write_predictions(tmp_path / "predictions.jsonl", rows)
    assert read_predictions(tmp_path / "predictions.jsonl") == rows
    only_tuned = prediction_rows(examples, QA(), None, _result(["t0", "t1"]))
    assert all(set(r.outputs) == {"tuned"} for r in only_tuned) and isinstance(only_tuned[0], Prediction)
