import pytest

from tunelab.data.shapes import Example
from tunelab.data.templates import IGNORE_INDEX, PromptFormat, example_from_prompt
from tunelab.errors import TunelabError
from tunelab.models.loading import load_tokenizer


@pytest.fixture(scope="module")
def tok(tiny_model):
    return load_tokenizer(tiny_model)


def qa(q="What colour is the sky?", a="The sky is blue."):
    return Example(
        shape="qa",
        fields={"question": q, "answer": a},
        messages=[{"role": "user", "content": q}, {"role": "assistant", "content": a}],
        text=None,
        source="t.jsonl:1",
        meta={},
    )


def trained_text(tok, enc):
    return tok.decode([i for i, lab in zip(enc["input_ids"], enc["labels"], strict=True) if lab != IGNORE_INDEX])


def test_chat_template_masks_prompt_and_trains_answer_with_eos(tok):
    fmt = PromptFormat.build(tok, shape="qa")
    enc = fmt.encode(qa(), tok, 256)
    assert trained_text(tok, enc) == "The sky is blue.<|im_end|>"
    # the prompt the model sees at inference is exactly the masked prefix
    prompt = fmt.prompt_ids(qa(), tok)
    assert enc["input_ids"][: len(prompt)] == prompt
    assert all(lab == IGNORE_INDEX for lab in enc["labels"][: len(prompt)])
    assert tok.decode(prompt).endswith("<|im_start|>assistant\n")


def test_system_prompt_is_added(tok):
    fmt = PromptFormat.build(tok, shape="qa", system_prompt="Be brief.")
    assert tok.decode(fmt.prompt_ids(qa(), tok)).startswith("<|im_start|>system\nBe brief.<|im_end|>")


def test_multi_turn_trains_every_assistant_turn(tok):
    ex = Example(
        shape="messages",
        fields={},
        messages=[
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "one"},
            {"role": "user", "content": "again"},
            {"role": "assistant", "content": "two"},
        ],
        text=None,
        source="m.jsonl:1",
        meta={},
    )
    enc = PromptFormat.build(tok, shape="messages").encode(ex, tok, 256)
    assert trained_text(tok, enc) == "one<|im_end|>two<|im_end|>"


def test_custom_template_appends_eos_and_warns(tok):
    fmt = PromptFormat.build(tok, shape="qa", template="### Question:\n{question}\n### Answer:\n{answer}")
    enc = fmt.encode(qa(), tok, 256)
    assert trained_text(tok, enc) == "The sky is blue.<|im_end|>"
    assert tok.decode(fmt.prompt_ids(qa(), tok)) == "### Question:\nWhat colour is the sky?\n### Answer:\n"
    assert any("no EOS" in w for w in fmt.warnings(tok))


def test_custom_template_without_response_field_is_refused(tok):
    with pytest.raises(TunelabError, match=r"no \{answer\} placeholder"):
        PromptFormat.build(tok, shape="qa", template="Q: {question}")


def test_custom_template_unknown_field_names_row(tok):
    fmt = PromptFormat.build(tok, shape="qa", template="{topic}: {question}\n{answer}")
    with pytest.raises(TunelabError, match=r"t.jsonl:1: data.template: template field \{topic\}"):
        fmt.encode(qa(), tok, 256)


def test_train_on_prompt_and_truncation(tok):
    fmt = PromptFormat.build(tok, shape="qa", train_on_prompt=True)
    enc = fmt.encode(qa(), tok, 256)
    assert all(lab != IGNORE_INDEX for lab in enc["labels"])
    short = fmt.encode(qa(), tok, 5)
    assert len(short["input_ids"]) == 5 and short["truncated"]


def test_save_load_and_prompt_round_trip(tok, tmp_path):
    fmt = PromptFormat.build(tok, shape="qa")
    fmt.save(tmp_path / "template.json")
    again = PromptFormat.load(tmp_path / "template.json")
    ex = example_from_prompt("What colour is the sky?", again, "qa")
    assert again.prompt_ids(ex, tok) == fmt.prompt_ids(qa(), tok)


def test_text_format_trains_everything(tok):
    fmt = PromptFormat.build(tok, shape="text")
    ex = Example(shape="text", fields={"text": "All the world's a stage."}, messages=None, text="All the world's a stage.", source="p.txt:1", meta={})
    enc = fmt.encode(ex, tok, 256)
    assert trained_text(tok, enc) == "All the world's a stage.<|im_end|>"


def messages_row(messages, line):
    return Example(shape="messages", fields={}, messages=messages, text=None, source=f"m.jsonl:{line}", meta={})


@pytest.mark.parametrize("system_prompt", [None, "Be brief."])
def test_encode_many_equals_encode_row_by_row(tok, system_prompt):
    rows = [qa(f"Question {i}?", f"Answer {i}.") for i in range(7)] + [
        messages_row([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "one"},
                      {"role": "user", "content": "again"}, {"role": "assistant", "content": "two"}], 9),
        messages_row([{"role": "system", "content": "own system"}, {"role": "user", "content": "q"},
                      {"role": "assistant", "content": "a"}], 10),
    ]  # fmt: skip
    for fmt in (PromptFormat.build(tok, shape="messages", system_prompt=system_prompt),
                PromptFormat.build(tok, shape="qa", template="Q: {question}\nA: {answer}")):  # fmt: skip
        usable = rows if fmt.kind == "chat" else rows[:7]
        for limit in (12, 256):
            assert fmt.encode_many(usable, tok, limit) == [fmt.encode(ex, tok, limit) for ex in usable]
        # chunk=3: the rows span several batched renders
        assert fmt.segments_many(usable, tok, chunk=3) == [fmt.segments(ex, tok) for ex in usable]


def test_segments_many_returns_each_failing_rows_error_and_keeps_the_rest(tok):
    fmt = PromptFormat.build(tok, shape="messages")
    good = qa()
    no_answer = messages_row([{"role": "user", "content": "only a question"}], 2)
    starts_with_answer = messages_row([{"role": "assistant", "content": "hello"}], 3)  # empty prompt: transformers refuses
    out = fmt.segments_many([good, no_answer, starts_with_answer, good], tok, chunk=2)
    assert out[0] == out[3] == fmt.segments(good, tok)
    assert isinstance(out[1], TunelabError) and "no assistant turn" in str(out[1])
    assert isinstance(out[2], Exception)
    with pytest.raises(TunelabError, match="no assistant turn"):
        fmt.encode_many([good, no_answer], tok, 64)
