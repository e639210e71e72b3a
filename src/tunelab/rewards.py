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


def _text(completion: Any) -> str:
    """A completion as text: TRL hands conversational completions as [{"role", "content"}] lists."""
    if isinstance(completion, list):
        return " ".join(str(m.get("content", "")) for m in completion if isinstance(m, dict))
    return str(completion)


def exact_answer(prompts: list[str], completions: list[Any], answer: list[Any], **_: Any) -> list[float]:
    """1 when the answer is exactly the reference (`answer` field), digits and nothing else (a final
    full stop and surrounding spaces allowed); else 0. The gold rule of the arithmetic built-ins."""
    return [float(_text(c).strip().rstrip(".").strip() == str(a).strip()) for c, a in zip(completions, answer, strict=True)]


def arithmetic(prompts: list[str], completions: list[Any], answer: list[Any], **_: Any) -> list[float]:
    """A shaped reward for the arithmetic built-ins: 1 for exactly the answer; 0.5 for a reply whose
    first number is the answer, less 0.02 per extra word (at most 0.4 off); 0 otherwise."""
    out = []
    for completion, ref in zip(completions, answer, strict=True):
        text = _text(completion).strip()
        if text.rstrip(".").strip() == str(ref).strip():
            out.append(1.0)
            continue
        numbers = _NUMBER.findall(text)
        if numbers and numbers[0] == str(ref).strip():
            out.append(0.5 - min(0.4, 0.02 * max(0, len(text.split()) - 1)))
        else:
            out.append(0.0)
    return out


REWARDS: dict[str, tuple[RewardFunction, str]] = {
    "exact-answer": (exact_answer, "1 if the reply is exactly the row's `answer`, else 0"),
    "arithmetic": (arithmetic, "1 for exactly `answer`; 0.5 (less 0.02 a word) when its first number is it"),
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
