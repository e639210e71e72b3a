"""tunelab against TRL's SFTTrainer, tuned for CPU, run alternately in one sitting (issue 15).

The workload: SmolLM2-135M-Instruct; the ChatterBot Q/A pairs shuffled with `random.Random(0)`, the first
512 to train on and the next 64 held out; the model's chat template, loss on the answer only; max length
256; effective batch 8; 30 optimizer steps; lr 2e-4 linear, no warmup; seed 0. The method (`--method`):

- `lora-qkvo`: LoRA r=8 α=16 dropout 0 on q,k,v,o_proj (the issue's headline workload);
- `lora-all`: the same on all linear layers (what `make demo` trains);
- `full`: every weight (lr 2e-5: the same lr for both);
- `qlora`: LoRA r=8 on q,k,v,o over a 4-bit NF4 base (bitsandbytes).

TRL is tuned the way its docs advise for speed: bf16 (where the CPU has native bf16 math, as oneDNN
reports it; fp32 elsewhere, where bf16 matmuls are emulated and ~90× slower), no gradient checkpointing,
`padding_free`, rows grouped by length, `max_length=None` (the rows are shorter than 256 tokens anyway). tunelab runs from a
config with nothing tuned but what the workload sets.

Throughput: non-padding tokens of the training forwards ÷ the seconds from the Trainer's
`on_train_begin` to `on_train_end` (the same callback clock for both). Peak: the process's max RSS.
Held-out loss: the mean token NLL of the 64 held-out answers under the saved weights, in fp32, computed
here with plain transformers + peft and labels built from `apply_chat_template` (not tunelab's encoder).
Each run is its own process; the recipes alternate, `--repeats` times; ratios are printed per pair
with min and median.

The allocator (`--malloc`, both recipes, or `--malloc-trl` / `--malloc-tunelab` for one): `auto` runs a
recipe as the `tunelab` command runs (src/tunelab/allocator.py: tcmalloc preloaded when installed);
`glibc` preloads nothing; `tcmalloc` / `jemalloc` preload that one. Anyone can preload tcmalloc under
TRL too, so the fair "best peer" is TRL on the allocator that trains it fastest.

    .venv/bin/python benchmarks/vs_trl.py                      # lora-qkvo, 3 pairs
    .venv/bin/python benchmarks/vs_trl.py --method lora-all --repeats 2
    .venv/bin/python benchmarks/vs_trl.py --malloc tcmalloc     # both recipes on tcmalloc
    .venv/bin/python benchmarks/vs_trl.py --one tunelab         # one run, JSON on stdout
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODEL = "smollm2-135m-instruct"
N_TRAIN, N_HELD_OUT, STEPS, BATCH, MAX_LENGTH, SEED = 512, 64, 30, 8, 256, 0
QKVO = ["q_proj", "k_proj", "v_proj", "o_proj"]
METHODS = {
    "lora-qkvo": {"method": "lora", "targets": QKVO, "lr": 2e-4},
    "lora-all": {"method": "lora", "targets": "all-linear", "lr": 2e-4},
    "full": {"method": "full", "targets": None, "lr": 2e-5},
    "qlora": {"method": "qlora", "targets": QKVO, "lr": 2e-4},
}


def pairs() -> tuple[list[dict], list[dict]]:
    """(train, held-out) question/answer pairs of the workload."""
    import importlib.util

    import yaml

    package = Path(next(iter(importlib.util.find_spec("chatterbot_corpus").submodule_search_locations)))
    rows = []
    for path in sorted((package / "data" / "english").glob("*.yml")):
        for turns in yaml.safe_load(path.read_text(encoding="utf-8")).get("conversations", []):
            for i in range(0, len(turns) - 1, 2) if isinstance(turns, list) else ():
                q, a = turns[i], turns[i + 1]
                if isinstance(q, str) and isinstance(a, str) and q.strip() and a.strip():
                    rows.append({"question": q.strip(), "answer": a.strip()})
    random.Random(0).shuffle(rows)
    return rows[:N_TRAIN], rows[N_TRAIN:N_TRAIN + N_HELD_OUT]


def row_tokens(inputs: dict) -> int:
    """The rows' tokens in a training micro-batch: its attention mask; for packed rows (no mask), each row's
    last position + 1, so that a prefix tunelab computes once for the rows sharing it (their positions start
    past it) still counts in every row, as it does in TRL's batches; else every id."""
    import torch

    mask = inputs.get("attention_mask")
    if mask is not None:
        return int(mask.sum())
    pos = inputs.get("position_ids")
    if pos is None or pos.shape[0] != 1:
        return int(inputs["input_ids"].numel())
    p = pos[0]
    last = torch.cat([p[1:] != p[:-1] + 1, torch.ones(1, dtype=torch.bool)])  # a row ends: the next is no +1
    return int((p[last] + 1).sum())


class Clock:
    """on_train_begin → on_train_end, and the non-padding tokens of every training micro-batch."""

    def __init__(self) -> None:
        self.tokens, self.started, self.seconds = 0, 0.0, 0.0

    def callback(self):  # noqa: ANN201
        from transformers import TrainerCallback

        clock = self

        class _Callback(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001
                clock.started = time.perf_counter()

            def on_train_end(self, args, state, control, **kwargs):  # noqa: ANN001
                clock.seconds = time.perf_counter() - clock.started

        return _Callback()

    def count(self, trainer) -> None:  # noqa: ANN001
        step = trainer.training_step

        def counted(model, inputs, *args, **kwargs):  # noqa: ANN001, ANN202
            self.tokens += row_tokens(inputs)
            return step(model, inputs, *args, **kwargs)

        trainer.training_step = counted


def run_trl(method: str, out: Path, optimizer: str | None = None) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import BitsAndBytesConfig
    from trl import SFTConfig, SFTTrainer

    from tunelab.models.loading import load_tokenizer, resolve_model

    spec = METHODS[method]
    path = resolve_model(MODEL).path
    train, _ = pairs()
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": r["question"]}],
                               "completion": [{"role": "assistant", "content": r["answer"]}]} for r in train])  # fmt: skip
    bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())  # oneDNN's own answer, not tunelab's
    init: dict = {"dtype": torch.float32}
    if spec["method"] == "qlora":
        init["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                         bnb_4bit_use_double_quant=True,
                                                         bnb_4bit_compute_dtype=torch.bfloat16 if bf16 else torch.float32)  # fmt: skip
    args = SFTConfig(output_dir=str(out / "trl"), per_device_train_batch_size=BATCH, gradient_accumulation_steps=1,
                     max_steps=STEPS, learning_rate=spec["lr"], lr_scheduler_type="linear", warmup_steps=0, seed=SEED,
                     bf16=bf16, gradient_checkpointing=False, padding_free=True,
                     train_sampling_strategy="group_by_length", max_length=None, report_to="none",
                     save_strategy="no", logging_steps=5, use_cpu=True, dataloader_num_workers=0,
                     model_init_kwargs=init, disable_tqdm=True, **({"optim": optimizer} if optimizer else {}))  # fmt: skip
    peft_config = None
    if spec["targets"] is not None:
        peft_config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=spec["targets"],
                                 task_type="CAUSAL_LM")  # fmt: skip
    clock = Clock()
    trainer = SFTTrainer(model=path, args=args, train_dataset=data, processing_class=load_tokenizer(path),
                         peft_config=peft_config, callbacks=[clock.callback()])  # fmt: skip
    clock.count(trainer)
    trainer.train()
    trainer.save_model(str(out / "weights"))
    return {"recipe": "trl", "seconds": clock.seconds, "tokens": clock.tokens, "weights": str(out / "weights"),
            "adapter": spec["targets"] is not None, "optimizer": _optim_name(args)}  # fmt: skip


def _optim_name(args) -> str:  # noqa: ANN001
    return str(getattr(args.optim, "value", args.optim))


def run_tunelab(method: str, out: Path, share_prefix: bool = True, optimizer: str | None = None) -> dict:
    import tunelab

    spec = METHODS[method]
    train, held_out = pairs()
    for name, rows in (("train", train), ("validation", held_out[:8]), ("test", held_out[:8])):
        with (out / f"{name}.jsonl").open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    cfg = {
        "name": "bench", "output_dir": str(out), "model": MODEL, "method": spec["method"],
        "data": {"train": str(out / "train.jsonl"), "validation": str(out / "validation.jsonl"),
                 "test": str(out / "test.jsonl"), "max_length": MAX_LENGTH},
        "training": {"max_steps": STEPS, "batch_size": BATCH, "lr": spec["lr"], "scheduler": "linear",
                     "warmup_ratio": 0.0, "seed": SEED, "eval_steps": None, "save_steps": None,
                     "share_prefix": share_prefix, **({"optimizer": optimizer} if optimizer else {})},
        "evaluation": {"enabled": False},
    }  # fmt: skip
    if spec["targets"] is not None:
        cfg[spec["method"]] = {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": spec["targets"]}
    clock = Clock()
    used: dict = {}
    import tunelab.stages.common as common

    make = common.fit  # the same clock and token count as TRL's, on the Trainer tunelab builds

    def clocked_fit(ctx, model, *args, **kwargs):  # noqa: ANN001, ANN202
        import transformers

        original = transformers.Trainer.train

        def train_with_clock(self, *a, **k):  # noqa: ANN001, ANN202
            self.add_callback(clock.callback())
            clock.count(self)
            used["optimizer"] = _optim_name(self.args)
            return original(self, *a, **k)

        transformers.Trainer.train = train_with_clock
        try:
            return make(ctx, model, *args, **kwargs)
        finally:
            transformers.Trainer.train = original

    common.fit = clocked_fit
    result = tunelab.train(cfg, overwrite=True)
    weights = result.run_dir / ("adapter" if spec["targets"] is not None else "model")
    t = result.results["training"]
    return {"recipe": "tunelab", "seconds": clock.seconds, "tokens": clock.tokens, "weights": str(weights),
            "adapter": spec["targets"] is not None, "tunelab_seconds": t["train_seconds"],
            "tunelab_tokens": t["train_tokens"], **used}  # fmt: skip


def held_out_loss(weights: str, adapter: bool) -> float:
    """Mean token NLL of the held-out answers (fp32), labels from the chat template: prompt masked."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tunelab.models.loading import load_tokenizer, resolve_model

    path = resolve_model(MODEL).path
    tok = load_tokenizer(path)
    if adapter:
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), weights)
    else:
        model = AutoModelForCausalLM.from_pretrained(weights, dtype=torch.float32)
    model.eval()
    _, rows = pairs()
    total = count = 0.0
    with torch.no_grad():
        for r in rows:
            prompt = tok.apply_chat_template([{"role": "user", "content": r["question"]}], add_generation_prompt=True,
                                             tokenize=False)  # fmt: skip
            full = tok.apply_chat_template([{"role": "user", "content": r["question"]},
                                            {"role": "assistant", "content": r["answer"]}], tokenize=False)  # fmt: skip
            p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
            ids = tok(full, add_special_tokens=False)["input_ids"][:MAX_LENGTH]
            labels = [-100] * len(p_ids) + ids[len(p_ids):]
            logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].float()
            target = torch.tensor(labels[1:])
            nll = torch.nn.functional.cross_entropy(logits, target, ignore_index=-100, reduction="sum")
            total += float(nll)
            count += int((target != -100).sum())
    return total / count


def one(recipe: str, method: str, share_prefix: bool = True, optimizer: str | None = None) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TUNELAB_QUIET", "1")
    from tunelab.progress import quiet_libraries

    quiet_libraries()
    with tempfile.TemporaryDirectory(prefix="vs_trl_") as tmp:
        out = Path(tmp)
        r = run_trl(method, out, optimizer) if recipe == "trl" else run_tunelab(method, out, share_prefix, optimizer)
        r["peak_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # before the scoring loads more
        r["tokens_per_second"] = r["tokens"] / r["seconds"]
        r["held_out_loss"] = held_out_loss(r.pop("weights"), r.pop("adapter"))
    import torch

    from tunelab.allocator import running

    r["method"] = method
    r["share_prefix"] = share_prefix if recipe == "tunelab" else None
    r["malloc"] = running()
    r["native_bf16"] = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return r


def malloc_env(malloc: str) -> dict[str, str]:
    """The environment of a recipe's process on allocator `malloc`, preloaded as the `tunelab` command does."""
    from tunelab import allocator

    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", allocator.ENV)}
    library = allocator.preload({allocator.ENV: "system" if malloc == "glibc" else malloc})
    return {**env, "LD_PRELOAD": str(library)} if library else env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", choices=list(METHODS), default="lora-qkvo")
    parser.add_argument("--repeats", type=int, default=3, help="pairs of runs (TRL, then tunelab)")
    parser.add_argument("--one", choices=["trl", "tunelab"], help="run one recipe in this process; JSON on stdout")
    parser.add_argument("--json", type=Path, help="also write every run's figures here")
    parser.add_argument("--no-share-prefix", dest="share_prefix", action="store_false",
                        help="tunelab computes the rows' shared prefix in every row (training.share_prefix: false)")
    parser.add_argument("--optimizer", help="both recipes' `optim` (default: each one's own, adamw_torch_fused for both)")
    mallocs = ["auto", "glibc", "tcmalloc", "jemalloc"]
    parser.add_argument("--malloc", choices=mallocs, default="glibc", help="the allocator of both recipes")
    parser.add_argument("--malloc-trl", choices=mallocs, help="TRL's allocator (default: --malloc)")
    parser.add_argument("--malloc-tunelab", choices=mallocs, help="tunelab's allocator (default: --malloc)")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.method, args.share_prefix, args.optimizer)))
        return
    runs = []
    malloc = {"trl": args.malloc_trl or args.malloc, "tunelab": args.malloc_tunelab or args.malloc}
    for i in range(args.repeats):
        for recipe in ("trl", "tunelab"):
            share = [] if args.share_prefix else ["--no-share-prefix"]
            share += ["--optimizer", args.optimizer] if args.optimizer else []
            out = subprocess.run([sys.executable, __file__, "--one", recipe, "--method", args.method, *share],
                                 capture_output=True, text=True, env=malloc_env(malloc[recipe]))  # fmt: skip
            if out.returncode:
                sys.exit(f"{recipe} failed:\n{out.stderr[-4000:]}")
            r = json.loads(out.stdout.strip().splitlines()[-1])
            runs.append(r)
            print(f"pair {i + 1} {recipe:8s} ({r['malloc']}) {r['tokens_per_second']:7.1f} tok/s  {r['peak_gib']:.2f} GiB  "
                  f"held-out loss {r['held_out_loss']:.4f}  ({r['tokens']} tokens, {r['seconds']:.1f} s, {r.get('optimizer')})",
                  flush=True)  # fmt: skip
    trl = [r for r in runs if r["recipe"] == "trl"]
    ours = [r for r in runs if r["recipe"] == "tunelab"]
    ratios = [b["tokens_per_second"] / a["tokens_per_second"] for a, b in zip(trl, ours, strict=True)]
    memory = [b["peak_gib"] / a["peak_gib"] for a, b in zip(trl, ours, strict=True)]
    print(f"\n{args.method}: tunelab / TRL tokens/s per pair {', '.join(f'{x:.2f}' for x in ratios)}; "
          f"min {min(ratios):.2f}, median {statistics.median(ratios):.2f}")
    print(f"peak RSS tunelab {statistics.median(r['peak_gib'] for r in ours):.2f} GiB vs TRL "
          f"{statistics.median(r['peak_gib'] for r in trl):.2f} GiB (ratio median {statistics.median(memory):.2f})")
    print(f"held-out loss tunelab {statistics.median(r['held_out_loss'] for r in ours):.4f} vs TRL "
          f"{statistics.median(r['held_out_loss'] for r in trl):.4f}")
    if args.json:
        args.json.write_text(json.dumps({"method": args.method, "malloc": malloc, "runs": runs, "ratios": ratios},
                                        indent=1) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
