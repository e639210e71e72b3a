"""The one prompt builder: a user's text or conversation → the prompt token ids of a run's format,
token for token what training put before the answer. Used by generate, chat, the server, batch
generation, bench, merge and export alike."""

from __future__ import annotations

from typing import Any

from tunelab.data.shapes import Example
from tunelab.data.templates import PromptFormat, example_from_prompt


def prompt_shape(fmt: PromptFormat | None) -> str:
    """The row shape a run's prompts are built in, from its saved format."""
    if fmt is None:
        return "classification"
    if fmt.kind == "text":
        return "text"
    if fmt.kind == "custom":
        from tunelab.data.shapes import RESPONSE_FIELD

        return next((s for s, f in RESPONSE_FIELD.items() if f == fmt.response_field), "qa")
    return "messages"


def prompt_example(fmt: PromptFormat, shape: str, text: str | None = None, *,
                   messages: list[dict[str, str]] | None = None, source: str = "<prompt>") -> Example:  # fmt: skip
    """An Example holding only a prompt. A chat format sees the whole conversation; a custom-template
    run was trained on single prompts, so it gets the last user message alone; a text run continues it."""
    if messages is not None:
        if fmt.kind == "chat":
            return Example(shape="messages", fields={}, messages=list(messages), text=None, source=source, meta={})
        text = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    example = example_from_prompt(text or "", fmt, shape)
    example.source = source
    return example


def prompt_ids(fmt: PromptFormat, tokenizer: Any, shape: str, text: str | None = None, *,
               messages: list[dict[str, str]] | None = None) -> list[int]:  # fmt: skip
    """Token ids of the prompt for the next answer, formatted exactly as in training."""
    return fmt.prompt_ids(prompt_example(fmt, shape, text, messages=messages), tokenizer)


def display_input(example: Example) -> str:
    """What a person reads as a row's input in tables and reports: a single-turn row's user message;
    a conversation, turn by turn ("user: …" / "assistant: …" lines, the answer being judged left out);
    else the first non-empty field."""
    msgs = list(example.messages or [])
    if msgs and msgs[-1]["role"] == "assistant":
        msgs = msgs[:-1]  # the reference answer
    turns = [m for m in msgs if m["role"] != "system"]
    if len(turns) > 1:
        return "\n".join(f"{m['role']}: {m['content']}" for m in msgs)
    users = [m["content"] for m in turns if m["role"] == "user"]
    if users:
        return users[-1]
    return next((str(v) for k, v in example.fields.items() if v), "")
