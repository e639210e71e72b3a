"""QLoRA trains like LoRA on the de-quantized base: its LoRA gradients equal those of plain LoRA on a float
model holding the 4-bit weights' values — also after the model has generated without gradients, as the
base-model evaluation before training does (bitsandbytes repacks 4-bit weights for CPU inference then)."""

import pytest
import torch

ROWS = [[5, 17, 42, 99, 7, 61, 23], [8, 30, 11, 4, 90, 66, 12]]


def _quantized(tiny_model):
    from tunelab.config import config_from_dict
    from tunelab.methods.registry import METHODS
    from tunelab.models.kinds import MODEL_KINDS
    from tunelab.models.loading import load_model

    options = config_from_dict({"data": {"train": "x.jsonl"}, "method": "qlora"}).method_options()
    kwargs = METHODS["qlora"].model_kwargs(options, "fp32", MODEL_KINDS["causal_lm"])
    return load_model(tiny_model, "causal_lm", **kwargs), options


def _float_copy(quantized, tiny_model):
    """Plain transformers: the float model whose Linear weights are the 4-bit weights' values."""
    import bitsandbytes as bnb
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, module in quantized.named_modules():
            if getattr(getattr(module, "weight", None), "quant_state", None) is not None:
                modules[name].weight.copy_(bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state))
    return model


def _lora_grads(model):
    ids = torch.tensor(ROWS)
    model.train()
    model.zero_grad()
    model(input_ids=ids, labels=ids).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if "lora_" in n}


def _generate_without_grad(model):
    model.eval()
    with torch.no_grad():
        model.generate(input_ids=torch.tensor(ROWS[:1]), max_new_tokens=3, do_sample=False)


def _adapters(quantized, tiny_model, options, *, prepare: bool):
    """(tunelab's QLoRA model, plain LoRA on the de-quantized float copy), with the same LoRA values."""
    from peft import LoraConfig, get_peft_model

    from tunelab.methods.registry import METHODS
    from tunelab.models.kinds import MODEL_KINDS

    qlora = METHODS["qlora"]
    reference = get_peft_model(_float_copy(quantized, tiny_model), LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                                                               target_modules="all-linear"))  # fmt: skip
    if prepare:
        quantized = qlora.prepare_for_training(quantized)
    _generate_without_grad(quantized)  # what the base evaluation does before training
    ours = qlora.apply(quantized, options, MODEL_KINDS["causal_lm"])
    torch.manual_seed(0)
    lora = {n: torch.randn_like(p) * 0.1 for n, p in reference.named_parameters() if "lora_" in n}  # B ≠ 0 too
    reference.load_state_dict(lora, strict=False)
    assert not ours.load_state_dict(lora, strict=False).unexpected_keys
    return ours, reference


def _relative_errors(ours, reference):
    a, b = _lora_grads(ours), _lora_grads(reference)
    assert a.keys() == b.keys() and a
    return [float((a[n] - b[n]).norm() / b[n].norm().clamp(min=1e-12)) for n in a]


def test_qlora_gradients_equal_lora_on_the_dequantized_base_after_generating(tiny_model):
    quantized, options = _quantized(tiny_model)
    ours, reference = _adapters(quantized, tiny_model, options, prepare=True)
    errors = _relative_errors(ours, reference)
    assert max(errors) < 1e-3, max(errors)  # fp32 compute: the same numbers up to summation order
    _generate_without_grad(ours)  # and after an evaluation during training
    assert max(_relative_errors(ours, reference)) < 1e-3


def test_without_keeping_the_layout_the_gradients_go_wrong(tiny_model):
    """The defect the preparation prevents, on CPUs where bitsandbytes repacks (AVX512-BF16)."""
    from bitsandbytes.functional import has_avx512bf16

    if not has_avx512bf16():
        pytest.skip("this CPU has no AVX512-BF16: bitsandbytes does not repack 4-bit weights here")
    quantized, options = _quantized(tiny_model)
    ours, reference = _adapters(quantized, tiny_model, options, prepare=False)
    assert max(_relative_errors(ours, reference)) > 0.05


def test_a_resumed_qlora_run_ends_where_an_uninterrupted_one_does(tiny_config):
    """Resume runs things in another order (no base evaluation, no step-0 evaluation, a checkpoint
    load): the 4-bit base must train the same way through it."""
    import shutil

    from safetensors.torch import load_file

    import tunelab
    from tunelab.runs.layout import RunDir

    cfg = tiny_config(name="qlora-resume", method="qlora",
                      training={"max_steps": 8, "eval_steps": 4, "save_steps": 4, "lr": 1e-2})  # fmt: skip
    whole = tunelab.train(cfg)
    expected = load_file(whole.run_dir / "adapter" / "adapter_model.safetensors")
    run = RunDir(whole.run_dir)
    shutil.rmtree(run.checkpoints / "checkpoint-8")
    shutil.rmtree(run.path / "adapter")
    run.write_status(status="running")
    resumed = tunelab.resume(run.path)
    assert resumed.results["training"]["global_step"] == 8
    got = load_file(resumed.run_dir / "adapter" / "adapter_model.safetensors")
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6, msg=name)


def test_qlora_keeps_an_encoders_fresh_classifier_head_in_float(tmp_path, tiny_bert, sentiment_file):
    """BERT-style models name their head `classifier`; transformers does not keep it out of 4-bit by
    itself, and a quantized fresh head failed at its first forward (MiniLM + QLoRA classification)."""
    import tunelab

    result = tunelab.train({"name": "q", "output_dir": str(tmp_path / "runs"), "model": str(tiny_bert), "task": "classify",
                            "method": "qlora", "qlora": {"target_modules": ["query", "value"]},
                            "data": {"train": str(sentiment_file), "max_length": 16},
                            "training": {"max_steps": 4, "batch_size": 8, "eval_steps": None, "save_steps": None,
                                         "precision": "fp32"}})  # fmt: skip
    assert result.results["metrics"]["tuned"]["n"] > 0
    heads = [m for n, m in result.model.named_modules() if n.endswith("classifier.modules_to_save.default")]
    assert heads and all(m.weight.dtype == torch.float32 for m in heads)
