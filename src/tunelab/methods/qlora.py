"""QLoRA: the frozen base held in 4-bit NF4 (bitsandbytes, CPU or CUDA), LoRA adapters on top."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from tunelab.methods.base import Method, load_adapter
from tunelab.methods.lora import LoraOptions, peft_lora_config


class QloraOptions(LoraOptions):
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = Field(True, description="quantize the quantization constants too")
    compute_dtype: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="dtype the 4-bit weights are de-quantized to for matmuls (auto: the run's precision)"
    )


def model_kwargs(options: QloraOptions, precision: str) -> dict[str, Any]:
    import torch
    from transformers import BitsAndBytesConfig

    name = precision if options.compute_dtype == "auto" else options.compute_dtype
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(name, torch.float32)
    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=options.quant_type,
        bnb_4bit_use_double_quant=options.double_quant,
        bnb_4bit_compute_dtype=dtype,
    )
    device_map = "auto" if torch.cuda.is_available() else "cpu"
    return {"quantization_config": quant, "device_map": device_map}


def apply(model: Any, options: QloraOptions, task: Any) -> Any:
    from peft import get_peft_model, prepare_model_for_kbit_training

    # gradient checkpointing is the biggest slowdown measured here; the run's own setting decides it
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return get_peft_model(model, peft_lora_config(options, task))


METHOD = Method(
    name="qlora",
    summary="LoRA on a 4-bit NF4 base (bitsandbytes)",
    options=QloraOptions,
    apply=apply,
    load=load_adapter,
    weights_dir="adapter",
    model_kwargs=model_kwargs,
)
