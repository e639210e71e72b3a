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
