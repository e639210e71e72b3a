"""Streaming generation with sampling options, and `tunelab chat`.

`stream_generate` decodes a batch of prompts token by token with a KV cache and reports each
row's new text as soon as it is complete UTF-8 — the same primitive serves the terminal chat (one
row) and the HTTP server (a batch of queued requests). Greedy decoding here takes the same argmax
over the same logits as `generate_from_ids`, so a greedy chat or server answer equals
`tunelab generate`'s for the same prompt.

Models that prepend virtual tokens (peft prompt/ptuning/prefix) manage their own cache inside
`generate`, so they decode one row at a time through `model.generate` instead.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from tunelab.errors import TunelabError


@dataclass
class SamplingOptions:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)  # stop strings (not included in the output)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


@dataclass
class Sequence:
    """One row to decode; `on_text` receives each new piece of text (thread of the decoder)."""

    prompt_ids: list[int]
    options: SamplingOptions
    on_text: Callable[[str], None] | None = None
    cancelled: Callable[[], bool] | None = None
    # filled in while decoding
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None  # "stop" (EOS or a stop string), "length", "cancelled"
    _sent: int = 0  # characters of `text` already handed to on_text
    _generator: Any = None


def context_length(model: Any) -> int | None:
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def uses_virtual_tokens(model: Any) -> bool:
    """peft prompt-learning models (prompt/ptuning/prefix) cannot share our KV-cache loop."""
    config = getattr(model, "active_peft_config", None)
    return bool(getattr(config, "is_prompt_learning", False))


def eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen = getattr(model, "generation_config", None)
    extra = getattr(gen, "eos_token_id", None)
    if isinstance(extra, int):
        ids.add(extra)
    elif isinstance(extra, (list, tuple)):
        ids.update(int(i) for i in extra)
    return ids


def stream_generate(model: Any, tokenizer: Any, rows: list[Sequence]) -> list[Sequence]:
    """Decode every row to its end (EOS, a stop string, its token limit or cancellation)."""
    if not rows:
        return rows
    if uses_virtual_tokens(model):
        for row in rows:
            _generate_one_with_hf(model, tokenizer, row)
        return rows
    _decode_batch(model, tokenizer, rows)
    return rows


def _decode_batch(model: Any, tokenizer: Any, rows: list[Sequence]) -> None:
    import torch

    eos = eos_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(eos), 0)
    device = next(model.parameters()).device
    width = max(len(r.prompt_ids) for r in rows)
    n = len(rows)
    ids = torch.full((n, width), pad, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r.prompt_ids) :] = torch.tensor(r.prompt_ids, dtype=torch.long)
        mask[i, width - len(r.prompt_ids) :] = 1
        if not r.options.greedy:
            g = torch.Generator(device="cpu")
            if r.options.seed is not None:
                g.manual_seed(r.options.seed)
            else:
                g.seed()
            r._generator = g
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    limit = max(r.options.max_new_tokens for r in rows)
    active = [r.finish_reason is None for r in rows]
    was_training = model.training
    model.eval()
    try:
        from transformers import DynamicCache

        cache = DynamicCache()
        with torch.inference_mode():
            first = {"input_ids": ids, "attention_mask": mask, "position_ids": positions, "past_key_values": cache,
                     "use_cache": True}
            try:  # only the last position's logits are needed: skip a (rows × prompt × vocab) tensor
                out = model(**first, logits_to_keep=1)
            except TypeError:
                out = model(**first)
            for step in range(limit):
                logits = out.logits[:, -1, :].float()
                next_ids = []
                for i, r in enumerate(rows):
                    if not active[i]:
                        next_ids.append(pad)
                        continue
                    token = _pick(logits[i], r)
                    next_ids.append(token)
                    active[i] = _advance(r, token, tokenizer, eos)
                if not any(active) or step == limit - 1:
                    break
                cache = out.past_key_values
                mask = torch.cat([mask, torch.ones((n, 1), dtype=mask.dtype, device=device)], dim=1)
                positions = positions[:, -1:] + 1
                step_ids = torch.tensor(next_ids, dtype=torch.long, device=device).unsqueeze(1)
                out = model(input_ids=step_ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                            use_cache=True)
    finally:
        model.train(was_training)
    for i, r in enumerate(rows):
        if active[i]:  # only the model-wide limit can leave a row active
            _finish(r, "length")


def _pick(logits: Any, row: Sequence) -> int:
    import torch

    if row.options.greedy:
        return int(torch.argmax(logits).item())
    probs = torch.softmax(logits / row.options.temperature, dim=-1)
    if row.options.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        cumulative = torch.cumsum(sorted_probs, dim=-1)
        # keep the smallest prefix whose mass reaches top_p (always at least the top token)
        drop = cumulative - sorted_probs >= row.options.top_p
        sorted_probs[drop] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs.cpu(), 1, generator=row._generator).item())


def _advance(row: Sequence, token: int, tokenizer: Any, eos: set[int]) -> bool:
    """Add one token to a row; False once the row is finished."""
    if row.cancelled is not None and row.cancelled():
        _finish(row, "cancelled")
        return False
    if token in eos:
        _finish(row, "stop")
        return False
    row.token_ids.append(token)
    text = tokenizer.decode(row.token_ids, skip_special_tokens=True)
    if not text.endswith("\ufffd"):  # an incomplete UTF-8 sequence waits for its next byte
        row.text = text
        for stop in row.options.stop:
            at = row.text.find(stop)
            if at != -1:
                row.text = row.text[:at]
                _finish(row, "stop")
                return False
        _emit(row, final=False)
    if len(row.token_ids) >= row.options.max_new_tokens:
        _finish(row, "length")
        return False
    return True


def _emit(row: Sequence, *, final: bool) -> None:
    # hold back the tail that could still become a stop string
    hold = 0 if final else max((len(s) - 1 for s in row.options.stop), default=0)
    upto = max(row._sent, len(row.text) - hold)
    if upto > row._sent and row.on_text is not None:
        row.on_text(row.text[row._sent : upto])
    row._sent = upto


def _finish(row: Sequence, reason: str) -> None:
    row.finish_reason = reason
    _emit(row, final=True)


def _generate_one_with_hf(model: Any, tokenizer: Any, row: Sequence) -> None:
    """Virtual-token models: transformers' own generate loop, streamed through a callback."""
    import torch
    from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList
    from transformers.generation.streamers import BaseStreamer

    eos = eos_ids(model, tokenizer)
    state = {"prompt_seen": False, "done": False}

    class _Streamer(BaseStreamer):
        def put(self, value: Any) -> None:
            if not state["prompt_seen"]:  # generate hands over the prompt first
                state["prompt_seen"] = True
                return
            for token in value.reshape(-1).tolist():
                if not state["done"] and not _advance(row, int(token), tokenizer, eos):
                    state["done"] = True

        def end(self) -> None:
            pass

    class _Stop(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            return torch.full((input_ids.shape[0],), state["done"], dtype=torch.bool, device=input_ids.device)

    options = row.options
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(eos), 0)
    config = GenerationConfig(
        max_new_tokens=options.max_new_tokens,
        do_sample=not options.greedy,
        temperature=options.temperature if not options.greedy else None,
        top_p=options.top_p if not options.greedy else None,
        eos_token_id=sorted(eos),
        pad_token_id=pad,
    )
    if not options.greedy and options.seed is not None:
        torch.manual_seed(options.seed)
    device = next(model.parameters()).device
    ids = torch.tensor([row.prompt_ids], dtype=torch.long, device=device)
    with torch.inference_mode():
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config,
                       streamer=_Streamer(), stopping_criteria=StoppingCriteriaList([_Stop()]))
    if row.finish_reason is None:
        _finish(row, "length")


# -- prompts for a conversation -----------------------------------------------------------------


def require_generative(loaded: Any) -> None:
    if loaded.fmt is None:
        raise TunelabError(
            f"run is a {loaded.cfg.task} run; it classifies text rather than generating it",
            file=str(loaded.run.path),
            expected="a run of a generative task (sft, pretrain)",
        )


def conversation_ids(loaded: Any, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of the prompt for the next assistant turn, formatted exactly as in training.

    Chat-template runs see the whole conversation; a custom-template run was trained on single
    prompts, so it is given the last user message alone; a text run continues the last message.
    """
    from tunelab.data.shapes import Example
    from tunelab.data.templates import example_from_prompt

    fmt, tok = loaded.fmt, loaded.tokenizer
    if fmt.kind == "chat":
        example = Example(shape="messages", fields={}, messages=list(messages), text=None, source="<chat>", meta={})
        return fmt.prompt_ids(example, tok)
    last_user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    return fmt.prompt_ids(example_from_prompt(last_user, fmt, loaded.shape), tok)


class ChatSession:
    """A conversation with a run's model: history, the run's template, streamed answers."""

    def __init__(self, loaded: Any, options: SamplingOptions) -> None:
        require_generative(loaded)
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
        stream_generate(self.loaded.model, self.loaded.tokenizer, [row])
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
