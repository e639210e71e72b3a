"""A finished (or running) run: its directory layout, loading it back, and the artifacts it wrote.

Re-exported lazily: `tunelab.runs.layout` and `tunelab.runs.artifacts` are cheap and low in the
stack (stages write through them); `tunelab.runs.loading` reads configs and loads models.
"""

from __future__ import annotations

from typing import Any

_HOMES = {
    "RunDir": "layout",
    "write_json_atomic": "layout",
    "write_jsonl_atomic": "layout",
    "BASE": "artifacts",
    "TUNED": "artifacts",
    "Prediction": "artifacts",
    "read_predictions": "artifacts",
    "write_predictions": "artifacts",
    "LoadedRun": "loading",
    "load_run": "loading",
    "run_config": "loading",
}
__all__ = list(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(name)
    import importlib

    return getattr(importlib.import_module(f"tunelab.runs.{_HOMES[name]}"), name)
