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
import string
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tunelab.data.shapes import RESPONSE_FIELD, Example
from tunelab.errors import TunelabError

IGNORE_INDEX = -100  # label value the loss skips


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
        if shape == "text":
            return cls(kind="text", train_on_prompt=True)
        if template is not None:
            if shape in ("messages", "conversations"):
                raise TunelabError(
                    f"a custom template needs named fields, but the data has shape {shape!r}",
                    field="data.template",
                    expected="no template (use the model's chat template), or question/answer-style rows",
                )
            response = RESPONSE_FIELD[shape]
            names = [n for _, n, _, _ in string.Formatter().parse(template) if n]
            if response not in names:
                raise TunelabError(
                    f"template has no {{{response}}} placeholder",
                    field="data.template",
                    expected=f"a template that places the response field {{{response}}}",
                )
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
        return cls(**json.loads(path.read_text(encoding="utf-8")))

    def warnings(self, tokenizer: Any) -> list[str]:
        out = []
        if self.kind == "custom" and tokenizer.eos_token and tokenizer.eos_token not in (self.template or ""):
            out.append(f"custom template has no EOS; tunelab appends {tokenizer.eos_token!r} so the model learns to stop")
        return out

    # -- rendering -----------------------------------------------------------------------------
    def _chat(self, tokenizer: Any, messages: list[dict], *, generation_prompt: bool) -> str:
        if self.system_prompt is not None and (not messages or messages[0]["role"] != "system"):
            messages = [{"role": "system", "content": self.system_prompt}, *messages]
        return tokenizer.apply_chat_template(
            messages, chat_template=self.chat_template, tokenize=False, add_generation_prompt=generation_prompt
        )

    def segments(self, example: Example, tokenizer: Any) -> list[tuple[str, bool]]:
        """The full training text as (text, trained?) pieces, in order."""
        eos = tokenizer.eos_token or ""
        if self.kind == "text":
            return [(example.text or "", True), (eos, True)]
        if self.kind == "custom":
            assert self.template is not None and self.response_field is not None
            cut = self.template.index("{" + self.response_field + "}")
            fields = _fields_for(example, self.template)
            prompt = self.template[:cut].format(**fields)
            response = self.template[cut:].format(**fields)
            if eos and not response.endswith(eos):
                response += eos
            return [(prompt, self.train_on_prompt), (response, True)]
        # chat: each assistant turn is trained; everything the template adds around it is not
        messages = example.messages or []
        pieces: list[tuple[str, bool]] = []
        done = ""
        for i, msg in enumerate(messages):
            if msg["role"] != "assistant":
                continue
            before = self._chat(tokenizer, messages[:i], generation_prompt=True)
            through = self._chat(tokenizer, messages[: i + 1], generation_prompt=False)
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
            cut = self.template.index("{" + self.response_field + "}")
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


def _fields_for(example: Example, template: str) -> dict[str, Any]:
    names = [n for _, n, _, _ in string.Formatter().parse(template) if n]
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
        names = [n for _, n, _, _ in string.Formatter().parse(fmt.template) if n and n != fmt.response_field]
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
