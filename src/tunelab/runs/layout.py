"""The run directory's layout: one folder per run holding everything it produced.

`run.json` carries the status. It says "complete" only after every artefact is written, as the very
last step; a crashed run says "failed", and a killed one stays "running" — either way it is never
mistaken for a finished run.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, runs are not guarded against a second process
    fcntl = None  # type: ignore[assignment]

from tunelab.errors import TunelabError


class RunDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()

    # artefacts
    config = property(lambda self: self.path / "config.yaml")
    status_file = property(lambda self: self.path / "run.json")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    checkpoints = property(lambda self: self.path / "checkpoints")
    template = property(lambda self: self.path / "template.json")
    eval_json = property(lambda self: self.path / "eval.json")
    base_eval_json = property(lambda self: self.path / "base_eval.json")
    probes_json = property(lambda self: self.path / "probes.json")  # off-task prompts: base and tuned answers
    predictions = property(lambda self: self.path / "predictions.jsonl")
    report = property(lambda self: self.path / "report.html")
    loss_png = property(lambda self: self.path / "loss.png")
    lr_png = property(lambda self: self.path / "lr.png")
    signals_png = property(lambda self: self.path / "signals.png")  # reward, KL, margins… (preference and RL)
    tokenizer_dir = property(lambda self: self.path / "tokenizer")
    labels_json = property(lambda self: self.path / "labels.json")
    # a run started from another (`model.init_from`): that run's trained weights merged, this run's base
    init_model = property(lambda self: self.path / "init_model")
    init_model_ready = property(lambda self: (self.path / "init_model" / "merge_info.json").is_file())

    def read_labels(self) -> list[str] | None:
        """A classification run's label names in id order (None for generative runs)."""
        if not self.labels_json.is_file():
            return None
        return read_own_json(self.labels_json, list)

    def write_labels(self, labels: list[str]) -> None:
        write_json_atomic(self.labels_json, list(labels))

    def read_format(self) -> Any:
        """The prompt format the run trained with (None for a classification run, which has none)."""
        from tunelab.data.templates import PromptFormat

        return PromptFormat.load(self.template) if self.template.is_file() else None

    def read_status(self) -> dict[str, Any]:
        if not self.status_file.is_file():
            return {}
        return read_own_json(self.status_file, dict)

    def write_status(self, **fields: Any) -> None:
        status = {**self.read_status(), **fields}
        write_json_atomic(self.status_file, status)

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run for this process: a second process training, resuming or overwriting the same
        run gets a clear message instead of both writing into one folder. The OS drops the lock when
        the process ends, however it ends (kill -9 too), so there is never a stale lock to remove."""
        self.path.mkdir(parents=True, exist_ok=True)
        handle = (self.path / "run.lock").open("a+", encoding="utf-8")
        try:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip()
            handle.close()
            raise TunelabError(
                f"another tunelab process{f' (pid {holder})' if holder else ''} is using this run",
                file=str(self.path),
                expected="wait for it to finish or stop it, then try again",
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            handle.close()  # releases the lock

    def is_held(self) -> bool:
        """Whether a live process holds the run (`lock`); a run whose process died, however, stays
        "running" in run.json, and is not held. Without advisory locks (Windows) the answer is True."""
        lock = self.path / "run.lock"
        if fcntl is None:
            return True
        if not lock.is_file():
            return False
        with lock.open("r", encoding="utf-8") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(handle, fcntl.LOCK_UN)
            return False

    def holder_pid(self) -> int | None:
        """The pid `lock` wrote: the process that holds (or last held) the run."""
        lock = self.path / "run.lock"
        text = lock.read_text(encoding="utf-8").strip() if lock.is_file() else ""
        return int(text) if text.isdigit() else None

    def start(self, *, resume: bool) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        now = time.strftime("%Y-%m-%dT%H:%M:%S")
        if resume:
            self.write_status(status="running", resumed_at=now)
        else:
            self.write_status(status="running", started_at=now, finished_at=None, error=None)

    def mark_complete(self, summary: dict[str, Any]) -> None:
        self.write_status(status="complete", finished_at=time.strftime("%Y-%m-%dT%H:%M:%S"), summary=summary)

    def mark_failed(self, error: str) -> None:
        self.write_status(status="failed", finished_at=time.strftime("%Y-%m-%dT%H:%M:%S"), error=error)

    @property
    def is_complete(self) -> bool:
        return self.read_status().get("status") == "complete"

    def require_complete(self) -> None:
        if not self.path.is_dir():
            raise TunelabError("run directory not found", file=str(self.path), expected="a folder made by `tunelab train`")
        status = self.read_status().get("status")
        if status != "complete":
            raise TunelabError(
                f"run is not complete (status: {status or 'unknown'})",
                file=str(self.path),
                expected="a finished run; continue this one with `tunelab train --resume RUN_DIR`",
            )

    def truncate_metrics(self, step: int) -> None:
        """Keep metrics.jsonl's rows up to `step` (the checkpoint a resume starts from): the steps a
        killed run logged after it are trained again, and must not appear twice on the curve."""
        if not self.metrics.is_file():
            return
        rows = read_metrics(self.metrics)
        write_jsonl_atomic(self.metrics, [r for r in rows if isinstance(r.get("step"), int) and r["step"] <= step])

    def checkpoint_dirs(self) -> list[Path]:
        """checkpoint-N folders, newest first."""
        if not self.checkpoints.is_dir():
            return []
        found = [p for p in self.checkpoints.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
        return sorted(found, key=checkpoint_step, reverse=True)

    def last_checkpoint(self) -> Path | None:
        """The newest checkpoint that was written completely (a save cut short by a kill or a full
        disk leaves a folder without trainer_state.json, or a truncated weights file)."""
        return next((p for p in self.checkpoint_dirs() if checkpoint_problem(p) is None), None)


def read_metrics(path: Path) -> list[dict]:
    """Read ``metrics.jsonl`` into a list of dicts, skipping blank lines.

    A malformed *last* line (a write cut short by a crash) is skipped; a malformed line anywhere
    else, or a line that is not a JSON object, raises `TunelabError` naming the file and line.
    A missing file raises FileNotFoundError.
    """
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    rows: list[dict] = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            if i == last:
                break
            raise TunelabError(
                f"invalid JSON: {exc.msg}", file=str(path), line=i + 1, expected="one JSON object per line"
            ) from None
        if not isinstance(row, dict):
            raise TunelabError(
                f"a line holds a {type(row).__name__}", file=str(path), line=i + 1, expected="a JSON object"
            )
        rows.append(row)
    return rows


def checkpoint_step(path: Path) -> int:
    """The optimizer step a checkpoint-N folder was saved at."""
    return int(path.name.split("-")[-1])


def checkpoint_problem(path: Path) -> str | None:
    """Why a checkpoint folder cannot be resumed from (None when it is complete)."""
    state = path / "trainer_state.json"
    try:
        json.loads(state.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "no readable trainer_state.json"
    from safetensors import SafetensorError, safe_open

    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        return "no weights"
    for file in weights:
        try:
            with safe_open(str(file), framework="pt") as f:
                f.keys()
        except (OSError, SafetensorError) as err:
            return f"{file.name} is unreadable ({err})"
    return None


def read_own_json(path: Path, kind: type) -> Any:
    """A JSON file tunelab wrote into a run (run.json, labels.json); cut short, edited by hand or of
    another type, it is one error naming the file (and line), not a traceback."""
    from tunelab.files import decode_utf8, read_bytes

    what = "an object" if kind is dict else "a list"
    expected = "the JSON file `tunelab train` wrote (the run directory is damaged)"
    try:
        value = json.loads(decode_utf8(read_bytes(path, expected=expected), str(path)))
    except TunelabError as err:  # not UTF-8, unreadable
        raise TunelabError(f"cannot read the run's {path.name}: {err.message}", file=str(path), line=err.line,
                           expected=expected, kind="file") from None  # fmt: skip
    except json.JSONDecodeError as err:
        raise TunelabError(f"cannot read the run's {path.name}: {err.msg}", file=str(path), line=err.lineno,
                           expected=expected, kind="file") from None  # fmt: skip
    except (ValueError, RecursionError) as err:
        raise TunelabError(f"cannot read the run's {path.name}: {err}", file=str(path), expected=expected,
                           kind="file") from None  # fmt: skip
    if not isinstance(value, kind):
        got = {dict: "an object", list: "a list", str: "a string", type(None): "null", bool: "a boolean"}.get(type(value), "a number")
        raise TunelabError(f"cannot read the run's {path.name}: it is {got}, not {what}",
                           file=str(path), expected=expected, kind="file")  # fmt: skip
    return value


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
    os.replace(tmp, path)


def write_jsonl_atomic(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    os.replace(tmp, path)
