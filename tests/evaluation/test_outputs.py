"""Model outputs without a model: names, filling from saved predictions (both schemas), reuse rules."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from evaluation.fakes import WordTokenizer, rows
from tunelab.errors import TunelabError
from tunelab.evaluation.outputs import ModelResult, fill_from_predictions, model_names, reuse
from tunelab.runs import Prediction, write_predictions

REFS = ["the sky is blue", "grass is green"]


def _saved(run: Path, *, stats: bool) -> None:
    legacy = [  # the flat schema runs wrote before the one schema
        {"source": "d:1", "input": "question 0", "reference": REFS[0], "tuned": "blue sky", "base": "a b c d e",
         **({"tuned_stats": {"new_tokens": 2, "hit_limit": False, "ref_nll": 3.0, "ref_tokens": 4}} if stats else {})},
        {"source": "d:2", "input": "question 1", "reference": REFS[1], "tuned": "green", "base": "grass",
         **({"tuned_stats": {"new_tokens": 1, "hit_limit": False, "ref_nll": 2.0, "ref_tokens": 3}} if stats else {})},
    ]  # fmt: skip
    run.mkdir(parents=True, exist_ok=True)
    write_predictions(run / "predictions.jsonl", [Prediction.from_json(r) for r in legacy])


def test_model_names_are_unique() -> None:
    named = model_names(["runs/a", "base", "other/a", "x/base"])
    assert [n for n, _ in named] == ["a", "base", "a (2)", "base (x/base)"]
    assert named[1][1] is None and named[2][1] == Path("other/a")
    with pytest.raises(TunelabError, match="'base' given twice"):
        model_names(["base", "base"])


def test_reuse_with_stats_and_recounted_lengths(tmp_path: Path) -> None:
    data = rows(REFS)
    cfg = SimpleNamespace(evaluation=SimpleNamespace(max_new_tokens=4))
    _saved(tmp_path / "with", stats=True)
    tuned = ModelResult("tuned", tmp_path / "with", is_base=False)
    assert reuse(tuned, data, cfg, 4, WordTokenizer())
    assert tuned.outputs == ["blue sky", "green"] and tuned.new_tokens == [2, 1] and tuned.ref_nll == [(3.0, 4), (2.0, 3)]
    assert tuned.origin == f"reused from {tmp_path / 'with' / 'predictions.jsonl'}"
    _saved(tmp_path / "without", stats=False)
    base = ModelResult("base", tmp_path / "without", is_base=True)
    assert reuse(base, data, cfg, 4, WordTokenizer())
    assert base.new_tokens == [5, 1] and base.hit_limit == [True, False] and base.ref_nll is None
    assert base.origin.endswith("(output lengths re-counted from the text)")


def test_no_reuse_for_other_rows_or_another_token_limit(tmp_path: Path) -> None:
    _saved(tmp_path, stats=True)
    cfg = SimpleNamespace(evaluation=SimpleNamespace(max_new_tokens=4))
    assert not reuse(ModelResult("t", tmp_path, is_base=False), rows(REFS), cfg, 8, WordTokenizer())
    assert not reuse(ModelResult("t", tmp_path, is_base=False), rows(["other", REFS[1]]), cfg, 4, WordTokenizer())
    assert not reuse(ModelResult("t", tmp_path / "none", is_base=False), rows(REFS), cfg, 4, WordTokenizer())


def test_fill_classification_keeps_probabilities() -> None:
    saved = [Prediction("d:1", "fine film", "pos", outputs={"tuned": "pos"}, probabilities={"tuned": {"pos": 0.9, "neg": 0.1}}),
             Prediction("d:2", "dull film", "neg", outputs={"tuned": "pos"}, probabilities={"tuned": {"pos": 0.6, "neg": 0.4}})]  # fmt: skip
    r = ModelResult("tuned", Path("."), is_base=False)
    assert not fill_from_predictions(r, saved, "tuned", classification=True, tokenizer=None, max_new_tokens=None)
    assert r.outputs == ["pos", "pos"] and r.probabilities[1] == {"pos": 0.6, "neg": 0.4} and not r.new_tokens
