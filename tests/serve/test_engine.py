"""The server's worker on its own: a row that breaks fails alone, a short request overtakes a long one,
and rows that take turns resume exactly where they stopped.

The model is a tiny random Llama that never ends an answer by itself (no EOS), so every answer runs to
its token limit; expected tokens come from plain `transformers` `generate`, decoded in one go."""

import threading
import time
from types import SimpleNamespace

import pytest

from conftest import build_tiny_model
from tunelab.inference.decoding import SamplingOptions
from tunelab.serve.engine import Engine, Job


@pytest.fixture(scope="module")
def no_eos(tmp_path_factory, one_thread):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # initializer_range 0.2: greedy answers vary from token to token (at 0.02 they repeat one token)
    directory = build_tiny_model(tmp_path_factory.mktemp("no-eos"), initializer_range=0.2)
    model = AutoModelForCausalLM.from_pretrained(directory).eval()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model.generation_config.eos_token_id = None
    tokenizer.eos_token = None
    return SimpleNamespace(model=model, tokenizer=tokenizer)


def prompt(no_eos, text):
    return no_eos.tokenizer(text)["input_ids"]


def greedy(no_eos, ids, n):
    """The first N greedy tokens after IDS, by transformers' own generate."""
    import torch

    with torch.no_grad():
        out = no_eos.model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False,
                                    pad_token_id=no_eos.tokenizer.pad_token_id)
    return out[0, len(ids):].tolist()


class Listener:
    """A request's side of a job: what the worker sent it, and when it finished."""

    def __init__(self, on_done=None):
        self.events, self.finished_at, self.on_done = [], None, on_done
        self.done = threading.Event()

    def __call__(self, event):
        self.events.append(event)
        if event[0] in ("done", "error"):
            self.finished_at = time.perf_counter()
            if self.on_done:
                self.on_done()
            self.done.set()

    def wait(self):
        assert self.done.wait(60), "no answer within 60 s"
        return self.events[-1]

    def streamed(self):
        return "".join(v for k, v in self.events if k == "text")


def submit(engine, ids, listener=None, **options):
    listener = listener or Listener()
    listener.job = Job(ids, SamplingOptions(**options), listener)
    engine.submit(listener.job)
    return listener


def test_a_row_that_breaks_the_sampler_fails_alone(no_eos):
    ids = [prompt(no_eos, t) for t in ("What colour is the sky", "Name a fruit", "Hello there", "Why")]
    engine = Engine(no_eos, max_batch=8)
    good = submit(engine, ids[0], max_new_tokens=20)
    bad_seed = submit(engine, ids[1], max_new_tokens=20, temperature=1.0, seed=2**64)  # manual_seed overflows
    bad_temp = submit(engine, ids[2], max_new_tokens=20, temperature=1e-45)  # logits / t = inf → NaN probs
    good2 = submit(engine, ids[3], max_new_tokens=20)
    engine.start()  # all four were queued: they are one batch
    try:
        assert bad_seed.wait()[0] == "error" and "Overflow" in bad_seed.wait()[1]
        assert bad_temp.wait()[0] == "error" and "probability tensor" in bad_temp.wait()[1]
        for listener, p in ((good, ids[0]), (good2, ids[3])):
            kind, row = listener.wait()
            assert kind == "done" and row.finish_reason == "length"
            assert row.token_ids == greedy(no_eos, p, 20)
            assert listener.streamed() == row.text
    finally:
        engine.stop()
    assert engine.largest_batch == 4 and engine.retried >= 3


def test_a_row_that_fails_mid_answer_fails_alone_and_the_others_stream_on(no_eos):
    ids = [prompt(no_eos, t) for t in ("What colour is the sky", "Name a fruit")]

    class Breaks(Listener):  # its listener raises from the 5th piece of text on (inside decoding)
        def __call__(self, event):
            if event[0] == "text" and sum(k == "text" for k, _ in self.events) >= 4:
                raise RuntimeError("listener broke")
            super().__call__(event)

    engine = Engine(no_eos, max_batch=8)
    good = submit(engine, ids[0], max_new_tokens=60)
    broken = submit(engine, ids[1], Breaks(), max_new_tokens=60)
    engine.start()
    try:
        assert broken.wait() == ("error", "RuntimeError: listener broke")
        kind, row = good.wait()
    finally:
        engine.stop()
    assert kind == "done" and row.token_ids == greedy(no_eos, ids[0], 60)
    assert good.streamed() == row.text  # resumed after the failure: nothing sent twice, nothing lost


def test_a_short_request_overtakes_a_long_one(no_eos):
    long_ids, short_ids = prompt(no_eos, "Tell me a long story"), prompt(no_eos, "Hi")
    engine = Engine(no_eos, max_batch=8, chunk_tokens=16)
    engine.start()
    try:
        long = submit(engine, long_ids, max_new_tokens=450)
        deadline = time.time() + 30
        while not long.events:  # the long answer is being decoded
            assert time.time() < deadline
            time.sleep(0.001)
        long_tokens = []  # how far the long answer was when the short one was answered
        short = submit(engine, short_ids, Listener(on_done=lambda: long_tokens.append(len(long.job.row.token_ids))),
                       max_new_tokens=8)
        short_kind, short_row = short.wait()
        long_kind, long_row = long.wait()
    finally:
        engine.stop()
    assert short_kind == "done" and short_row.token_ids == greedy(no_eos, short_ids, 8)
    assert short.finished_at < long.finished_at and long_tokens[0] < 100  # of its 450
    assert long_kind == "done" and long_row.finish_reason == "length"
    assert long_row.token_ids == greedy(no_eos, long_ids, 450)  # yielding did not change the long answer
    assert long.streamed() == long_row.text and engine.yields >= 1


def test_rows_taking_turns_resume_exactly_where_they_stopped(no_eos):
    ids = prompt(no_eos, "What colour is the sky")
    expected = greedy(no_eos, ids, 200)
    expected_text = no_eos.tokenizer.decode(expected, skip_special_tokens=True)
    stop = expected_text[120:123]  # a stop string that first appears long after the first turn
    cut = expected_text.find(stop)
    assert cut > 40, "pick a stop string that first shows up later"

    def sampled_alone():
        engine = Engine(no_eos)
        listener = submit(engine, ids, max_new_tokens=200, temperature=0.9, top_p=0.9, seed=7)
        engine.start()
        try:
            return listener.wait()[1]
        finally:
            engine.stop()

    engine = Engine(no_eos, max_batch=1, chunk_tokens=8)  # one row at a time: they take turns of 8 tokens
    plain = submit(engine, ids, max_new_tokens=200)
    stopped = submit(engine, ids, max_new_tokens=200, stop=[stop])
    sampled = submit(engine, ids, max_new_tokens=200, temperature=0.9, top_p=0.9, seed=7)
    engine.start()
    try:
        rows = [listener.wait()[1] for listener in (plain, stopped, sampled)]
    finally:
        engine.stop()
    assert engine.yields >= 30
    assert rows[0].token_ids == expected and plain.streamed() == rows[0].text == expected_text
    assert rows[1].text == stopped.streamed() == expected_text[:cut] and rows[1].finish_reason == "stop"
    alone = sampled_alone()  # the same seed decoded without taking turns: the sampler carried over
    assert rows[2].token_ids == alone.token_ids and len(alone.token_ids) == 200
    assert sampled.streamed() == rows[2].text


def test_stopping_answers_every_waiting_request(no_eos):
    engine = Engine(no_eos)  # never started: the requests only wait
    waiting = [submit(engine, prompt(no_eos, "Hi"), max_new_tokens=4) for _ in range(3)]
    engine.stop()
    assert [w.wait() for w in waiting] == [("error", "the server is shutting down")] * 3


def test_at_most_max_queue_requests_wait_besides_the_batch(no_eos):
    from tunelab.serve.schemas import ApiError

    engine = Engine(no_eos, max_batch=1, max_queue=2)
    ids = prompt(no_eos, "Hi")
    first = [submit(engine, ids, max_new_tokens=40) for _ in range(3)]  # 1 decoding + 2 waiting
    with pytest.raises(ApiError) as busy:
        submit(engine, ids, max_new_tokens=4)
    assert (busy.value.status, busy.value.code) == (503, "server_busy")
    engine.start()
    try:
        assert all(f.wait()[0] == "done" for f in first)  # they took turns and all finished
        later = [submit(engine, ids, max_new_tokens=4) for _ in range(3)]  # their places are free again
        assert all(f.wait()[0] == "done" for f in later)
    finally:
        engine.stop()
