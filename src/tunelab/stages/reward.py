"""Reward modelling: a one-score head on the base model learns to score the chosen response of a
preference pair above the rejected one (Bradley–Terry loss, TRL's RewardTrainer); judged by held-out
pairwise accuracy (how often chosen scores higher) and the mean reward margin.

The recipe: load prompt/chosen/rejected rows → format both sides with the prompt template and
tokenize → score the held-out pairs with the untrained head → apply the method → train → save →
score the same pairs again.
"""

from __future__ import annotations

from typing import Any

from tunelab.data.shapes import PREFERENCE_SHAPES, rejected_example
from tunelab.data.templates import PromptFormat
from tunelab.evaluation.bootstrap import mean_metric
from tunelab.inference.prompts import display_input
from tunelab.runs.artifacts import BASE, TUNED, Prediction, write_predictions
from tunelab.stages import common
from tunelab.stages.base import Context, Stage

OUTCOMES = ["chosen", "rejected"]  # what a prediction says: which response of the pair scores higher


def encode_pairs(ctx: Context, fmt: PromptFormat, examples: list, split: str) -> list[dict[str, Any]]:
    """{chosen_ids, rejected_ids} per pair: prompt + response + EOS, exactly as SFT formats a row."""
    max_length = ctx.cfg.data.max_length
    chosen = fmt.encode_many(examples, ctx.tokenizer, max_length)
    rejected = fmt.encode_many([rejected_example(ex) for ex in examples], ctx.tokenizer, max_length)
    truncated = sum(c["truncated"] or r["truncated"] for c, r in zip(chosen, rejected, strict=True))
    common.note_truncation(ctx, truncated, len(examples), f"{split} pair")
    return [{"chosen_ids": c["input_ids"], "rejected_ids": r["input_ids"]}
            for c, r in zip(chosen, rejected, strict=True)]  # fmt: skip


def evaluate(model: Any, ctx: Context, rows: list[dict[str, Any]], label: str) -> dict[str, Any]:
    """Rewards of both sides of every pair; pairwise accuracy (%) and mean margin."""
    from tunelab.inference.scoring import sequence_scores

    n = len(rows)
    scores = sequence_scores(model, ctx.tokenizer, [r["chosen_ids"] for r in rows] + [r["rejected_ids"] for r in rows],
                             batch_size=ctx.cfg.evaluation.batch_size, description=f"score pairs {label}")  # fmt: skip
    chosen, rejected = scores[:n], scores[n:]
    margins = [c - r for c, r in zip(chosen, rejected, strict=True)]
    metrics = {
        "pairwise_accuracy": 100.0 * sum(m > 0 for m in margins) / n,
        "mean_margin": sum(margins) / n,
        "mean_reward_chosen": sum(chosen) / n,
        "mean_reward_rejected": sum(rejected) / n,
        "n": n,
    }
    return {"metrics": metrics, "chosen": chosen, "rejected": rejected}


def reward_trainer(**kwargs: Any) -> Any:
    """TRL's RewardTrainer on tunelab's rows (it takes `datasets.Dataset`s of pre-tokenized pairs)."""
    from datasets import Dataset
    from trl import RewardTrainer

    kwargs["train_dataset"] = Dataset.from_list(kwargs["train_dataset"])
    if kwargs.get("eval_dataset"):
        kwargs["eval_dataset"] = Dataset.from_list(kwargs["eval_dataset"])
    return RewardTrainer(**kwargs)


def run(ctx: Context) -> dict[str, Any]:
    from trl import RewardConfig

    cfg = ctx.cfg
    common.setup(ctx)
    splits = common.load_data(ctx)
    fmt = PromptFormat.build(ctx.tokenizer, shape=splits.shape, template=cfg.data.template,
                             system_prompt=cfg.data.system_prompt, train_on_prompt=True)  # fmt: skip
    train_rows = encode_pairs(ctx, fmt, splits.train, "train")
    eval_rows = encode_pairs(ctx, fmt, splits.validation, "validation")
    test = common.held_out(ctx, splits)
    test_rows = encode_pairs(ctx, fmt, test, "test")

    model = common.load_base_model(ctx)
    ev = cfg.evaluation
    base = evaluate(model, ctx, test_rows, "untrained head") if ev.enabled and ev.compare_base and test_rows else None
    # rows were truncated to data.max_length above (TRL would drop longer pairs); dropout as the method says
    trained = common.train_and_save(ctx, model, train_rows, eval_rows, fmt, build_trainer=reward_trainer,
                             args_class=RewardConfig, extra_args={"max_length": None, "disable_dropout": False})  # fmt: skip
    tuned = evaluate(trained["model"], ctx, test_rows, "tuned") if ev.enabled and test_rows else None
    if tuned is not None:
        write_predictions(ctx.run.predictions, _predictions(test, base, tuned))
    paired = None
    if base and tuned:
        base_right, tuned_right = ([100.0 * (c > r) for c, r in zip(m["chosen"], m["rejected"], strict=True)]
                                   for m in (base, tuned))  # fmt: skip
        paired = (mean_metric("pairwise_accuracy"), base_right, tuned_right)
    results = common.write_results(ctx, trained, base=base["metrics"] if base else None,
                                   tuned=tuned["metrics"] if tuned else None, n_test=len(test_rows), paired=paired)  # fmt: skip
    return {**results, "prediction_labels": OUTCOMES}


def _predictions(examples: list, base: Any, tuned: Any) -> list[Prediction]:
    rows = []
    for i, ex in enumerate(examples):
        row = Prediction(source=ex.source, input=display_input(ex), reference="chosen", meta=dict(ex.meta))
        for name, scored in ((BASE, base), (TUNED, tuned)):
            if scored is not None:
                chosen, rejected = scored["chosen"][i], scored["rejected"][i]
                row.outputs[name] = "chosen" if chosen > rejected else "rejected"
                row.stats[name] = {"chosen_reward": round(chosen, 4), "rejected_reward": round(rejected, 4)}
        rows.append(row)
    return rows


STAGE = Stage(name="reward", summary="a reward model on preference pairs (Bradley-Terry, TRL RewardTrainer)",
              run=run, model_kind="reward", shapes=PREFERENCE_SHAPES, loss="bradley_terry",
              headline_metrics=("pairwise_accuracy", "mean_margin"), refuse=common.responses_only)  # fmt: skip
