"""The one table of training methods: adding a method is a module plus one line here."""

from __future__ import annotations

from tunelab.methods import full, lora
from tunelab.methods.base import Method

METHODS: dict[str, Method] = {m.name: m for m in (full.METHOD, lora.METHOD)}
