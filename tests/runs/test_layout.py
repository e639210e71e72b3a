"""A run folder's bookkeeping for resume: which checkpoint is usable, and the metrics kept."""

import json

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
