"""Merge (LoRA, QLoRA path, refusal for prompt learning), adapter export, and the GGUF round trip."""

import json
import shutil

import pytest
import torch

import tunelab
from inference.runs import PROMPTS, plain_greedy
from tunelab.errors import TunelabError


@pytest.fixture(scope="module")
def merged_dir(tiny_run, tmp_path_factory):
    from tunelab.export.merge import merge_run

    out = tmp_path_factory.mktemp("merged") / "model"
    result = merge_run(tiny_run, out)
    return out, result


def test_merged_directory_is_plain_hf_and_matches_tunelab_generate(tiny_run, merged_dir):
    out, result = merged_dir
    assert result.method == "lora" and result.precision == "float32"
    assert result.max_abs_logit_diff < 1e-4 and result.probe_tokens > 0
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"} <= names
    assert not any(n.startswith("adapter") for n in names) and not list(out.glob("*.bin"))
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and "quantization_config" not in config
    for prompt in PROMPTS[:3]:
        assert plain_greedy(out, prompt, 12) == tunelab.generate(tiny_run, prompt, max_new_tokens=12)


def test_merge_refuses_an_existing_directory(tiny_run, merged_dir):
    from tunelab.export.merge import merge_run

    with pytest.raises(TunelabError, match="already exists.*--overwrite"):
        merge_run(tiny_run, merged_dir[0])


def _copy_run(tiny_run, tmp_path, name):
    copy = tmp_path / name
    shutil.copytree(tiny_run, copy)
    return copy


def test_qlora_merges_into_the_dequantized_base_and_reports_logit_distance(tiny_run, tmp_path):
    from tunelab.export.merge import merge_run

    # the QLoRA code path on a LoRA adapter: a 4-bit (bitsandbytes NF4) base, de-quantized for the merge
    run = _copy_run(tiny_run, tmp_path, "qlora")
    config = (run / "config.yaml").read_text().replace("method: lora", "method: qlora").replace("\nlora:", "\nqlora:")
    (run / "config.yaml").write_text(config)
    result = merge_run(run, tmp_path / "merged-q")
    assert result.method == "qlora" and "de-quantized from 4-bit NF4" in result.precision
    assert 0 < result.max_abs_logit_diff < 0.5  # vs the 4-bit adapter model: rounding of activations only
    info = json.loads((tmp_path / "merged-q" / "merge_info.json").read_text())
    assert info["max_abs_logit_diff"] == result.max_abs_logit_diff
    assert plain_greedy(tmp_path / "merged-q", PROMPTS[0], 6)


@pytest.mark.parametrize("method", ["dora", "ia3"])
def test_dora_and_ia3_adapters_merge(tiny_run, tiny_model, tmp_path, method):
    import yaml
    from peft import IA3Config, LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tunelab.export.merge import merge_run

    # a run of METHOD: the tiny run with its adapter replaced by a (perturbed, so non-trivial) peft adapter
    run = _copy_run(tiny_run, tmp_path, method)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg.pop("lora", None)
    (run / "config.yaml").write_text(yaml.safe_dump({**cfg, "method": method}))
    config = (LoraConfig(r=4, target_modules=["q_proj", "v_proj"], use_dora=True, task_type="CAUSAL_LM")
              if method == "dora" else IA3Config(target_modules=["k_proj", "v_proj", "down_proj"],
                                                 feedforward_modules=["down_proj"], task_type="CAUSAL_LM"))
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model), config)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.2)
    shutil.rmtree(run / "adapter")
    model.save_pretrained(run / "adapter", safe_serialization=True)
    result = merge_run(run, tmp_path / "merged")
    assert result.method == method and result.max_abs_logit_diff < 1e-3
    assert plain_greedy(tmp_path / "merged", PROMPTS[0], 6) == tunelab.generate(run, PROMPTS[0], max_new_tokens=6)


def test_prompt_learning_cannot_merge_and_offers_the_adapter(tiny_run, tmp_path):
    import yaml

    from tunelab.export.merge import export_adapter, merge_run

    run = _copy_run(tiny_run, tmp_path, "prefix")  # a prefix-tuning run: the method in its config says so
    config = yaml.safe_load((run / "config.yaml").read_text())
    config.pop("lora")
    (run / "config.yaml").write_text(yaml.safe_dump({**config, "method": "prefix"}))
    adapter_config = run / "adapter" / "adapter_config.json"
    adapter_config.write_text(json.dumps({**json.loads(adapter_config.read_text()), "peft_type": "PREFIX_TUNING"}))
    with pytest.raises(TunelabError, match=r"nothing to merge.*export .* --format adapter --out DIR"):
        merge_run(run, tmp_path / "m")
    out = export_adapter(run, tmp_path / "adapter-export")
    names = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "README.md"} <= names


def test_custom_template_becomes_a_chat_template(tiny_run):
    from tunelab.data.templates import PromptFormat, example_from_prompt
    from tunelab.export.merge import export_chat_template
    from tunelab.models.loading import load_tokenizer

    tok = load_tokenizer(tiny_run / "tokenizer")
    fmt = PromptFormat(kind="custom", template="Q: {question}\nA: {answer}", response_field="answer")
    tok.chat_template = export_chat_template(fmt, tok)
    rendered = tok.apply_chat_template([{"role": "user", "content": "hi?"}], add_generation_prompt=True, tokenize=False)
    assert rendered == fmt.prompt_text(example_from_prompt("hi?", fmt, "qa"), tok) == "Q: hi?\nA: "
    chat = PromptFormat.load(tiny_run / "template.json")
    chat.system_prompt = "Be brief."
    tok.chat_template = export_chat_template(chat, tok)
    msgs = [{"role": "user", "content": "hi"}]
    example = example_from_prompt("hi", chat, "messages")
    assert tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False) == chat.prompt_text(example, tok)


def test_gguf_export_round_trip_through_transformers(tiny_run, tmp_path):
    from tunelab.export.gguf import export_gguf

    result = export_gguf(tiny_run, tmp_path / "tiny-f16.gguf", dtype="f16")  # merge → write → read back
    assert result.arch == "llama" and result.path.is_file() and result.tensors == 2 * 9 + 2  # output tied
    assert result.tokenizer_match, result.notes  # tokenizer + chat template embedded
    assert result.verified and result.same_tokens and result.tokens_compared == 24, result.notes


@pytest.mark.parametrize("dtype", ["f32", "q8_0"])
def test_gguf_weights_come_back_from_the_file(tiny_run, tmp_path, dtype):
    from transformers import AutoModelForCausalLM

    from tunelab.export.gguf import verify_gguf, write_gguf
    from tunelab.export.merge import export_chat_template, merged_model

    merged = _merged(tiny_run, merged_model)
    path = tmp_path / f"tiny-{dtype}.gguf"
    write_gguf(merged.model, merged.tokenizer, export_chat_template(merged.fmt, merged.tokenizer), path, dtype=dtype)
    back = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, dtype=torch.float32).eval()
    ids = torch.tensor([[1, 5, 9, 42, 7, 3]])
    with torch.no_grad():
        diff = (merged.model(ids).logits - back(ids).logits).abs().max().item()
    # f32 is exact (so the reader undid our q/k permutation); q8_0 rounds every weight to 8 bits
    assert diff < (1e-4 if dtype == "f32" else 0.05), diff
    check = verify_gguf(path, merged.model, merged.tokenizer, merged.fmt, "messages", max_new_tokens=12)
    assert check["tokenizer_match"] and (check["same_tokens"] or dtype == "q8_0")


_MERGED = {}


def _merged(run, merged_model):
    if run not in _MERGED:
        _MERGED[run] = merged_model(run)
    return _MERGED[run]


def test_gguf_refuses_an_unsupported_dtype_and_existing_file(tiny_run, tmp_path):
    from tunelab.export.gguf import export_gguf

    with pytest.raises(TunelabError, match="unknown GGUF dtype 'q4_k'"):
        export_gguf(tiny_run, tmp_path / "x.gguf", dtype="q4_k")
    (tmp_path / "y.gguf").write_bytes(b"")
    with pytest.raises(TunelabError, match="already exists"):
        export_gguf(tiny_run, tmp_path / "y.gguf")


def test_gguf_qwen2_with_biases_and_untied_output(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from tunelab.export.gguf import write_gguf
    from tunelab.models.loading import load_tokenizer

    tok = load_tokenizer(tiny_model)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                         tie_word_embeddings=False)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    arch, count = write_gguf(model, tok, tok.chat_template, tmp_path / "q.gguf", dtype="f32")
    assert arch == "qwen2" and count == 2 * 12 + 3  # q/k/v biases; separate output matrix
    back = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="q.gguf", dtype=torch.float32).eval()
    ids = torch.tensor([[1, 5, 9, 42, 7, 3]])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, back(ids).logits, atol=1e-5)
