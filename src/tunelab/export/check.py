"""The template/EOS contract of a finished run, checked end to end: every way of using the model —
the adapter as trained, the merged model (with the chat template it saves), the GGUF file read back
through transformers' GGUF loader, and `tunelab serve` — renders the same prompt tokens and gives
the same greedy answer on a fixed prompt set, stopping at EOS within the token budget.

`check_run` takes the served side as a function (`serve/check.py` passes one that talks HTTP to a
real server on 127.0.0.1), so this module stays below the server in the layers. A difference is
reported with the first differing token, decoded, on each side.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError

__all__ = ["CHECK_PROMPTS", "Answer", "CheckResult", "check_run", "first_difference"]

CHECK_PROMPTS = ("What is AI?", "Tell me a joke.", "What colour is the sky?", "How do I boil an egg?")


@dataclass
class Answer:
    """One way of using the model, on one prompt."""

    prompt_ids: list[int] | None  # None: only their number is known (the server reports a count)
    token_ids: list[int] | None  # the answer's tokens without the final EOS; None: only its text is known
    stopped: bool  # ended at EOS (not at the token limit)
    text: str = ""
    prompt_count: int | None = None


@dataclass
class CheckResult:
    run: Path
    prompts: list[str]
    max_new_tokens: int
    ways: list[str]  # "adapter" (the reference), "merged", "gguf", "served"
    problems: list[str] = field(default_factory=list)  # empty: the contract holds
    answers: dict[str, list[Answer]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "run": str(self.run), "passed": self.passed, "prompts": self.prompts, "max_new_tokens": self.max_new_tokens,
            "ways": self.ways, "problems": self.problems, "notes": self.notes,
            "answers": {w: [a.__dict__ for a in said] for w, said in self.answers.items()},
        }  # fmt: skip


def first_difference(want: list[int], got: list[int]) -> int | None:
    """The index of the first token that differs (a length difference counts at the shorter's end)."""
    for i, (a, b) in enumerate(zip(want, got, strict=False)):
        if a != b:
            return i
    return None if len(want) == len(got) else min(len(want), len(got))


def _token(tokenizer: Any, ids: list[int], i: int) -> str:
    return f"{tokenizer.decode([ids[i]])!r} (id {ids[i]})" if i < len(ids) else "the end"


def _greedy(model: Any, tokenizer: Any, ids: list[int], max_new_tokens: int) -> Answer:
    from tunelab.inference.decoding import SamplingOptions, Sequence, decode

    row = Sequence(list(ids), SamplingOptions(max_new_tokens=max_new_tokens))
    decode(model, tokenizer, [row], batch_size=1)
    return Answer(list(ids), list(row.token_ids), row.finish_reason == "stop", row.text)


def _chat_ids(tokenizer: Any, prompt: str) -> list[int]:
    """Prompt ids as a user of the exported model gets them: its saved chat template, one user turn."""
    return list(tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                              tokenize=True, return_dict=True)["input_ids"])  # fmt: skip


def check_run(run_dir: str | Path, *, prompts: list[str] | None = None, max_new_tokens: int = 48,
              gguf_dtype: str = "f32", served: Callable[[str, int], Answer] | None = None,
              ways: tuple[str, ...] = ("merged", "gguf", "served")) -> CheckResult:  # fmt: skip
    """Compare the adapter with each of `ways`; `served(prompt, max_new_tokens)` answers as the server does."""
    from tunelab.export.gguf import write_gguf
    from tunelab.export.merge import export_chat_template, merged_model
    from tunelab.inference.prompts import prompt_ids
    from tunelab.progress import info, quiet_libraries
    from tunelab.runs.loading import load_run

    quiet_libraries()
    prompts = list(prompts or CHECK_PROMPTS)
    loaded = load_run(run_dir)
    loaded.require_generative()
    if loaded.fmt.kind == "text":
        raise TunelabError("a pretraining run has no prompt template to check", file=str(loaded.run.path),
                           expected="an sft run (chat or custom template)")  # fmt: skip
    tok = loaded.tokenizer
    result = CheckResult(loaded.run.path, prompts, max_new_tokens, ["adapter", *ways])
    info(f"[cyan]check[/cyan] adapter: {len(prompts)} prompts, greedy, up to {max_new_tokens} new tokens")
    reference = [_greedy(loaded.model, tok, prompt_ids(loaded.fmt, tok, loaded.shape, p), max_new_tokens) for p in prompts]
    result.answers["adapter"] = reference
    del loaded
    for i, said in enumerate(reference):
        if not said.stopped:
            result.problems.append(f"adapter, prompt {i + 1}: no EOS within {max_new_tokens} new tokens "
                                   f"(the model does not stop): {said.text[:80]!r}")  # fmt: skip

    others: dict[str, Callable[[], list[Answer]]] = {}
    merged = None
    if "merged" in ways or "gguf" in ways:
        merged = merged_model(run_dir, dtype="float32")
        template = export_chat_template(merged.fmt, merged.tokenizer)
        if template:
            merged.tokenizer.chat_template = template  # what `tunelab merge` saves with the model

    if "merged" in ways:
        def merged_answers() -> list[Answer]:
            return [_greedy(merged.model, tok, _chat_ids(merged.tokenizer, p), max_new_tokens) for p in prompts]

        others["merged"] = merged_answers
    if "gguf" in ways:
        def gguf_answers() -> list[Answer]:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            folder = Path(tempfile.mkdtemp(prefix="tunelab-check-"))
            path = folder / f"model-{gguf_dtype}.gguf"
            write_gguf(merged.model, merged.tokenizer, merged.tokenizer.chat_template, path, dtype=gguf_dtype)
            gtok = AutoTokenizer.from_pretrained(str(folder), gguf_file=path.name)
            model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=path.name, dtype=torch.float32).eval()
            out = [_greedy(model, gtok, _chat_ids(gtok, p), max_new_tokens) for p in prompts]
            path.unlink()
            folder.rmdir()
            return out

        others["gguf"] = gguf_answers
    if "served" in ways:
        if served is None:
            raise ValueError("check_run needs `served` to check the server")
        others["served"] = lambda: [served(p, max_new_tokens) for p in prompts]

    for way, answer in others.items():
        info(f"[cyan]check[/cyan] {way}")
        said = answer()
        result.answers[way] = said
        for i, (want, got) in enumerate(zip(reference, said, strict=True)):
            if got.prompt_ids is None:  # the server says how many prompt tokens it ran, and the answer's text
                if got.prompt_count != len(want.prompt_ids):
                    result.problems.append(f"{way}, prompt {i + 1}: {got.prompt_count} prompt tokens, the adapter's "
                                           f"format makes {len(want.prompt_ids)}")  # fmt: skip
                    continue
                want = Answer(want.prompt_ids, tok(want.text, add_special_tokens=False)["input_ids"], want.stopped)
                got = Answer(want.prompt_ids, tok(got.text, add_special_tokens=False)["input_ids"], got.stopped)
            at = first_difference(want.prompt_ids, got.prompt_ids)
            if at is not None:
                result.problems.append(f"{way}, prompt {i + 1}: the prompt differs at token {at}: adapter "
                                       f"{_token(tok, want.prompt_ids, at)}, {way} {_token(tok, got.prompt_ids, at)}")  # fmt: skip
                continue
            at = first_difference(want.token_ids, got.token_ids)
            if at is not None:
                result.problems.append(f"{way}, prompt {i + 1}: the answer differs at new token {at}: adapter "
                                       f"{_token(tok, want.token_ids, at)}, {way} {_token(tok, got.token_ids, at)}")  # fmt: skip
            elif want.stopped != got.stopped:
                result.problems.append(f"{way}, prompt {i + 1}: the adapter {'stopped' if want.stopped else 'ran on'}"
                                       f" but {way} {'stopped' if got.stopped else 'ran on'} after the same tokens")  # fmt: skip
    if merged is not None and gguf_dtype != "f32":
        result.notes.append(f"GGUF written as {gguf_dtype}: its rounding may change greedy tokens")
    return result
