"""The workspace: progress and ETA from metrics rows (by hand), a drafted run's check (the data doctor's
FILE:LINE problems, nothing started), and a run started, stopped (SIGTERM), seen as stopped, resumed
and completed as separate `tunelab train` processes."""

from __future__ import annotations

import json
import time

import pytest

from tunelab.runs.layout import RunDir, read_metrics
from tunelab.workspace import Workspace, curves, progress


def test_progress_and_eta_by_hand():
    rows = [{"step": 0, "max_steps": 40, "eval_loss": 3.0, "time_s": 0.5},
            {"step": 10, "max_steps": 40, "loss": 2.5, "learning_rate": 1e-3, "time_s": 5.0}]  # fmt: skip
    p = progress(rows, {"status": "running"})
    assert p["step"] == 10 and p["max_steps"] == 40 and p["fraction"] == 0.25
    assert p["eta_s"] == 15.0 and p["phase"] == "training"  # 5 s for 10 steps, 30 steps to go
    p = progress([*rows, {"step": 40, "max_steps": 40, "loss": 1.0, "time_s": 20.0}], {"status": "running"})
    assert p["phase"] == "evaluating" and p["eta_s"] is None
    assert progress([], {})["phase"] == "starting"
    assert curves(rows) == {"loss": [[10, 2.5]], "eval_loss": [[0, 3.0]], "learning_rate": [[10, 1e-3]]}


def form(tiny_model, data, **extra):
    return {"name": "ws", "model": str(tiny_model), "task": "sft", "method": "lora", "data": str(data),
            "max_length": 64, "batch_size": 4, **extra}  # fmt: skip


def test_check_names_every_bad_row_and_start_refuses(tmp_path, tiny_model):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "a"}\n{"question":\n\n{"question": "q", "answer": ""}\n')
    ws = Workspace(tmp_path / "runs")
    result = ws.start(form(tiny_model, bad))
    assert not result["started"] and not result["ok"]
    where = {(p["file"], p["line"]) for p in result["problems"] if p["severity"] == "error"}
    assert (str(bad), 2) in where and (str(bad), 4) in where
    assert ws.runs() == [] and not (tmp_path / "runs" / "ws").exists() and not ws.processes


def test_check_refuses_a_taken_name_and_an_unknown_model(tmp_path, tiny_model, qa_file):
    ws = Workspace(tmp_path / "runs")
    (ws.root / "ws").mkdir()
    taken = ws.check(form(tiny_model, qa_file))
    assert not taken["ok"] and any(p["field"] == "name" for p in taken["problems"])
    unknown = ws.check(form(tmp_path / "nowhere", qa_file, name="other"))
    assert not unknown["ok"] and unknown["problems"][0]["field"] == "model.name"


def test_upload_keeps_files_apart(tmp_path):
    ws = Workspace(tmp_path / "runs")
    a = ws.save_upload("../../evil name.jsonl", b"one\n")
    b = ws.save_upload("evil name.jsonl", b"two\n")
    assert a.parent == b.parent == ws.root / "ui" / "uploads" and a != b
    assert a.read_bytes() == b"one\n" and ws.save_upload("evil name.jsonl", b"one\n") == a


def wait(ws, name, states, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = [r for r in ws.runs() if r["name"] == name]
        if found and found[0]["state"] in states and (found[0]["progress"]["step"] or found[0]["state"] != "running"):
            return found[0]
        time.sleep(0.2)
    raise AssertionError(f"{name} never reached {states}: {ws.runs()}")


def test_start_stop_resume_complete(tmp_path, tiny_model, qa_file):
    ws = Workspace(tmp_path / "runs")
    started = ws.start(form(tiny_model, qa_file, max_steps=1200, eval_steps=200, logging_steps=10, max_new_tokens=4))
    assert started["started"], started["problems"]
    running = wait(ws, "ws", {"running"})
    assert 0 < running["progress"]["step"] < 1200 and running["progress"]["eta_s"] > 0
    assert ws.stop("ws")
    stopped = ws.runs()[0]
    assert stopped["state"] == "stopped"  # run.json still says running; no process holds the run
    assert RunDir(ws.root / "ws").read_status()["status"] == "running"
    ws.resume("ws")
    done = wait(ws, "ws", {"complete", "failed"}, timeout=400)
    assert done["state"] == "complete", ws.details("ws")["log_tail"]
    log = ws.details("ws")["log_tail"]
    assert "resum" in log.lower()
    steps = [r["step"] for r in read_metrics(ws.root / "ws" / "metrics.jsonl") if "loss" in r]
    assert steps == sorted(set(steps)) and steps[-1] == 1200  # each step logged once, resumes included
    with pytest.raises(Exception, match="complete"):
        ws.resume("ws")
    assert json.loads((ws.root / "ws" / "eval.json").read_text())["metrics"]
