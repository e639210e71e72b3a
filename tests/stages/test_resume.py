"""Kill -9 at random points of a run, resume each time, and end where an uninterrupted run ends.

Each leg runs in a process of its own (crash_driver.py) and is killed with SIGKILL: at a random step
before the first checkpoint (the resume starts over), while a checkpoint is being written (it is cut
short; the resume falls back to the one before), at a random step after it, as the final
evaluation starts and as the report is written (training had finished: the resume trains nothing).
The reference is the same config run once without interruption, also in its own process.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tunelab.runs import RunDir

DRIVER = Path(__file__).with_name("crash_driver.py")
LOGGED = ("loss", "eval_loss", "grad_norm", "learning_rate")


def leg(config: Path, action: str, run_dir: Path, kill: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TUNELAB_QUIET": "0", "PYTHONPATH": str(Path(__file__).parents[1])}
    return subprocess.run([sys.executable, str(DRIVER), str(config), action, str(run_dir), kill],
                          env=env, capture_output=True, text=True, timeout=300)  # fmt: skip


def logged_values(run: RunDir) -> list[tuple]:
    rows = [json.loads(line) for line in run.metrics.read_text().splitlines()]
    return [(r["step"], key, r[key]) for r in rows for key in LOGGED if key in r]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return {name: t for file in sorted(folder.glob("*.safetensors")) for name, t in load_file(file).items()}


@pytest.mark.integration
def test_kill_nine_anywhere_then_resume_is_bit_identical(tiny_config, tmp_path):
    seed = random.randrange(10**6)
    rng = random.Random(seed)
    before_first_save, after_save = rng.randint(1, 3), rng.randint(9, 11)
    cfg = tiny_config(training={"max_steps": 12, "save_steps": 4, "eval_steps": 4, "logging_steps": 2,
                                "save_total_limit": 10, "threads": 1})  # fmt: skip
    reference_cfg = {**cfg, "name": "reference"}
    config, reference_config = tmp_path / "killed.json", tmp_path / "reference.json"
    config.write_text(json.dumps({**cfg, "name": "killed"}))
    reference_config.write_text(json.dumps(reference_cfg))
    runs = Path(cfg["output_dir"])
    killed, reference = RunDir(runs / "killed"), RunDir(runs / "reference")
    where = f"(kill steps {before_first_save} and {after_save}, seed {seed})"

    done = leg(reference_config, "train", reference.path, "none")
    assert done.returncode == 0, done.stderr[-3000:]
    legs = [("train", f"step:{before_first_save}"), ("resume", "save:8"), ("resume", f"step:{after_save}"),
            ("resume", "final-eval"), ("resume", "report")]  # fmt: skip
    said = []
    for action, kill in legs:
        proc = leg(config, action, killed.path, kill)
        assert proc.returncode == -9, f"{action} {kill} {where}: rc {proc.returncode}\n{proc.stderr[-3000:]}"
        assert not killed.is_complete
        said.append(proc.stdout + proc.stderr)
    done = leg(config, "resume", killed.path, "none")
    assert done.returncode == 0, f"{where}\n{done.stderr[-3000:]}"
    said.append(done.stdout + done.stderr)
    assert "no checkpoint found: training from the start" in said[1]
    assert "checkpoint-8 was incomplete" in said[2]
    assert "nothing left to train" in said[4] and "nothing left to train" in said[5]

    assert killed.is_complete and killed.read_status()["status"] == "complete"
    for name, tensor in weights(reference.path / "adapter").items():
        assert torch.equal(weights(killed.path / "adapter")[name], tensor), f"{name} differs {where}"
    # every checkpoint too: checkpoint-8 was written again by a later leg
    names = sorted(p.name for p in reference.checkpoint_dirs())
    assert names == sorted(p.name for p in killed.checkpoint_dirs()) == ["checkpoint-12", "checkpoint-4", "checkpoint-8"]
    for name in names:
        expected, got = weights(reference.checkpoints / name), weights(killed.checkpoints / name)
        assert all(torch.equal(got[k], v) for k, v in expected.items()), f"{name} differs {where}"
    # the loss curve: every logged value once, the same as the uninterrupted run's
    values = logged_values(killed)
    assert len({(s, k) for s, k, _ in values}) == len(values), f"duplicated metrics rows {where}"
    assert values == logged_values(reference), where
    # the run's totals cover the whole run, not its last leg
    mine, theirs = (json.loads(r.eval_json.read_text()) for r in (killed, reference))
    for key in ("train_tokens", "train_loss", "global_step"):
        assert mine["training"][key] == theirs["training"][key], f"{key} {where}"
    assert mine["metrics"]["tuned"] == theirs["metrics"]["tuned"]


def test_run_totals_match_the_trainer(tiny_config):
    """train_loss over the run is the Trainer's own figure (an uninterrupted run), and train_tokens is
    a hand count of the non-padding tokens of the batches trained: 12 steps × 4 rows = the first 48
    rows of the shuffled training set, i.e. the whole set once (it has 38 rows: 1.26 epochs)."""
    from transformers import Trainer

    import tunelab

    seen = {}
    train = Trainer.train

    def record(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        out = train(self, *args, **kwargs)
        seen["loss"] = out.training_loss
        seen["tokens"] = sum(len(r["input_ids"]) for r in self.train_dataset)
        seen["rows"] = len(self.train_dataset)
        return out

    Trainer.train = record
    try:
        result = tunelab.train(tiny_config(training={"max_steps": 12, "save_steps": None, "eval_steps": None}))
    finally:
        Trainer.train = train
    training = result.results["training"]
    assert training["train_loss"] == pytest.approx(seen["loss"], rel=1e-4)
    assert seen["rows"] * 1 < 48 < seen["rows"] * 2
    assert seen["tokens"] < training["train_tokens"] < 2 * seen["tokens"]


def test_disk_full_during_a_save_is_one_message_and_resume_recovers(tiny_config, monkeypatch):
    import errno

    from transformers import Trainer

    import tunelab
    from tunelab.errors import TunelabError

    save = Trainer._save_checkpoint

    def full_disk_at_step_four(self, model, trial):  # noqa: ANN001
        if self.state.global_step == 4:
            folder = Path(self.args.output_dir) / "checkpoint-4"
            folder.mkdir()
            (folder / "adapter_model.safetensors").write_bytes(b"\0" * 10)  # what got out before the disk filled
            raise OSError(errno.ENOSPC, "No space left on device", str(folder / "adapter_model.safetensors"))
        return save(self, model, trial)

    cfg = tiny_config(name="full", training={"max_steps": 6, "save_steps": 2, "eval_steps": None})
    monkeypatch.setattr(Trainer, "_save_checkpoint", full_disk_at_step_four)
    with pytest.raises(TunelabError, match=r"the disk is full \(.*checkpoint-4/adapter_model.safetensors\)"):
        tunelab.train(cfg)
    run = RunDir(Path(cfg["output_dir"]) / "full")
    assert run.read_status()["status"] == "failed" and run.last_checkpoint().name == "checkpoint-2"
    monkeypatch.setattr(Trainer, "_save_checkpoint", save)
    result = tunelab.resume(run.path)
    assert result.results["training"]["global_step"] == 6 and RunDir(result.run_dir).is_complete
