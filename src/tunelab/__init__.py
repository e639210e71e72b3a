"""tunelab: fine-tune language models end to end, offline, on a CPU or a GPU.

The public API is re-exported here lazily so `import tunelab` stays fast.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["train", "resume", "generate", "predict", "load_run", "models", "plan", "load_config", "TunelabError"]


def __getattr__(name: str) -> Any:
    if name in ("train", "resume", "generate", "predict", "load_run", "models", "plan"):
        from tunelab import api

        return getattr(api, name)
    if name == "load_config":
        from tunelab.config import load_config

        return load_config
    if name == "TunelabError":
        from tunelab.errors import TunelabError

        return TunelabError
    raise AttributeError(name)
