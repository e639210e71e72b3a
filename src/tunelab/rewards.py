"""Programmatic rewards and gold rules: the one table of functions that score a completion.

A reward scores completions for reinforcement learning (GRPO); a gold rule is the same kind of
function used only to judge (base vs tuned answers on held-out prompts), never trained on — when RL
raises a learned reward but not the gold rule, the reward is being gamed.

Every function takes TRL's reward-function signature, so a user's own `module:function` is called
the same way:

    def my_reward(prompts: list[str], completions: list[str], **fields) -> list[float]: ...

`completions[i]` is the model's answer text to `prompts[i]`; `fields` holds the data rows' other
columns, one list per column (e.g. `answer`), aligned with `prompts`.
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError

RewardFunction = Callable[..., list[float]]

_NUMBER = re.compile(r"-?\d+")


def completion_text(completion: Any) -> str:
    """A completion as text: TRL hands conversational completions as [{"role", "content"}] lists."""
    if isinstance(completion, list):
        return " ".join(str(m.get("content", "")) for m in completion if isinstance(m, dict))
    return str(completion)


def exact_answer(prompts: list[str], completions: list[Any], answer: list[Any], **_: Any) -> list[float]:
    """1 when the answer is exactly the reference (`answer` field), digits and nothing else (a final
    full stop and surrounding spaces allowed); else 0. The gold rule of the arithmetic built-ins."""
    return [float(completion_text(c).strip().rstrip(".").strip() == str(a).strip()) for c, a in zip(completions, answer, strict=True)]


def arithmetic(prompts: list[str], completions: list[Any], answer: list[Any], **_: Any) -> list[float]:
    """A shaped reward for the arithmetic built-ins: 1 for exactly the answer; for a reply that contains
    the answer among its numbers, 0.5 less 0.02 per extra word (never below 0.1); 0 otherwise. Dense
    enough that a group of sampled wordy replies differs (GRPO learns only from differences)."""
    out = []
    for completion, ref in zip(completions, answer, strict=True):
        text = completion_text(completion).strip()
        if text.rstrip(".").strip() == str(ref).strip():
            out.append(1.0)
        elif str(ref).strip() in _NUMBER.findall(text):
            out.append(max(0.1, 0.5 - 0.02 * max(0, len(text.split()) - 1)))
        else:
            out.append(0.0)
    return out


def final_number(prompts: list[str], completions: list[Any], answer: list[Any], **_: Any) -> list[float]:
    """1 when the reply's last number is the reference (`answer`): it states the right result, in any
    words or format ("7", "3 + 4 = 7."); else 0. A gold rule for correctness, where `exact-answer` is
    one for correctness and format."""
    out = []
    for completion, ref in zip(completions, answer, strict=True):
        numbers = _NUMBER.findall(completion_text(completion))
        out.append(float(bool(numbers) and numbers[-1] == str(ref).strip()))
    return out


REWARDS: dict[str, tuple[RewardFunction, str]] = {
    "exact-answer": (exact_answer, "1 if the reply is exactly the row's `answer`, else 0"),
    "final-number": (final_number, "1 if the reply's last number is the row's `answer` (right result, any format)"),
    "arithmetic": (arithmetic, "1 for exactly `answer`; 0.5 (less 0.02 a word, at least 0.1) when it contains it"),
}


def resolve_reward(spec: str, *, field: str, folder: Path | None = None) -> RewardFunction:
    """A reward by name: a built-in of `REWARDS`, or `module:function` (importable from `folder`, the
    config's, or the Python path). Refused with one line when it does not exist."""
    if spec in REWARDS:
        return REWARDS[spec][0]
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise TunelabError(f"unknown reward {spec!r}", field=field,
                           expected=f"one of {', '.join(REWARDS)}, a reward run's folder, or module:function")  # fmt: skip
    try:
        if folder is not None and (folder / f"{module_name.split('.')[0]}.py").is_file() and str(folder) not in sys.path:
            sys.path.insert(0, str(folder))  # the user's reward file next to their config
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise TunelabError(f"cannot import {module_name!r} ({err})", field=field,
                           expected="module:function of a Python file on the path") from None  # fmt: skip
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise TunelabError(f"{module_name} has no function {attr!r}", field=field, expected="module:function")
    return fn


def check_fields(fn: RewardFunction, fields: list[str], *, field: str, source: str | None = None) -> None:
    """Refuse a reward or gold rule that needs a column the rows lack (its required parameters other
    than prompts and completions), before any model is trained or judged."""
    import inspect

    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a callable without a readable signature: TRL will call it as it is
        return
    needed = [p.name for p in params if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
              and p.name not in ("prompts", "completions")]  # fmt: skip
    missing = [name for name in needed if name not in fields]
    if missing:
        raise TunelabError(f"needs the column(s) {', '.join(missing)}, which the data rows lack (they have "
                           f"{', '.join(fields) or 'no other columns'})", file=source, field=field,
                           expected=f"rows with the field {missing[0]!r}, or a rule that does not need it")  # fmt: skip
