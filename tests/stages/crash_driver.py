"""Runs `tunelab train` / `tunelab train --resume` in a process of its own and kills it (SIGKILL, as
a power cut or the OOM killer would) at a chosen point. Used by test_resume.py.

    python crash_driver.py CONFIG.json train|resume RUN_DIR KILL

KILL: `none`, `step:N` (just after optimizer step N, before it is logged or saved), `save:N` (while
checkpoint-N is being written: its weights cut short, no trainer_state.json yet), `final-eval` (as
the tuned model's evaluation starts) or `report` (as the report is being written).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path


def die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def arm(kill: str) -> None:
    import transformers

    import tunelab.evaluation.run_report as run_report
    import tunelab.stages.sft as sft
    from tunelab.training.trainer import RichProgressCallback

    what, _, arg = kill.partition(":")
    if what == "step":
        step_end = RichProgressCallback.on_step_end

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
            if state.global_step == int(arg):
                die()
            return step_end(self, args, state, control, **kwargs)

        RichProgressCallback.on_step_end = on_step_end
    elif what == "save":
        save = transformers.Trainer._save_checkpoint

        def cut_short_save(self, model, trial):  # noqa: ANN001
            save(self, model, trial)
            if self.state.global_step == int(arg):
                folder = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
                (folder / "trainer_state.json").unlink()
                for weights in folder.glob("*.safetensors"):
                    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
                die()

        transformers.Trainer._save_checkpoint = cut_short_save
    elif what == "final-eval":
        evaluate = sft.evaluate_generation

        def evaluate_then_die(*args, label, **kwargs):  # noqa: ANN002, ANN003
            if label == "tuned":
                die()
            return evaluate(*args, label=label, **kwargs)

        sft.evaluate_generation = evaluate_then_die
    elif what == "report":
        run_report.write_run_report = lambda *a, **k: die()
    elif what != "none":
        raise SystemExit(f"unknown kill point {kill!r}")


def main() -> None:
    config, action, run_dir, kill = sys.argv[1:5]
    import tunelab

    arm(kill)
    if action == "train":
        tunelab.train(json.loads(Path(config).read_text()))
    else:
        tunelab.resume(run_dir)


if __name__ == "__main__":
    main()
