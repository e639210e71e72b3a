"""A folder of runs, as a person watching it sees them: what each run is doing, a new run drafted from a
few fields (checked by the data doctor before anything starts), and runs started, stopped and resumed
as separate `tunelab train` processes. `tunelab ui` is a web page over this module; a notebook can call
it too.

Layout inside the runs folder (besides the run folders `tunelab train` makes):
    ui/configs/NAME.yaml   the config a drafted run was started with (what the user could have written)
    ui/uploads/FILE        data files uploaded through the form
    ui/logs/NAME.log       the run process's terminal output
    arena_votes.jsonl      blind A/B votes (`evaluation.arena`)
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tunelab.errors import TunelabError
from tunelab.runs.layout import RunDir, read_metrics, read_own_json

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
UPLOAD_LIMIT = 64 * 2**20
CURVE_KEYS = ("loss", "eval_loss", "learning_rate", "grad_norm")


def progress(rows: list[dict[str, Any]], status: dict[str, Any]) -> dict[str, Any]:
    """Steps done of the run's total, seconds so far and the ETA from the pace so far (None before the
    first logged step); phase: training, then evaluating once the last step is logged."""
    steps = [r for r in rows if isinstance(r.get("step"), int) and r.get("max_steps")]
    if not steps:
        return {"step": 0, "max_steps": None, "fraction": 0.0, "elapsed_s": None, "eta_s": None, "phase": "starting"}
    last = steps[-1]
    step, total, elapsed = last["step"], last["max_steps"], last.get("time_s")
    done = step >= total or status.get("status") == "complete"
    eta = None if done or not step or elapsed is None else elapsed / step * (total - step)
    phase = "done" if status.get("status") == "complete" else ("evaluating" if step >= total else "training")
    return {"step": step, "max_steps": total, "fraction": min(1.0, step / total), "elapsed_s": elapsed,
            "eta_s": round(eta, 1) if eta is not None else None, "phase": phase}  # fmt: skip


def curves(rows: list[dict[str, Any]]) -> dict[str, list[list[float]]]:
    """[step, value] pairs of each logged series (training loss, validation loss, learning rate, …)."""
    out: dict[str, list[list[float]]] = {k: [] for k in CURVE_KEYS}
    for r in rows:
        for key in CURVE_KEYS:
            value = r.get(key)
            if isinstance(value, int | float) and isinstance(r.get("step"), int):
                out[key].append([r["step"], float(value)])
    return {k: v for k, v in out.items() if v}


@dataclass
class Workspace:
    """The runs in ROOT, and the `tunelab train` processes this workspace started."""

    root: Path
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root = Path(self.root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    # -- reading ------------------------------------------------------------------------------------

    def run_dir(self, name: str) -> RunDir:
        if not NAME.match(name or "") or not (self.root / name).is_dir():
            raise TunelabError(f"no run named {name!r}", file=str(self.root), expected="a run folder in this workspace")
        return RunDir(self.root / name)

    def runs(self) -> list[dict[str, Any]]:
        """Every run folder, newest first."""
        found = [p for p in self.root.iterdir() if p.is_dir() and (p / "run.json").is_file()]
        rows = [self.summary(RunDir(p)) for p in found]
        named = {r["name"] for r in rows}
        rows += [self._not_yet(name, p) for name, p in self.processes.items() if name not in named]
        return sorted(rows, key=lambda r: r.get("started_at") or "9", reverse=True)

    def _not_yet(self, name: str, process: subprocess.Popen) -> dict[str, Any]:
        """A run this workspace started whose process has not written run.json (yet, or ever)."""
        alive = process.poll() is None
        last = [line for line in _tail(self.log_path(name)).splitlines() if line.strip()] if not alive else []
        return {"name": name, "state": "starting" if alive else "failed",
                "error": None if alive else (last[-1] if last else f"exited with code {process.returncode}"),
                "task": None, "method": None, "model": None, "started_at": None, "finished_at": None,
                "progress": progress([], {}), "has_report": False, "generative": False, "summary": None}  # fmt: skip

    def state(self, run: RunDir, status: dict[str, Any]) -> str:
        """complete / failed / running / stopped (run.json says running, but no process holds the run)."""
        said = status.get("status") or "unknown"
        if said == "running" and not run.is_held():
            process = self.processes.get(run.path.name)
            return "running" if process is not None and process.poll() is None else "stopped"
        return said

    def summary(self, run: RunDir) -> dict[str, Any]:
        status = run.read_status()
        cfg = _read_yaml(run.config)
        model = cfg.get("model")
        return {
            "name": run.path.name,
            "state": self.state(run, status),
            "error": status.get("error"),
            "task": status.get("task") or cfg.get("task"),
            "method": status.get("method") or cfg.get("method"),
            "model": model.get("name") if isinstance(model, dict) else model,
            "started_at": status.get("started_at"),
            "finished_at": status.get("finished_at"),
            "progress": progress(read_metrics(run.metrics) if run.metrics.is_file() else [], status),
            "has_report": run.report.is_file(),
            "generative": run.template.is_file(),
            "summary": status.get("summary"),
        }

    def details(self, name: str) -> dict[str, Any]:
        """A run's summary with its curves, config and the tail of its terminal output."""
        log = self.log_path(name)
        log_tail = _tail(log) if log.is_file() else ""
        if name in self.processes and not (self.root / name / "run.json").is_file():  # its process is starting
            config = self.root / "ui" / "configs" / f"{name}.yaml"
            return {**self._not_yet(name, self.processes[name]), "curves": {}, "log_tail": log_tail,
                    "config": config.read_text(encoding="utf-8") if config.is_file() else None}  # fmt: skip
        run = self.run_dir(name)
        rows = read_metrics(run.metrics) if run.metrics.is_file() else []
        return {**self.summary(run), "curves": curves(rows), "log_tail": log_tail,
                "config": run.config.read_text(encoding="utf-8") if run.config.is_file() else None}  # fmt: skip

    def log_path(self, name: str) -> Path:
        return self.root / "ui" / "logs" / f"{name}.log"

    def automatic_metrics(self, contestant: str) -> dict[str, float]:
        """The held-out metrics a run's eval.json holds for a contestant ("RUN" tuned, "RUN:base" base)."""
        from tunelab.evaluation.arena import contestant_run

        name, base = contestant_run(contestant)
        run = RunDir(self.root / name)
        if not run.eval_json.is_file():
            return {}
        metrics = read_own_json(run.eval_json, dict).get("metrics", {}).get("base" if base else "tuned", {})
        return {k: v for k, v in metrics.items() if isinstance(v, int | float) and k != "n"}

    # -- drafting a run -----------------------------------------------------------------------------

    def save_upload(self, filename: str, content: bytes) -> Path:
        """Keep an uploaded data file in ui/uploads (a name already there gets a numbered suffix)."""
        base = Path(filename or "data.jsonl").name
        if not NAME.match(base):
            base = re.sub(r"[^A-Za-z0-9._-]", "_", base).lstrip("._-") or "data.jsonl"
        if len(content) > UPLOAD_LIMIT:
            raise TunelabError(f"{base} is {len(content) / 2**20:.0f} MiB", field="data",
                               expected=f"at most {UPLOAD_LIMIT // 2**20} MiB through the form; give a path instead")  # fmt: skip
        folder = self.root / "ui" / "uploads"
        folder.mkdir(parents=True, exist_ok=True)
        path, n = folder / base, 1
        while path.exists() and path.read_bytes() != content:
            n += 1
            path = folder / f"{Path(base).stem}-{n}{Path(base).suffix}"
        path.write_bytes(content)
        return path

    def draft(self, form: dict[str, Any]) -> dict[str, Any]:
        """The config a form describes: the keys a user would write, nothing else."""
        name = str(form.get("name") or "").strip()
        cfg: dict[str, Any] = {"name": name, "output_dir": str(self.root), "model": str(form.get("model") or "").strip(),
                               "task": form.get("task") or "sft", "method": form.get("method") or "lora"}  # fmt: skip
        data: dict[str, Any] = {"train": str(form.get("data") or "").strip()}
        if form.get("max_length"):
            data["max_length"] = int(form["max_length"])
        if form.get("validation") not in (None, ""):
            data["split"] = {"validation": float(form["validation"]), "test": float(form.get("test") or 0.1)}
        cfg["data"] = data
        training = {key: form[key] for key in ("max_steps", "epochs", "batch_size", "lr", "eval_steps", "save_steps",
                                               "logging_steps") if form.get(key) not in (None, "")}  # fmt: skip
        if training:
            cfg["training"] = training
        evaluation = {key: form[key] for key in ("max_new_tokens", "max_examples") if form.get(key) not in (None, "")}
        if evaluation:
            cfg["evaluation"] = evaluation
        return cfg

    def check(self, form: dict[str, Any]) -> dict[str, Any]:
        """What `tunelab data check` and `tunelab plan` say about the drafted run, before anything starts:
        every problem as FILE:LINE, the first rows with their trained and masked text, the token-length
        histogram and the memory estimate. `ok` is False when the run would be refused."""
        from tunelab.api import plan
        from tunelab.config import check_before_loading, config_from_dict
        from tunelab.data import doctor
        from tunelab.data.preview import build_preview, histogram
        from tunelab.models.loading import load_tokenizer, resolve_model
        from tunelab.stages.registry import STAGES

        draft = self.draft(form)
        out: dict[str, Any] = {"config": draft, "yaml": yaml.safe_dump(draft, sort_keys=False, allow_unicode=True),
                               "problems": [], "preview": [], "histogram": [], "plan": None, "notes": []}  # fmt: skip
        if not NAME.match(draft["name"]):
            out["problems"].append(_problem("name: letters, digits, '.', '_' or '-' (at most 64)", "name"))
        elif (self.root / draft["name"]).exists():
            out["problems"].append(_problem(f"a run named {draft['name']!r} already exists in {self.root}", "name"))
        try:
            cfg = config_from_dict(draft, file="the form")
            out["notes"] = check_before_loading(cfg, output_dir=False, strict=False)
            tokenizer = load_tokenizer(resolve_model(cfg.model.name).path, trust_remote_code=False)
        except TunelabError as err:
            out["problems"].append(doctor.Problem("error", err.kind or "config", err.message, err.file, err.line, err.field,
                                                  err.expected).to_dict())  # fmt: skip
            out["ok"] = False
            return out
        report = doctor.check_config(cfg, tokenizer=tokenizer, task_shapes=STAGES[cfg.task].shapes)
        out["problems"] += [p.to_dict() for p in report.problems]
        out["counts"] = report.split_counts
        if report.ok:
            if report.lengths is not None:
                out["histogram"] = [list(b) for b in histogram([r.total for r in report.lengths.rows])]
            preview = build_preview(cfg, tokenizer, n=2, task_shapes=STAGES[cfg.task].shapes)
            out["preview"] = [{"source": row.source, "segments": _segments(row.input_ids, row.labels, tokenizer)}
                              for row in preview.rows]
            try:
                estimate = plan(cfg).to_dict()
                memory = estimate["memory"]
                out["plan"] = {"peak_bytes": memory["peak_bytes"], "peak_phase": memory["peak_phase"],
                               "terms": memory["terms"], "total_steps": estimate["time"]["total_steps"],
                               "trainable": estimate["trainable"]}  # fmt: skip
            except TunelabError as err:
                out["notes"].append(f"no memory estimate: {err.message}")
        out["ok"] = not any(p["severity"] == "error" for p in out["problems"])
        return out

    # -- running ------------------------------------------------------------------------------------

    def start(self, form: dict[str, Any]) -> dict[str, Any]:
        """Check the drafted run and, when nothing refuses it, start `tunelab train` on its config as a
        separate process; the check's findings come back either way."""
        checked = self.check(form)
        if not checked["ok"]:
            return {**checked, "started": False}
        name = checked["config"]["name"]
        path = self.root / "ui" / "configs" / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(checked["yaml"], encoding="utf-8")
        self._spawn(name, ["train", str(path)])
        return {**checked, "started": True, "config_file": str(path)}

    def resume(self, name: str) -> None:
        run = self.run_dir(name)
        if self.state(run, run.read_status()) in ("running", "complete"):
            raise TunelabError(f"run {name!r} is {self.state(run, run.read_status())}", file=str(run.path),
                               expected="a stopped or failed run to resume")  # fmt: skip
        self._spawn(name, ["train", "--resume", str(run.path)])

    def stop(self, name: str) -> bool:
        """Stop a run's process (SIGTERM to its process group): it can be resumed from its last checkpoint."""
        run = self.run_dir(name)
        process = self.processes.get(name)
        pid = process.pid if process is not None and process.poll() is None else run.holder_pid()
        if pid is None or not run.is_held() and process is None:
            return False
        try:
            os.killpg(os.getpgid(pid), signal.SIGTERM) if process is not None else os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return False
        if process is not None:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(os.getpgid(pid), signal.SIGKILL)
        return True

    def _spawn(self, name: str, args: list[str]) -> None:
        log = self.log_path(name)
        log.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "COLUMNS": "120"}
        with log.open("a", encoding="utf-8") as out:
            out.write(f"\n$ tunelab {' '.join(args)}   # {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
            out.flush()
            self.processes[name] = subprocess.Popen(  # noqa: S603 - our own CLI, arguments not through a shell
                [sys.executable, "-m", "tunelab", *args], stdout=out, stderr=subprocess.STDOUT, cwd=self.root,
                env=env, start_new_session=True,
            )

    def close(self) -> None:
        """Leave started runs running (they are separate processes); just forget their handles."""
        self.processes.clear()


def _segments(ids: list[int], labels: list[int], tokenizer: Any) -> list[dict[str, Any]]:
    """A row as runs of text, each trained (the loss is on it) or masked."""
    out: list[dict[str, Any]] = []
    start = 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or (labels[i] != -100) != (labels[start] != -100):
            out.append({"text": tokenizer.decode(ids[start:i]), "trained": labels[start] != -100})
            start = i
    return out


def _problem(message: str, field_name: str) -> dict[str, Any]:
    return {"severity": "error", "kind": "config", "file": "the form", "line": None, "field": field_name,
            "message": message, "expected": None, "text": f"the form: {field_name}: {message}"}  # fmt: skip


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def _tail(path: Path, lines: int = 40) -> str:
    with path.open("rb") as f:
        f.seek(max(0, path.stat().st_size - 16384))
        text = f.read().decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])
