"""`tunelab chat`: a conversation with a run's model in the terminal — history, the run's own
template, answers streamed by the one decoder (`inference.decoding`)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TextIO

from tunelab.errors import TunelabError
from tunelab.inference.decoding import SamplingOptions, Sequence, context_length, decode
from tunelab.inference.prompts import prompt_ids


def conversation_ids(loaded: Any, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of the prompt for the next assistant turn, formatted exactly as in training."""
    return prompt_ids(loaded.fmt, loaded.tokenizer, loaded.shape, messages=messages)


class ChatSession:
    """A conversation with a run's model: history, the run's template, streamed answers."""

    def __init__(self, loaded: Any, options: SamplingOptions) -> None:
        loaded.require_generative()
        self.loaded = loaded
        self.options = options
        self.messages: list[dict[str, str]] = []
        self.limit = context_length(loaded.model)
        self.trimmed = 0  # turns dropped to fit the context window

    @property
    def multi_turn(self) -> bool:
        return self.loaded.fmt.kind == "chat"

    def reset(self) -> None:
        self.messages = []

    def _prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        ids = conversation_ids(self.loaded, messages)
        # drop the oldest exchanges until prompt + answer fit the model's context
        while self.limit and len(ids) + self.options.max_new_tokens > self.limit and len(messages) > 1:
            messages = messages[2:] if len(messages) > 2 else messages[1:]
            self.trimmed += 1
            ids = conversation_ids(self.loaded, messages)
        if self.limit and len(ids) >= self.limit:
            raise TunelabError(
                f"message is {len(ids)} tokens; the model's context is {self.limit}",
                expected="a shorter message",
            )
        return ids

    def send(self, text: str, on_text: Callable[[str], None] | None = None,
             cancelled: Callable[[], bool] | None = None) -> Sequence:
        turn = [*self.messages, {"role": "user", "content": text}] if self.multi_turn else [
            {"role": "user", "content": text}
        ]
        row = Sequence(self._prompt_ids(turn), self.options, on_text=on_text, cancelled=cancelled)
        decode(self.loaded.model, self.loaded.tokenizer, [row])
        if self.multi_turn:
            self.messages = [*turn, {"role": "assistant", "content": row.text.strip()}]
        return row


HELP = "/reset clears the conversation, /exit quits (or Ctrl-D)"


def run_chat(loaded: Any, options: SamplingOptions, *, stdin: TextIO | None = None, stdout: TextIO | None = None) -> None:
    """The terminal loop of `tunelab chat`: read a line, stream the answer, keep the history."""
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    session = ChatSession(loaded, options)
    decoding = "greedy" if options.greedy else f"temperature {options.temperature}, top-p {options.top_p}"
    stdout.write(f"chatting with {loaded.run.path} ({loaded.fmt.kind} template, {decoding}, "
                 f"up to {options.max_new_tokens} tokens)\n{HELP}\n")
    if not session.multi_turn:
        stdout.write("this run was trained on single prompts: each message is answered on its own\n")
    stdout.flush()
    interactive = stdin.isatty()
    while True:
        stdout.write("\n>>> ")
        stdout.flush()
        try:
            line = stdin.readline() if not interactive else input()
        except EOFError:
            line = ""
        except KeyboardInterrupt:
            stdout.write("\n")
            return
        if not line:  # end of input
            stdout.write("\n")
            return
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return
        if text == "/reset":
            session.reset()
            stdout.write("(conversation cleared)\n")
            continue
        if text.startswith("/") and text.split()[0] in ("/help", "/?"):
            stdout.write(HELP + "\n")
            continue

        def show(piece: str) -> None:
            stdout.write(piece)
            stdout.flush()

        trimmed = session.trimmed
        try:
            row = session.send(text, on_text=show)
        except KeyboardInterrupt:  # Ctrl-C stops this answer (it is not kept in the history), not the chat
            stdout.write("\n(interrupted)\n")
            continue
        except TunelabError as exc:
            stdout.write(f"error: {exc}\n")
            continue
        stdout.write("\n")
        if row.finish_reason == "length":
            stdout.write(f"(stopped at {options.max_new_tokens} tokens)\n")
        if session.trimmed > trimmed:
            stdout.write("(oldest turns dropped to fit the model's context)\n")
        stdout.flush()
