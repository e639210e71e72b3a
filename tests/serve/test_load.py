"""A bounded load test over real HTTP: 24 concurrent clients, streaming and not, chat and completions,
with poison requests mixed in. Every poison request gets its own 4xx (the field it names, an
OpenAI-style body); every good request gets a complete, well-formed 200 whose answer is the one the
same request gets when it is sent alone."""

import json
import random
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from inference.runs import PROMPTS
from serve.servers import running

CAP = 40


@pytest.fixture(scope="module")
def server(tiny_run):
    from tunelab.api import load_run
    from tunelab.serve.app import create_app

    # no API key (the local case the Content-Type rule protects); turns of 8 tokens, so rows take turns
    app = create_app(load_run(tiny_run), model_id="tiny", max_batch=8, default_max_tokens=16, max_tokens_cap=CAP,
                     chunk_tokens=8)
    with running(app) as url:
        yield app, url


def good_requests():
    requests = []
    for i in range(32):
        chat = i % 2 == 0
        body = {"model": "tiny", "max_tokens": (6, 12, 24, CAP)[i % 4], "temperature": 0,
                "stream": (i // 2) % 2 == 1}
        body |= {"messages": [{"role": "user", "content": PROMPTS[i % 16]}]} if chat else {"prompt": PROMPTS[i % 16]}
        if i % 8 == 7:
            body |= {"temperature": 0.8, "seed": 1000 + i}  # seeded sampling: the same answer each time
        if i % 5 == 0:
            body |= {"user": "client-7", "not_an_openai_field": {"x": 1}}  # unknown fields are ignored
        if body["stream"] and i % 3:
            body["stream_options"] = {"include_usage": True}
        requests.append(("good", "/v1/chat/completions" if chat else "/v1/completions", body))
    return requests


CHAT = [{"role": "user", "content": "What colour is the sky"}]
POISON = [  # (path, body or raw bytes, headers, status, param, code)
    ("/v1/chat/completions", {"messages": CHAT, "seed": 2**64, "temperature": 1}, None, 400, "seed", None),
    ("/v1/chat/completions", {"messages": CHAT, "seed": 2**64, "temperature": 1, "stream": True}, None, 400, "seed",
     None),
    ("/v1/completions", {"prompt": "The sky", "temperature": 1e-45}, None, 400, "temperature", None),
    ("/v1/chat/completions", {"messages": CHAT, "temperature": 1e-45, "stream": True}, None, 400, "temperature",
     None),
    ("/v1/chat/completions", {"messages": CHAT, "max_tokens": CAP + 1}, None, 400, "max_tokens", "invalid_value"),
    ("/v1/completions", {"prompt": "The sky", "max_tokens": 10**9, "stream": True}, None, 400, "max_tokens",
     "invalid_value"),
    ("/v1/chat/completions", {"messages": CHAT, "max_completion_tokens": CAP + 1}, None, 400,
     "max_completion_tokens", "invalid_value"),
    ("/v1/chat/completions", {"messages": CHAT}, {"Content-Type": "text/plain"}, 415, None, "unsupported_media_type"),
    ("/v1/completions", {"prompt": "x"}, {"Content-Type": "application/x-www-form-urlencoded"}, 415, None,
     "unsupported_media_type"),
    ("/v1/chat/completions", b'{"messages": [', None, 400, None, "invalid_json"),
    ("/v1/completions", b'{"prompt": "x", "temperature": NaN}', None, 400, None, "invalid_json"),
    ("/v1/chat/completions", {"messages": CHAT, "n": 3}, None, 400, "n", None),
]


def send(base, path, body, headers=None):
    """One request: ("json", status, body) or, for a 200 stream, ("stream", 200, [events...])."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} | (headers or {})
    with httpx.Client(base_url=base, timeout=120) as client, client.stream("POST", path, content=raw,
                                                                           headers=headers) as r:
        if r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream"):
            lines = [line for line in r.iter_lines() if line]
            return "stream", 200, lines
        r.read()
        return "json", r.status_code, r.json()


def answer(path, body, result):
    """The answer in a good request's reply, after checking that the reply is complete and well-formed."""
    kind, status, data = result
    assert status == 200, data
    chat = path.endswith("chat/completions")
    obj = "chat.completion" if chat else "text_completion"
    if kind == "json":
        assert not body["stream"] and data["object"] == obj and data["model"] == "tiny"
        (choice,) = data["choices"]
        text = choice["message"]["content"] if chat else choice["text"]
        if chat:
            assert choice["message"]["role"] == "assistant"
        usage = data["usage"]
        reason = choice["finish_reason"]
    else:
        assert body["stream"] and all(line.startswith("data: ") for line in data) and data[-1] == "data: [DONE]"
        chunks = [json.loads(line[len("data: "):]) for line in data[:-1]]
        assert len({c["id"] for c in chunks}) == 1
        assert all(c["object"] == (obj + ".chunk" if chat else obj) for c in chunks)
        with_choices = [c for c in chunks if c["choices"]]
        reasons = [c["choices"][0]["finish_reason"] for c in with_choices]
        assert all(r is None for r in reasons[:-1]) and reasons[-1] is not None  # one end, at the end
        if chat:
            assert with_choices[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
            text = "".join(c["choices"][0]["delta"].get("content", "") for c in with_choices)
        else:
            text = "".join(c["choices"][0]["text"] for c in with_choices)
        wants_usage = bool(body.get("stream_options", {}).get("include_usage"))
        assert (chunks[-1]["choices"] == []) == wants_usage
        usage = chunks[-1]["usage"] if wants_usage else None
        reason = reasons[-1]
    assert reason in ("stop", "length")
    if usage is not None:
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        assert 0 < usage["completion_tokens"] <= body["max_tokens"]
        assert (reason == "length") == (usage["completion_tokens"] == body["max_tokens"])
    return text, reason


def test_concurrent_clients_with_poison_requests_mixed_in(server):
    app, base = server
    good = good_requests()
    alone = [answer(path, body, send(base, path, body)) for _, path, body in good]  # one at a time
    work = [(i, *g) for i, g in enumerate(good)] + [(i, "poison", *p) for i, p in enumerate(POISON * 2)]
    random.Random(0).shuffle(work)
    yields_before = app.state.engine.yields

    def run(item):
        i, kind, path, body, *rest = item
        return item, send(base, path, body, rest[0] if kind == "poison" else None)

    with ThreadPoolExecutor(24) as pool:
        results = list(pool.map(run, work))

    checked = {"good": 0, "poison": 0}
    for (i, kind, path, body, *rest), result in results:
        if kind == "good":
            assert answer(path, body, result) == alone[i], (path, body)
        else:
            headers, status, param, code = rest
            assert result[0] == "json" and result[1] == status, (body, result)
            error = result[2]["error"]
            assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
            assert (error["param"], error["code"]) == (param, code), (body, error)
        checked[kind] += 1
    assert checked == {"good": 32, "poison": 2 * len(POISON)}
    assert app.state.engine.largest_batch > 1  # they really were decoded together
    assert app.state.engine.yields > yields_before  # and took turns
