"""The one run loader: a run's trained model and its base model, checked against plain transformers + peft."""

import pytest
import torch

from inference.runs import tiny_lora_run
from tunelab.errors import TunelabError
from tunelab.runs import load_run, run_config


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_model):
    return tiny_lora_run(tmp_path_factory, tiny_model)


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits


def test_trained_and_base_models_equal_plain_peft_and_transformers(tiny_run, tiny_model):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ids = torch.tensor([[5, 17, 42, 99, 7]])
    trained = load_run(tiny_run)
    base = load_run(tiny_run, base=True)
    assert not trained.is_base and base.is_base
    assert trained.fmt.kind == base.fmt.kind == "chat" and trained.shape == base.shape == "messages"
    plain_base = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    assert torch.allclose(_logits(base.model, ids), _logits(plain_base, ids), atol=1e-6)
    plain_trained = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), tiny_run / "adapter")
    assert torch.allclose(_logits(trained.model, ids), _logits(plain_trained.eval(), ids), atol=1e-6)
    assert not torch.allclose(_logits(trained.model, ids), _logits(base.model, ids), atol=1e-4)  # it did train


def test_run_config_restores_where_data_paths_resolve(tiny_run):
    run, cfg = run_config(tiny_run)
    assert run.path == tiny_run and cfg._source_dir is not None and cfg.task == "sft"


def test_unfinished_runs_are_refused(tmp_path):
    with pytest.raises(TunelabError, match="run directory not found"):
        load_run(tmp_path / "nope")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "run.json").write_text('{"status": "running"}')
    with pytest.raises(TunelabError, match=r"run is not complete \(status: running\)"):
        load_run(tmp_path / "half")
