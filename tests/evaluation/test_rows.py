"""Which rows: a run's shape applied to examples, labels checked, rows rebuilt from saved predictions."""

from __future__ import annotations

import pytest

from tunelab.data.shapes import Example
from tunelab.errors import TunelabError
from tunelab.evaluation.rows import eval_data, predictions_data
from tunelab.runs import Prediction


def _review(text: str, label: str, i: int) -> Example:
    return Example(shape="classification", fields={"text": text, "label": label}, messages=None, text=text,
                   source=f"r.jsonl:{i}", meta={"year": 2000 + i})  # fmt: skip


def test_classification_rows_and_unknown_labels() -> None:
    examples = [_review("fine", "pos", 1), _review("dull", "neg", 2)]
    data = eval_data(examples, None, ["neg", "pos"], "2 reviews", "heldout")
    assert (data.kind, data.inputs, data.references, data.label_names) == ("classification", ["fine", "dull"],
                                                                          ["pos", "neg"], ["neg", "pos"])  # fmt: skip
    assert data.meta == [{"year": 2001}, {"year": 2002}] and len(data) == 2
    with pytest.raises(TunelabError, match="label 'neg' is not one of the run's labels"):
        eval_data(examples, None, ["pos", "other"], "2 reviews", "heldout")


def test_multi_turn_rows_show_the_conversation_before_the_answer() -> None:
    class Chat:
        kind = "chat"

        def reference(self, ex: Example) -> str:
            return ex.messages[-1]["content"]

    ex = Example(shape="messages", fields={}, source="c.jsonl:1", text=None, meta={},
                 messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                           {"role": "user", "content": "What is AI?"}, {"role": "assistant", "content": "software"}])  # fmt: skip
    data = eval_data([ex], Chat(), None, "1 chat", "heldout")
    assert (data.kind, data.inputs, data.references) == (
        "generation", ["user: hi\nassistant: hello\nuser: What is AI?"], ["software"])


def test_rows_from_predictions() -> None:
    saved = [Prediction("d:1", "q", "a", outputs={"tuned": "a"}, meta={"topic": "x"})]
    assert predictions_data(saved, "1 row").kind == "generation"
    data = predictions_data(saved, "1 row", labels=["a", "b"])
    assert (data.kind, data.label_names, data.meta, data.sources) == ("classification", ["a", "b"], [{"topic": "x"}], ["d:1"])
