"""Parameter counts from config.json alone equal those of the model transformers builds from it."""

from __future__ import annotations

import pytest

from planning.tiny import build, configs
from tunelab.models.loading import model_files
from tunelab.planning.architecture import FAMILIES, architecture, from_config, from_skeleton

KNOWN = ["llama", "llama_bias", "mistral", "qwen2", "qwen3", "gemma", "phi3", "gpt2", "gpt_neox"]


def _matmul_weights(model) -> int:
    import torch
    from transformers.pytorch_utils import Conv1D

    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear | Conv1D))


@pytest.mark.parametrize("name", KNOWN)
def test_counts_from_config_json_equal_the_real_model(name, tmp_path):
    model = build(name)
    configs()[name].save_pretrained(tmp_path)  # a model folder with config.json only: no weights
    arch = architecture(model_files(str(tmp_path)))
    assert arch.source == "config.json" and arch.model_type in FAMILIES
    assert arch.total_params == sum(p.numel() for p in model.parameters())
    assert arch.matmul_params == _matmul_weights(model)  # every linear layer, the (tied) head included
    assert arch.tied_embeddings == (model.get_output_embeddings().weight is model.get_input_embeddings().weight)


@pytest.mark.parametrize("name", KNOWN)
def test_the_meta_skeleton_reads_the_same_modules(name):
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(configs()[name])
    by_formula, by_skeleton = from_config(configs()[name].to_dict()), from_skeleton(model, configs()[name].to_dict())
    assert by_skeleton.total_params == by_formula.total_params
    def modules(arch):  # GPT-2's Conv1D stores its weight transposed: compare sizes, not shapes
        return sorted((p.name, p.kind, p.in_features, p.out_features, p.params) for p in arch.block)

    assert modules(by_skeleton) == modules(by_formula)
    assert by_skeleton.layer_prefix == by_formula.layer_prefix and by_skeleton.head_name == by_formula.head_name


def test_a_family_without_formulas_falls_back_to_the_skeleton(tmp_path):
    model = build("olmo")
    configs()["olmo"].save_pretrained(tmp_path)
    arch = architecture(model_files(str(tmp_path)))
    assert arch.source == "meta-device skeleton"
    assert arch.total_params == sum(p.numel() for p in model.parameters())
    assert arch.layers == 2 and arch.kv_heads == 4 and arch.mlp == "gated"
