"""QLoRA: the frozen base held in 4-bit NF4 (bitsandbytes, CPU or CUDA), LoRA adapters on top."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from tunelab.errors import TunelabError
from tunelab.methods.base import LoadBase, MergeBase, Method, load_adapter
from tunelab.methods.lora import LoraOptions, check_modules, peft_lora_config


class QloraOptions(LoraOptions):
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = Field(True, description="quantize the quantization constants too")
    compute_dtype: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="dtype the 4-bit weights are de-quantized to for matmuls (auto: the run's precision)"
    )


def model_kwargs(options: QloraOptions, precision: str, kind: Any) -> dict[str, Any]:
    import torch
    from transformers import BitsAndBytesConfig

    name = precision if options.compute_dtype == "auto" else options.compute_dtype
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(name, torch.float32)
    # a classifier's head is created fresh and trained in full (peft's modules_to_save): it stays in
    # float. transformers finds an LM's head itself but not e.g. BERT's `classifier`, which it quantized
    skip = {"llm_int8_skip_modules": list(kind.head_modules)} if kind.classifier else {}
    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=options.quant_type,
        bnb_4bit_use_double_quant=options.double_quant,
        bnb_4bit_compute_dtype=dtype,
        **skip,
    )
    device_map = "auto" if torch.cuda.is_available() else "cpu"
    return {"quantization_config": quant, "device_map": device_map}


def keep_training_layout(model: Any) -> Any:
    """Keep every 4-bit weight in the layout training reads, for the whole run.

    On a CPU with AVX512-BF16, bitsandbytes (0.50) turns a Linear4bit's weight into a CPU-packed
    layout, in place and for good, at its first eval-mode forward without gradients (the base-model
    evaluation before training, and every evaluation during it). The forward still gives the same
    loss afterwards, but the backward through the packed weight is wrong: LoRA's gradients came out
    up to 130% off, and QLoRA learned next to nothing. This switches that repacking off for the
    model being trained (inference on a reloaded run still gets bitsandbytes' fast CPU path).
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    return model


def apply(model: Any, options: QloraOptions, kind: Any) -> Any:
    from peft import get_peft_model, prepare_model_for_kbit_training

    # gradient checkpointing is the biggest slowdown measured here; the run's own setting decides it
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return get_peft_model(model, peft_lora_config(options, kind))


def dequantize_into(quantized: Any, float_base: Any) -> int:
    """Copy the float values of every 4-bit weight of `quantized` into `float_base`; returns how many."""
    import bitsandbytes as bnb
    import torch

    float_modules = dict(float_base.named_modules())
    count = 0
    with torch.no_grad():
        for name, module in quantized.named_modules():
            weight = getattr(module, "weight", None)
            if weight is None or weight.__class__.__name__ != "Params4bit":
                continue
            target = float_modules.get(name)
            if target is None:
                raise TunelabError(f"4-bit module {name} has no float counterpart in the base model")
            values = bnb.functional.dequantize_4bit(weight.data, weight.quant_state)
            target.weight.copy_(values.to(device=target.weight.device, dtype=target.weight.dtype))
            count += 1
    return count


def merge_base(load_base: LoadBase, options: QloraOptions) -> MergeBase:
    """The adapter learned on the 4-bit base, so it is folded into that base *de-quantized* (the float
    values the 4-bit weights stand for), not into the original float weights — a slightly different model."""
    quantized = load_base(True)
    base = load_base(False)
    n = dequantize_into(quantized, base)
    if n == 0:
        raise TunelabError("the QLoRA base loaded without 4-bit weights; cannot de-quantize it",
                           expected="bitsandbytes 4-bit support on this machine")
    return MergeBase(base, trained_on=quantized, weights_from=f"de-quantized from 4-bit {options.quant_type.upper()}",
                     notes=[f"de-quantized {n} 4-bit weight matrices of the base to float32 before merging"])


METHOD = Method(
    name="qlora",
    summary="LoRA on a 4-bit NF4 base (bitsandbytes)",
    options=QloraOptions,
    apply=apply,
    load=load_adapter,
    weights_dir="adapter",
    model_kwargs=model_kwargs,
    merge_base=merge_base,
    prepare_for_training=keep_training_layout,
    training_defaults={"lr": 5e-4},
    check_modules=check_modules,
)
