"""Streaming/sampled generation, `tunelab generate --input/--output`, and `tunelab chat` driven through a pty."""

import json
import os
import pty
import select
import subprocess
import time

import pytest

import tunelab
from inference.runs import PROMPTS, cli_command
from tunelab.errors import TunelabError


@pytest.fixture(scope="module")
def loaded(tiny_run):
    return tunelab.api.load_run(tiny_run)


def _ids(loaded, prompt):
    from tunelab.data.templates import example_from_prompt

    # built by hand from the run's format (not through tunelab's prompt builder)
    return loaded.fmt.prompt_ids(example_from_prompt(prompt, loaded.fmt, loaded.shape), loaded.tokenizer)


def test_batched_streaming_greedy_equals_tunelab_generate(loaded):
    from tunelab.inference.decoding import SamplingOptions, Sequence
    from tunelab.inference.decoding import decode as stream_generate

    reference = tunelab.generate(loaded, PROMPTS[:8], max_new_tokens=12, batch_size=1)
    pieces = [[] for _ in range(8)]
    rows = [Sequence(_ids(loaded, p), SamplingOptions(max_new_tokens=12), on_text=pieces[i].append)
            for i, p in enumerate(PROMPTS[:8])]
    stream_generate(loaded.model, loaded.tokenizer, rows)
    assert [r.text.strip() for r in rows] == reference
    assert all("".join(p) == r.text for p, r in zip(pieces, rows, strict=True))
    assert all(r.finish_reason in ("stop", "length") and 0 < len(r.token_ids) <= 12 for r in rows)


def test_sampling_is_seeded_and_stop_strings_cut(loaded):
    from tunelab.inference.decoding import SamplingOptions, Sequence
    from tunelab.inference.decoding import decode as stream_generate

    ids = _ids(loaded, PROMPTS[0])

    def sample(seed):
        row = Sequence(ids, SamplingOptions(max_new_tokens=10, temperature=1.0, top_p=0.9, seed=seed))
        return stream_generate(loaded.model, loaded.tokenizer, [row])[0].token_ids

    assert sample(1) == sample(1)
    greedy = Sequence(ids, SamplingOptions(max_new_tokens=12))
    full = stream_generate(loaded.model, loaded.tokenizer, [greedy])[0].text
    stop = full.strip()[3:5]
    pieces = []
    row = Sequence(ids, SamplingOptions(max_new_tokens=12, stop=[stop]), on_text=pieces.append)
    stream_generate(loaded.model, loaded.tokenizer, [row])
    assert row.finish_reason == "stop" and stop not in row.text and full.startswith(row.text)
    assert "".join(pieces) == row.text


def test_generate_file_takes_the_prompt_of_any_row_shape(loaded, tmp_path):
    from tunelab.inference.batch import generate_file

    rows = [
        {"question": PROMPTS[0], "answer": "ignored", "id": 7},
        {"messages": [{"role": "user", "content": PROMPTS[1]}, {"role": "assistant", "content": "ref"}]},
        {"conversations": [{"from": "human", "value": PROMPTS[2]}]},
        {"instruction": PROMPTS[3], "input": "", "output": "x"},
        {"prompt": PROMPTS[4]},
    ]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = generate_file(loaded, src, tmp_path / "out.jsonl", max_new_tokens=8, show_progress=False)
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert res.rows == 5 and [o.get("id") for o in out] == [7, None, None, None, None]
    assert [o["generated"] for o in out] == tunelab.generate(loaded, PROMPTS[:5], max_new_tokens=8)
    assert out[1]["messages"] == rows[1]["messages"]  # input kept, answer added

    txt = tmp_path / "prompts.txt"
    txt.write_text(f"{PROMPTS[0]}\n\n{PROMPTS[1]}\n")
    generate_file(loaded, txt, tmp_path / "out.csv", max_new_tokens=8, show_progress=False)
    assert (tmp_path / "out.csv").read_text().count("\n") == 3

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "ok"}) + "\n" + json.dumps({"colour": "red"}) + "\n")
    with pytest.raises(TunelabError, match=r"bad.jsonl:2: no prompt in this row; it has keys 'colour'"):
        generate_file(loaded, bad, tmp_path / "o.jsonl", show_progress=False)
    with pytest.raises(TunelabError, match="unsupported output type"):
        generate_file(loaded, src, tmp_path / "o.txt", show_progress=False)


def _env():
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TUNELAB_QUIET": "1", "TOKENIZERS_PARALLELISM": "false"}


def test_generate_command_file_and_usage_errors(tiny_run, tmp_path):
    import typer
    from typer.testing import CliRunner

    from tunelab.commands import use

    app = typer.Typer()
    use.register(app)
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"question": PROMPTS[0]}) + "\n")
    res = CliRunner().invoke(app, ["generate", str(tiny_run), "--input", str(src), "--output", str(tmp_path / "o.jsonl"),
                                   "--max-new-tokens", "6"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "o.jsonl").read_text())["generated"] == tunelab.generate(
        tiny_run, PROMPTS[0], max_new_tokens=6)
    res = CliRunner().invoke(app, ["generate", str(tiny_run), "-p", PROMPTS[0], "--max-new-tokens", "6"])
    assert res.exit_code == 0 and res.output.strip() == tunelab.generate(tiny_run, PROMPTS[0], max_new_tokens=6)
    res = CliRunner().invoke(app, ["generate", str(tiny_run), "--input", str(src)])
    assert isinstance(res.exception, TunelabError) and "--input needs --output" in str(res.exception)


def _read_until(fd, needle, timeout=60.0):
    buf = b""
    end = time.time() + timeout
    while needle.encode() not in buf:
        left = end - time.time()
        if left <= 0:
            raise AssertionError(f"timed out waiting for {needle!r}; got {buf.decode(errors='replace')!r}")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            buf += chunk
    return buf.decode(errors="replace")


def test_chat_in_a_pseudo_terminal(tiny_run):
    expected = tunelab.generate(tiny_run, PROMPTS[0], max_new_tokens=10)
    main, child = pty.openpty()
    proc = subprocess.Popen([*cli_command(), "chat", str(tiny_run), "--greedy", "--max-tokens", "10"],
                            stdin=child, stdout=child, stderr=child, env=_env(), close_fds=True)
    os.close(child)
    try:
        banner = _read_until(main, ">>> ")
        assert "/reset" in banner and "/exit" in banner
        os.write(main, (PROMPTS[0] + "\r").encode())
        answer = _read_until(main, ">>> ")
        assert expected in answer.replace("\r\n", "\n")
        os.write(main, b"/reset\r")
        assert "conversation cleared" in _read_until(main, ">>> ")
        os.write(main, b"/exit\r")
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(main)


def test_chat_session_keeps_history_in_the_template(loaded):
    from tunelab.inference.chat import ChatSession, conversation_ids
    from tunelab.inference.decoding import SamplingOptions

    session = ChatSession(loaded, SamplingOptions(max_new_tokens=6))
    first = session.send(PROMPTS[0])
    session.send(PROMPTS[1])
    assert [m["role"] for m in session.messages] == ["user", "assistant", "user", "assistant"]
    assert session.messages[1]["content"] == first.text.strip()
    text = loaded.tokenizer.decode(conversation_ids(loaded, session.messages[:3]))
    assert text.count("<|im_start|>user") == 2 and text.endswith("<|im_start|>assistant\n")
    session.reset()
    assert session.messages == []


@pytest.mark.parametrize("kind", ["prompt", "prefix"])
def test_virtual_token_models_stream_through_transformers_generate(tiny_model, kind):
    import torch
    from peft import PrefixTuningConfig, PromptTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tunelab.inference.decoding import SamplingOptions, Sequence
    from tunelab.inference.decoding import decode as stream_generate
    from tunelab.methods.base import uses_virtual_tokens
    from tunelab.models.loading import load_tokenizer

    tok = load_tokenizer(tiny_model)
    config = (PromptTuningConfig if kind == "prompt" else PrefixTuningConfig)(task_type="CAUSAL_LM", num_virtual_tokens=4)
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model), config).eval()
    assert uses_virtual_tokens(model)
    ids = tok(PROMPTS[0])["input_ids"]
    pieces = []
    row = stream_generate(model, tok, [Sequence(ids, SamplingOptions(max_new_tokens=8), on_text=pieces.append)])[0]
    x = torch.tensor([ids])
    with torch.no_grad():
        out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=8, do_sample=False,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    expected = [t for t in out[0, len(ids):].tolist() if t != tok.eos_token_id]
    assert row.token_ids == expected[: len(row.token_ids)] and "".join(pieces) == row.text
