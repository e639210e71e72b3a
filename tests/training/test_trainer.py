"""Trainer arguments from a run config, and the device/precision choice."""

from tunelab.training.device import choose_precision
from tunelab.training.trainer import training_arguments


def test_precision_choice_respects_request():
    assert choose_precision("fp32") == "fp32"
    assert choose_precision("auto") in ("bf16", "fp32", "fp16")


def test_training_arguments_align_save_with_eval(tmp_path):
    from tunelab.config import config_from_dict

    cfg = config_from_dict(
        {"data": {"train": "x.jsonl"}, "training": {"eval_steps": 10, "save_steps": 25, "max_steps": 50}}
    )
    args = training_arguments(cfg, tmp_path, "fp32", has_eval=True, n_train=100)
    assert args.save_steps == 10 and args.load_best_model_at_end and args.eval_strategy == "steps"
    args = training_arguments(cfg, tmp_path, "fp32", has_eval=False, n_train=100)
    assert args.eval_strategy == "no" and not args.load_best_model_at_end


def _finite(folder) -> bool:
    import torch
    from safetensors.torch import load_file

    return all(torch.isfinite(t).all() for f in folder.glob("*.safetensors") for t in load_file(f).values())


def test_a_diverging_run_stops_failed_and_keeps_its_good_checkpoints(tiny_config):
    """lr 1e30: step 1's update overflows the weights, step 2's loss is NaN. The Trainer alone would
    log the NaN away and finish "complete" with NaN weights."""
    import pytest

    import tunelab
    from tunelab.runs import RunDir
    from tunelab.training.trainer import TrainingDiverged

    cfg = tiny_config(name="diverge", training={"lr": 1e30, "max_steps": 8, "save_steps": 1, "eval_steps": None,
                                                "save_total_limit": 8})  # fmt: skip
    with pytest.raises(TrainingDiverged, match=r"training stopped at step (\d): the .* not finite") as caught:
        tunelab.train(cfg)
    run = RunDir(cfg["output_dir"] + "/diverge")
    assert run.read_status()["status"] == "failed" and "not finite" in run.read_status()["error"]
    assert not (run.path / "adapter").exists()  # no final weights were written
    checkpoints = run.checkpoint_dirs()
    assert all(_finite(c) for c in checkpoints)  # nothing non-finite was ever saved
    step = int(caught.value.message.split("step ")[1].split(":")[0])
    assert [int(c.name.split("-")[1]) for c in checkpoints] == list(range(step - 1, 0, -1))
    assert str(checkpoints[0].name) in caught.value.message if checkpoints else "no checkpoint" in caught.value.message


def test_gradients_that_are_not_finite_stop_before_the_update(tiny_config, monkeypatch):
    """An inf gradient (finite loss) stops the run before the optimizer step turns it into weights."""
    import pytest
    import torch

    import tunelab
    from tunelab.training.trainer import TrainingDiverged

    real_step = torch.optim.AdamW.step
    calls = []

    def watch(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        calls.append(1)
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", watch)
    from transformers import Trainer

    real_training_step = Trainer.training_step

    def inf_grads_on_step_three(self, model, inputs, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        loss = real_training_step(self, model, inputs, *args, **kwargs)
        if self.state.global_step == 2:
            next(p for p in model.parameters() if p.requires_grad).grad.fill_(float("inf"))
        return loss

    monkeypatch.setattr(Trainer, "training_step", inf_grads_on_step_three)
    with pytest.raises(TrainingDiverged, match="training stopped at step 3: the gradients are not finite"):
        tunelab.train(tiny_config(name="infgrad", training={"max_steps": 6, "save_steps": None, "eval_steps": None}))
    assert len(calls) == 2  # steps 1 and 2 were taken, step 3 was not



def test_gradient_check_reads_the_norm_the_trainer_clips_with(tiny_config, monkeypatch):
    """The guard checks the norm the Trainer computed to clip the gradients, rather than a second pass
    over every gradient: each step's norm is computed once, by the clipping."""
    import sys

    import torch
    from torch.nn.utils import clip_grad

    import tunelab

    callers = []

    def counted(real):  # noqa: ANN001, ANN202
        def norm(*args, **kwargs):  # noqa: ANN002, ANN003
            callers.append(sys._getframe(1).f_code.co_name)
            return real(*args, **kwargs)

        return norm

    monkeypatch.setattr(torch.nn.utils, "get_total_norm", counted(torch.nn.utils.get_total_norm))
    monkeypatch.setattr(clip_grad, "_get_total_norm", counted(clip_grad._get_total_norm))
    tunelab.train(tiny_config(name="onenorm", training={"max_steps": 3, "save_steps": None, "eval_steps": None},
                              evaluation={"enabled": False}))  # fmt: skip
    assert "on_pre_optimizer_step" not in callers, callers
    assert callers.count("clip_grad_norm_") == 3, callers  # the Trainer's, once a step
