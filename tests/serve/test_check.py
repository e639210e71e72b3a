"""`tunelab check`: the adapter, the merged model, the GGUF file read back by transformers and the real
server on 127.0.0.1 agree token for token on the tiny run; a deliberately broken exported template
fails, naming the first differing prompt token (found here by comparing the two renderings directly)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")


def _not_about_eos(problems: list[str]) -> list[str]:
    # a random tiny model need not learn to stop in 8 steps; the contract between the ways is the point here
    return [p for p in problems if "no EOS" not in p]


def test_every_way_of_using_the_model_agrees(tiny_run) -> None:
    from tunelab.serve.check import check_run

    result = check_run(tiny_run, max_new_tokens=6)
    assert result.ways == ["adapter", "merged", "gguf", "served"]
    assert _not_about_eos(result.problems) == []
    reference = result.answers["adapter"]
    for way in ("merged", "gguf"):
        assert [a.prompt_ids for a in result.answers[way]] == [a.prompt_ids for a in reference]
        assert [a.token_ids for a in result.answers[way]] == [a.token_ids for a in reference]
    assert [a.text for a in result.answers["served"]] == [a.text for a in reference]
    assert [a.prompt_count for a in result.answers["served"]] == [len(a.prompt_ids) for a in reference]


def test_a_broken_template_names_the_first_differing_token(tiny_run, monkeypatch) -> None:
    from transformers import AutoTokenizer

    import tunelab.export.merge as merge
    from tunelab.export.check import CHECK_PROMPTS, check_run
    from tunelab.runs.layout import RunDir

    real = merge.export_chat_template

    def broken(fmt, tokenizer):  # the exported template drops the newline after the assistant header
        template = real(fmt, tokenizer)
        assert "'<|im_start|>assistant\n'" in template
        return template.replace("'<|im_start|>assistant\n'", "'<|im_start|>assistant'")

    # where the two renderings part, found here by rendering both with the tokenizer
    tok, fmt = AutoTokenizer.from_pretrained(tiny_run / "tokenizer"), RunDir(tiny_run).read_format()
    rendered = []
    for template in (real(fmt, tok), broken(fmt, tok)):
        tok.chat_template = template
        rendered.append(tok.apply_chat_template([{"role": "user", "content": CHECK_PROMPTS[0]}],
                                                add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"])  # fmt: skip
    good, bad = rendered
    at = next((i for i, (a, b) in enumerate(zip(good, bad, strict=False)) if a != b), min(len(good), len(bad)))
    assert good != bad

    monkeypatch.setattr(merge, "export_chat_template", broken)
    result = check_run(tiny_run, max_new_tokens=4, ways=("merged",))
    assert not result.passed
    problem = next(p for p in result.problems if p.startswith("merged, prompt 1:"))
    assert f"the prompt differs at token {at}:" in problem, problem
