"""Shape detection and conversion of rows into Examples."""

from __future__ import annotations

import pytest

from tunelab.data.shapes import (
    RESPONSE_FIELD,
    ROW_SHAPES,
    SHAPES,
    Example,
    describe_shape,
    detect_shape,
    prompt_key,
    row_problems,
    to_example,
)
from tunelab.errors import TunelabError

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello"},
]
CASES = {
    "qa": ({"question": "Q?", "answer": "A.", "topic": "ai"}, [("user", "Q?"), ("assistant", "A.")]),
    "alpaca": (
        {"instruction": "Translate", "input": "chat", "output": "cat"},
        [("user", "Translate\n\nchat"), ("assistant", "cat")],
    ),
    "preference": ({"prompt": "P", "chosen": "C", "rejected": "R"}, [("user", "P"), ("assistant", "C")]),
    "preference_dialogue": (
        {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Q?\n\nAssistant: C",
         "rejected": "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Q?\n\nAssistant: R"},
        [("user", "Hi"), ("assistant", "Hello"), ("user", "Q?"), ("assistant", "C")],
    ),  # fmt: skip
    "feedback": ({"prompt": "P", "completion": "C", "label": True}, [("user", "P"), ("assistant", "C")]),
    "prompt_completion": ({"prompt": "P", "completion": "C"}, [("user", "P"), ("assistant", "C")]),
    "input_output": ({"input": "I", "output": "O"}, [("user", "I"), ("assistant", "O")]),
    "prompt": ({"prompt": "What is 1 plus 1?", "answer": "2"}, [("user", "What is 1 plus 1?")]),
    "messages": ({"messages": CHAT}, [("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello")]),
    "conversations": (
        {
            "conversations": [
                {"from": "system", "value": "S"},
                {"from": "human", "value": "H"},
                {"from": "gpt", "value": "G"},
            ]
        },
        [("system", "S"), ("user", "H"), ("assistant", "G")],
    ),
    "classification": ({"text": "Once upon a time.", "label": "fresh"}, None),
    "text": ({"text": "Once upon a time."}, None),
}


@pytest.mark.parametrize("shape", SHAPES)
def test_every_shape_is_detected_and_converted(shape):
    row, expected = CASES[shape]
    assert detect_shape(row, file="f.jsonl", line=1) == shape
    example = to_example(row, shape, file="f.jsonl", line=7)
    assert example.shape == shape
    assert example.source == "f.jsonl:7"
    if expected is None:
        assert example.messages is None and example.text == "Once upon a time."
    else:
        assert [(m["role"], m["content"]) for m in example.messages] == expected
        assert example.text is None
    if shape in RESPONSE_FIELD:
        assert example.fields[RESPONSE_FIELD[shape]] == expected[-1][1]
    assert describe_shape(shape)


def test_other_columns_become_meta():
    example = to_example(CASES["qa"][0], "qa", file="f", line=1)
    assert example.fields == {"question": "Q?", "answer": "A."}
    assert example.meta == {"topic": "ai"}


def test_alpaca_input_optional():
    for row in (
        {"instruction": "Do", "output": "Done"},
        {"instruction": "Do", "input": "", "output": "Done"},
    ):
        example = to_example(row, "alpaca", file="f", line=1)
        assert example.fields["input"] == ""
        assert example.messages[0]["content"] == "Do"


def test_unknown_shape_lists_keys_and_shapes():
    with pytest.raises(TunelabError) as info:
        detect_shape(["foo", "bar"], file="f.jsonl", line=4)
    message = str(info.value)
    assert message.startswith("f.jsonl:4: cannot tell the shape")
    assert "'foo', 'bar'" in message
    assert "question/answer" in message and "ShareGPT" in message


def test_capitalised_keys_get_a_mapping_hint():
    with pytest.raises(TunelabError, match=r"columns: \{Question: question, Answer: answer\}"):
        detect_shape(["Question", "Answer"], file="f.csv", line=2)


def test_missing_field_names_it():
    with pytest.raises(TunelabError, match=r"f.jsonl:3: answer: missing for shape qa"):
        to_example({"question": "Q"}, "qa", file="f.jsonl", line=3)


def test_wrong_type_names_the_field():
    with pytest.raises(TunelabError) as info:
        to_example({"question": "Q", "answer": ["A"]}, "qa", file="f.jsonl", line=2)
    assert str(info.value) == "f.jsonl:2: answer: is a list, not a string (expected a string)"


def test_empty_response_is_an_error_and_numbers_are_text():
    with pytest.raises(TunelabError, match="completion: is empty"):
        to_example({"prompt": "P", "completion": "  "}, "prompt_completion", file="f", line=1)
    assert to_example({"question": "2+2?", "answer": 4}, "qa", file="f", line=1).fields["answer"] == "4"


def test_messages_need_an_assistant_turn():
    with pytest.raises(TunelabError, match=r"f.jsonl:5: messages: has no assistant turn"):
        to_example({"messages": [{"role": "user", "content": "Hi"}]}, "messages", file="f.jsonl", line=5)


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        ([], "messages: is an empty list"),
        ("hi", "messages: is a string"),
        ([{"role": "user"}], r"messages\[0\].content: missing"),
        ([{"role": "bot", "content": "x"}], r"messages\[0\].role: unknown role 'bot'"),
        ([{"role": "assistant", "content": None}], r"messages\[0\].content: is null, not a string"),
        (["hi"], r"messages\[0\]: is a string, not an object"),
    ],
)
def test_malformed_messages(messages, match):
    with pytest.raises(TunelabError, match=match):
        to_example({"messages": messages}, "messages", file="f", line=1)


def test_sharegpt_roles_are_normalised():
    turns = [{"from": "User", "value": "a"}, {"from": "model", "value": "b"}, {"from": "human", "value": "c"},
             {"from": "assistant", "value": "d"}]  # fmt: skip
    example = to_example({"conversations": turns, "id": 9}, "conversations", file="f", line=1)
    assert [m["role"] for m in example.messages] == ["user", "assistant", "user", "assistant"]
    assert example.fields == {"conversations": turns}
    assert example.meta == {"id": 9}
    with pytest.raises(TunelabError, match=r"conversations\[0\].from: unknown role 'robot'"):
        to_example({"conversations": [{"from": "robot", "value": "x"}]}, "conversations", file="f", line=1)
    with pytest.raises(TunelabError, match="no gpt/assistant/model turn"):
        to_example({"conversations": [{"from": "human", "value": "x"}]}, "conversations", file="f", line=1)


def test_unknown_shape_name():
    with pytest.raises(TunelabError, match="unknown shape 'chat'"):
        to_example({"text": "x"}, "chat", file="f", line=1)


def test_classification_labels_may_be_ints_but_not_bools():
    assert to_example({"text": "t", "label": 3}, "classification", file="f", line=1).fields["label"] == 3
    with pytest.raises(TunelabError, match="f:2: label: is True"):
        to_example({"text": "t", "label": True}, "classification", file="f", line=2)


def test_one_table_of_shapes_in_detection_order():
    assert SHAPES == tuple(ROW_SHAPES) == ("qa", "alpaca", "preference", "preference_dialogue", "feedback",
                                           "prompt_completion", "input_output", "prompt", "messages", "conversations",
                                           "classification", "text")  # fmt: skip
    prompts = {name: s.prompt_field for name, s in ROW_SHAPES.items() if s.kind == "pair"}
    assert prompts == {"qa": "question", "alpaca": "instruction", "prompt_completion": "prompt", "input_output": "input"}
    assert RESPONSE_FIELD == {name: s.response_field for name, s in ROW_SHAPES.items() if s.kind in ("pair", "preference", "feedback")}
    for name, shape in ROW_SHAPES.items():
        assert shape.name == name and set(shape.required) <= set(shape.fields)
        assert shape.kind in ("pair", "chat", "preference", "feedback", "prompt", "classification", "text")
        assert describe_shape(name) == shape.description


@pytest.mark.parametrize(
    ("row", "shape", "kinds"),
    [
        ({"question": "Q"}, "qa", ["missing_field"]),
        ({"question": ["x"], "answer": ""}, "qa", ["wrong_type", "empty_field"]),
        ({"text": "t", "label": True}, "classification", ["labels"]),
        ({"messages": []}, "messages", ["empty_field"]),
        ({"messages": "hi"}, "messages", ["wrong_type"]),
        ({"messages": [{"role": "bot", "content": "x"}]}, "messages", ["unknown_role"]),
        ({"messages": [{"role": "user", "content": "x"}]}, "messages", ["no_assistant"]),
        ({"messages": [{"role": "user"}]}, "messages", ["missing_field"]),
        ({"text": "x"}, "chat", ["config"]),
    ],
)
def test_row_errors_carry_their_kind(row, shape, kinds):
    _, errors = row_problems(row, shape, file="f", line=1)
    assert [e.kind for e in errors][: len(kinds)] == kinds


def test_unrecognised_row_kind():
    with pytest.raises(TunelabError) as info:
        detect_shape(["q"], file="f", line=1)
    assert info.value.kind == "unknown_shape"


def test_prompt_key_is_the_conversation_up_to_the_last_answer():
    def chat(*turns):
        return to_example({"messages": [{"role": r, "content": c} for r, c in turns]}, "messages", file="f", line=1)

    one = chat(("system", "S"), ("user", " Hi "), ("assistant", "A"))
    assert prompt_key(one) == (("system", "S"), ("user", "Hi"))
    assert prompt_key(one) == prompt_key(chat(("system", "S "), ("user", "Hi"), ("assistant", "other answer")))
    assert prompt_key(one) != prompt_key(chat(("user", "Hi"), ("assistant", "A")))  # the system turn counts
    qa = to_example({"question": "Hi", "answer": "A"}, "qa", file="f", line=1)
    assert prompt_key(qa) == (("user", "Hi"),)
    text = to_example({"text": " doc ", "label": "x"}, "classification", file="f", line=1)
    assert prompt_key(text) == "doc"  # the label is not part of the prompt
    # rows that are not training examples: a prompt with no answer yet, a custom template's fields
    assert prompt_key(Example("qa", {}, [{"role": "user", "content": "Hi"}], None, "<prompt>", {})) == (("user", "Hi"),)
    assert prompt_key(Example("qa", {"question": "Hi"}, None, None, "<prompt>", {})) == '{"question": "Hi"}'


def test_a_preference_pair_and_its_rejected_side():
    from tunelab.data.shapes import rejected_example

    example = to_example({"prompt": "P", "chosen": "C", "rejected": "R", "id": 1}, "preference", file="f", line=3)
    rejected = rejected_example(example)
    assert [(m["role"], m["content"]) for m in rejected.messages] == [("user", "P"), ("assistant", "R")]
    assert rejected.fields["chosen"] == "R" and example.fields["chosen"] == "C" and rejected.meta == {"id": 1}
    with pytest.raises(TunelabError, match="f:3: rejected: is the same text as chosen"):
        to_example({"prompt": "P", "chosen": "C", "rejected": "C"}, "preference", file="f", line=3)


def turns(*pairs: tuple[str, str]) -> list[dict]:
    return [{"role": r, "content": c} for r, c in pairs]


def test_conversational_preference_rows_match_their_string_form():
    """TRL's conversational preference rows (explicit prompt, or whole dialogues whose shared turns are
    the prompt) become the same Example as the hand-written string pair."""
    strings = to_example({"prompt": "Q?", "chosen": "C", "rejected": "R"}, "preference", file="f", line=1)
    explicit = {"prompt": turns(("user", "Q?")), "chosen": turns(("assistant", "C")), "rejected": turns(("assistant", "R"))}
    implicit = {"chosen": turns(("user", "Q?"), ("assistant", "C")), "rejected": turns(("user", "Q?"), ("assistant", "R"))}
    hh = {"chosen": "\n\nHuman: Q?\n\nAssistant: C", "rejected": "\n\nHuman: Q?\n\nAssistant: R"}
    for row in (explicit, implicit, hh):
        ex = to_example(row, detect_shape(row, file="f", line=1), file="f", line=1)
        assert (ex.fields, ex.messages) == (strings.fields, strings.messages)
    multi = to_example({"prompt": turns(("system", "S"), ("user", "A"), ("assistant", "B"), ("user", "Q?")),
                        "chosen": "C", "rejected": "R"}, "preference", file="f", line=1)  # fmt: skip
    assert multi.fields["prompt"] == "System: S\n\nUser: A\n\nAssistant: B\n\nUser: Q?"
    assert [m["role"] for m in multi.messages] == ["system", "user", "assistant", "user", "assistant"]


BAD_PREFERENCE = {
    "same dialogue": ({"chosen": "\n\nHuman: Q\n\nAssistant: A", "rejected": "\n\nHuman: Q\n\nAssistant: A"}, "rejected"),
    "differ earlier": ({"chosen": "\n\nHuman: Q\n\nAssistant: A", "rejected": "\n\nHuman: P\n\nAssistant: B"}, "chosen"),
    "no turns": ({"chosen": "just text", "rejected": "other text"}, "chosen"),
    "prompt ends with the answer": ({"prompt": turns(("user", "Q"), ("assistant", "A")), "chosen": "C", "rejected": "R"},
                                    "prompt[1]"),
    "two answers": ({"prompt": "Q", "chosen": turns(("assistant", "C"), ("assistant", "D")), "rejected": "R"}, "chosen"),
    "user answer": ({"prompt": "Q", "chosen": turns(("user", "C")), "rejected": "R"}, "chosen"),
    "label not bool": ({"prompt": "Q", "completion": "C", "label": "yes"}, "label"),
    "label int": ({"prompt": "Q", "completion": "C", "label": 1}, "label"),
    "empty completion": ({"prompt": "Q", "completion": " ", "label": True}, "completion"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_PREFERENCE))
def test_bad_conversational_preference_rows_name_line_and_field(case):
    row, field = BAD_PREFERENCE[case]
    with pytest.raises(TunelabError) as err:
        to_example(row, detect_shape(row, file="d.jsonl", line=4), file="d.jsonl", line=4)
    assert (err.value.file, err.value.line, err.value.field) == ("d.jsonl", 4, field)


def test_a_dialogue_pair_that_differs_early_is_one_problem_not_two():
    row = {"chosen": "\n\nHuman: Q\n\nAssistant: A", "rejected": "\n\nHuman: P\n\nAssistant: B"}
    example, errors = row_problems(row, "preference_dialogue", file="d.jsonl", line=2)
    assert example is None and [e.field for e in errors] == ["chosen"]
