"""Every example config reads and passes the checks `tunelab validate` runs (an example that rots is a
user's first error)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunelab.config import check_before_loading, load_config

ROOT = Path(__file__).resolve().parents[1] / "examples"
# run configs (data_prepare.yaml is a `tunelab data prepare` config, tested in tests/data/test_prepare.py)
EXAMPLES = sorted(p for p in ROOT.rglob("*.yaml") if p.name != "data_prepare.yaml")


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_example_config_validates(path):
    cfg = load_config(path)
    notes = check_before_loading(cfg, output_dir=False, strict=False)
    if cfg.model.init_from:  # a chain's later step: the earlier run is named, relative to the config
        assert cfg.init_run_dir().parent.name == "runs"
    assert all(isinstance(n, str) for n in notes)


def test_the_rlhf_chain_holds_out_the_same_questions_at_every_step():
    """SFT, reward model and RL of examples/rlhf/ judge on the same held-out questions, and none
    trains on another's: the test split of the prompts is disjoint from every step's training rows."""
    from tunelab.data.splits import splits_from_config
    from tunelab.inference.prompts import display_input

    steps = [load_config(p) for p in EXAMPLES if p.parent.name == "rlhf"]
    assert [c.task for c in steps] == ["sft", "reward", "grpo"]
    splits = [splits_from_config(c.data, c._source_dir) for c in steps]
    rl_test = {display_input(e) for e in splits[-1].test}
    for s in splits:
        assert not rl_test & {display_input(e) for e in s.train}
