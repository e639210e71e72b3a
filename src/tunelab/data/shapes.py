"""Recognise what a row looks like (question/answer, Alpaca, chat, ...) and turn it into one `Example` form."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tunelab.errors import TunelabError

# "classification" precedes "text": detection takes the first shape whose fields are all present
SHAPES = ("qa", "alpaca", "prompt_completion", "input_output", "messages", "conversations", "classification", "text")

# Fields of each shape in prompt→response order; REQUIRED decides detection, FIELDS what is not meta.
FIELDS = {
    "qa": ("question", "answer"),
    "alpaca": ("instruction", "input", "output"),
    "prompt_completion": ("prompt", "completion"),
    "input_output": ("input", "output"),
    "messages": ("messages",),
    "conversations": ("conversations",),
    "classification": ("text", "label"),
    "text": ("text",),
}
REQUIRED = {**FIELDS, "alpaca": ("instruction", "output")}
RESPONSE_FIELD = {
    "qa": "answer",
    "alpaca": "output",
    "prompt_completion": "completion",
    "input_output": "output",
}

_DESCRIPTIONS = {
    "qa": "question/answer (fields question, answer)",
    "alpaca": "Alpaca instruction (fields instruction, input (optional), output)",
    "prompt_completion": "prompt/completion (fields prompt, completion)",
    "input_output": "input/output (fields input, output)",
    "messages": "chat messages (field messages: a list of {role, content})",
    "conversations": "ShareGPT conversations (field conversations: a list of {from, value})",
    "classification": "text classification (fields text, label)",
    "text": "plain text for pretraining (field text)",
}
ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "model": "assistant", "system": "system"}  # fmt: skip


@dataclass
class Example:
    """One validated training example; `messages` is the chat form the trainer renders with a template."""

    shape: str
    fields: dict[str, Any]
    messages: list[dict] | None
    text: str | None
    source: str
    meta: dict[str, Any]


def describe_shape(shape: str) -> str:
    """Human name of a shape, with its fields, for notes and error messages."""
    return _DESCRIPTIONS.get(shape, shape)


def all_shapes() -> str:
    """Every recognised shape, for 'expected ...' in error messages."""
    return "; ".join(f"{name}: {describe_shape(name)}" for name in SHAPES)


def detect_shape(keys: Iterable[str], *, file: str, line: int) -> str:
    """Pick the shape whose required fields are all present (first match in SHAPES order)."""
    keys = list(keys)
    for shape in SHAPES:
        if all(field in keys for field in REQUIRED[shape]):
            return shape
    hint = ""
    lower = {str(k).lower(): k for k in keys}
    for shape in SHAPES:
        if all(field in lower for field in REQUIRED[shape]):
            mapping = ", ".join(f"{lower[f]}: {f}" for f in REQUIRED[shape])
            hint = f"; to use them as {shape}, set columns: {{{mapping}}}"
            break
    raise TunelabError(
        f"cannot tell the shape of the data from the row's keys {', '.join(map(repr, keys)) or '(none)'}{hint}",
        file=file,
        line=line,
        expected=f"one of {all_shapes()}; or map your columns onto these fields",
    )


def to_example(row: dict, shape: str, *, file: str, line: int) -> Example:
    """Validate a row against a shape and build its chat (or text) form; bad rows raise with field and line."""
    if shape not in SHAPES:
        raise TunelabError(f"unknown shape {shape!r}", field="shape", expected=f"one of {', '.join(SHAPES)}")
    for name in REQUIRED[shape]:
        if name not in row:
            keys = ", ".join(map(repr, row)) or "(none)"
            raise TunelabError(
                f"missing for shape {shape}; the row has keys {keys}",
                file=file,
                line=line,
                field=name,
                expected=describe_shape(shape),
            )
    where = {"file": file, "line": line}
    fields: dict[str, Any] = {}
    messages: list[dict] | None
    text = None
    if shape == "text":
        fields["text"] = text = _string(row, "text", **where)
        messages = None
    elif shape == "classification":
        fields["text"] = text = _string(row, "text", **where)
        fields["label"] = _label(row, **where)
        messages = None
    elif shape == "messages":
        fields["messages"] = row["messages"]
        messages = _messages(row["messages"], "messages", "role", "content", **where)
    elif shape == "conversations":
        fields["conversations"] = row["conversations"]
        messages = _messages(row["conversations"], "conversations", "from", "value", **where)
    else:
        for name in FIELDS[shape]:
            optional = shape == "alpaca" and name == "input"
            fields[name] = _string(row, name, optional=optional, **where)
        prompt_field, response_field = REQUIRED[shape]
        prompt = fields[prompt_field]
        if shape == "alpaca" and fields["input"].strip():
            prompt += "\n\n" + fields["input"]
        messages = [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": fields[response_field]},
        ]
    meta = {k: v for k, v in row.items() if k not in FIELDS[shape]}
    return Example(shape, fields, messages, text, f"{file}:{line}", meta)


def _label(row: dict, *, file: str, line: int) -> str | int:
    """A class label: a non-empty string or an integer (booleans and floats are ambiguous)."""
    value = row.get("label")
    if isinstance(value, str) and value.strip():
        return value.strip()
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise TunelabError(
        f"is {value!r}", file=file, line=line, field="label", expected="a class name (string) or an integer class id"
    )


def _string(row: dict, name: str, *, file: str, line: int, optional: bool = False) -> str:
    """A non-empty string field; numbers are accepted as their text, an optional field may be empty or null."""
    value = row.get(name)
    if optional and value is None:
        return ""
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise TunelabError(
            f"is {_type_name(value)}, not a string", file=file, line=line, field=name, expected="a string"
        )
    if not optional and not value.strip():
        raise TunelabError("is empty", file=file, line=line, field=name, expected="a non-empty string")
    return value


def _messages(turns: Any, field: str, role_key: str, text_key: str, *, file: str, line: int) -> list[dict]:
    """Check a chat (OpenAI messages or ShareGPT turns) and return it as [{role, content}] with standard roles."""
    sharegpt = field == "conversations"
    allowed = ", ".join(SHAREGPT_ROLES if sharegpt else ROLES)
    example = f"{{{role_key!r}: ..., {text_key!r}: ...}}"
    if not isinstance(turns, list) or not turns:
        what = "an empty list" if isinstance(turns, list) else _type_name(turns)
        raise TunelabError(
            f"is {what}", file=file, line=line, field=field, expected=f"a non-empty list of {example}"
        )
    messages = []
    for i, turn in enumerate(turns):
        at = f"{field}[{i}]"
        if not isinstance(turn, dict):
            raise TunelabError(
                f"is {_type_name(turn)}, not an object", file=file, line=line, field=at, expected=example
            )
        for key in (role_key, text_key):
            if key not in turn:
                keys = ", ".join(map(repr, turn)) or "(none)"
                raise TunelabError(
                    f"missing; the turn has keys {keys}",
                    file=file,
                    line=line,
                    field=f"{at}.{key}",
                    expected=example,
                )
        raw_role = turn[role_key]
        role = SHAREGPT_ROLES.get(str(raw_role).lower()) if sharegpt else raw_role
        if role not in ROLES:
            raise TunelabError(
                f"unknown role {raw_role!r}",
                file=file,
                line=line,
                field=f"{at}.{role_key}",
                expected=f"one of {allowed}",
            )
        content = turn[text_key]
        if not isinstance(content, str):
            raise TunelabError(
                f"is {_type_name(content)}, not a string",
                file=file,
                line=line,
                field=f"{at}.{text_key}",
                expected="a string",
            )
        if role != "system" and not content.strip():
            raise TunelabError(
                "is empty",
                file=file,
                line=line,
                field=f"{at}.{text_key}",
                expected=f"a non-empty {role} turn",
            )
        messages.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in messages):
        reply = "assistant" if not sharegpt else "gpt/assistant/model"
        raise TunelabError(
            f"has no {reply} turn, so there is nothing to learn to answer",
            file=file,
            line=line,
            field=field,
            expected=f"at least one {reply} turn",
        )
    return messages


def _type_name(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), f"a {type(value).__name__}")
