"""Built-in datasets read from installed packages (no network)."""

from __future__ import annotations

import importlib.util

import pytest

from tunelab.data import builtin
from tunelab.data.builtin import BUILTINS, load_builtin, load_builtin_with_notes
from tunelab.errors import TunelabError


def test_chatterbot_pairs_with_topics():
    rows, notes = load_builtin_with_notes("chatterbot")
    assert len(rows) >= 2000
    topics = {r.data["topic"] for r in rows}
    assert {"ai", "greetings", "science"} <= topics
    first = rows[0]
    assert set(first.data) == {"question", "answer", "topic"}
    assert first.file == f"builtin:chatterbot/{first.data['topic']}.yml" and first.line >= 1
    assert all(r.data["question"].strip() and r.data["answer"].strip() for r in rows)
    assert any("skipped" in n for n in notes)
    assert [(r.file, r.line) for r in rows] == [(r.file, r.line) for r in load_builtin("chatterbot")]


def test_shakespeare_plays():
    rows = load_builtin("shakespeare")
    assert len(rows) >= 30
    titles = {r.data["title"] for r in rows}
    assert {"hamlet", "macbeth"} <= titles
    assert all(len(r.data["text"]) > 10_000 for r in rows)


def test_unknown_builtin_lists_names():
    with pytest.raises(TunelabError) as info:
        load_builtin("wikipedia")
    assert "unknown built-in dataset 'wikipedia'" in str(info.value)
    assert all(f"builtin:{name}" in str(info.value) for name in BUILTINS)


def test_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(builtin.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(TunelabError, match=r"pip install --no-deps chatterbot-corpus"):
        load_builtin("chatterbot")
    assert importlib.util is builtin.importlib.util


def test_builtins_describe_themselves():
    for info in BUILTINS.values():
        assert info.description and info.package and info.licence and callable(info.loader)


def test_chatterbot_preference_pairs_prefer_the_questions_own_answer():
    qa = load_builtin("chatterbot")
    pairs, notes = load_builtin_with_notes("chatterbot-preference")
    assert len(pairs) == len(qa) and "pairs" in notes[-1]
    answers_by_topic = {}
    for r in qa:
        answers_by_topic.setdefault(r.data["topic"], set()).add(r.data["answer"])
    for q, p in zip(qa, pairs, strict=True):
        assert p.data["prompt"] == q.data["question"] and p.data["chosen"] == q.data["answer"]
        other = {t for t, answers in answers_by_topic.items() if p.data["rejected"] in answers}
        assert other - {q.data["topic"]}  # the rejected answer comes from another topic
    assert [p.data["rejected"] for p in load_builtin("chatterbot-preference")] == [p.data["rejected"] for p in pairs]


def test_aclsum_abstracts_become_instruction_rows():
    """Every paper of the package's three files (counted here from the JSON) is one abstract → summary row."""
    import json

    root = builtin._package_dir("aclsum", BUILTINS["aclsum"])
    papers = [json.loads(line) for split in ("train", "val", "test")
              for line in (root / "dataset" / f"{split}.jsonl").read_text().splitlines() if line.strip()]  # fmt: skip
    rows, notes = load_builtin_with_notes("aclsum")
    assert len(rows) == len(papers) == 250 and "250 abstracts" in notes[0]
    first = rows[0].data
    summary = papers[0]["summary"]
    assert first["output"] == " ".join(summary[k] for k in ("challenge", "approach", "outcome"))
    assert first["input"].startswith("In this paper, we explore correlation of dependency relation paths")
    assert " ," not in first["input"] and " ." not in first["input"]
    assert {r.data["split"] for r in rows} == {"train", "val", "test"}
