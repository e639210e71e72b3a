"""The optimizers the material names train on a CPU through tunelab: each run builds the library's own
optimizer class (a hand-written table, not tunelab's) and lowers the validation loss; one whose package
is missing is refused before any model loads."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")

# optimizer name → (the class that must run, a learning rate it learns with in a few steps)
MATRIX = {
    "adamw_torch": ("torch.optim.adamw.AdamW", 5e-3),
    "adamw_torch_fused": ("torch.optim.adamw.AdamW", 5e-3),
    "adafactor": ("transformers.optimization.Adafactor", 5e-3),
    "adamw_8bit": ("bitsandbytes.optim.adamw.AdamW", 5e-3),
    "sgd": ("torch.optim.sgd.SGD", 0.5),
}


@pytest.mark.parametrize("name", list(MATRIX))  # paged_*: refused on a CPU (below); GPU only
def test_optimizer_trains(tiny_config, name: str) -> None:
    from tunelab import api

    expected, lr = MATRIX[name]
    cfg = tiny_config(training={"optimizer": name, "lr": lr, "max_steps": 8, "eval_steps": 8, "save_steps": 8,
                                "logging_steps": 4},  # fmt: skip
                      evaluation={"enabled": False})
    result = api.train(cfg)
    training = json.loads((result.run_dir / "eval.json").read_text())["training"]
    assert training["optimizer"] == expected
    evals = [r["eval_loss"] for r in map(json.loads, (result.run_dir / "metrics.jsonl").read_text().splitlines())
             if "eval_loss" in r]  # fmt: skip
    assert len(evals) >= 2 and evals[-1] < evals[0], evals  # step 0 (before training) vs the last


@pytest.mark.parametrize(("name", "reason"), [("galore_adamw", "galore_torch"), ("adamw_torch_xla", "torch_xla"),
                                              ("paged_adamw_8bit", "no GPU")])  # fmt: skip
def test_optimizer_this_machine_cannot_run_is_refused_before_loading(tiny_config, monkeypatch, name, reason) -> None:
    import torch

    from tunelab import api
    from tunelab.errors import TunelabError
    from tunelab.models import loading

    if reason == "no GPU" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU: paged optimizers run")

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(loading, "load_model", no_loading)
    with pytest.raises(TunelabError, match=rf"optimizer '{name}' cannot run here: .*{reason}"):
        api.train(tiny_config(training={"optimizer": name}))


def test_the_default_fused_adamw_learns_what_the_plain_loop_learns(tiny_config):
    """The default optimizer is torch's fused AdamW (one kernel per tensor, no temporaries): full
    fine-tuning with it ends at the weights torch's plain per-tensor loop (`adamw_torch` on a CPU)
    gives, to float rounding."""
    import torch
    from safetensors.torch import load_file

    from tunelab import api
    from tunelab.config import TrainingSection

    assert TrainingSection().optimizer == "adamw_torch_fused"
    weights = {}
    for name in ("adamw_torch_fused", "adamw_torch"):
        cfg = tiny_config(name=name, method="full", evaluation={"enabled": False},
                          training={"optimizer": name, "lr": 1e-3, "max_steps": 6, "eval_steps": None,
                                    "save_steps": None, "weight_decay": 0.1})  # fmt: skip
        folder = api.train(cfg).run_dir / "model"
        weights[name] = {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}
    fused, plain = weights["adamw_torch_fused"], weights["adamw_torch"]
    assert fused.keys() == plain.keys() and fused
    for key in plain:
        torch.testing.assert_close(fused[key], plain[key], rtol=1e-5, atol=1e-6, msg=key)
