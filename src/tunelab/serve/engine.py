"""The worker that owns the model: requests wait in line and are decoded in batches on one thread (the
model is never used by two threads at once).

- Batches: whatever has queued up while the model was busy is decoded together (up to `max_batch`
  rows), each row with its own options, streaming its own tokens; a row is answered as soon as it is
  finished, not when its batch is.
- Fairness: while others wait, a row yields after `chunk_tokens` tokens of its turn (decoding's
  `Sequence.pause`): the waiting requests and the yielded rows form the next batch, newcomers first,
  the rest in turn. A yielded row resumes where it stopped (same tokens, text and sampler). With no
  one waiting a batch runs to its end, exactly as `decode` runs it.
- Isolation: when decoding a batch raises, each of its unfinished rows is retried alone (resuming
  where it was), so only the row that fails by itself gets the error.
- Back-pressure: at most `max_queue` requests wait (queued or between turns) besides the `max_batch`
  being decoded; one more is refused with a 503.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections import deque
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
    row: Sequence | None = None  # made by the engine; kept across turns
    turn_start: int = 0  # len(row.token_ids) when its current turn began
    answered: bool = False  # its "done" or "error" was sent


class Engine:
    """Owns the model; decodes queued jobs in batches on one thread, in turns of `chunk_tokens` tokens
    while other jobs wait."""

    def __init__(self, loaded: Any, *, max_batch: int = 8, max_queue: int = 64, chunk_tokens: int = 32) -> None:
        self.loaded = loaded
        self.max_batch = max(1, max_batch)
        self.chunk_tokens = max(1, chunk_tokens)
        self.capacity = max(1, max_queue) + self.max_batch  # requests in the engine at once
        self.jobs: queue.Queue[Job] = queue.Queue()  # submitted, not yet admitted to the ready line
        self._in_flight = 0  # submitted and not yet answered (or dropped)
        self._lock = threading.Lock()
        self.context = context_length(loaded.model)
        self._ready: deque[Job] = deque()  # admitted, waiting for a turn (worker thread only)
        self._turn_jobs: list[Job] = []  # the jobs being decoded now (worker thread only)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.batches = 0  # how many batches (turns) were decoded, for tests and stats
        self.largest_batch = 0
        self.yields = 0  # rows that gave up their turn to waiting requests
        self.retried = 0  # rows retried alone after their batch failed

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="tunelab-engine", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        # requests still waiting get an answer instead of waiting forever
        while self._ready:
            self._answer(self._ready.popleft(), ("error", "the server is shutting down"))
        while True:
            try:
                self._answer(self.jobs.get_nowait(), ("error", "the server is shutting down"))
            except queue.Empty:
                break

    def submit(self, job: Job) -> None:
        with self._lock:
            if self._in_flight >= self.capacity:
                raise ApiError(503, "the server is busy (request queue full); retry shortly",
                               type_="server_error", code="server_busy")
            self._in_flight += 1
        self.jobs.put(job)

    def _answer(self, job: Job, event: tuple | None) -> None:
        """JOB is over: send it EVENT ("done" / "error"; None: it was dropped) and free its place."""
        if job.answered:
            return
        job.answered = True
        with self._lock:
            self._in_flight -= 1
        if event is not None:
            _send(job, event)

    # -- scheduling (worker thread) ----------------------------------------------------------------

    def _admit(self, *, wait: bool) -> None:
        """Move newly submitted jobs to the back of the ready line (waiting briefly for one if asked)."""
        try:
            if wait:
                self._ready.append(self.jobs.get(timeout=0.1))
            while True:
                self._ready.append(self.jobs.get_nowait())
        except queue.Empty:
            pass

    def _others_waiting(self) -> bool:
        return bool(self._ready) or not self.jobs.empty()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._admit(wait=not self._ready)
            batch: list[Job] = []
            while self._ready and len(batch) < self.max_batch:
                job = self._ready.popleft()
                if job.cancelled.is_set():  # the client went away while it waited
                    self._answer(job, None)
                else:
                    batch.append(job)
            if not batch:
                continue
            self.batches += 1
            self.largest_batch = max(self.largest_batch, len(batch))
            self._turn(batch)
            self._answer_finished(batch)
            self._admit(wait=False)  # newcomers go before the rows that just had their turn
            for job in batch:
                if job.row is not None and job.row.finish_reason == "paused":
                    self.yields += 1
                    self._ready.append(job)

    def _answer_finished(self, jobs: list[Job]) -> None:
        for job in jobs:
            if job.row is not None and job.row.finish_reason not in (None, "paused"):
                self._answer(job, ("done", job.row))

    def _between_tokens(self, job: Job) -> bool:
        """Asked after each new token of JOB's row: answers the rows of this turn that have finished
        (rather than when the whole batch has), and says whether JOB's row yields its turn."""
        self._answer_finished(self._turn_jobs)
        return len(job.row.token_ids) - job.turn_start >= self.chunk_tokens and self._others_waiting()

    def _row(self, job: Job) -> Sequence:
        if job.row is None:
            job.row = Sequence(job.prompt_ids, job.options, on_text=lambda s: job.emit(("text", s)),
                               cancelled=job.cancelled.is_set, pause=lambda: self._between_tokens(job))
        return job.row

    def _turn(self, jobs: list[Job]) -> None:
        """Decode one turn of JOBS together; rows it leaves unfinished by failing are retried alone."""
        rows = [self._row(j) for j in jobs]
        for job, row in zip(jobs, rows, strict=True):
            job.turn_start = len(row.token_ids)
        self._turn_jobs = jobs
        try:
            decode(self.loaded.model, self.loaded.tokenizer, rows, batch_size=len(rows))
        except Exception as exc:  # noqa: BLE001 - a failed batch fails the row at fault, not its neighbours
            if len(jobs) == 1:
                jobs[0].row = None
                self._answer(jobs[0], ("error", f"{type(exc).__name__}: {exc}"))
                return
            self._answer_finished(jobs)
            for job, row in zip(jobs, rows, strict=True):
                if row.finish_reason is None:  # cut off by the failure: resume it alone (or start it afresh)
                    row.finish_reason = "paused" if row.token_ids else None
                    self.retried += 1
                    self._turn([job])


def _send(job: Job, event: tuple) -> None:
    """Hand JOB an event; a listener that raises loses its event, the worker carries on."""
    try:
        job.emit(event)
    except Exception:  # noqa: BLE001, S110 - the worker must outlive any one request's listener
        pass


async def submit_async(engine: Engine, ids: list[int], options: SamplingOptions) -> tuple[Job, asyncio.Queue]:
    """Submit a job from async code: its events ("text" / "done" / "error") arrive on the returned queue,
    handed from the worker thread to the event loop."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()

    def emit(event: tuple) -> None:
        try:
            loop.call_soon_threadsafe(events.put_nowait, event)
        except RuntimeError:  # the loop is gone (server shutting down)
            pass

    job = Job(ids, options, emit)
    engine.submit(job)
    return job, events
