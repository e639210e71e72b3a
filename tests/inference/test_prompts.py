"""What a person reads as a held-out row's input: the question of a single turn, the whole
conversation (turn by turn, without the answer being judged) of a multi-turn row."""

from __future__ import annotations

from tunelab.data.shapes import Example
from tunelab.inference.prompts import display_input


def _chat(*turns: tuple[str, str]) -> Example:
    return Example(shape="messages", fields={}, messages=[{"role": r, "content": c} for r, c in turns], text=None,
                   source="f.jsonl:1", meta={})  # fmt: skip


def test_single_turn_shows_the_question() -> None:
    assert display_input(_chat(("system", "Be brief."), ("user", "Hi?"), ("assistant", "Hello."))) == "Hi?"
    qa = Example(shape="qa", fields={"question": "Why?", "answer": "Because."}, messages=None, text=None, source="",
                 meta={})  # fmt: skip
    assert display_input(qa) == "Why?"


def test_multi_turn_shows_every_turn_before_the_answer() -> None:
    row = _chat(("system", "Be brief."), ("user", "My name is Ada."), ("assistant", "Hello Ada."),
                ("user", "What is my name?"), ("assistant", "Ada."))  # fmt: skip
    assert display_input(row) == (
        "system: Be brief.\nuser: My name is Ada.\nassistant: Hello Ada.\nuser: What is my name?"
    )
