"""Shared fixtures: a tiny random-weight Llama and a tokenizer built offline (no hub, seconds)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TUNELAB_QUIET", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

COLOURS = ["red", "blue", "green", "yellow", "black", "white", "orange", "purple"]
THINGS = ["sky", "grass", "sun", "snow", "coal", "orange", "plum", "cherry", "sea", "leaf", "lemon", "night"]


def qa_rows(n: int = 48) -> list[dict[str, str]]:
    """A learnable toy task: the answer is a fixed function of the question."""
    rows = []
    for i in range(n):
        thing = THINGS[i % len(THINGS)]
        colour = COLOURS[(i * 7) % len(COLOURS)]
        rows.append({"question": f"What colour is the {thing} number {i}?", "answer": f"The {thing} is {colour}."})
    return rows


def run_cli(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """`tunelab ARGS` in this process: (exit code, stdout, stderr)."""
    from tunelab import cli

    capsys.readouterr()
    try:
        cli.main(args)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _corpus() -> list[str]:
    lines = [f"{r['question']} {r['answer']}" for r in qa_rows(96)]
    lines += ["To be, or not to be, that is the question.", "All the world's a stage."] * 4
    lines += ["### Question: ### Answer: system user assistant", "0 1 2 3 4 5 6 7 8 9 , . ! ? ' \""]
    return lines


def build_tiny_model(directory: Path, *, seed: int = 0, initializer_range: float = 0.02) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHATML
    directory.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(directory)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        initializer_range=initializer_range,
    )
    LlamaForCausalLM(config).save_pretrained(directory, safe_serialization=True)
    return directory


@pytest.fixture(scope="module")
def one_thread():
    """The tiny model is faster on one thread, and far faster on a busy machine (no thread contention)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture()
def qa_file(tmp_path: Path) -> Path:
    path = tmp_path / "qa.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in qa_rows()) + "\n", encoding="utf-8")
    return path


@pytest.fixture()
def tiny_config(tmp_path: Path, tiny_model: Path, qa_file: Path):
    """A fast SFT config on the tiny model; tests tweak it with overrides."""

    def make(**sections) -> dict:
        cfg = {
            "name": "tiny",
            "output_dir": str(tmp_path / "runs"),
            "model": str(tiny_model),
            "task": "sft",
            "method": "lora",
            "data": {"train": str(qa_file), "max_length": 64, "split": {"validation": 0.1, "test": 0.1, "seed": 1}},
            "training": {
                "max_steps": 30,
                "batch_size": 4,
                "lr": 5e-3,
                "logging_steps": 5,
                "eval_steps": 10,
                "save_steps": 10,
                "precision": "fp32",
                "warmup_ratio": 0.0,
            },
            "evaluation": {"max_new_tokens": 12, "batch_size": 8},
        }
        for key, value in sections.items():
            if isinstance(value, dict) and isinstance(cfg.get(key), dict):
                cfg[key] = {**cfg[key], **value}
            else:
                cfg[key] = value
        return cfg

    return make


def build_tiny_bert(directory: Path, *, seed: int = 0) -> Path:
    """A tiny random BERT with a WordPiece tokenizer trained offline (for classification tests)."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(_corpus() + [s for s, _ in sentiment_rows(64)],
                            trainer=trainers.WordPieceTrainer(vocab_size=300, special_tokens=specials))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")
    directory.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(directory)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(fast), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, pad_token_id=fast.pad_token_id)
    BertModel(config).save_pretrained(directory, safe_serialization=True)
    return directory


GOOD = ["great", "wonderful", "lovely", "brilliant", "delightful", "superb"]
BAD = ["awful", "boring", "dreadful", "terrible", "dull", "clumsy"]


def sentiment_rows(n: int = 64) -> list[tuple[str, str]]:
    """Reviews whose label follows from one word: learnable in a few steps."""
    rows = []
    for i in range(n):
        good = i % 2 == 0
        word = (GOOD if good else BAD)[(i // 2) % 6]
        rows.append((f"film number {i} from start to end was {word}", "fresh" if good else "rotten"))
    return rows


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture()
def sentiment_file(tmp_path: Path) -> Path:
    path = tmp_path / "reviews.jsonl"
    path.write_text("\n".join(json.dumps({"text": t, "label": y}) for t, y in sentiment_rows()) + "\n", encoding="utf-8")
    return path


@pytest.fixture()
def train_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    """`tunelab train` of a config (a dict, written as JSON; `options` after it, e.g. --nproc 2) that must
    be refused before any model loads or any process is launched: returns (exit code, stderr)."""
    import json

    import tunelab.models.loading as loading
    from tunelab.cli import main

    def run(cfg: dict, name: str = "run.json", *options: str) -> tuple[int, str]:
        import subprocess

        path = tmp_path / name
        path.write_text(json.dumps(cfg))
        monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
        monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("processes were launched"))
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_:
            main(["train", str(path), *options])
        return exit_.value.code, capsys.readouterr().err

    return run
