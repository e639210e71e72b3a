"""The OpenAI-compatible server, driven by the official `openai` client over loopback HTTP."""

import inspect
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

import tunelab
from inference.runs import PROMPTS

KEY = "test-key-123"


@pytest.fixture(scope="module")
def loaded(tiny_run):
    from tunelab.api import load_run

    return load_run(tiny_run)


@pytest.fixture(scope="module")
def server(loaded):
    import uvicorn

    from tunelab.serve.app import create_app

    app = create_app(loaded, api_key=KEY, model_id="tiny", max_batch=8, default_max_tokens=16)
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started:
        assert time.time() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.02)
    host, port = srv.servers[0].sockets[0].getsockname()[:2]
    assert host == "127.0.0.1"
    yield app, f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=30)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[1] + "/v1", api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def expected(loaded):
    return dict(zip(PROMPTS, tunelab.generate(loaded, PROMPTS, max_new_tokens=12, batch_size=1), strict=True))


def _chat(client, prompt, **kw):
    return client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": prompt}],
                                          max_tokens=12, temperature=0, **kw)


def test_models_and_chat_completion_equal_tunelab_generate(client, expected):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    r = _chat(client, PROMPTS[0])
    assert r.object == "chat.completion" and r.model == "tiny"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content.strip() == expected[PROMPTS[0]]
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 0 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_streaming_chat_and_completions(client, expected):
    stream = _chat(client, PROMPTS[1], stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip() == expected[PROMPTS[1]] and len([c for c in chunks if c.choices]) > 3
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0

    plain = client.completions.create(model="tiny", prompt="What colour is the sky", max_tokens=6, temperature=0)
    assert plain.object == "text_completion" and 0 < plain.usage.completion_tokens <= 6
    streamed = client.completions.create(model="tiny", prompt="What colour is the sky", max_tokens=6, temperature=0,
                                         stream=True)
    assert "".join(c.choices[0].text for c in streamed) == plain.choices[0].text


def test_api_key_is_required(server):
    base = server[1]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=base + "/v1", api_key="wrong", max_retries=0).models.list()
    r = httpx.post(base + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert r.headers["www-authenticate"] == "Bearer"
    assert httpx.get(base + "/health").status_code == 200  # liveness needs no key and tells nothing


@pytest.mark.parametrize("body, status, fragment", [
    (b"{not json", 400, "could not parse the request body as JSON"),
    (b"[1, 2]", 400, "must be a JSON object"),
    (json.dumps({"model": "tiny"}).encode(), 400, "messages: required field is missing"),
    (json.dumps({"messages": []}).encode(), 400, "messages"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": -5}).encode(), 400, "max_tokens"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}).encode(), 400, "temperature"),
    (json.dumps({"messages": [{"role": "robot", "content": "hi"}]}).encode(), 400, "messages.0.role"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}], "n": 2}).encode(), 400, "n=1"),
    (json.dumps({"messages": [{"role": "user", "content": "word " * 700}]}).encode(), 400, "maximum context length"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000}).encode(), 400,
     "maximum context length"),
    (b"x" * (3 * 1024 * 1024), 413, "larger than"),
])
def test_bad_requests_get_openai_style_4xx(server, body, status, fragment):
    r = httpx.post(server[1] + "/v1/chat/completions", content=body,
                   headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}, timeout=60)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert fragment in error["message"] and set(error) == {"message", "type", "param", "code"}


def test_unknown_routes_and_the_openai_client_errors(server, client):
    h = {"Authorization": f"Bearer {KEY}"}
    assert httpx.get(server[1] + "/v1/nope", headers=h).json()["error"]["code"] == "not_found"
    assert httpx.get(server[1] + "/v1/chat/completions", headers=h).status_code == 405
    assert httpx.post(server[1] + "/v1/completions", headers=h, json={"prompt": [[1, 2], [3]]}).status_code == 400
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=0)
    assert info.value.status_code == 400


def test_sixteen_concurrent_clients_all_get_complete_correct_answers(server, client, expected):
    app = server[0]
    batches_before = app.state.engine.batches

    def ask(i):
        prompt = PROMPTS[i]
        if i % 2:  # half of them stream
            chunks = list(_chat(client, prompt, stream=True))
            return prompt, "".join(c.choices[0].delta.content or "" for c in chunks), chunks[-1].choices[0].finish_reason
        r = _chat(client, prompt)
        return prompt, r.choices[0].message.content, r.choices[0].finish_reason

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(ask, range(16)))
    assert [a.strip() for _, a, _ in answers] == [expected[p] for p, _, _ in answers]
    assert all(reason in ("stop", "length") for _, _, reason in answers)
    engine = app.state.engine
    assert engine.largest_batch > 1 and engine.batches - batches_before < 16  # requests were batched


def test_serve_binds_loopback_by_default():
    from tunelab.commands import use
    from tunelab.serve.app import is_loopback

    assert inspect.signature(use.serve).parameters["host"].default.default == "127.0.0.1"
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0")
