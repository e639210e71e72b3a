"""Trained-parameter counts without building anything equal peft's count on the real tiny model."""

from __future__ import annotations

import pytest

from planning.tiny import build, configs
from tunelab.methods.registry import METHODS
from tunelab.models.kinds import MODEL_KINDS
from tunelab.planning.architecture import from_config
from tunelab.planning.trainable import trainables

TARGETS = {"llama": ["q_proj", "v_proj"], "qwen2": ["q_proj", "v_proj"], "gpt2": ["c_attn"],
           "gpt_neox": ["query_key_value"]}  # fmt: skip
CASES = [
    ("lora", {}), ("lora", {"r": 4, "targets": True}), ("lora", {"bias": "lora_only"}), ("lora", {"modules_to_save": ["lm_head"]}),
    ("dora", {}), ("ia3", {}), ("prompt", {}), ("ptuning", {}), ("ptuning", {"encoder_type": "LSTM"}), ("prefix", {}),
    ("prefix", {"prefix_projection": True}), ("full", None), ("freeze", {}), ("freeze", {"trainable_layers": 1, "train_head": False}),
]  # fmt: skip


def _peft_count(model) -> tuple[int, int]:
    if hasattr(model, "get_nb_trainable_parameters"):
        return model.get_nb_trainable_parameters()
    return sum(p.numel() for p in model.parameters() if p.requires_grad), sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen2", "gpt_neox"])
@pytest.mark.parametrize(("method", "given"), CASES, ids=[f"{m}-{i}" for i, (m, _) in enumerate(CASES)])
def test_trained_parameters_equal_peft(family, method, given):
    given = dict(given) if given is not None else None
    if given is not None and given.pop("targets", False):
        given["target_modules"] = TARGETS[family]
    spec = METHODS[method]
    options = spec.options(**given) if spec.options is not None else None
    model = spec.apply(build(family), options, MODEL_KINDS["causal_lm"])
    planned = trainables(from_config(configs()[family].to_dict()), method, options)
    assert (planned.trainable, planned.total) == _peft_count(model)


def test_qlora_trains_what_lora_trains_and_quantizes_the_blocks():
    arch = from_config(configs()["llama"].to_dict())
    lora = trainables(arch, "lora", METHODS["lora"].options())
    qlora = trainables(arch, "qlora", METHODS["qlora"].options())
    assert qlora.trainable == lora.trainable and qlora.total == lora.total
    assert qlora.quantized_params == arch.layers * arch.block_linear_params  # not the head, not the embeddings
