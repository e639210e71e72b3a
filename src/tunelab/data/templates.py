"""Prompt formats: an `Example` → text segments marked trained / not trained → token ids + labels.

Training and inference share `PromptFormat.prompt_ids`, so a prompt at inference time is, token for
token, the prompt the model saw in training. The format is saved with the run (`template.json`).
Three kinds:
- "chat": the tokenizer's own chat template (the default);
- "custom": a format string such as "### Question:\\n{question}\\n### Answer:\\n{answer}", split at the
  response field; EOS is appended so the model learns to stop;
- "text": raw text for continued pretraining (no prompt, every token trained).
"""

from __future__ import annotations

import json
import os
import string
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tunelab.data.shapes import RESPONSE_FIELD, Example, kind_of
from tunelab.errors import TunelabError

IGNORE_INDEX = -100  # label value the loss skips
TEMPLATE_EXPECTED = "plain placeholders such as {question}; {{ and }} for literal braces"


def parse_template(template: str, *, field: str = "data.template") -> list[str]:
    """The field names a custom template places, in order; a template `str.format` would refuse or
    misread (a stray brace, `{}` or `{0}`, `{a.b}` / `{a[0]}`, a `!r` conversion or a `:>10` format spec)
    is one error, found when the config is read rather than on the first row rendered."""
    if not isinstance(template, str):
        raise TunelabError(f"is a {type(template).__name__}", field=field, expected=TEMPLATE_EXPECTED, kind="template")
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as err:  # "Single '}' encountered in format string", …
        raise TunelabError(f"invalid template: {err}", field=field, expected=TEMPLATE_EXPECTED, kind="template") from None
    names = []
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        whole = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
        if not name or name.isdigit() or "." in name or "[" in name:  # positional, or attribute/index lookups
            what = f"placeholder {whole} is not a field name" if name else "an empty placeholder {}"
            raise TunelabError(f"invalid template: {what}", field=field, expected=TEMPLATE_EXPECTED, kind="template")
        if spec or conversion:
            raise TunelabError(f"invalid template: placeholder {whole} has a conversion or format spec", field=field,
                               expected=TEMPLATE_EXPECTED, kind="template")  # fmt: skip
        names.append(name)
    return names


def custom_template_error(template: str, shape: str) -> TunelabError | None:
    """Why a custom template cannot format rows of `shape` (None when it can): what `PromptFormat.build`
    refuses, found without a tokenizer (the data check before training has none)."""
    if kind_of(shape) == "chat":
        return TunelabError(
            f"a custom template needs named fields, but the data has shape {shape!r}",
            field="data.template",
            expected="no template (use the model's chat template), or question/answer-style rows",
            kind="template",
        )
    response = RESPONSE_FIELD.get(shape)
    if response is None:  # text, classification: no prompt template is used
        return None
    if response not in parse_template(template):
        return TunelabError(
            f"template has no {{{response}}} placeholder",
            field="data.template",
            expected=f"a template that places the response field {{{response}}}",
            kind="template",
        )
    return None


def template_fields_error(example: Example, template: str) -> TunelabError | None:
    """Why a row cannot fill a custom template's placeholders (None when it can)."""
    try:
        _fields_for(example, template)
    except TunelabError as err:
        return err
    return None


@dataclass
class PromptFormat:
    kind: str  # "chat" | "custom" | "text"
    template: str | None = None  # custom format string
    chat_template: str | None = None  # the chat template text in use (stored so inference can't drift)
    system_prompt: str | None = None
    response_field: str | None = None  # custom: the field that is the answer
    train_on_prompt: bool = False

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        tokenizer: Any,
        *,
        shape: str,
        template: str | None = None,
        system_prompt: str | None = None,
        train_on_prompt: bool = False,
    ) -> PromptFormat:
        if kind_of(shape) == "text":
            return cls(kind="text", train_on_prompt=True)
        if template is not None:
            problem = custom_template_error(template, shape)
            if problem is not None:
                raise problem
            response = RESPONSE_FIELD.get(shape)
            if response is None:
                raise TunelabError(f"a custom template formats prompt/response rows; rows of shape {shape!r} have no "
                                   "response", field="data.template", expected="no template for this data",
                                   kind="template")  # fmt: skip
            return cls(kind="custom", template=template, response_field=response, train_on_prompt=train_on_prompt)
        if not getattr(tokenizer, "chat_template", None):
            raise TunelabError(
                "the model's tokenizer has no chat template",
                field="data.template",
                expected='a custom template, e.g. "### Question:\\n{question}\\n### Answer:\\n{answer}"',
            )
        return cls(
            kind="chat", chat_template=tokenizer.chat_template, system_prompt=system_prompt, train_on_prompt=train_on_prompt
        )

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> PromptFormat:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(**data)
        except (OSError, UnicodeDecodeError, ValueError, TypeError) as err:  # cut short, edited by hand, not ours
            raise TunelabError(f"cannot read the prompt format: {err}", file=str(path),
                               expected="the template.json `tunelab train` wrote", kind="file") from None

    def warnings(self, tokenizer: Any) -> list[str]:
        out = []
        if self.kind == "custom" and tokenizer.eos_token and tokenizer.eos_token not in (self.template or ""):
            out.append(f"custom template has no EOS; tunelab appends {tokenizer.eos_token!r} so the model learns to stop")
        return out

    # -- rendering -----------------------------------------------------------------------------
    def _with_system(self, messages: list[dict]) -> list[dict]:
        if self.system_prompt is not None and (not messages or messages[0]["role"] != "system"):
            return [{"role": "system", "content": self.system_prompt}, *messages]
        return messages

    def _chat(self, tokenizer: Any, messages: list[dict], *, generation_prompt: bool) -> str:
        return tokenizer.apply_chat_template(
            self._with_system(messages), chat_template=self.chat_template, tokenize=False,
            add_generation_prompt=generation_prompt,
        )  # fmt: skip

    def segments(self, example: Example, tokenizer: Any) -> list[tuple[str, bool]]:
        """The full training text as (text, trained?) pieces, in order."""
        eos = tokenizer.eos_token or ""
        if self.kind == "text":
            return [(example.text or "", True), (eos, True)]
        if self.kind == "custom":
            assert self.template is not None and self.response_field is not None
            cut = response_cut(self.template, self.response_field)
            fields = _fields_for(example, self.template)
            prompt = self.template[:cut].format(**fields)
            response = self.template[cut:].format(**fields)
            if eos and not response.endswith(eos):
                response += eos
            return [(prompt, self.train_on_prompt), (response, True)]
        # chat: each assistant turn is trained; everything the template adds around it is not
        turns = [i for i, msg in enumerate(example.messages or []) if msg["role"] == "assistant"]
        renders = [
            (self._chat(tokenizer, example.messages[:i], generation_prompt=True),
             self._chat(tokenizer, example.messages[: i + 1], generation_prompt=False))
            for i in turns
        ]  # fmt: skip
        return self._chat_pieces(example, renders, eos)

    def segments_many(self, examples: list[Example], tokenizer: Any, chunk: int = 512) -> list[Any]:
        """`segments` of many rows: each row's pieces, or the exception `segments` would raise for it.
        Chat templates are rendered in batched `apply_chat_template` calls (one call per row costs
        ~10× more on large files); a chunk whose batch fails is redone row by row to find the culprit."""
        if self.kind != "chat":
            return [_try(self.segments, ex, tokenizer) for ex in examples]
        out: list[Any] = []
        eos = tokenizer.eos_token or ""
        for start in range(0, len(examples), chunk):
            part = examples[start : start + chunk]
            turns = [[i for i, m in enumerate(ex.messages or []) if m["role"] == "assistant"] for ex in part]
            convs = [self._with_system(ex.messages[: i + k]) for ex, ts in zip(part, turns, strict=True) for i in ts for k in (0, 1)]
            try:
                before = self._render_many(tokenizer, convs[0::2], generation_prompt=True)
                through = self._render_many(tokenizer, convs[1::2], generation_prompt=False)
            except Exception:  # noqa: BLE001 - a template may raise anything; find the row(s) one by one
                out += [_try(self.segments, ex, tokenizer) for ex in part]
                continue
            pairs = iter(zip(before, through, strict=True))
            for ex, ts in zip(part, turns, strict=True):
                out.append(_try(self._chat_pieces, ex, [next(pairs) for _ in ts], eos))
        return out

    def _render_many(self, tokenizer: Any, convs: list[list[dict]], *, generation_prompt: bool) -> list[str]:
        if not convs:
            return []
        # an empty conversation can't go in a batch (transformers refuses it); it renders on its own
        rendered = iter(tokenizer.apply_chat_template(
            [c for c in convs if c], chat_template=self.chat_template, tokenize=False,
            add_generation_prompt=generation_prompt) if any(convs) else [])  # fmt: skip
        return [next(rendered) if c else self._chat(tokenizer, c, generation_prompt=generation_prompt) for c in convs]

    def _chat_pieces(self, example: Example, renders: list[tuple[str, str]], eos: str) -> list[tuple[str, bool]]:
        """Pieces of a chat row from its (prompt-before-turn, conversation-through-turn) renders."""
        pieces: list[tuple[str, bool]] = []
        done = ""
        for before, through in renders:
            if not before.startswith(done) or not through.startswith(before):
                raise TunelabError(
                    "the chat template renders earlier turns differently in later ones; cannot mask the prompt",
                    file=example.source,
                    expected="a chat template whose renders extend each other, or a custom template",
                )
            answer = through[len(before) :]
            # stop the trained span at the end-of-turn token: what follows belongs to the next turn
            if eos and eos in answer:
                answer = answer[: answer.index(eos) + len(eos)]
            elif eos:
                answer += eos
            pieces.append((before[len(done) :], self.train_on_prompt))
            pieces.append((answer, True))
            done = before + answer
        if not pieces:
            raise TunelabError("row has no assistant turn to learn from", file=example.source, field="messages")
        return [(t, trained) for t, trained in pieces if t]

    def prompt_text(self, example: Example, tokenizer: Any) -> str:
        """What the model is given at inference time: everything before the (last) response."""
        if self.kind == "text":
            return example.text or ""
        if self.kind == "custom":
            assert self.template is not None and self.response_field is not None
            cut = response_cut(self.template, self.response_field)
            return self.template[:cut].format(**_fields_for(example, self.template[:cut]))
        messages = list(example.messages or [])
        if messages and messages[-1]["role"] == "assistant":
            messages = messages[:-1]
        return self._chat(tokenizer, messages, generation_prompt=True)

    def reference(self, example: Example) -> str:
        """The expected response of a row (for evaluation)."""
        if self.kind == "custom" and self.response_field:
            return str(example.fields.get(self.response_field, ""))
        msgs = example.messages or []
        return msgs[-1]["content"] if msgs and msgs[-1]["role"] == "assistant" else ""

    # -- tokens --------------------------------------------------------------------------------
    def _encode(self, tokenizer: Any, text: str, first: bool) -> list[int]:
        # chat templates write their own BOS/special tokens; custom/plain text gets the
        # tokenizer's usual specials on the first piece only
        add = first and self.kind != "chat"
        return tokenizer(text, add_special_tokens=add)["input_ids"]

    def prompt_ids(self, example: Example, tokenizer: Any) -> list[int]:
        return self._encode(tokenizer, self.prompt_text(example, tokenizer), True)

    def encode(self, example: Example, tokenizer: Any, max_length: int) -> dict[str, Any]:
        """input_ids + labels (IGNORE_INDEX on untrained tokens), truncated to max_length."""
        ids: list[int] = []
        labels: list[int] = []
        for n, (text, trained) in enumerate(self.segments(example, tokenizer)):
            piece = self._encode(tokenizer, text, n == 0)
            ids += piece
            labels += piece if trained else [IGNORE_INDEX] * len(piece)
        truncated = len(ids) > max_length
        return {"input_ids": ids[:max_length], "labels": labels[:max_length], "truncated": truncated}

    def encode_many(self, examples: list[Example], tokenizer: Any, max_length: int) -> list[dict[str, Any]]:
        """`encode` of many rows, with batched template renders and two batched tokenizer calls."""
        pieces = self.segments_many(examples, tokenizer)
        for parts in pieces:
            if isinstance(parts, Exception):
                raise parts
        firsts = token_ids(tokenizer, [p[0][0] for p in pieces], special=self.kind != "chat")
        rest = iter(token_ids(tokenizer, [text for p in pieces for text, _ in p[1:]], special=False))
        out = []
        for parts, first in zip(pieces, firsts, strict=True):
            ids: list[int] = []
            labels: list[int] = []
            for (_, trained), piece in zip(parts, [first] + [next(rest) for _ in parts[1:]], strict=True):
                ids += piece
                labels += piece if trained else [IGNORE_INDEX] * len(piece)
            out.append({"input_ids": ids[:max_length], "labels": labels[:max_length], "truncated": len(ids) > max_length})
        return out


def response_cut(template: str, response_field: str) -> int:
    """Where the response placeholder starts in a custom template (a `{{answer}}` literal is not it)."""
    target = "{" + response_field + "}"
    start = template.find(target)
    while start != -1:
        run = len(template[:start]) - len(template[:start].rstrip("{"))  # braces right before it
        if run % 2 == 0:
            return start
        start = template.find(target, start + 1)
    raise TunelabError(f"template has no {target} placeholder", field="data.template",
                       expected=f"a template that places the response field {target}", kind="template")


def token_ids(tokenizer: Any, texts: list[str], *, special: bool) -> list[list[int]]:
    """Token ids of many texts in one call: a fast tokenizer's Rust backend directly (the ids
    `tokenizer(text)` would give, without building offsets), else the tokenizer itself."""
    if not texts:
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not hasattr(backend, "encode_batch_fast"):
        return list(tokenizer(texts, add_special_tokens=special)["input_ids"])
    # tunelab turns the tokenizers thread pool off (it warns after a fork); a large batch gets it back
    # for this call only: 1.7x faster on 2 cores
    previous = os.environ.get("TOKENIZERS_PARALLELISM")
    if len(texts) >= 10_000:
        os.environ["TOKENIZERS_PARALLELISM"] = "true"
    try:
        return [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=special)]
    finally:
        if previous is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = previous


def _try(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except Exception as err:  # noqa: BLE001 - returned to the caller, which names the row
        return err


def _fields_for(example: Example, template: str) -> dict[str, Any]:
    names = parse_template(template)
    values = {**example.meta, **example.fields}
    missing = [n for n in names if n not in values]
    if missing:
        raise TunelabError(
            f"template field {{{missing[0]}}} is not in this row",
            file=example.source,
            field="data.template",
            expected=f"one of the row's fields: {', '.join(sorted(values))}",
        )
    return {n: "" if values[n] is None else values[n] for n in names}


def example_from_prompt(prompt: str, fmt: PromptFormat, shape: str) -> Example:
    """Wrap a user's prompt string as an Example of the run's shape (for generate/chat)."""
    if fmt.kind == "custom" and fmt.template:
        names = [n for n in parse_template(fmt.template) if n != fmt.response_field]
        fields = {n: "" for n in names}
        if names:
            fields[names[0]] = prompt
        return Example(shape=shape, fields=fields, messages=None, text=None, source="<prompt>", meta={})
    if fmt.kind == "text":
        return Example(shape="text", fields={"text": prompt}, messages=None, text=prompt, source="<prompt>", meta={})
    return Example(
        shape=shape,
        fields={},
        messages=[{"role": "user", "content": prompt}],
        text=None,
        source="<prompt>",
        meta={},
    )
