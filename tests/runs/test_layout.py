"""A run folder's bookkeeping for resume: which checkpoint is usable, and the metrics kept."""

import json

import pytest

from tunelab.runs.layout import RunDir, read_metrics


def test_resume_truncates_metrics_even_after_a_write_cut_short(tmp_path):
    run = RunDir(tmp_path)
    rows = [{"step": 0, "eval_loss": 3.0}, {"step": 5, "loss": 2.5}, {"step": 10, "loss": 2.0}, {"step": 15, "loss": 1.5}]
    # a kill -9 mid-write leaves half a line at the end
    run.metrics.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 20, "lo', encoding="utf-8")
    run.truncate_metrics(10)
    assert read_metrics(run.metrics) == rows[:3]


def test_last_checkpoint_is_the_newest_complete_one(tmp_path):
    import torch
    from safetensors.torch import save_file

    run = RunDir(tmp_path)
    for step, complete in ((4, True), (8, True), (12, False)):
        folder = run.checkpoints / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        save_file({"w": torch.zeros(2)}, str(folder / "model.safetensors"))
        if complete:
            (folder / "trainer_state.json").write_text("{}")
    assert run.last_checkpoint().name == "checkpoint-8"
    (run.checkpoints / "checkpoint-8" / "model.safetensors").write_bytes(b"\x10\x00\x00")  # truncated weights
    assert run.last_checkpoint().name == "checkpoint-4"


def test_a_run_in_use_is_refused_to_a_second_process(tiny_config):
    """A second `train --overwrite` or `--resume` of a run another process holds stops with a clear
    message and leaves the run as it was; once the holder is gone the run is free again."""
    import subprocess
    import sys

    import tunelab
    from tunelab.errors import TunelabError

    cfg = tiny_config(name="held", training={"max_steps": 2, "save_steps": 1, "eval_steps": None})
    first = tunelab.train(cfg)
    run = RunDir(first.run_dir)
    before = sorted(p.relative_to(run.path) for p in run.path.rglob("*"))
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom tunelab.runs import RunDir\n"
                               f"with RunDir({str(run.path)!r}).lock():\n    print('held', flush=True)\n    time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(TunelabError, match=rf"another tunelab process \(pid {holder.pid}\) is using this run"):
            tunelab.train(cfg, overwrite=True)
        run.write_status(status="running")
        with pytest.raises(TunelabError, match="another tunelab process"):
            tunelab.resume(run.path)
        assert sorted(p.relative_to(run.path) for p in run.path.rglob("*")) == before
    finally:
        holder.kill()
        holder.wait()
    assert RunDir(tunelab.resume(run.path).run_dir).is_complete  # the lock died with its process


def test_is_held_while_a_process_holds_the_lock_and_not_after(tmp_path):
    import os

    run = RunDir(tmp_path / "run")
    assert not run.is_held() and run.holder_pid() is None  # never locked
    with run.lock():
        assert run.is_held() and run.holder_pid() == os.getpid()
    assert not run.is_held() and run.holder_pid() == os.getpid()  # the last holder, no longer holding
