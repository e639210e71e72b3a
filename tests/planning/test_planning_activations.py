"""What the forward keeps for backward, estimated op by op, against what autograd actually keeps.

Every tensor autograd saves is seen through `torch.autograd.graph.saved_tensors_hooks`; those still
alive when the forward returns (weak references: a branch the loss does not reach is freed) are summed
by storage, parameters left out. The log-probabilities the loss keeps belong to the logits term
(`logits_bytes`), not to the activations, and are left out too. The forward is tunelab's: packed rows
with per-row attention (`training.packed_attention`), the loss that builds logits only where a label is
(`training.losses.response_only_loss`), in fp32 or under CPU bf16 autocast as the Trainer runs it.
"""

from __future__ import annotations

import contextlib
import weakref

import pytest

from planning.tiny import VOCAB, build, configs
from tunelab.methods.registry import METHODS
from tunelab.models.kinds import MODEL_KINDS, lm_collator
from tunelab.planning.activations import activations
from tunelab.planning.architecture import from_config
from tunelab.planning.trainable import trainables
from tunelab.planning.workload import Workload

ROWS, LENGTH = 2, 32
IA3_TARGETS = {"phi3": {"target_modules": ["qkv_proj", "down_proj"], "feedforward_modules": ["down_proj"]}}


def kept_bytes(model, run, autocast: bool, *, logits_rows: int, vocab: int = VOCAB) -> float:
    import torch

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    refs = []

    def pack(t):
        refs.append(weakref.ref(t))
        return t

    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), ctx:
        loss = run()
    storages = {}
    for ref in refs:
        t = ref()
        if t is None or not (t.is_floating_point() or t.dtype == torch.bool):
            continue
        storage = t.untyped_storage()
        if storage.data_ptr() in params:
            continue
        log_probs = t.dtype == torch.float32 and t.dim() == 2 and t.shape == (logits_rows, vocab)
        storages[storage.data_ptr()] = 0 if log_probs else storage.nbytes()
    del loss
    return float(sum(storages.values()))


def _options(method: str, family: str, given: dict | None):
    if method == "ia3":
        given = IA3_TARGETS.get(family, {})
    return METHODS[method].options(**(given or {})) if METHODS[method].options is not None else None


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("family", ["llama", "gpt2_dropout", "gpt_neox", "phi3"])
@pytest.mark.parametrize(("method", "given"), [("full", None), ("lora", {}), ("lora", {"dropout": 0.1}), ("ia3", {}),
                                               ("freeze", {"trainable_layers": 1})])  # fmt: skip
def test_saved_activations_match_autograd(family, method, given, precision, one_thread):
    from tunelab.training.losses import response_only_loss
    from tunelab.training.packed_attention import packed_attention

    options = _options(method, family, given)
    model = METHODS[method].apply(build(family), options, MODEL_KINDS["causal_lm"])
    model.train()
    rows = [{"input_ids": list(range(5 + i, 5 + i + LENGTH)), "labels": list(range(5 + i, 5 + i + LENGTH))}
            for i in range(ROWS)]  # fmt: skip
    batch = lm_collator(None, True)(rows)

    def run():
        with packed_attention(model):
            return response_only_loss(model, batch)

    real = kept_bytes(model, run, precision == "bf16", logits_rows=ROWS * (LENGTH - 1))
    arch = from_config(configs()[family].to_dict())
    w = Workload(batch_size=ROWS, seq_len=LENGTH, precision=precision, device="cpu")
    # the collator leaves each row's first label out: one logit position fewer per row
    acts = activations(arch, trainables(arch, method, options), w, lora_dropout=getattr(options, "dropout", 0.0))
    estimate = acts.saved_bytes - acts.per_logit_position * ROWS
    assert abs(estimate - real) / real < 0.03, (estimate, real)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox"])
@pytest.mark.parametrize("method", ["prompt", "prefix"])
def test_virtual_token_methods_on_padded_rows(family, method, one_thread):
    """Prompt methods run on padded rows with the model's own loss (logits everywhere)."""
    import torch

    options = METHODS[method].options()
    model = build(family)
    model.config.use_cache = False
    model = METHODS[method].apply(model, options, MODEL_KINDS["causal_lm"])
    model.train()
    ids = torch.randint(5, VOCAB, (ROWS, LENGTH))
    mask = torch.ones_like(ids)
    mask[0, -1] = 0  # one padded position: a real mask, as padded batches have
    tr_arch = from_config(configs()[family].to_dict())
    tr = trainables(tr_arch, method, options)
    real = kept_bytes(model, lambda: model(input_ids=ids, attention_mask=mask, labels=ids).loss, False,
                      logits_rows=ROWS * (LENGTH + tr.virtual_tokens))  # fmt: skip
    w = Workload(batch_size=ROWS, seq_len=LENGTH, precision="fp32", device="cpu", packed=False, sliced_logits=False)
    estimate = activations(tr_arch, tr, w).saved_bytes
    assert abs(estimate - real) / real < 0.03, (estimate, real)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_qlora_on_a_4bit_base(precision, tiny_model, one_thread):
    """bitsandbytes keeps only the 4-bit weight for backward and returns results in its input's dtype."""
    from tunelab.config import config_from_dict
    from tunelab.models.loading import load_model, model_files
    from tunelab.planning.architecture import architecture
    from tunelab.stages.base import base_model_kwargs
    from tunelab.stages.registry import STAGES
    from tunelab.training.losses import response_only_loss
    from tunelab.training.packed_attention import packed_attention

    cfg = config_from_dict({"model": str(tiny_model), "method": "qlora", "data": {"train": "x.jsonl"}})
    method = METHODS["qlora"]
    model = load_model(tiny_model, "causal_lm", **base_model_kwargs(STAGES["sft"], method, cfg, precision, None, None))
    model = method.apply(method.prepare_for_training(model), cfg.method_options(), MODEL_KINDS["causal_lm"])
    model.train()
    rows = [{"input_ids": list(range(5 + i, 5 + i + LENGTH)), "labels": list(range(5 + i, 5 + i + LENGTH))}
            for i in range(ROWS)]  # fmt: skip
    batch = lm_collator(None, True)(rows)
    arch = architecture(model_files(str(tiny_model)))

    def run():
        with packed_attention(model):
            return response_only_loss(model, batch)

    real = kept_bytes(model, run, precision == "bf16", logits_rows=ROWS * (LENGTH - 1), vocab=arch.vocab)
    tr = trainables(arch, "qlora", cfg.method_options())
    acts = activations(arch, tr, Workload(batch_size=ROWS, seq_len=LENGTH, precision=precision, device="cpu"))
    estimate = acts.saved_bytes - acts.per_logit_position * ROWS
    assert tr.quantized_params > 0
    assert abs(estimate - real) / real < 0.03, (estimate, real)
