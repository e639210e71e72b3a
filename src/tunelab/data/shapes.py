"""The one table of row shapes (question/answer, Alpaca, chat, ...): how each is recognised and turned into
one `Example` form, and what makes two examples the same row or the same prompt."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any

from tunelab.errors import TunelabError


@dataclass(frozen=True)
class RowShape:
    """One way a data row can look. Adding a shape is one entry in `ROW_SHAPES` (and, for a new `kind`,
    one builder in `_BUILDERS`); detection, validation, the doctor, prepare and the configs read this table."""

    name: str
    fields: tuple[str, ...]  # its fields in prompt → response order; every other column is meta
    required: tuple[str, ...]  # the fields a row must have: detection picks the first shape with all of them
    prompt_field: str | None  # pair shapes: the field a prompt-only row needs (batch generation)
    response_field: str | None  # pair shapes: the field the model learns to write
    kind: str  # "pair" | "chat" | "preference" | "feedback" | "prompt" | "classification" | "text": how a row becomes an Example
    description: str  # human name with its fields, for notes and error messages


# In detection order: "classification" precedes "text", whose only field it also has.
ROW_SHAPES: dict[str, RowShape] = {
    s.name: s
    for s in (
        RowShape("qa", ("question", "answer"), ("question", "answer"), "question", "answer", "pair",
                 "question/answer (fields question, answer)"),
        RowShape("alpaca", ("instruction", "input", "output"), ("instruction", "output"), "instruction", "output",
                 "pair", "Alpaca instruction (fields instruction, input (optional), output)"),
        RowShape("preference", ("prompt", "chosen", "rejected"), ("prompt", "chosen", "rejected"), "prompt", "chosen",
                 "preference", "preference pair (fields prompt, chosen, rejected: strings, or message lists as in "
                 "TRL's conversational format)"),
        RowShape("preference_dialogue", ("chosen", "rejected"), ("chosen", "rejected"), None, "chosen", "preference",
                 "two whole dialogues sharing their prompt (fields chosen, rejected: message lists, or Anthropic HH "
                 "text with Human:/Assistant: turns); the prompt is the turns they share"),
        RowShape("feedback", ("prompt", "completion", "label"), ("prompt", "completion", "label"), "prompt",
                 "completion", "feedback", "unpaired feedback for KTO (fields prompt, completion, label: true for a "
                 "good response, false for a bad one)"),
        RowShape("prompt_completion", ("prompt", "completion"), ("prompt", "completion"), "prompt", "completion",
                 "pair", "prompt/completion (fields prompt, completion)"),
        RowShape("input_output", ("input", "output"), ("input", "output"), "input", "output", "pair",
                 "input/output (fields input, output)"),
        RowShape("prompt", ("prompt",), ("prompt",), "prompt", None, "prompt",
                 "prompt only, for RL (field prompt; other fields, such as answer, go to the reward)"),
        RowShape("messages", ("messages",), ("messages",), None, None, "chat",
                 "chat messages (field messages: a list of {role, content})"),
        RowShape("conversations", ("conversations",), ("conversations",), None, None, "chat",
                 "ShareGPT conversations (field conversations: a list of {from, value})"),
        RowShape("classification", ("text", "label"), ("text", "label"), None, None, "classification",
                 "text classification (fields text, label)"),
        RowShape("text", ("text",), ("text",), None, None, "text", "plain text for pretraining (field text)"),
    )
}  # fmt: skip

# Views of the table, for code that wants one column of it.
SHAPES = tuple(ROW_SHAPES)
RESPONSE_FIELD = {name: s.response_field for name, s in ROW_SHAPES.items() if s.response_field}
PREFERENCE_SHAPES = tuple(name for name, s in ROW_SHAPES.items() if s.kind == "preference")  # chosen vs rejected

ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "model": "assistant", "system": "system"}  # fmt: skip
_TURN_KEYS = {"messages": ("role", "content"), "conversations": ("from", "value")}  # chat field → its turn keys


@dataclass
class Example:
    """One validated training example; `messages` is the chat form the trainer renders with a template."""

    shape: str
    fields: dict[str, Any]
    messages: list[dict] | None
    text: str | None
    source: str
    meta: dict[str, Any]


def prompt_key(example: Any) -> Hashable:
    """What makes two examples the same prompt (a held-out row that leaks, a group kept in one split or
    fold): the conversation up to its last answer, stripped (the whole conversation when it has no answer);
    else the document or classified text, stripped (the fields, as JSON, when there is no text)."""
    if example.messages:
        turns = example.messages
        last = max((i for i, m in enumerate(turns) if m["role"] == "assistant"), default=len(turns))
        return tuple((m["role"], m["content"].strip()) for m in turns[:last])
    return (example.text or json.dumps(example.fields, sort_keys=True, ensure_ascii=False, default=str)).strip()


def content_key(example: Example) -> Hashable:
    """What makes two examples the same row for training."""
    if example.messages is not None:
        return tuple((m["role"], m["content"]) for m in example.messages)
    return (example.text, example.fields.get("label"))


def kind_of(shape: str | None) -> str | None:
    """The kind of a shape ("pair", "chat", "classification", "text"); None for a name not in the table."""
    return ROW_SHAPES[shape].kind if shape in ROW_SHAPES else None


def describe_shape(shape: str) -> str:
    """Human name of a shape, with its fields, for notes and error messages."""
    return ROW_SHAPES[shape].description if shape in ROW_SHAPES else shape


def all_shapes() -> str:
    """Every recognised shape, for 'expected ...' in error messages."""
    return "; ".join(f"{name}: {s.description}" for name, s in ROW_SHAPES.items())


def shape_choices(*, auto: bool = True) -> str:
    """'auto or one of qa, alpaca, …': what a `shape` option accepts."""
    names = ", ".join(ROW_SHAPES)
    return f"auto or one of {names}" if auto else f"one of {names}"


def known_shape(value: str, *, hint: str = "") -> str:
    """A config's `shape` option: "auto" or a shape of the table; else a ValueError (pydantic validators
    turn it into a line-numbered config error). `hint` follows the name, e.g. a did-you-mean."""
    if value != "auto" and value not in ROW_SHAPES:
        raise ValueError(f"unknown shape {value!r}{hint}; expected {shape_choices()}")
    return value


def check_shape_name(shape: str, *, field: str = "shape") -> None:
    """Refuse a requested shape that is neither "auto" nor in the table."""
    if shape != "auto" and shape not in ROW_SHAPES:
        raise TunelabError(f"unknown shape {shape!r}", field=field, expected=shape_choices(), kind="config")


def detect_shape(keys: Iterable[str], *, file: str, line: int) -> str:
    """Pick the shape whose required fields are all present (first match in table order)."""
    keys = list(keys)
    for shape in ROW_SHAPES.values():
        if all(field in keys for field in shape.required):
            return shape.name
    hint = ""
    lower = {str(k).lower(): k for k in keys}
    for shape in ROW_SHAPES.values():
        if all(field in lower for field in shape.required):
            mapping = ", ".join(f"{lower[f]}: {f}" for f in shape.required)
            hint = f"; to use them as {shape.name}, set columns: {{{mapping}}}"
            break
    raise TunelabError(
        f"cannot tell the shape of the data from the row's keys {', '.join(map(repr, keys)) or '(none)'}{hint}",
        file=file,
        line=line,
        expected=f"one of {all_shapes()}; or map your columns onto these fields",
        kind="unknown_shape",
    )


def detect_shapes(rows: list[Any]) -> tuple[str | None, list[str | None]]:
    """The shape most rows have (ties: the first seen) and each row's own (None: not recognised);
    `rows` have `data`, `file` and `line` (sources.Row)."""
    detected: list[str | None] = []
    for row in rows:
        try:
            detected.append(detect_shape(row.data, file=row.file, line=row.line))
        except TunelabError:
            detected.append(None)
    counts = Counter(s for s in detected if s is not None)
    return (counts.most_common(1)[0][0] if counts else None), detected


def to_example(row: dict, shape: str, *, file: str, line: int) -> Example:
    """Validate a row against a shape and build its chat (or text) form; bad rows raise with field and line."""
    spec = ROW_SHAPES.get(shape)
    if spec is None:
        raise TunelabError(f"unknown shape {shape!r}", field="shape", expected=shape_choices(auto=False),
                           kind="config")  # fmt: skip
    for name in spec.required:
        if name not in row:
            keys = ", ".join(map(repr, row)) or "(none)"
            raise TunelabError(
                f"missing for shape {shape}; the row has keys {keys}",
                file=file,
                line=line,
                field=name,
                expected=spec.description,
                kind="missing_field",
            )
    fields, messages, text = _BUILDERS[spec.kind](row, spec, {"file": file, "line": line})
    meta = {k: v for k, v in row.items() if k not in spec.fields}
    return Example(shape, fields, messages, text, f"{file}:{line}", meta)


Built = tuple[dict[str, Any], list[dict] | None, str | None]  # an Example's fields, messages and text


def _pair(row: dict, spec: RowShape, where: dict) -> Built:
    """One prompt and one response; optional fields (Alpaca's input) are appended to the prompt."""
    fields = {name: _string(row, name, optional=name not in spec.required, **where) for name in spec.fields}
    prompt = fields[spec.prompt_field]
    for name in spec.fields:
        if name not in (spec.prompt_field, spec.response_field) and fields[name].strip():
            prompt += "\n\n" + fields[name]
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": fields[spec.response_field]}]
    return fields, messages, None


def _preference(row: dict, spec: RowShape, where: dict) -> Built:
    """A prompt with a preferred and a dispreferred response; `messages` is the chosen conversation (the
    rejected one is the same prompt with `fields["rejected"]`, see `rejected_example`). The prompt is a
    string or a conversation up to a user turn; the responses are strings or one assistant message each.
    Without a prompt (`preference_dialogue`) it is the turns the two dialogues share."""
    if "prompt" in spec.fields:
        prompt = _prompt_turns(row["prompt"], "prompt", where)
        chosen, rejected = (_response(row[name], name, where) for name in ("chosen", "rejected"))
    else:
        prompt, chosen, rejected = _split_dialogues(row, where)
    if chosen == rejected:
        raise TunelabError("is the same text as chosen, so the pair prefers nothing", **where, field="rejected",
                           expected="two different responses", kind="empty_field")  # fmt: skip
    fields = {"prompt": _prompt_field(row, prompt), "chosen": chosen, "rejected": rejected}
    return fields, [*prompt, {"role": "assistant", "content": chosen}], None


def _feedback(row: dict, spec: RowShape, where: dict) -> Built:
    """One response to a prompt, marked good (`label: true`) or bad (`false`): KTO's unpaired feedback."""
    prompt = _prompt_turns(row["prompt"], "prompt", where)
    completion = _response(row["completion"], "completion", where)
    label = row["label"]
    if not isinstance(label, bool):
        raise TunelabError(f"is {_type_name(label)}", **where, field="label",
                           expected="true (a good response) or false (a bad one)", kind="labels")  # fmt: skip
    fields = {"prompt": _prompt_field(row, prompt), "completion": completion, "label": label}
    return fields, [*prompt, {"role": "assistant", "content": completion}], None


def _prompt_turns(value: Any, name: str, where: dict) -> list[dict]:
    """A prompt as chat turns: a string is one user turn; a message list must end with the user's turn."""
    if not isinstance(value, list):
        return [{"role": "user", "content": _string({name: value}, name, **where)}]
    turns = _messages(value, name, "role", "content", need_assistant=False, **where)
    if turns[-1]["role"] != "user":
        raise TunelabError(f"ends with {'an' if turns[-1]['role'] == 'assistant' else 'a'} {turns[-1]['role']} turn", **where, field=f"{name}[{len(turns) - 1}]",
                           expected="a conversation ending with the user turn the responses answer",
                           kind="wrong_type")  # fmt: skip
    return turns


def _response(value: Any, name: str, where: dict) -> str:
    """A response: a string, or (TRL's conversational format) a list of one assistant message."""
    if not isinstance(value, list):
        return _string({name: value}, name, **where)
    turns = _messages(value, name, "role", "content", **where)
    if len(turns) != 1:
        raise TunelabError(f"has {len(turns)} turns", **where, field=name,
                           expected='one assistant message, e.g. [{"role": "assistant", "content": "..."}]',
                           kind="wrong_type")  # fmt: skip
    return turns[0]["content"]


def _prompt_field(row: dict, turns: list[dict]) -> str:
    """The prompt as one string (for custom templates and tables): as given, else its turns written out."""
    if isinstance(row.get("prompt"), str):
        return row["prompt"]
    if len(turns) == 1:
        return turns[0]["content"]
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in turns)


_HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):[ \t]?")


def _split_dialogues(row: dict, where: dict) -> tuple[list[dict], str, str]:
    """(shared prompt turns, chosen answer, rejected answer) of two dialogues that differ only in their
    last assistant turn."""
    sides = {name: _dialogue(row[name], name, where) for name in ("chosen", "rejected")}
    chosen, rejected = sides["chosen"], sides["rejected"]
    if chosen == rejected:
        raise TunelabError("is the same dialogue as chosen, so the pair prefers nothing", **where, field="rejected",
                           expected="two dialogues with different last answers", kind="empty_field")  # fmt: skip
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    for name, turns in sides.items():
        rest = turns[shared:]
        if len(rest) != 1 or rest[0]["role"] != "assistant" or shared == 0:
            raise TunelabError(f"differs from the other dialogue in {len(rest)} turn(s) after the {shared} they share",
                               **where, field=name, expected="two dialogues that share every turn but the last "
                               "assistant answer", kind="wrong_type")  # fmt: skip
    prompt = chosen[:shared]
    if prompt[-1]["role"] != "user":
        raise TunelabError("the shared turns end with an assistant turn", **where, field="chosen",
                           expected="a shared conversation ending with the user turn both answers reply to",
                           kind="wrong_type")  # fmt: skip
    return prompt, chosen[-1]["content"], rejected[-1]["content"]


def _dialogue(value: Any, name: str, where: dict) -> list[dict]:
    """A whole dialogue: a message list, or Anthropic HH text ("\n\nHuman: …\n\nAssistant: …")."""
    if isinstance(value, list):
        return _messages(value, name, "role", "content", **where)
    text = _string({name: value}, name, **where)
    marks = list(_HH_TURN.finditer(text))
    if not marks or text[: marks[0].start()].strip():
        raise TunelabError("is text without Human:/Assistant: turns", **where, field=name,
                           expected='a message list, or HH text "\\n\\nHuman: ...\\n\\nAssistant: ..."',
                           kind="wrong_type")  # fmt: skip
    roles = {"Human": "user", "Assistant": "assistant"}
    turns = [{"role": roles[m.group(1)], "content": text[m.end() : nxt.start() if nxt else len(text)].strip()}
             for m, nxt in zip(marks, [*marks[1:], None], strict=True)]  # fmt: skip
    return _messages(turns, name, "role", "content", **where)


def _prompt_only(row: dict, spec: RowShape, where: dict) -> Built:
    """A prompt for the model to answer (RL): its one user turn; the other fields stay for the reward."""
    fields = {"prompt": _string(row, "prompt", **where)}
    return fields, [{"role": "user", "content": fields["prompt"]}], None


def rejected_example(example: Example) -> Example:
    """The dispreferred side of a preference pair, as an Example of the same prompt (in its response field
    too, so a custom template's `{chosen}` renders it)."""
    rejected = example.fields["rejected"]
    messages = [*(example.messages or [])[:-1], {"role": "assistant", "content": rejected}]
    return Example(example.shape, {**example.fields, "chosen": rejected}, messages, example.text, example.source,
                   example.meta)  # fmt: skip


def _chat(row: dict, spec: RowShape, where: dict) -> Built:
    (name,) = spec.fields
    return {name: row[name]}, _messages(row[name], name, *_TURN_KEYS[name], **where), None


def _text_fields(row: dict, spec: RowShape, where: dict) -> Built:
    """A text (and, for classification, its label)."""
    fields = {name: _label(row, **where) if name == "label" else _string(row, name, **where) for name in spec.fields}
    return fields, None, fields["text"]


_BUILDERS: dict[str, Callable[[dict, RowShape, dict], Built]] = {
    "pair": _pair,
    "chat": _chat,
    "preference": _preference,
    "feedback": _feedback,
    "prompt": _prompt_only,
    "classification": _text_fields,
    "text": _text_fields,
}

_PLACEHOLDERS: dict[str, Any] = {  # valid stand-ins for a bad field, so `row_problems` can look further
    "messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "x"}],
    "conversations": [{"from": "human", "value": "x"}, {"from": "gpt", "value": "x"}],
}


def _placeholder(key: str, shape: str, row: dict) -> Any:
    """A valid stand-in for a bad field. A dialogue's stand-in is the other dialogue with another last
    answer: anything else would differ from it in every turn, a problem the row does not have."""
    other = row.get({"chosen": "rejected", "rejected": "chosen"}.get(key, ""))
    if shape == "preference_dialogue" and isinstance(other, str):
        return other + " (another answer)"
    if shape == "preference_dialogue" and isinstance(other, list) and other:
        return [*other[:-1], {"role": "assistant", "content": "another answer"}]
    return _PLACEHOLDERS.get(key, "x")


def row_problems(data: dict, shape: str, *, file: str, line: int) -> tuple[Example | None, list[TunelabError]]:
    """`to_example`, but every bad field is reported, not only the first: after each error the field is
    replaced by a valid stand-in and the row checked again, so the messages are exactly training's."""
    try:
        return to_example(data, shape, file=file, line=line), []
    except TunelabError as err:
        errors = [err]
    spec = ROW_SHAPES.get(shape)
    patched, fixed = dict(data), set()
    while True:
        key = (errors[-1].field or "").split("[")[0].split(".")[0]
        if not key or key in fixed or len(fixed) > len(spec.fields if spec else ()):
            return None, errors
        fixed.add(key)
        patched[key] = _placeholder(key, shape, patched)
        try:
            to_example(patched, shape, file=file, line=line)
            return None, errors
        except TunelabError as err:
            errors.append(err)


def _label(row: dict, *, file: str, line: int) -> str | int:
    """A class label: a non-empty string or an integer (booleans and floats are ambiguous)."""
    value = row.get("label")
    if isinstance(value, str) and value.strip():
        return value.strip()
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise TunelabError(f"is {value!r}", file=file, line=line, field="label",
                       expected="a class name (string) or an integer class id", kind="labels")  # fmt: skip


def _string(row: dict, name: str, *, file: str, line: int, optional: bool = False) -> str:
    """A non-empty string field; numbers are accepted as their text, an optional field may be empty or null."""
    value = row.get(name)
    if optional and value is None:
        return ""
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise TunelabError(f"is {_type_name(value)}, not a string", file=file, line=line, field=name,
                           expected="a string", kind="wrong_type")  # fmt: skip
    if not optional and not value.strip():
        raise TunelabError("is empty", file=file, line=line, field=name, expected="a non-empty string",
                           kind="empty_field")  # fmt: skip
    return value


def _messages(turns: Any, field: str, role_key: str, text_key: str, *, file: str, line: int,
              need_assistant: bool = True) -> list[dict]:  # fmt: skip
    """Check a chat (OpenAI messages or ShareGPT turns) and return it as [{role, content}] with standard roles."""
    sharegpt = field == "conversations"
    allowed = ", ".join(SHAREGPT_ROLES if sharegpt else ROLES)
    example = f"{{{role_key!r}: ..., {text_key!r}: ...}}"
    where = {"file": file, "line": line}
    if not isinstance(turns, list) or not turns:
        empty = isinstance(turns, list)
        raise TunelabError(f"is {'an empty list' if empty else _type_name(turns)}", **where, field=field,
                           expected=f"a non-empty list of {example}", kind="empty_field" if empty else "wrong_type")  # fmt: skip
    messages = []
    for i, turn in enumerate(turns):
        at = f"{field}[{i}]"
        if not isinstance(turn, dict):
            raise TunelabError(f"is {_type_name(turn)}, not an object", **where, field=at, expected=example,
                               kind="wrong_type")  # fmt: skip
        for key in (role_key, text_key):
            if key not in turn:
                keys = ", ".join(map(repr, turn)) or "(none)"
                raise TunelabError(f"missing; the turn has keys {keys}", **where, field=f"{at}.{key}",
                                   expected=example, kind="missing_field")  # fmt: skip
        raw_role = turn[role_key]
        role = SHAREGPT_ROLES.get(str(raw_role).lower()) if sharegpt else raw_role
        if role not in ROLES:
            raise TunelabError(f"unknown role {raw_role!r}", **where, field=f"{at}.{role_key}",
                               expected=f"one of {allowed}", kind="unknown_role")  # fmt: skip
        content = turn[text_key]
        if not isinstance(content, str):
            raise TunelabError(f"is {_type_name(content)}, not a string", **where, field=f"{at}.{text_key}",
                               expected="a string", kind="wrong_type")  # fmt: skip
        if role != "system" and not content.strip():
            raise TunelabError("is empty", **where, field=f"{at}.{text_key}", expected=f"a non-empty {role} turn",
                               kind="empty_field")  # fmt: skip
        messages.append({"role": role, "content": content})
    if need_assistant and not any(m["role"] == "assistant" for m in messages):
        reply = "assistant" if not sharegpt else "gpt/assistant/model"
        raise TunelabError(f"has no {reply} turn, so there is nothing to learn to answer", **where, field=field,
                           expected=f"at least one {reply} turn", kind="no_assistant")  # fmt: skip
    return messages


def _type_name(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), f"a {type(value).__name__}")
