"""Preference tuning: the model itself learns to prefer the chosen response of a pair over the rejected
one, with TRL's trainers — DPO (with its loss variants: sigmoid, ipo, hinge, sigmoid_norm …), KTO
(which learns from single responses marked good or bad: unpaired feedback rows, or each pair gives one
of each), and the reference-free ORPO (an SFT loss plus an odds-ratio term) and SimPO (a length-
normalised margin; TRL's CPOTrainer).

The recipe: load prompt/chosen/rejected rows → encode both sides with the prompt template (the prompt
once, each response + EOS) → judge the base on the held-out pairs and prompts → apply the method →
train → save → judge the tuned model the same way.

Judged on held-out rows, base vs tuned:
- `preference_accuracy`: how often the implicit reward of DPO, log π(y|x) − log π_base(y|x), is higher
  for the chosen response than for the rejected one (a tie counts half, so the base is exactly 50) —
  the same measure for every stage here, reference-free ones included, so their runs compare;
- on unpaired feedback (KTO) instead `feedback_accuracy`: how often that implicit reward is positive
  for a good response and negative for a bad one (the base: 50), and `reward_gap`: its mean on the
  good responses minus its mean on the bad ones;
- `likelihood_accuracy`: how often the model gives the chosen response the higher mean log-probability
  per token (the base's own preference, before any training);
- `logp_margin`: mean log π(chosen) − log π(rejected), in nats;
- generations: greedy answers to the held-out prompts, scored by the stage's `gold` rule when the data
  has one (`tunelab.rewards`, e.g. `exact-answer`), with the paired bootstrap interval of tuned − base;
  and `kl_to_base`: mean log π(y|x) − log π_base(y|x) per token of the tuned model's own answers.
With an adapter the base is the same model with its adapter switched off (no second copy in memory);
a whole-model method keeps no reference at all during training (TRL precomputes the reference
log-probabilities), and the base is loaded again, briefly, to score the tuned answers for the KL.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tunelab.data.shapes import PREFERENCE_SHAPES, rejected_example
from tunelab.data.templates import IGNORE_INDEX, PromptFormat
from tunelab.evaluation.bootstrap import mean_metric
from tunelab.inference.prompts import display_input
from tunelab.progress import info
from tunelab.runs.artifacts import BASE, TUNED, Prediction, write_predictions
from tunelab.runs.layout import write_json_atomic
from tunelab.stages import common
from tunelab.stages.base import Context, Stage
from tunelab.stages.policy_judging import answers, gold_rule, gold_scores, kl_to_base, mean_tokens, win_rate

HEADLINE = ("preference_accuracy", "gold_score", "win_rate_vs_base", "likelihood_accuracy", "logp_margin", "kl_to_base")
FEEDBACK_HEADLINE = ("feedback_accuracy", "reward_gap")  # KTO on unpaired rows: in place of the pair metrics
DPO_LOSSES = ("sigmoid", "sigmoid_norm", "ipo", "hinge", "robust", "bco_pair", "exo_pair", "nca_pair", "aot",
              "apo_zero", "apo_down", "sppo_hard", "discopop")  # fmt: skip


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    gold: str | None = Field(None, description="rule that judges generations (tunelab.rewards name or module:function)")


class DPOOptions(_Options):
    beta: float = Field(0.1, gt=0, allow_inf_nan=False, description="strength of the pull towards the base")
    loss_type: Literal[DPO_LOSSES] = Field("sigmoid", description="TRL DPO loss: sigmoid (DPO), ipo, hinge, …")  # type: ignore[valid-type]
    sft_weight: float = Field(0.0, ge=0, allow_inf_nan=False,
                              description="weight of an SFT loss on the chosen responses (RPO); keeps DPO from "
                              "lowering the chosen answers' likelihood too")  # fmt: skip


class KTOOptions(_Options):
    beta: float = Field(0.1, gt=0, allow_inf_nan=False, description="strength of the pull towards the base")
    desirable_weight: float = Field(1.0, gt=0, allow_inf_nan=False, description="weight of the good responses' loss")
    undesirable_weight: float = Field(1.0, gt=0, allow_inf_nan=False, description="weight of the bad responses' loss")


class ORPOOptions(_Options):
    beta: float = Field(0.1, gt=0, allow_inf_nan=False, description="weight of the odds-ratio term next to the SFT "
                        "loss on chosen (λ of the ORPO paper)")  # fmt: skip


class SimPOOptions(_Options):
    beta: float = Field(2.0, gt=0, allow_inf_nan=False, description="scale of the length-normalised reward")
    gamma: float = Field(0.5, ge=0, allow_inf_nan=False, description="target reward margin of chosen over rejected")
    sft_weight: float = Field(0.0, ge=0, allow_inf_nan=False, description="weight of an SFT loss on chosen "
                              "(CPO-SimPO); 0 is plain SimPO")  # fmt: skip


# -- data ----------------------------------------------------------------------------------------


def encode_pairs(ctx: Context, fmt: PromptFormat, examples: list, split: str) -> list[dict[str, Any]]:
    """{prompt_ids, chosen_ids, rejected_ids} per pair, each response + EOS encoded as SFT encodes it."""
    max_length = ctx.cfg.data.max_length
    chosen = fmt.encode_many(examples, ctx.tokenizer, max_length)
    rejected = fmt.encode_many([rejected_example(ex) for ex in examples], ctx.tokenizer, max_length)
    common.note_truncation(ctx, sum(c["truncated"] or r["truncated"] for c, r in zip(chosen, rejected, strict=True)),
                           len(examples), f"{split} pair")  # fmt: skip
    rows = []
    for c, r in zip(chosen, rejected, strict=True):
        n = _response_start(c["labels"])
        rows.append({"prompt_ids": c["input_ids"][:n], "chosen_ids": c["input_ids"][n:],
                     "rejected_ids": r["input_ids"][_response_start(r["labels"]):]})  # fmt: skip
    return rows


def encode_feedback(ctx: Context, fmt: PromptFormat, examples: list, split: str) -> list[dict[str, Any]]:
    """{prompt_ids, completion_ids, label} per unpaired feedback row (KTO's own rows)."""
    encoded = fmt.encode_many(examples, ctx.tokenizer, ctx.cfg.data.max_length)
    common.note_truncation(ctx, sum(e["truncated"] for e in encoded), len(examples), f"{split} feedback")
    rows = []
    for e, ex in zip(encoded, examples, strict=True):
        n = _response_start(e["labels"])
        rows.append({"prompt_ids": e["input_ids"][:n], "completion_ids": e["input_ids"][n:], "label": ex.fields["label"]})
    return rows


def _response_start(labels: list[int]) -> int:
    """Where the last trained span (the response) starts: earlier assistant turns of a multi-turn
    prompt are prompt here."""
    return next((i + 1 for i in range(len(labels) - 1, -1, -1) if labels[i] == IGNORE_INDEX), 0)


def unpaired(rows: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """KTO's rows: each pair's chosen response marked good, its rejected one bad, in a seeded order (KTO
    estimates its KL term from other rows of the same batch, so a pair's two halves must not sit together)."""
    import random

    out = []
    for r in rows:
        out.append({"prompt_ids": r["prompt_ids"], "completion_ids": r["chosen_ids"], "label": True})
        out.append({"prompt_ids": r["prompt_ids"], "completion_ids": r["rejected_ids"], "label": False})
    random.Random(seed).shuffle(out)
    return out


def _rotated_completions(batch: dict[str, list]) -> dict[str, list]:
    batch["KL_completion_ids"] = [batch["completion_ids"][-1], *batch["completion_ids"][:-1]]
    return batch


def _trl_pair(row: dict[str, Any]) -> dict[str, list[int]]:
    """A pair as ORPO's and CPO's own `tokenize_row` lays it out, from tunelab's encoding."""
    prompt = row["prompt_ids"]
    out = {"prompt_input_ids": prompt, "prompt_attention_mask": [1] * len(prompt)}
    for side in ("chosen", "rejected"):
        scored = _scored(row, side)
        out |= {f"{side}_input_ids": scored["input_ids"], f"{side}_attention_mask": [1] * len(scored["input_ids"]),
                f"{side}_labels": scored["labels"]}  # fmt: skip
    return out


def _scored(row: dict[str, Any], side: str) -> dict[str, list[int]]:
    ids = row["prompt_ids"] + row[f"{side}_ids"]
    return {"input_ids": ids, "labels": [IGNORE_INDEX] * len(row["prompt_ids"]) + row[f"{side}_ids"]}


# -- judging -------------------------------------------------------------------------------------


def pair_logps(model: Any, ctx: Context, rows: list[dict[str, Any]], label: str) -> dict[str, list[float]]:
    """Summed log-probabilities of each pair's chosen and rejected response, with their token counts."""
    from tunelab.inference.scoring import sequence_nll

    n = len(rows)
    scored = sequence_nll(model, ctx.tokenizer, [_scored(r, "chosen") for r in rows] + [_scored(r, "rejected") for r in rows],
                          batch_size=ctx.cfg.evaluation.batch_size, description=f"score pairs {label}")  # fmt: skip
    return {"chosen": [-v for v, _ in scored[:n]], "rejected": [-v for v, _ in scored[n:]],
            "chosen_tokens": [t for _, t in scored[:n]], "rejected_tokens": [t for _, t in scored[n:]]}  # fmt: skip


def completion_logps(model: Any, ctx: Context, rows: list[dict[str, Any]], label: str) -> dict[str, list]:
    """Summed log-probabilities of each feedback row's completion, with token counts and labels."""
    from tunelab.inference.scoring import sequence_nll

    scored = sequence_nll(model, ctx.tokenizer, [_scored(r, "completion") for r in rows],
                          batch_size=ctx.cfg.evaluation.batch_size, description=f"score feedback {label}")  # fmt: skip
    return {"logp": [-v for v, _ in scored], "tokens": [t for _, t in scored], "label": [r["label"] for r in rows]}


def judge(logps: dict[str, list[float]], base: dict[str, list[float]] | None, gold: list[float] | None,
          n_answers: int, answer_tokens: float | None) -> dict[str, Any]:  # fmt: skip
    """The metrics of one model from its pair log-probabilities (and the base's: the reference)."""
    n = len(logps["chosen"])
    ref = base or logps
    margins = [(c - rc) - (r - rr) for c, r, rc, rr in zip(logps["chosen"], logps["rejected"], ref["chosen"], ref["rejected"],
                                                            strict=True)]  # fmt: skip
    per_token = [c / max(ct, 1) > r / max(rt, 1) for c, r, ct, rt in
                 zip(logps["chosen"], logps["rejected"], logps["chosen_tokens"], logps["rejected_tokens"], strict=True)]  # fmt: skip
    metrics: dict[str, Any] = {
        "preference_accuracy": 100.0 * sum(1.0 if m > 0 else 0.5 if m == 0 else 0.0 for m in margins) / n,
        "likelihood_accuracy": 100.0 * sum(per_token) / n,
        "logp_margin": sum(c - r for c, r in zip(logps["chosen"], logps["rejected"], strict=True)) / n,
        "n": n,
    }
    return _with_answers(metrics, gold, n_answers, answer_tokens)


def judge_feedback(logps: dict[str, list], base: dict[str, list] | None, gold: list[float] | None, n_answers: int,
                   answer_tokens: float | None) -> dict[str, Any]:  # fmt: skip
    """The metrics of one model on unpaired feedback rows (the base's log-probabilities: the reference)."""
    wins = feedback_wins(logps, base or logps)
    rewards = [t - b for t, b in zip(logps["logp"], (base or logps)["logp"], strict=True)]
    good = [r for r, lab in zip(rewards, logps["label"], strict=True) if lab]
    bad = [r for r, lab in zip(rewards, logps["label"], strict=True) if not lab]
    metrics: dict[str, Any] = {"feedback_accuracy": sum(wins) / len(wins), "n": len(wins),
                               "reward_gap": (sum(good) / len(good) if good else 0.0) - (sum(bad) / len(bad) if bad else 0.0)}  # fmt: skip
    return _with_answers(metrics, gold, n_answers, answer_tokens)


def _with_answers(metrics: dict[str, Any], gold: list[float] | None, n_answers: int,
                  answer_tokens: float | None) -> dict[str, Any]:  # fmt: skip
    """A model's metrics plus those of its greedy answers: the gold rule's score and their length."""
    if gold is not None:
        metrics["gold_score"] = 100.0 * sum(gold) / max(len(gold), 1)
    if answer_tokens is not None:
        metrics["mean_output_tokens"] = round(answer_tokens, 1)
    metrics["n_answers"] = n_answers
    return metrics


def feedback_wins(logps: dict[str, list], base: dict[str, list]) -> list[float]:
    """Per row: 100 when the implicit reward's sign agrees with the label, 50 at zero, 0 otherwise."""
    out = []
    for t, b, label in zip(logps["logp"], base["logp"], logps["label"], strict=True):
        r = t - b
        out.append(50.0 if r == 0 else 100.0 if (r > 0) == label else 0.0)
    return out


def implicit_reward_wins(logps: dict[str, list[float]], base: dict[str, list[float]]) -> list[float]:
    """Per pair: 100 when the implicit reward prefers chosen, 50 on a tie, 0 otherwise."""
    out = []
    for c, r, rc, rr in zip(logps["chosen"], logps["rejected"], base["chosen"], base["rejected"], strict=True):
        m = (c - rc) - (r - rr)
        out.append(100.0 if m > 0 else 50.0 if m == 0 else 0.0)
    return out


# -- training ------------------------------------------------------------------------------------


def preference_trainer(library: type) -> Any:
    """A build_trainer for `fit`: TRL's trainer on tunelab's pre-tokenized pairs (datasets.Dataset)."""

    def build(**kwargs: Any) -> Any:
        from datasets import Dataset

        class Pretokenized(library):
            def concatenated_forward(self, model: Any, batch: dict[str, Any]) -> Any:
                # ORPO and CPO read the logits position by position against the labels; prompt tuning
                # and P-tuning put their virtual tokens' logits in front: drop them first
                virtual = _prepended_tokens(model)
                return super().concatenated_forward(_DropLeading(model, virtual) if virtual else model, batch)

            def tokenize_row(self, feature: dict[str, Any], model: Any = None) -> dict[str, Any]:
                # ORPO's and CPO's row tokenizer, on rows tunelab has encoded already
                if "prompt_ids" in feature:
                    return _trl_pair(feature)
                return super().tokenize_row(feature, model)

            def _prepare_dataset(self, dataset: Any, processing_class: Any, args: Any, name: str) -> Any:
                # tunelab's rows are encoded already (its template, its truncation): TRL would
                # re-tokenize them from text
                if "prompt_ids" not in dataset.column_names:
                    return super()._prepare_dataset(dataset, processing_class, args, name)
                if getattr(self, "calculate_KL", False):
                    # KTO's KL estimate, as its own preparation builds it: each batch's completions rotated
                    # by one, so every prompt is paired with another row's completion
                    dataset = dataset.map(_rotated_completions, batched=True, batch_size=args.per_device_train_batch_size)
                return dataset

        Pretokenized.__name__ = library.__name__
        kwargs.pop("data_collator")  # TRL builds the collator that matches its rows and losses
        kwargs["train_dataset"] = Dataset.from_list(kwargs["train_dataset"])
        if kwargs.get("eval_dataset"):
            kwargs["eval_dataset"] = Dataset.from_list(kwargs["eval_dataset"])
        return Pretokenized(**kwargs)

    return build


def _prepended_tokens(model: Any) -> int:
    """How many virtual tokens' logits a peft prompt-learning model puts before the input's own (prompt
    tuning, P-tuning; prefix tuning adds keys and values, not positions)."""
    config = getattr(model, "active_peft_config", None)
    if config is None or not getattr(config, "is_prompt_learning", False):
        return 0
    return config.num_virtual_tokens if str(config.peft_type).endswith(("PROMPT_TUNING", "P_TUNING")) else 0


class _DropLeading:
    """A model whose logits start at the input's first position."""

    def __init__(self, model: Any, n: int) -> None:
        self.model, self.n = model, n

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        out = self.model(*args, **kwargs)
        out.logits = out.logits[:, self.n :]
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)


def _trainer_setup(ctx: Context) -> tuple[type, type, dict[str, Any]]:
    """(TRL trainer class, its config class, the config's own fields) for this stage and its options."""
    import trl

    options = ctx.cfg.task_options()
    if ctx.cfg.task == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        return ORPOTrainer, ORPOConfig, {"beta": options.beta, "disable_dropout": False}
    if ctx.cfg.task == "simpo":
        from trl.experimental.cpo import CPOConfig, CPOTrainer

        return CPOTrainer, CPOConfig, {"loss_type": "simpo", "beta": options.beta, "simpo_gamma": options.gamma,
                                       "cpo_alpha": options.sft_weight, "disable_dropout": False}  # fmt: skip
    # a whole-model method has no adapter to switch off for the reference: TRL computes the reference
    # log-probabilities once, before training, instead of keeping a second copy of the model
    shared: dict[str, Any] = {"max_length": None, "disable_dropout": False, "beta": options.beta,
                              "precompute_ref_log_probs": ctx.method.saves_whole_model}  # fmt: skip
    if ctx.cfg.task == "kto":
        return trl.KTOTrainer, trl.KTOConfig, {**shared, "desirable_weight": options.desirable_weight,
                                                   "undesirable_weight": options.undesirable_weight}  # fmt: skip
    losses = {"loss_type": [options.loss_type]}
    if options.sft_weight:
        losses = {"loss_type": [options.loss_type, "sft"], "loss_weights": [1.0, options.sft_weight]}
    return trl.DPOTrainer, trl.DPOConfig, {**shared, **losses}


def run(ctx: Context) -> dict[str, Any]:
    cfg = ctx.cfg
    common.setup(ctx)
    splits = common.load_data(ctx)
    fmt = PromptFormat.build(ctx.tokenizer, shape=splits.shape, template=cfg.data.template,
                             system_prompt=cfg.data.system_prompt, train_on_prompt=False)  # fmt: skip
    feedback = splits.shape == "feedback"  # unpaired good/bad responses (KTO) rather than pairs
    encode, logps_of, judge_of = (encode_feedback, completion_logps, judge_feedback) if feedback else (encode_pairs, pair_logps, judge)
    train_rows = encode(ctx, fmt, splits.train, "train")
    eval_rows = encode(ctx, fmt, splits.validation, "validation")
    test = common.held_out(ctx, splits)
    test_rows = encode(ctx, fmt, test, "test")
    gold_fn = gold_rule(ctx, test or splits.train)

    model = common.load_base_model(ctx)
    ev = cfg.evaluation
    judged = ev.enabled and bool(test_rows)
    base_logps = base_said = base_gold = None
    if judged:
        base_logps = logps_of(model, ctx, test_rows, "base")
        if ev.compare_base:
            base_said = answers(model, ctx, fmt, test, "base")
            base_gold = gold_scores(gold_fn, test, base_said["texts"])
            write_json_atomic(ctx.run.base_eval_json, {"logps": base_logps, "answers": base_said["texts"]})
    trainer_class, args_class, extra = _trainer_setup(ctx)
    if cfg.task == "kto" and not feedback:
        train_rows, eval_rows = unpaired(train_rows, cfg.training.seed), unpaired(eval_rows, cfg.training.seed)
    trained = common.train_and_save(ctx, model, train_rows, eval_rows, fmt, build_trainer=preference_trainer(trainer_class),
                                    args_class=args_class, extra_args=extra)  # fmt: skip
    model = trained["model"]
    base = tuned = None
    checks: dict[str, Any] = {}
    if judged:
        tuned_logps = logps_of(model, ctx, test_rows, "tuned")
        said = answers(model, ctx, fmt, test, "tuned")
        gold = gold_scores(gold_fn, test, said["texts"])
        tuned = judge_of(tuned_logps, base_logps, gold, len(test), mean_tokens(said))
        kl = kl_to_base(model, ctx, said)
        if kl is not None:
            tuned["kl_to_base"] = round(kl, 4)
        if base_logps is not None and ev.compare_base:
            base = judge_of(base_logps, None, base_gold, len(test), mean_tokens(base_said))
            base["kl_to_base"] = 0.0
            if gold is not None and base_gold is not None:
                checks["win_rate"] = win_rate(base_gold, gold)
                tuned["win_rate_vs_base"] = checks["win_rate"]["win_rate"]
                base["win_rate_vs_base"] = 50.0  # against itself: every prompt a tie
                checks["gold_check"] = common.interval_check("gold_score", [100.0 * v for v in base_gold], [100.0 * v for v in gold])
        write_predictions(ctx.run.predictions, _predictions(test, base_said, said, base_gold, gold))
    paired = None
    if base is not None and tuned is not None:
        wins = feedback_wins if feedback else implicit_reward_wins
        paired = (mean_metric("feedback_accuracy" if feedback else "preference_accuracy"), [50.0] * len(test_rows),
                  wins(tuned_logps, base_logps))  # fmt: skip
    results = common.write_results(ctx, trained, base=base, tuned=tuned, n_test=len(test_rows), paired=paired)
    if checks:
        results.update(checks)
        gc = checks["gold_check"]
        verdict = "better" if gc["better"] else "not clearly better"
        info(f"[cyan]gold[/cyan] {ctx.cfg.task_options().gold}: tuned {gc['tuned']:.1f} vs base {gc['base']:.1f} "
             f"(95% CI of the difference [{gc['low']:+.1f}, {gc['high']:+.1f}]): {verdict}")  # fmt: skip
        if not gc["better"]:
            results["warnings"].append(f"the gold rule does not clearly prefer the tuned answers ({gc['tuned']:.1f} vs "
                                       f"{gc['base']:.1f}; 95% interval [{gc['low']:+.1f}, {gc['high']:+.1f}])")  # fmt: skip
        write_json_atomic(ctx.run.eval_json, results)
    return results


def _predictions(examples: list, base: dict | None, tuned: dict, base_gold: list | None, gold: list | None) -> list[Prediction]:
    rows = []
    for i, ex in enumerate(examples):
        good = ex.fields.get("chosen", ex.fields.get("completion") if ex.fields.get("label") else "")
        row = Prediction(source=ex.source, input=display_input(ex), reference=good or "", meta=dict(ex.meta))
        for name, said, scores in ((BASE, base, base_gold), (TUNED, tuned, gold)):
            if said is not None:
                row.outputs[name] = said["texts"][i]
                if scores is not None:
                    row.stats[name] = {"gold": scores[i]}
        rows.append(row)
    return rows


def _kto_refuse(cfg: Any) -> tuple[str, tuple[str, ...]] | None:
    if cfg.training.batch_size < 2:
        return ("is 1, but KTO estimates its KL term from the other rows of a micro-batch (TRL refuses 1); "
                "set training.batch_size to 2 or more", ("training", "batch_size"))  # fmt: skip
    return common.responses_only(cfg)


def _stage(name: str, summary: str, options: type[BaseModel], *, shapes: tuple[str, ...] = PREFERENCE_SHAPES,
           reference: bool = True, headline: tuple[str, ...] = HEADLINE, refuse: Any = common.responses_only) -> Stage:  # fmt: skip
    return Stage(name=name, summary=summary, run=run, model_kind="policy_lm", shapes=shapes, loss=name,
                 headline_metrics=headline, options=options, reference_model=reference, refuse=refuse)  # fmt: skip


DPO = _stage("dpo", "direct preference optimisation on preference pairs (TRL DPOTrainer, its loss variants)", DPOOptions)
KTO = _stage("kto", "Kahneman-Tversky optimisation: responses marked good or bad (TRL KTOTrainer)", KTOOptions,
             shapes=(*PREFERENCE_SHAPES, "feedback"), headline=HEADLINE[:1] + FEEDBACK_HEADLINE + HEADLINE[1:],
             refuse=_kto_refuse)  # fmt: skip
ORPO = _stage("orpo", "odds-ratio preference optimisation: SFT + preference in one loss, no reference (TRL ORPOTrainer)",
              ORPOOptions, reference=False)  # fmt: skip
SIMPO = _stage("simpo", "SimPO: a length-normalised margin, no reference (TRL CPOTrainer, loss simpo)", SimPOOptions,
               reference=False)  # fmt: skip
