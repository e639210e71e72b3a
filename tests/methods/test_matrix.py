"""Every method × every task on tiny random models: it trains (loss goes down), reports trainable
parameters exactly as peft does, and reloads from disk with identical outputs."""

import contextlib
import io
import json

import pytest
import torch

import tunelab
from tunelab.methods.registry import METHODS

TASK_DATA = {"sft": "qa", "pretrain": "text", "classify": "sentiment"}
# per-method settings that make a few steps on a tiny model show learning
LR = {"full": 3e-3, "freeze": 1e-2, "prompt": 1e-1, "ptuning": 3e-2, "prefix": 3e-2, "ia3": 1e-1}
OPTIONS = {"freeze": {"trainable_layers": 1}, "prompt": {"num_virtual_tokens": 4}, "ptuning": {"num_virtual_tokens": 4},
           "prefix": {"num_virtual_tokens": 4}}


def make_config(tmp_path, task, method, model_dir, data_file):
    cfg = {
        "name": f"{task}-{method}",
        "output_dir": str(tmp_path / "runs"),
        "model": str(model_dir),
        "task": task,
        "method": method,
        "data": {"train": str(data_file), "max_length": 48, "split": {"validation": 0.1, "test": 0.1, "seed": 0}},
        "training": {"max_steps": 24, "batch_size": 8, "lr": LR.get(method, 1e-2), "logging_steps": 4,
                     "eval_steps": None, "save_steps": None, "precision": "fp32", "warmup_ratio": 0.0,
                     "scheduler": "constant"},
        "evaluation": {"max_new_tokens": 4, "batch_size": 8},
    }
    if method in OPTIONS:
        cfg[method] = OPTIONS[method]
    return cfg


@pytest.fixture()
def text_file(tmp_path):
    from conftest import qa_rows

    path = tmp_path / "text.jsonl"
    path.write_text("\n".join(json.dumps({"text": f"{r['question']} {r['answer']}"}) for r in qa_rows(40)) + "\n")
    return path


def peft_printed(model) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        model.print_trainable_parameters()
    return out.getvalue().strip()


def reference_model(task, method, cfg, model_dir, labels):
    """The same model + method built directly with transformers, peft and bitsandbytes — none of
    tunelab's loading or method code — from the options the test config spells out."""
    from peft import (
        IA3Config,
        LoraConfig,
        PrefixTuningConfig,
        PromptEncoderConfig,
        PromptTuningConfig,
        TaskType,
        get_peft_model,  # fmt: skip
        prepare_model_for_kbit_training,
    )
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        BitsAndBytesConfig,  # fmt: skip
    )

    kwargs = {"dtype": torch.float32, "attn_implementation": "sdpa", "use_safetensors": True}
    task_type = TaskType.SEQ_CLS if task == "classify" else TaskType.CAUSAL_LM
    if task == "classify":
        cls = AutoModelForSequenceClassification
        kwargs.update(num_labels=len(labels), id2label=dict(enumerate(labels)),
                      label2id={x: i for i, x in enumerate(labels)},
                      pad_token_id=AutoTokenizer.from_pretrained(model_dir).pad_token_id)  # fmt: skip
    else:
        cls = AutoModelForCausalLM
    if method == "qlora":
        kwargs.update(device_map="cpu", quantization_config=BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float32))  # fmt: skip
    model = cls.from_pretrained(str(model_dir), **kwargs)
    lora = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": "all-linear", "bias": "none",
            "task_type": task_type}  # tunelab's documented LoRA defaults
    if method in ("full", "freeze"):
        for p in model.parameters():
            p.requires_grad_(method == "full")
        if method == "freeze":  # trainable_layers: 1 and the task head
            stack = model.model.layers if hasattr(model, "model") and hasattr(model.model, "layers") else None
            stack = stack if stack is not None else model.bert.encoder.layer
            head = ["lm_head"] if task != "classify" else ["score", "classifier", "pooler"]
            for p in stack[-1].parameters():
                p.requires_grad_(True)
            for name, module in model.named_modules():
                if any(name == h or name.endswith("." + h) for h in head):
                    for p in module.parameters():
                        p.requires_grad_(True)
        return model
    if method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    config = {
        "lora": lambda: LoraConfig(**lora),
        "qlora": lambda: LoraConfig(**lora),
        "dora": lambda: LoraConfig(**lora, use_dora=True),
        "ia3": lambda: IA3Config(task_type=task_type),
        "prompt": lambda: PromptTuningConfig(task_type=task_type, num_virtual_tokens=4),
        "ptuning": lambda: PromptEncoderConfig(task_type=task_type, num_virtual_tokens=4, encoder_hidden_size=128,
                                               encoder_reparameterization_type="MLP"),
        "prefix": lambda: PrefixTuningConfig(task_type=task_type, num_virtual_tokens=4, prefix_projection=False,
                                             encoder_hidden_size=128),
    }[method]()
    return get_peft_model(model, config)


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("task", ["sft", "pretrain", "classify"])
def test_method_trains_reports_and_reloads(task, method, tmp_path, tiny_model, qa_file, text_file, sentiment_file):
    model_dir = tiny_model
    data = {"sft": qa_file, "pretrain": text_file, "classify": sentiment_file}[task]
    cfg = make_config(tmp_path, task, method, model_dir, data)
    result = tunelab.train(cfg)

    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert sum(losses[-3:]) / 3 < losses[0], losses  # mean of the last logs, not one noisy step

    labels = json.loads((result.run_dir / "labels.json").read_text()) if task == "classify" else None
    reference = reference_model(task, method, cfg, model_dir, labels)
    if hasattr(reference, "print_trainable_parameters"):
        expected = peft_printed(reference)
    else:  # full / freeze: what peft prints, computed from requires_grad
        n_train = sum(p.numel() for p in reference.parameters() if p.requires_grad)
        n_all = sum(p.numel() for p in reference.parameters())
        expected = f"trainable params: {n_train:,d} || all params: {n_all:,d} || trainable%: {100 * n_train / n_all:.4f}"
    assert result.results["trainable"] == expected

    loaded = tunelab.load_run(result.run_dir)
    ids = loaded.tokenizer("film number 3 from start to end was great", return_tensors="pt")
    trained = result.model.eval()
    with torch.no_grad():
        before = trained(**ids).logits
        after = loaded.model(**ids).logits
    # every saved tensor comes back bit-identical (P-tuning saves its encoder's output embeddings
    # instead of the encoder, by peft's design, so its check is the logits below)
    saved = dict(trained.named_parameters())
    for name, p in loaded.model.named_parameters():
        # original_module: peft's unused head backup; 4-bit base weights are not saved (a fresh load of the
        # same base, whose layout bitsandbytes changes at inference): QLoRA's check is the fresh base below
        if "original_module" not in name and method != "ptuning" and type(p).__name__ != "Params4bit":
            assert torch.equal(p.detach(), saved[name].detach()), name
    if method == "qlora":
        # bitsandbytes' CPU inference path rewrites a 4-bit weight's quant state in place at its first
        # no-grad forward (absmax → bf16), so the in-process trained model drifts ~1e-2 from any fresh
        # load. The reload is checked against a fresh 4-bit base carrying the trained adapter instead.
        fresh = reference_model(task, method, cfg, model_dir, labels)
        lora = {n: p for n, p in trained.named_parameters() if p.requires_grad}  # adapter (+ head)
        assert lora and not set(lora) - {n for n, _ in fresh.named_parameters()}
        fresh.load_state_dict(lora, strict=False)
        with torch.no_grad():
            before = fresh.eval()(**ids).logits
    assert torch.allclose(before, after, atol=1e-5), (before - after).abs().max()


@pytest.mark.parametrize("method", ["full", "lora", "freeze"])
def test_classification_on_an_encoder(method, tmp_path, tiny_bert, sentiment_file):
    """BERT-style encoders pool [CLS] (right padding); decoders pool the last token (left padding).
    A 2-layer, 32-wide random BERT learns too slowly to assert learning here; the real MiniLM
    integration test and benchmarks/learning.py check that."""
    cfg = make_config(tmp_path, "classify", method, tiny_bert, sentiment_file)
    cfg["training"]["max_steps"] = 6
    result = tunelab.train(cfg)
    assert set(result.results["metrics"]["tuned"]) >= {"accuracy", "macro_f1", "confusion_matrix"}
    loaded = tunelab.load_run(result.run_dir)
    assert loaded.tokenizer.padding_side == "right"
    ids = loaded.tokenizer(["film number 3 was great", "a dull one"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(result.model.eval()(**ids).logits, loaded.model(**ids).logits, atol=1e-5)
    prediction = tunelab.predict(loaded, "film number 99 from start to end was wonderful")
    assert prediction["label"] in ("fresh", "rotten") and abs(sum(prediction["probabilities"].values()) - 1) < 1e-5
