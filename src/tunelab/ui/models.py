"""The models the UI chats with and pits against each other: each contestant ("RUN", or "RUN:base" for
its base model) loaded once into a `tunelab serve` engine, the least recently used one unloaded when
more than `max_loaded` are asked for."""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.evaluation.arena import BASE_SUFFIX, contestant_run
from tunelab.serve.engine import Engine


class ModelPool:
    def __init__(self, root: Path, *, max_loaded: int = 3) -> None:
        self.root = root
        self.max_loaded = max(1, max_loaded)
        self._engines: OrderedDict[str, Engine] = OrderedDict()
        self._lock = threading.Lock()

    def contestants(self, runs: list[dict[str, Any]]) -> list[str]:
        """Every complete generative run and its base model."""
        names = []
        for run in runs:
            if run["state"] == "complete" and run["generative"]:
                names += [run["name"], run["name"] + BASE_SUFFIX]
        return names

    def engine(self, contestant: str) -> Engine:
        """The started engine of CONTESTANT (loading it on first use: seconds to minutes)."""
        from tunelab.runs.loading import load_run

        with self._lock:
            if contestant in self._engines:
                self._engines.move_to_end(contestant)
                return self._engines[contestant]
            name, base = contestant_run(contestant)
            path = self.root / name
            if not (path / "run.json").is_file() or "/" in name:
                raise TunelabError(f"no run named {name!r}", file=str(self.root), expected="a finished run here")
            loaded = load_run(path, base=base, trust_remote_code=False)
            loaded.require_generative()
            engine = Engine(loaded, max_batch=8)
            engine.start()
            self._engines[contestant] = engine
            while len(self._engines) > self.max_loaded:
                _, old = self._engines.popitem(last=False)
                old.stop()
            return engine

    def close(self) -> None:
        with self._lock:
            for engine in self._engines.values():
                engine.stop()
            self._engines.clear()
