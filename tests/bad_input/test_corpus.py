"""Bad input, one row each: every file format tunelab reads (YAML and JSON configs, JSONL, JSON, CSV, TSV,
TXT, Parquet, templates, a run's own files), config keys and CLI flags. Each case runs the CLI in-process
(`tunelab.cli.main`) and must end with exit code 2, one message naming the offending file (and its line,
where it has one) and no traceback. `train` runs with every way of loading a model or tokenizer patched to
fail the test, so a passing `train` case proves the input was refused before any model was loaded.

A case is written as: the files to write (text with {tmp}, {tiny}, {bert} filled in: the test folder and
the tiny Llama / BERT models; bytes as they are; FIFO or DIR for a named pipe or a folder), the commands
to run and what the message must contain. `config(...)` cases run `validate`, `train` (and `data check`
where given) on run.yaml; `data(...)` cases run `data check FILE` and `train` on a config reading FILE.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import qa_rows
from conftest import run_cli as cli_output
from tunelab.models.registry import BUILTIN_MODELS

HEAD = "name: t\noutput_dir: {tmp}/runs\nmodel: {tiny}\n"  # lines 1-3
DATA = "data:\n  train: {tmp}/qa.jsonl\n"  # lines 4-5
BASE = HEAD + DATA  # a valid config; a case's own lines start at line 6
QA = "\n".join(json.dumps(r) for r in qa_rows(12)) + "\n"
BOMB = "".join(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]\n" for i in range(1, 10))
TRAIN_SECONDS = 30  # a train case that takes longer did real work before refusing


@dataclass(frozen=True)
class Case:
    input: str  # the bad input's id (one input may run under several commands)
    args: tuple[str, ...]
    expect: tuple[str, ...]  # substrings of the message
    files: dict = field(default_factory=dict)
    file: str | None = "run.yaml"  # the file the message must name (relative to the test folder), None: a flag
    line: int | None = None  # its line, where the input has one
    needs: tuple[str, ...] = ()  # built-in models that must be installed

    @property
    def id(self) -> str:
        return f"{self.input}-{self.args[0]}" if self.args[0] != "data" else f"{self.input}-data-{self.args[1]}"


CASES: list[Case] = []
INPUTS: set[str] = set()


def _add(input_id: str, runs: list[tuple[str, ...]], expect: tuple[str, ...] | str, **kw: object) -> None:
    assert input_id not in INPUTS, input_id
    INPUTS.add(input_id)
    expect = (expect,) if isinstance(expect, str) else tuple(expect)
    CASES.extend(Case(input_id, args, expect, **kw) for args in runs)


def config(input_id: str, text: str | bytes, expect: tuple[str, ...] | str, *, line: int | None = None,
           commands: tuple[str, ...] = ("validate", "train"), args: tuple[str, ...] = (), name: str = "run.yaml",
           files: dict | None = None, **kw: object) -> None:  # fmt: skip
    """A bad config file (or a good one with bad `args`), run with each of `commands`."""
    runs = []
    for command in commands:
        head = ("data", "check") if command == "data check" else (command,)
        runs.append((*head, "{tmp}/" + name, *args))
    _add(input_id, runs, expect, files={name: text, **(files or {})}, file=kw.pop("file", name), line=line, **kw)


def data(input_id: str, name: str, content: str | bytes, expect: tuple[str, ...] | str, *, line: int | None = None,
         args: tuple[str, ...] = (), config_extra: str = "", train: bool = True, **kw: object) -> None:  # fmt: skip
    """A bad data file: `data check FILE` and `train` on a config that reads it."""
    runs = [("data", "check", "{tmp}/" + name, "--no-tokens", *args)]
    files = {name: content}
    if train:
        files["train.yaml"] = HEAD + "data:\n  train: {tmp}/" + name + "\n" + config_extra
        runs.append(("train", "{tmp}/train.yaml"))
    _add(input_id, runs, expect, files=files, file=kw.pop("file", name), line=line, **kw)


def command(input_id: str, args: tuple[str, ...], expect: tuple[str, ...] | str, *, file: str | None,
            line: int | None = None, files: dict | None = None, **kw: object) -> None:  # fmt: skip
    """Bad CLI arguments."""
    _add(input_id, [args], expect, files=files or {}, file=file, line=line, **kw)


# -- YAML: the file itself -----------------------------------------------------------------------------
config("yaml_not_utf8", b"name: t\ndata:\n  train: x.jsonl\n  note: caf\xe9\n", "not valid UTF-8", line=4)
config("yaml_utf16", "name: t\ndata:\n  train: x.jsonl\n".encode("utf-16"), "not valid UTF-8", line=1)
config("yaml_unclosed_flow", BASE + "training:\n  lr: [1e-4\n", "invalid YAML", line=8)
config("yaml_tab_indent", BASE + "training:\n\tlr: 1e-4\n", "invalid YAML", line=7)
config("yaml_nested_300", BASE + "x: " + "[" * 300 + "]" * 300 + "\n", "nested more than 50 levels deep", line=6)
config("yaml_nested_mappings", BASE + "".join("  " * i + f"k{i}:\n" for i in range(80)) + "  " * 80 + "v: 1\n",
       "nested more than 50 levels deep")  # fmt: skip
config("yaml_alias_bomb", BASE + "l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + BOMB,
       "aliases expand this to more than 100,000 values")  # fmt: skip
config("yaml_alias_bomb_in_a_key", HEAD + DATA + "  columns: &c {a: b}\nclassify:\n  labels: [*c, *c]\n"
       "x0: &x0 [a, a, a, a, a, a, a, a, a, a]\n" + "".join(
           f"x{i}: &x{i} [" + ", ".join([f"*x{i - 1}"] * 10) + "]\n" for i in range(1, 7)),
       "aliases expand this to more than 100,000 values")  # fmt: skip
config("yaml_recursive_alias", BASE + "training: &t\n  self: *t\n", "contains itself", line=6)
config("yaml_duplicate_top_key", "name: a\nname: b\n" + DATA, "duplicate key 'name' (first given at line 1", line=2)
config("yaml_duplicate_nested_key", BASE + "training:\n  lr: 1e-4\n  batch_size: 2\n  lr: 2e-4\n",
       "duplicate key 'lr' (first given at line 7", line=9)  # fmt: skip
config("yaml_duplicate_data_key", HEAD + "data:\n  train: a.jsonl\n  train: b.jsonl\n", "duplicate key 'train'", line=6)
config("yaml_integer_5000_digits", BASE + "training:\n  seed: " + "9" * 5000 + "\n", "integer of 5000 characters",
       line=7)  # fmt: skip
config("yaml_bad_timestamp", BASE + "training:\n  seed: 2024-13-45\n", "month must be in 1..12", line=7)
config("yaml_raw_nul", (BASE + "name2: a\0b\n").encode(), "not allowed in YAML", line=6)
config("yaml_control_character", (BASE + "training:\n  lr: 1\x07\n").encode(), "#x0007", line=7)
config("yaml_python_tag", BASE + "x: !!python/object/apply:os.system [ls]\n", "could not determine a constructor",
       line=6)  # fmt: skip
config("yaml_two_documents", BASE + "---\nname: u\n", "but found another document", line=6)
config("yaml_list_not_mapping", "- name: t\n- data: x\n", "not a mapping", line=1)
config("yaml_scalar_not_mapping", "just some words\n", "not a mapping", line=1)
config("yaml_bad_base64", BASE + "x: !!binary ab\n", "base64", line=6)
config("yaml_unhashable_key", BASE + "? [a, b]\n: 1\n", "unhashable key", line=6)
config("yaml_empty", "", "data: required key is missing")
config("yaml_bom_then_tab", "\ufeffname: t\n\tdata: x\n".encode(), "invalid YAML", line=2)
config("config_is_a_directory", "DIR", "is a directory, not a file")
config("config_is_a_fifo", "FIFO", "is a FIFO (named pipe), not a regular file")
command("config_missing", ("validate", "{tmp}/nope.yaml"), "config file not found", file="nope.yaml")
command("config_missing_train", ("train", "{tmp}/nope.yaml"), "config file not found", file="nope.yaml")
command("config_dev_null", ("validate", "/dev/null"), "is a character device", file="/dev/null")
command("config_nul_in_path", ("validate", "{tmp}/run\0.yaml"), "contains a NUL character", file="run")

# -- JSON configs (a JSON file is YAML too) ------------------------------------------------------------
HEAD_JSON = '{"name": "t", "output_dir": "{tmp}/runs", "model": "{tiny}",\n "data": {"train": "{tmp}/qa.jsonl"},\n'
config("json_config_duplicate_key", HEAD_JSON + ' "name": "u"}\n', "duplicate key 'name'", line=3, name="run.json")
config("json_config_syntax", HEAD_JSON + ' "training": {"lr" 1}}\n', "invalid YAML", line=3, name="run.json")
config("json_config_nested", HEAD_JSON + ' "x": ' + "[" * 200 + "]" * 200 + "}\n", "nested more than 50 levels",
       line=3, name="run.json")  # fmt: skip
config("json_config_huge_integer", HEAD_JSON + ' "training": {"seed": ' + "7" * 5000 + "}}\n",
       "integer of 5000 characters", line=3, name="run.json")  # fmt: skip
config("json_config_1e999", HEAD_JSON + ' "training": {"lr": 1e999}}\n', "finite number", line=3, name="run.json")
config("json_config_lone_surrogate", HEAD_JSON + ' "task": "\\ud800"}\n', "lone UTF-16 surrogate", line=3,
       name="run.json")
config("json_config_not_object", '["name", "t"]\n', "not a mapping", line=1, name="run.json")

# -- config keys ------------------------------------------------------------------------------------------
config("key_unknown_top", BASE + "nmae: x\n", "unknown key (did you mean 'name'?)", line=6)
config("key_unknown_nested", BASE + "training:\n  epoch: 2\n", "training.epoch: unknown key (did you mean 'epochs'?)",
       line=7)  # fmt: skip
config("key_wrong_type", BASE + "training:\n  batch_size: lots\n", "expected an integer", line=7)
config("key_negative_lr", BASE + "training:\n  lr: -1.0e-4\n", "training.lr", line=7)
config("key_lr_inf", BASE + "training:\n  lr: .inf\n", ("training.lr: got inf", "finite number"), line=7)
config("key_lr_nan", BASE + "training:\n  lr: .nan\n", ("training.lr: got nan", "finite number"), line=7)
config("key_epochs_inf", BASE + "training:\n  epochs: .inf\n", ("training.epochs", "finite number"), line=7)
config("key_epochs_inf_string", BASE + "training:\n  epochs: 'inf'\n", ("training.epochs", "finite number"), line=7)
config("key_warmup_minus_inf", BASE + "training:\n  warmup_ratio: -.inf\n", "finite number", line=7)
config("key_max_grad_norm_overflow", BASE + "training:\n  max_grad_norm: 1.0e+999\n", "finite number", line=7)
config("key_lora_alpha_inf", BASE + "lora:\n  alpha: .inf\n", ("lora.alpha", "finite number"), line=7)
config("key_lora_dropout_nan", BASE + "lora:\n  dropout: .nan\n", ("lora.dropout", "finite number"), line=7)
config("key_inf_in_unknown_place", BASE + "data2:\n  x: .inf\n", "finite number", line=7)
config("key_seed_negative", BASE + "training:\n  seed: -1\n", "training.seed", line=7)
config("key_seed_over_32_bits", BASE + "training:\n  seed: 1099511627776\n", ("training.seed", "4294967295"), line=7)
config("key_batch_size_beyond_c_long", BASE + "training:\n  batch_size: 100000000000000000000000000000\n",
       "too large", line=7)  # fmt: skip
config("key_limit_zero", BASE + "  limit: 0\n", "data.limit", line=6)
config("key_max_length_tiny", BASE + "  max_length: 4\n", "data.max_length", line=6)
config("key_optimizer_typo", BASE + "training:\n  optimizer: adamw_torchh\n",
       "unknown optimizer 'adamw_torchh' (did you mean 'adamw_torch'?)", line=7)  # fmt: skip
config("key_optimizer_unknown", BASE + "training:\n  optimizer: fancy\n", "unknown optimizer 'fancy'", line=7)
config("probes_file_missing", BASE + "evaluation:\n  probes: nope.txt\n", "probe file not found", file="nope.txt",
       commands=("train",))  # fmt: skip
config("probes_file_row_without_prompt", BASE + "evaluation:\n  probes: p.jsonl\n", "no prompt", file="p.jsonl", line=2,
       commands=("train",), files={"p.jsonl": '{"prompt": "a"}\n{"text": 1}\n'})  # fmt: skip
config("key_optimizer_missing_package", BASE + "training:\n  optimizer: schedule_free_adamw\n",
       ("optimizer 'schedule_free_adamw' cannot run here", "schedulefree"), line=7)  # fmt: skip
config("key_scheduler", BASE + "training:\n  scheduler: cosinus\n", "training.scheduler", line=7)
config("key_precision", BASE + "training:\n  precision: fp8\n", "training.precision", line=7)
config("key_task_typo", BASE + "task: classfy\n", "unknown task 'classfy' (did you mean 'classify'?)", line=6)
config("key_method_typo", BASE + "method: lorra\n", "unknown method 'lorra' (did you mean 'lora'?)", line=6)
config("key_options_of_another_method", BASE + "method: full\nlora:\n  r: 4\n", "options section 'lora:' given", line=7)
config("key_options_of_another_task", BASE + "classify:\n  labels: [a, b]\n", "options section 'classify:' given",
       line=6)  # fmt: skip
config("key_name_with_slash", BASE.replace("name: t", "name: a/b"), "is not a folder name", line=1)
config("key_name_dotdot", BASE.replace("name: t", "name: '..'"), "is not a folder name", line=1)
config("key_data_missing", HEAD, "data: required key is missing")
config("key_data_train_missing", HEAD + "data:\n  shape: qa\n", "data.train: required key is missing", line=4)
config("key_shape_typo", BASE + "  shape: alpacca\n", "unknown shape 'alpacca' (did you mean 'alpaca'?)", line=6)
config("key_columns_not_mapping", BASE + "  columns: [a, b]\n", ("data.columns", "expected a mapping"), line=6)
config("key_model_unknown_key", BASE + "training:\n  lr: 1\nmodel2: x\n", "model2: unknown key", line=8)
config("key_trust_remote_code", BASE.replace("model: {tiny}", "model:\n  name: {tiny}\n  trust_remote_code: maybe"),
       ("model.trust_remote_code", "true or false"), line=5)  # fmt: skip
config("key_eval_tokens_zero", BASE + "evaluation:\n  max_new_tokens: 0\n", "evaluation.max_new_tokens", line=7)
config("key_lora_r_zero", BASE + "lora:\n  r: 0\n", "lora.r", line=7)
config("key_lora_bias", BASE + "lora:\n  bias: some\n", "lora.bias", line=7)
config("key_lora_no_targets", BASE + "lora:\n  target_modules: []\n", ("lora.target_modules", "names no module"), line=7)
config("key_ia3_feedforward_not_target", BASE + "method: ia3\nia3:\n  target_modules: [k_proj]\n"
       "  feedforward_modules: [down_proj]\n", "'down_proj' is not in target_modules", line=7)  # fmt: skip

# strings no file name, prompt or tokenizer takes
config("nul_in_data_path", HEAD + 'data:\n  train: "{tmp}/qa\\0.jsonl"\n', ("data.train", "NUL character"), line=5)
config("nul_in_output_dir", BASE.replace("output_dir: {tmp}/runs", 'output_dir: "{tmp}/ru\\0ns"'),
       ("output_dir", "NUL character"), line=2)  # fmt: skip
config("nul_in_model_name", BASE.replace("model: {tiny}", 'model: "{tiny}\\0"'), ("model", "NUL"), line=3)
config("surrogate_in_system_prompt", BASE + '  system_prompt: "be \\ud800 brief"\n',
       ("data.system_prompt", "lone UTF-16 surrogate"), line=6)  # fmt: skip

# templates: parsed when the config is read
for tid, template, words in [
    ("stray_close", "Q: {question} } A: {answer}", "Single '}'"),
    ("stray_open", "Q: { {question} A: {answer}", "invalid template"),
    ("unclosed", "Q: {question} A: {answer", "expected '}'"),
    ("positional", "Q: {} A: {answer}", "empty placeholder"),
    ("numbered", "Q: {0} A: {answer}", "placeholder {0} is not a field name"),
    ("attribute", "Q: {question.upper} A: {answer}", "not a field name"),
    ("index", "Q: {question[0]} A: {answer}", "not a field name"),
    ("format_spec", "Q: {question:>10} A: {answer}", "conversion or format spec"),
    ("conversion", "Q: {question!r} A: {answer}", "conversion or format spec"),
]:
    config(f"template_{tid}", BASE + f"  template: {json.dumps(template)}\n", ("data.template", words), line=6,
           commands=("validate", "train", "data check"))  # fmt: skip
config("template_without_response", BASE + '  template: "Q: {question}"\n', "template has no {answer} placeholder",
       line=6, commands=("train", "data check"))  # fmt: skip
config("template_for_chat_rows", HEAD + "data:\n  train: {tmp}/chat.jsonl\n  template: '{question} {answer}'\n",
       "a custom template needs named fields", line=6, commands=("train", "data check"),
       files={"chat.jsonl": json.dumps({"messages": [{"role": "user", "content": "hi"},
                                                      {"role": "assistant", "content": "yo"}]}) + "\n"})  # fmt: skip
config("template_field_not_in_rows", BASE + '  template: "{context} {question} {answer}"\n',
       "template field {context} is not in this row", commands=("train",), file="qa.jsonl", line=1)

# what no single key gets wrong
config("split_adds_up_to_one", BASE + "  split:\n    validation: 0.5\n    test: 0.5\n",
       ("data.split", "leaving none to train on"), line=6, commands=("validate", "train", "data check"))  # fmt: skip
config("split_over_one", BASE + "  split: {validation: 0.7, test: 0.6}\n", "holds out 130%", line=6)
config("split_fraction_over_one", BASE + "  split:\n    validation: 1.5\n", "data.split.validation", line=7)
CLASSIFY = HEAD.replace("{tiny}", "{bert}") + "task: classify\n" + "data:\n  train: {tmp}/qa.jsonl\n"  # lines 1-6
config("labels_one", CLASSIFY + "classify:\n  labels: [fresh]\n", ("classify.labels", "has 1 label"), line=8)
config("labels_duplicate", CLASSIFY + "classify:\n  labels: [fresh, rotten, fresh]\n",
       ("classify.labels", "label 'fresh' is given twice"), line=8)  # fmt: skip
config("labels_empty", CLASSIFY + "classify:\n  labels: []\n", "has 0 labels", line=8)

# the file system
config("output_dir_is_a_file", BASE.replace("{tmp}/runs", "{tmp}/afile"), ("output_dir", "is a file, not a folder"),
       line=2, files={"afile": "x"})  # fmt: skip
config("output_dir_inside_a_file", BASE.replace("{tmp}/runs", "{tmp}/afile/sub"), "which is a file", line=2,
       files={"afile": "x"})  # fmt: skip
config("run_dir_is_a_file", BASE, ("name", "is a file, not a run directory"), line=1, files={"runs/t": "x"})

# against the model's config.json (no weights): module names, positions
config("target_typo", BASE + "lora:\n  target_modules: [q_proj, vproj]\n",
       ("lora.target_modules[1]", "'vproj' matches no module", "did you mean 'v_proj'?"), line=7)  # fmt: skip
config("target_typo_block_list", BASE + "lora:\n  target_modules:\n    - q_proj\n    - k_prj\n",
       ("did you mean 'k_proj'?", "q_proj, up_proj, v_proj"), line=9)  # fmt: skip
config("target_container", BASE + "lora:\n  target_modules: [self_attn]\n", "a LlamaAttention, which lora cannot adapt",
       line=7)  # fmt: skip
config("target_norm_layer", BASE + "lora:\n  target_modules: [input_layernorm]\n", "which lora cannot adapt", line=7)
config("target_regex_matches_nothing", BASE + "lora:\n  target_modules: '.*attn[.]qq_proj'\n",
       "matches none of the model's layers", line=7)  # fmt: skip
config("target_regex_invalid", BASE + "lora:\n  target_modules: '(['\n", "not a valid regular expression", line=7)
config("modules_to_save_typo", BASE + "lora:\n  modules_to_save: [lm_haed]\n", "did you mean 'lm_head'?", line=7)
config("dora_target_typo", BASE + "method: dora\ndora:\n  target_modules: [o_prog]\n", "did you mean 'o_proj'?", line=8)
config("ia3_target_typo", BASE + "method: ia3\nia3:\n  target_modules: [k_proj, up_prj]\n"
       "  feedforward_modules: [k_proj]\n", "did you mean 'up_proj'?", line=8)  # fmt: skip
config("freeze_too_many_layers", BASE + "method: freeze\nfreeze:\n  trainable_layers: 9\n",
       "the model has 2 layers", line=8)  # fmt: skip
config("freeze_unknown_module", BASE + "method: freeze\nfreeze:\n  modules: [nrom]\n",
       ("freeze.modules[0]", "did you mean 'norm'?"), line=8)  # fmt: skip
config("freeze_nothing_to_train", BASE + "method: freeze\nfreeze:\n  trainable_layers: 0\n  train_head: false\n",
       "nothing left to train", line=7)  # fmt: skip
config("max_length_beyond_positions", BASE + "  max_length: 1024\n", "has 512 positions", line=6)
config("virtual_tokens_beyond_positions", BASE + "  max_length: 500\nmethod: prompt\n",
       ("500 + 20 virtual tokens", "at most 492"), line=6)  # fmt: skip
config("minilm_max_length", HEAD.replace("{tiny}", "minilm-l6") + "task: classify\n" + DATA + "  max_length: 1024\n",
       "minilm-l6 has 512 positions", line=7, needs=("minilm-l6",))  # fmt: skip
config("minilm_target_typo", HEAD.replace("{tiny}", "minilm-l6") + "task: classify\n" + DATA +
       "lora:\n  target_modules: [quer, value]\n", "did you mean 'query'?", line=8, needs=("minilm-l6",))  # fmt: skip
config("smollm2_target_typo", HEAD.replace("{tiny}", "smollm2-135m-instruct") + DATA +
       "lora:\n  target_modules: [q_proj, v_porj]\n", "did you mean 'v_proj'?", line=7,
       needs=("smollm2-135m-instruct",))  # fmt: skip
config("model_unknown", BASE.replace("model: {tiny}", "model: smollm2-135m-instuct"),
       "did you mean 'smollm2-135m-instruct'?", line=3)  # fmt: skip
config("model_folder_without_config", BASE.replace("model: {tiny}", "model: {tmp}/empty_model"),
       ("empty_model: folder has no config.json", "model.name"), files={"empty_model/readme.txt": "x"}, line=3)
config("model_config_json_corrupt", BASE.replace("model: {tiny}", "model: {tmp}/broken"),
       ("broken/config.json:2: cannot read the model's config.json", "model.name"), line=3,
       files={"broken/config.json": '{"model_type": "llama",\n "vocab_size": }'})  # fmt: skip

# -- --set overrides --------------------------------------------------------------------------------
config("set_without_equals", BASE, "bad --set 'training.lr'", args=("--set", "training.lr"))
config("set_empty_key", BASE, "an empty key", args=("--set", "=1"))
config("set_empty_part", BASE, "an empty key", args=("--set", "training..lr=1"))
config("set_lr_inf", BASE, ("training.lr", "finite number", "given by --set"), args=("--set", "training.lr=inf"))
config("set_lr_nan", BASE + "training:\n  lr: 1e-4\n", ("training.lr", "finite number", "given by --set"),
       args=("--set", "training.lr=.nan"))  # fmt: skip
config("set_batch_size_word", BASE, ("training.batch_size", "expected an integer"), args=("--set", "training.batch_size=x"))
config("set_unknown_key", BASE, "training.lrr: unknown key (did you mean 'lr'?)", args=("--set", "training.lrr=1"))
config("set_deep_value", BASE, ("lora.target_modules", "the regular expression"),
       args=("--set", "lora.target_modules=" + "[" * 80 + "]" * 79))  # not YAML: the text itself, a regex here
FLOW_BOMB = "{l0: &l0 [1, 1, 1, 1, 1, 1, 1, 1, 1], " + ", ".join(
    f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 8)) + "}"
config("set_alias_bomb", BASE, ("lora.target_modules", "the regular expression"),
       args=("--set", "lora.target_modules=" + FLOW_BOMB))  # refused as YAML: the text itself
config("set_conflict", BASE, "conflicts with another --set", args=("--set", "training=1", "--set", "training.lr=2"))
config("set_method_typo", BASE, "did you mean 'lora'?", args=("--set", "method=lorra"))
config("set_bad_template", BASE, ("data.template", "Single '}'"), args=("--set", "data.template=a } {answer}"))

# -- data files --------------------------------------------------------------------------------------------
row = json.dumps(qa_rows(1)[0])
data("jsonl_invalid", "d.jsonl", f"{row}\n{row}\n{{\"question\": oops}}\n", "invalid JSON", line=3)
data("jsonl_not_object", "d.jsonl", f"{row}\n[1, 2]\n", "line is a JSON list, not an object", line=2)
data("jsonl_duplicate_key", "d.jsonl", f'{row}\n{{"question": "a", "answer": "b", "question": "c"}}\n',
     "key 'question' appears twice", line=2)  # fmt: skip
data("jsonl_nan", "d.jsonl", f'{row}\n{{"question": "a", "answer": NaN}}\n', "NaN is not valid JSON", line=2)
data("jsonl_infinity", "d.jsonl", f'{{"question": "a", "answer": -Infinity}}\n{row}\n', "-Infinity is not valid JSON",
     line=1)  # fmt: skip
data("jsonl_integer_5000_digits", "d.jsonl", f'{row}\n{{"question": {"9" * 5000}, "answer": "b"}}\n',
     "a number of 5000 digits is too long", line=2)  # fmt: skip
data("jsonl_nested_100000", "d.jsonl", f'{{"question": {"[" * 100000}{"]" * 100000}, "answer": "b"}}\n',
     "nested more than 100 levels deep", line=1)  # fmt: skip
data("jsonl_nested_150", "d.jsonl", f'{row}\n{{"question": {"[" * 150}{"]" * 150}, "answer": "b"}}\n',
     "nested more than 100 levels deep", line=2)  # fmt: skip
data("jsonl_lone_surrogate", "d.jsonl", f'{row}\n{{"question": "\\ud800", "answer": "b"}}\n',
     "\\ud800 is a lone UTF-16 surrogate", line=2)  # fmt: skip
data("jsonl_lone_low_surrogate", "d.jsonl", '{"question": "x\\udc00y", "answer": "b"}\n', "lone UTF-16", line=1)
data("jsonl_surrogate_in_key", "d.jsonl", '{"question": "a", "answer": "b", "\\udfff": 1}\n', "lone UTF-16", line=1)
data("jsonl_not_utf8", "d.jsonl", f"{row}\n".encode() + b'{"question": "caf\xe9", "answer": "b"}\n', "not valid UTF-8",
     line=2)  # fmt: skip
data("jsonl_utf16", "d.jsonl", f"{row}\n".encode("utf-16"), "not valid UTF-8", line=1)
data("jsonl_empty", "d.jsonl", "", "no rows")
data("jsonl_blank_lines", "d.jsonl", "\n\n  \n", "no rows")
data("jsonl_missing_field", "d.jsonl", f'{row}\n{{"question": "a"}}\n', "answer: missing for shape qa", line=2)
data("jsonl_wrong_type", "d.jsonl", f'{row}\n{{"question": "a", "answer": ["b"]}}\n', "is a list, not a string", line=2)
data("jsonl_object_answer", "d.jsonl", f'{row}\n{{"question": "a", "answer": {{"b": 1}}}}\n', "answer", line=2)
data("jsonl_unknown_shape", "d.jsonl", '{"q": "a", "a": "b"}\n', "cannot tell the shape", line=1)
data("jsonl_unknown_role", "d.jsonl", json.dumps({"messages": [{"role": "user", "content": "hi"},
                                                               {"role": "bot", "content": "yo"}]}) + "\n",
     "unknown role 'bot'", line=1)  # fmt: skip
data("jsonl_turn_not_object", "d.jsonl", json.dumps({"messages": ["hi"]}) + "\n", "is a string, not an object", line=1)
data("jsonl_truncated_last_line", "d.jsonl", f"{row}\n{row[:20]}", "invalid JSON", line=2)
data("jsonl_label_dashes", "d.jsonl", "".join(json.dumps({"text": f"t{i}", "label": "--1"}) + "\n" for i in range(4)),
     "only one label (--1)", train=False)  # fmt: skip
data("json_top_level_string", "d.json", '"rows"\n', "top level is a JSON string", line=1)
data("json_object_without_data", "d.json", '{"rows": []}\n', 'an object without a "data" list', line=1)
data("json_invalid", "d.json", '[\n  {"question": "a", "answer": "b"},\n  {"question": "c" "answer": "d"}\n]\n',
     "invalid JSON", line=3)  # fmt: skip
data("json_duplicate_key", "d.json", '[{"question": "a", "answer": "b"},\n {"question": "c",\n  "answer": "d", '
     '"question": "e"}]\n', "key 'question' appears twice", line=3)  # fmt: skip
data("json_nan", "d.json", '{"data": [\n {"question": "a", "answer": NaN}]}\n', "NaN is not valid JSON", line=2)
data("json_item_not_object", "d.json", '[{"question": "a", "answer": "b"},\n 7]\n', "item 2 is a JSON number", line=2)
data("json_nested", "d.json", '[{"question": "a", "answer": "b"},\n {"question": ' + "[" * 2000 + "]" * 2000 + "}]\n",
     "nested more than 100 levels deep", line=2)  # fmt: skip
data("json_integer_5000_digits", "d.json", '[\n{"question": "a", "answer": ' + "1" * 5000 + "}]\n",
     "5000 digits is too long", line=2)  # fmt: skip
data("json_surrogate", "d.json", '[\n{"question": "a",\n "answer": "\\udbff"}]\n', "lone UTF-16", line=3)
data("csv_duplicate_header", "d.csv", "question,question\na,b\n", "header has duplicate column 'question'", line=1)
data("csv_too_many_cells", "d.csv", "question,answer\na,b\nc,d,e\n", "row has 3 cells but the header has 2", line=3)
data("csv_unclosed_quote", "d.csv", 'question,answer\na,b\n"c,d\ne,f\n', "never closed", line=3)
data("csv_missing_column", "d.csv", "q,a\nx,y\n", "column 'Question' not found", line=2,
     args=("--column", "Question=question"), config_extra="  columns: {Question: question}\n")  # fmt: skip
data("csv_not_utf8", "d.csv", b"question,answer\n\xff,b\n", "not valid UTF-8", line=2)
data("csv_header_only", "d.csv", "question,answer\n", "no rows")
data("csv_empty_answer", "d.csv", "question,answer\na,\n", "answer: is empty", line=2)
data("tsv_too_many_cells", "d.tsv", "question\tanswer\na\tb\tc\n", "row has 3 cells", line=2)
data("tsv_unknown_shape", "d.tsv", "x\ty\n1\t2\n", "cannot tell the shape", line=2)
data("txt_not_utf8", "d.txt", b"To be\nor not \xc3\x28 to be\n", "not valid UTF-8", line=2, config_extra="task: pretrain\n")
data("txt_empty", "d.txt", "   \n", "no rows", config_extra="task: pretrain\n")
data("txt_for_sft", "d.txt", "Some plain text.\n", "task 'sft' cannot train on rows of shape 'text'",
     args=("--task", "sft"))  # fmt: skip
data("parquet_corrupt", "d.parquet", b"PAR1 not really parquet", "cannot read Parquet file")
data("parquet_empty_file", "d.parquet", b"", "cannot read Parquet file")
data("unsupported_extension", "d.xlsx", b"PK\x03\x04", "unsupported file type '.xlsx'")
data("no_extension", "data", "question,answer\n", "unsupported file type '(no extension)'")
data("data_is_a_directory", "d.jsonl", "DIR", "is a directory, not a file")
data("data_is_a_fifo", "d.jsonl", "FIFO", "is a FIFO (named pipe), not a regular file")
command("data_is_a_char_device", ("data", "check", "/dev/zero", "--no-tokens"), "is a character device",
        file="/dev/zero")  # fmt: skip
config("data_char_device_in_config", HEAD + "data:\n  train: /dev/zero\n", "is a character device",
       commands=("train", "data check"), file="/dev/zero")  # fmt: skip
config("data_missing_in_config", HEAD + "data:\n  train: {tmp}/missing.jsonl\n", "file not found",
       commands=("train", "data check"), file="missing.jsonl")  # fmt: skip
config("validation_file_missing", BASE + "  validation: {tmp}/val.jsonl\n", "file not found",
       commands=("train", "data check"), file="val.jsonl")  # fmt: skip

# -- `data prepare` configs ---------------------------------------------------------------------------
PREPARE = ("data", "prepare", "{tmp}/prep.yaml", "--out", "{tmp}/out")
command("prepare_fraction_nan", PREPARE, ("split.validation", "finite number"), file="prep.yaml", line=3,
        files={"prep.yaml": "input: {tmp}/qa.jsonl\nsplit:\n  validation: .nan\n"})  # fmt: skip
command("prepare_duplicate_key", PREPARE, "duplicate key 'input'", file="prep.yaml", line=2,
        files={"prep.yaml": "input: {tmp}/qa.jsonl\ninput: {tmp}/other.jsonl\n"})  # fmt: skip
command("prepare_input_fifo", PREPARE, "is a FIFO", file="pipe.jsonl",
        files={"prep.yaml": "input: {tmp}/pipe.jsonl\n", "pipe.jsonl": "FIFO"})  # fmt: skip
command("prepare_unknown_key", PREPARE, "unknown key", file="prep.yaml", line=2,
        files={"prep.yaml": "input: {tmp}/qa.jsonl\nfirts: 3\n"})  # fmt: skip

# -- CLI flags and arguments -------------------------------------------------------------------------
command("flag_format", ("data", "check", "{tmp}/qa.jsonl", "--format", "xml"), "unknown format 'xml'", file=None)
command("flag_max_length_zero", ("data", "check", "{tmp}/qa.jsonl", "--max-length", "0"), "--max-length", file=None)
command("flag_task", ("data", "check", "{tmp}/qa.jsonl", "--task", "sftt", "--no-tokens"), "unknown task 'sftt'",
        file=None)  # fmt: skip
command("flag_shape", ("data", "check", "{tmp}/qa.jsonl", "--shape", "qaa", "--no-tokens"), "unknown shape 'qaa'",
        file=None)  # fmt: skip
command("flag_one_label", ("data", "check", "{tmp}/qa.jsonl", "--labels", "a", "--no-tokens"), "1 distinct label",
        file=None)  # fmt: skip
command("flag_duplicate_label", ("data", "check", "{tmp}/qa.jsonl", "--labels", "a,b,a"), "label 'a' is given twice",
        file=None)  # fmt: skip
command("flag_template", ("data", "check", "{tmp}/qa.jsonl", "--template", "{question} } {answer}"),
        ("--template", "Single '}'"), file=None)  # fmt: skip
command("flag_column_without_equals", ("data", "check", "{tmp}/qa.jsonl", "--column", "question"), "bad --column",
        file=None)  # fmt: skip
command("flag_unknown_option", ("train", "--no-such-flag"), "No such option", file=None)
command("train_without_config", ("train",), "give a CONFIG file, --set data.train=FILE", file=None)
command("train_set_only_missing_data", ("train", "--set", "data.train={tmp}/missing.jsonl"), "file not found",
        file="missing.jsonl")  # fmt: skip
command("data_check_nul_argument", ("data", "check", "{tmp}/a\0b.jsonl"), "contains a NUL character", file="a")
command("data_check_missing", ("data", "check", "{tmp}/missing.jsonl"), "file not found", file="missing.jsonl")
command("resume_not_a_run", ("train", "--resume", "{tmp}/nowhere"), "not a run directory", file="nowhere")
RUN = {"runs/r/config.yaml": BASE}
command("resume_run_json_cut_short", ("train", "--resume", "{tmp}/runs/r"), "cannot read the run's run.json",
        file="runs/r/run.json", line=1, files={**RUN, "runs/r/run.json": '{"status": "fai'})  # fmt: skip
command("resume_run_json_a_list", ("train", "--resume", "{tmp}/runs/r"), "it is a list, not an object",
        file="runs/r/run.json", files={**RUN, "runs/r/run.json": "[1]"})  # fmt: skip
command("resume_run_json_not_utf8", ("train", "--resume", "{tmp}/runs/r"), "cannot read the run's run.json",
        file="runs/r/run.json", files={**RUN, "runs/r/run.json": b"\xff\xfe{}"})  # fmt: skip
command("generate_run_json_corrupt", ("generate", "{tmp}/runs/r", "--prompt", "hi"), "cannot read the run's run.json",
        file="runs/r/run.json", line=2, files={**RUN, "runs/r/run.json": '{"status":\n "complete", }'})  # fmt: skip
command("eval_run_json_corrupt", ("eval", "{tmp}/runs/r"), "cannot read the run's run.json", file="runs/r/run.json",
        line=1, files={**RUN, "runs/r/run.json": "{"})  # fmt: skip
command("predict_run_json_corrupt", ("predict", "{tmp}/runs/r", "--text", "x"), "cannot read the run's run.json",
        file="runs/r/run.json", files={**RUN, "runs/r/run.json": "null"})  # fmt: skip
command("train_over_corrupt_run", ("train", "{tmp}/run.yaml"), "cannot read the run's run.json",
        file="runs/t/run.json", files={"run.yaml": BASE, "runs/t/run.json": "{oops", "runs/t/x": ""})  # fmt: skip


# -- the harness -------------------------------------------------------------------------------------------


@pytest.fixture()
def no_model_loading(monkeypatch: pytest.MonkeyPatch):
    """Every way tunelab loads weights or a tokenizer fails the test: a passing train case refused its input first."""
    import transformers

    from tunelab.models import loading

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model or tokenizer was loaded before the bad input was refused")

    monkeypatch.setattr(transformers.PreTrainedModel, "from_pretrained", classmethod(refuse))
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", refuse)
    monkeypatch.setattr(loading, "load_model", refuse)
    monkeypatch.setattr(loading, "load_tokenizer", refuse)
    monkeypatch.setattr(loading, "_convert_gguf", refuse)


def _fill(text: str, tmp: Path, tiny: Path, bert: Path) -> str:
    return text.replace("{tmp}", str(tmp)).replace("{tiny}", str(tiny)).replace("{bert}", str(bert))


def _write(tmp: Path, files: dict, tiny: Path, bert: Path) -> None:
    (tmp / "qa.jsonl").write_text(QA, encoding="utf-8")
    for name, content in files.items():
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if content == "FIFO":
            os.mkfifo(path)
        elif content == "DIR":
            path.mkdir()
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(_fill(content, tmp, tiny, bert), encoding="utf-8", errors="surrogatepass")


def run_cli(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    """`tunelab ARGS` in this process: (exit code, stdout + stderr)."""
    code, out, err = cli_output(args, capsys)
    return code, out + err


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_with_file_and_line_and_exit_2(case: Case, tmp_path: Path, tiny_model: Path,
                                                             tiny_bert: Path, request: pytest.FixtureRequest,
                                                             capsys: pytest.CaptureFixture,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    for name in case.needs:
        if BUILTIN_MODELS[name].source_path() is None:
            pytest.skip(f"built-in model {name} is not installed")
    tmp = tmp_path.resolve()
    _write(tmp, case.files, tiny_model, tiny_bert)
    monkeypatch.chdir(tmp)  # a `train --set …` without a config names its run folder under the cwd
    if case.args[0] == "train":
        request.getfixturevalue("no_model_loading")
    args = [_fill(a, tmp, tiny_model, tiny_bert) for a in case.args]
    start = time.perf_counter()
    code, output = run_cli(args, capsys)
    seconds = time.perf_counter() - start
    assert code == 2, output
    assert "Traceback" not in output, output
    for words in case.expect:
        assert words in output, output
    if case.file is not None:
        name = case.file if case.file.startswith("/") else str(tmp / case.file)
        assert name in output, output
        if case.line is not None:
            assert f"{name}:{case.line}:" in output, output
    if case.args[0] == "train":
        assert seconds < TRAIN_SECONDS, f"took {seconds:.1f} s to refuse"


def test_the_corpus_is_large_and_covers_every_reader():
    assert len(INPUTS) >= 100, len(INPUTS)
    written = {Path(name).suffix for c in CASES for name in c.files}
    assert {".yaml", ".json", ".jsonl", ".csv", ".tsv", ".txt", ".parquet"} <= written
    commands = {" ".join(c.args[:2]) if c.args[0] == "data" else c.args[0] for c in CASES}
    assert {"validate", "train", "data check", "data prepare", "generate", "eval", "predict"} <= commands


def test_the_guard_fails_a_train_that_loads_a_model(tmp_path: Path, tiny_model: Path, tiny_bert: Path,
                                                    no_model_loading: None, capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    """The corpus' proof is only as good as its guard: a good config does reach model loading, and fails there."""
    tmp = tmp_path.resolve()
    _write(tmp, {"run.yaml": BASE + "training:\n  max_steps: 1\n"}, tiny_model, tiny_bert)
    with pytest.raises(AssertionError, match="was loaded before"):
        run_cli(["train", str(tmp / "run.yaml")], capsys)
