"""FLOPs per step against torch.utils.flop_counter.FlopCounterMode on a tiny model.

What is counted, on both sides: matmuls only (mm, addmm, bmm and their backward), 2·m·n·k each — what
FlopCounterMode counts; elementwise work is not. Attention runs eagerly here (QKᵀ and AV as bmm):
torch's CPU flash-attention kernel is not in FlopCounterMode's table, so under sdpa the attention term
would count as zero. One forward and one backward of one micro-batch, every position labelled.
"""

from __future__ import annotations

import pytest

from planning.tiny import VOCAB, configs
from tunelab.methods.registry import METHODS
from tunelab.models.kinds import MODEL_KINDS
from tunelab.planning.architecture import from_config
from tunelab.planning.flops import training_flops
from tunelab.planning.trainable import trainables
from tunelab.planning.workload import Workload

BATCH, LENGTH = 2, 48


def _counted(family: str, method: str, options) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(configs()[family], attn_implementation="eager")
    model = METHODS[method].apply(model, options, MODEL_KINDS["causal_lm"])
    ids = torch.randint(0, VOCAB, (BATCH, LENGTH))
    with FlopCounterMode(display=False) as counter:
        model(input_ids=ids, labels=ids).loss.backward()
    return counter.get_total_flops()


@pytest.mark.parametrize(("method", "given"), [("full", None), ("lora", {}), ("lora", {"target_modules": ["v_proj"]}),
                                               ("freeze", {"trainable_layers": 1}), ("prompt", {}), ("ia3", {})])  # fmt: skip
def test_flops_per_step_match_flop_counter_mode(method, given, one_thread):
    options = METHODS[method].options(**given) if given is not None else None
    arch = from_config(configs()["llama"].to_dict())
    # the model's own loss builds logits at every position: no sliced logits here
    w = Workload(batch_size=BATCH, seq_len=LENGTH, precision="fp32", sliced_logits=False)
    planned = training_flops(arch, trainables(arch, method, options), w).per_step
    counted = _counted("llama", method, options)
    assert abs(planned - counted) / counted < 0.05, (planned, counted)


def test_full_training_is_six_n_plus_the_attention_term():
    arch = from_config(configs()["llama"].to_dict())
    w = Workload(batch_size=BATCH, seq_len=LENGTH, precision="fp32", sliced_logits=False)
    f = training_flops(arch, trainables(arch, "full", None), w)
    tokens = BATCH * LENGTH
    assert f.per_step == pytest.approx(6 * arch.matmul_params * tokens + 12 * arch.layers * LENGTH * arch.attn_dim * tokens)


def test_lora_skips_the_frozen_weights_gradients():
    arch = from_config(configs()["llama"].to_dict())
    w = Workload(batch_size=BATCH, seq_len=LENGTH, precision="fp32", sliced_logits=False)
    full = training_flops(arch, trainables(arch, "full", None), w)
    lora = training_flops(arch, trainables(arch, "lora", METHODS["lora"].options()), w)
    base = lora.per_step - lora.adapters - lora.attention
    # 4·N per token for the frozen weights (less the first block's q/k/v input gradients, which nothing needs)
    assert base < (4 / 6) * (full.per_step - full.attention) * 1.0001
    assert lora.adapters > 0


def test_gradient_checkpointing_adds_one_forward_of_the_blocks():
    arch = from_config(configs()["llama"].to_dict())
    plain = Workload(batch_size=BATCH, seq_len=LENGTH, precision="fp32")
    ckpt = Workload(batch_size=BATCH, seq_len=LENGTH, precision="fp32", gradient_checkpointing=True)
    tr = trainables(arch, "full", None)
    a, b = training_flops(arch, tr, plain), training_flops(arch, tr, ckpt)
    head = 2 * arch.hidden * arch.vocab * a.logit_positions
    assert b.recompute == pytest.approx(a.forward - head)
    assert b.per_step == pytest.approx(a.per_step + b.recompute)
