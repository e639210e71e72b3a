"""The one table of training methods: adding a method is a module plus one line here."""

from __future__ import annotations

from tunelab.methods import dora, freeze, full, ia3, lora, prompt_learning, qlora
from tunelab.methods.base import Method

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        full.METHOD,
        freeze.METHOD,
        lora.METHOD,
        dora.METHOD,
        qlora.METHOD,
        ia3.METHOD,
        prompt_learning.PROMPT,
        prompt_learning.PTUNING,
        prompt_learning.PREFIX,
    )
}
