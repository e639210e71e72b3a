"""Preview shows the trainer's exact tokens (trained vs masked, EOS) and the matching inference prompt;
stats gives split counts, a histogram and the max_length covering 95% / 99% of rows."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from tunelab.config import config_from_dict
from tunelab.data.preview import (
    build_preview,
    compute_stats,
    histogram,
    plot_lengths,
    render_preview,
    render_stats,
)


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from tunelab.models.loading import load_tokenizer

    return load_tokenizer(tiny_model)


def _render(preview, tokenizer, *, plain: bool, tokens: bool = False) -> str:
    buffer = io.StringIO()
    console = Console(file=buffer, width=200, force_terminal=not plain, color_system=None if plain else "truecolor")
    render_preview(preview, tokenizer, console, plain=plain, tokens=tokens)
    return buffer.getvalue()


def test_plain_preview_brackets_the_trained_answer_and_shows_eos(tiny_config, tokenizer):
    cfg = config_from_dict(tiny_config())
    preview = build_preview(cfg, tokenizer, n=2)
    out = _render(preview, tokenizer, plain=True)
    row = preview.rows[0]
    assert len(preview.rows) == 2 and row.trained > 0 and row.masked > 0
    assert "<|im_start|>user\nWhat colour is the" in out  # the chat template's tokens, masked (no brackets)
    assert "<|im_start|>assistant\n[[The " in out and "<|im_end|>]]" in out  # trained answer ends with the EOS
    assert f"{len(row.input_ids)} tokens: {row.masked} masked, {row.trained} trained" in out
    assert "EOS: '<|im_end|>'" in out and "is the last trained token" in out
    assert "inference prompt" in out and "identical to the masked training prompt" in out
    assert row.mismatch is None and row.prompt_ids == row.input_ids[: row.masked]


def test_colour_preview_uses_styles_not_brackets(tiny_config, tokenizer):
    cfg = config_from_dict(tiny_config())
    out = _render(build_preview(cfg, tokenizer, n=1), tokenizer, plain=False, tokens=True)
    assert "\x1b[" in out and "[[" not in out
    assert " T " in out and " m " in out  # the token list marks trained / masked tokens


def test_custom_template_without_eos_warns_model_may_never_stop(tiny_config, tokenizer):
    cfg = config_from_dict(tiny_config(data={"template": "Q: {question}\nA: {answer}", "max_length": 64}))
    preview = build_preview(cfg, tokenizer, n=1)
    out = _render(preview, tokenizer, plain=True)
    assert "custom template has no EOS: on its own the model may never learn to stop" in out
    assert "A: [[" in out and "<|im_end|>]]" in out  # tunelab appends the EOS; it is trained


def test_truncated_row_shows_what_is_cut(tiny_config, tokenizer):
    cfg = config_from_dict(tiny_config(data={"max_length": 12}))
    out = _render(build_preview(cfg, tokenizer, n=1), tokenizer, plain=True)
    assert "cut by max_length" in out and "teaches the model not to stop" in out


def test_stats_counts_histogram_and_png(tiny_config, tokenizer, tmp_path):
    cfg = config_from_dict(tiny_config())
    stats = compute_stats(cfg, tokenizer)
    assert stats.counts == {"train": 38, "validation": 5, "test": 5}
    assert stats.lengths.covering(0.95) <= stats.lengths.covering(0.99) <= max(stats.lengths.totals)
    png = plot_lengths(stats, tmp_path / "lengths.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    buffer = io.StringIO()
    render_stats(stats, Console(file=buffer, width=200), png=png)
    out = buffer.getvalue()
    assert "rows: train 38 · validation 5 · test 5" in out
    assert "max_length covering 95% of rows" in out and "histogram:" in out and "█" in out


def test_histogram_bins_cover_every_value():
    bins = histogram([1, 2, 2, 3, 10, 40], bins=4)
    assert sum(c for _, _, c in bins) == 6
    assert bins[0][0] == 1 and bins[-1][1] >= 40


@pytest.mark.integration
def test_smollm2_chatterbot_preview(tmp_path):
    """The real model: ChatML tokens masked, the answer and <|im_end|> trained, same inference prompt."""
    from tunelab.models.loading import load_tokenizer, resolve_model

    tok = load_tokenizer(resolve_model("smollm2-135m-instruct").path)
    cfg = config_from_dict({"name": "p", "output_dir": str(tmp_path), "model": "smollm2-135m-instruct",
                            "data": {"train": "builtin:chatterbot"}})  # fmt: skip
    out = _render(build_preview(cfg, tok, n=2), tok, plain=True)
    assert "<|im_start|>system\n" in out and "<|im_start|>user\n" in out
    assert "<|im_start|>assistant\n[[" in out and "<|im_end|>]]" in out
    assert "identical to the masked training prompt" in out
