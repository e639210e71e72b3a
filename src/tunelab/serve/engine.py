"""The worker that owns the model: requests wait in a bounded queue, and whatever queued up while the
model was busy is decoded together as one batch on one thread (the model is never used by two
threads at once)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tunelab.inference.decoding import SamplingOptions, Sequence, context_length, decode
from tunelab.serve.schemas import ApiError

# -- the worker ----------------------------------------------------------------------------------


@dataclass
class Job:
    prompt_ids: list[int]
    options: SamplingOptions
    emit: Callable[[tuple], None]  # called from the worker thread: ("text", s) / ("done", row) / ("error", msg)
    cancelled: threading.Event = field(default_factory=threading.Event)


class Engine:
    """Owns the model; decodes queued jobs in batches on one thread."""

    def __init__(self, loaded: Any, *, max_batch: int = 8, max_queue: int = 64) -> None:
        self.loaded = loaded
        self.max_batch = max(1, max_batch)
        self.jobs: queue.Queue[Job] = queue.Queue(maxsize=max_queue)
        self.context = context_length(loaded.model)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.batches = 0  # how many batches were decoded (for tests and stats)
        self.largest_batch = 0

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="tunelab-engine", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        while True:  # requests still queued get an answer instead of waiting forever
            try:
                self.jobs.get_nowait().emit(("error", "the server is shutting down"))
            except queue.Empty:
                break

    def submit(self, job: Job) -> None:
        try:
            self.jobs.put_nowait(job)
        except queue.Full:
            raise ApiError(503, "the server is busy (request queue full); retry shortly",
                           type_="server_error", code="server_busy") from None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                first = self.jobs.get(timeout=0.1)
            except queue.Empty:
                continue
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    batch.append(self.jobs.get_nowait())
                except queue.Empty:
                    break
            batch = [j for j in batch if not j.cancelled.is_set()]
            if not batch:
                continue
            self.batches += 1
            self.largest_batch = max(self.largest_batch, len(batch))
            rows = [
                Sequence(j.prompt_ids, j.options, on_text=lambda s, j=j: j.emit(("text", s)),
                         cancelled=j.cancelled.is_set)
                for j in batch
            ]
            try:
                decode(self.loaded.model, self.loaded.tokenizer, rows, batch_size=len(rows))
            except Exception as exc:  # noqa: BLE001 - a failed batch fails its requests, not the server
                for j in batch:
                    j.emit(("error", f"{type(exc).__name__}: {exc}"))
                continue
            for j, row in zip(batch, rows, strict=True):
                j.emit(("done", row))
