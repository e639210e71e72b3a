"""The OpenAI-compatible server, driven by the official `openai` client over loopback HTTP."""

import inspect
import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

import tunelab
from inference.runs import PROMPTS
from serve.servers import running

KEY = "test-key-123"


@pytest.fixture(scope="module")
def loaded(tiny_run):
    from tunelab.api import load_run

    return load_run(tiny_run)


@pytest.fixture(scope="module")
def server(loaded):
    from tunelab.serve.app import create_app

    app = create_app(loaded, api_key=KEY, model_id="tiny", max_batch=8, default_max_tokens=16)  # cap: 1024
    with running(app) as url:
        yield app, url


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
    (json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 600}).encode(), 400,
     "maximum context length"),  # under the cap (1024), over the tiny model's 512 tokens
    (json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000}).encode(), 400,
     "max_tokens is too large: 100000; this server allows at most 1024"),
    (b"x" * (3 * 1024 * 1024), 413, "larger than"),
])
def test_bad_requests_get_openai_style_4xx(server, body, status, fragment):
    r = httpx.post(server[1] + "/v1/chat/completions", content=body,
                   headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}, timeout=60)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert fragment in error["message"] and set(error) == {"message", "type", "param", "code"}


HI = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("fields, param, fragment", [
    ({"seed": 2**64, "temperature": 1}, "seed", "from -2**63 to 2**64 - 1"),  # torch.Generator overflows
    ({"seed": -(2**63) - 1}, "seed", "from -2**63 to 2**64 - 1"),
    ({"temperature": 1e-45}, "temperature", "0 (greedy) or at least 1e-05"),  # logits / t overflow to inf
    ({"temperature": 9e-6}, "temperature", "0 (greedy) or at least 1e-05"),
    ({"max_tokens": 1025}, "max_tokens", "max_tokens is too large: 1025"),
    ({"max_completion_tokens": 1025}, "max_completion_tokens", "max_completion_tokens is too large: 1025"),
    ({"max_completion_tokens": 600}, "max_completion_tokens", "maximum context length"),
])
def test_values_the_sampler_cannot_take_are_refused_naming_the_field(server, fields, param, fragment):
    r = httpx.post(server[1] + "/v1/chat/completions", json={"messages": HI, **fields},
                   headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and fragment in error["message"] and error["type"] == "invalid_request_error"


@pytest.mark.parametrize("fields", [
    {"seed": 2**64 - 1, "temperature": 1}, {"seed": -(2**63), "temperature": 1}, {"temperature": 1e-5},
    {"max_tokens": 3, "user": "someone", "frequency_penalty": 0},  # unknown and ignored fields are fine
])
def test_the_edges_of_those_ranges_are_served(server, fields):
    r = httpx.post(server[1] + "/v1/chat/completions", json={"messages": HI, "max_tokens": 3, **fields},
                   headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    assert r.status_code == 200, r.text
    assert 0 < r.json()["usage"]["completion_tokens"] <= 3


@pytest.mark.parametrize("body", [b'{"messages": [], "temperature": NaN}', b'{"messages": [], "top_p": Infinity}'])
def test_non_json_numbers_are_refused(server, body):
    r = httpx.post(server[1] + "/v1/chat/completions", content=body,
                   headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    assert "is not valid JSON" in r.json()["error"]["message"]


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "application/jsonp"])
def test_posts_must_be_json(server, content_type):
    body = json.dumps({"messages": HI, "max_tokens": 2}).encode()  # valid JSON, sent as a browser form could
    headers = {"Authorization": f"Bearer {KEY}"} | ({"Content-Type": content_type} if content_type else {})
    for path in ("/v1/chat/completions", "/v1/completions"):
        r = httpx.post(server[1] + path, content=body, headers=headers)
        assert r.status_code == 415, r.text
        error = r.json()["error"]
        assert error["code"] == "unsupported_media_type" and "Content-Type must be application/json" in error["message"]
        assert set(error) == {"message", "type", "param", "code"}
    ok = httpx.post(server[1] + "/v1/chat/completions", content=body,
                    headers={"Authorization": f"Bearer {KEY}", "Content-Type": "Application/JSON; charset=utf-8"})
    assert ok.status_code == 200, ok.text


def test_no_cors_headers_and_preflight_grants_nothing(server, loaded):
    from tunelab.serve.app import create_app

    origin = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST",
              "Access-Control-Request-Headers": "content-type, authorization"}
    with running(create_app(loaded, model_id="open")) as keyless:  # the case that matters: no API key
        for base, auth in ((server[1], {"Authorization": f"Bearer {KEY}"}), (keyless, {})):
            pre = httpx.options(base + "/v1/chat/completions", headers=origin)
            assert pre.status_code >= 400
            got = httpx.post(base + "/v1/chat/completions", json={"messages": HI, "max_tokens": 2},
                             headers={**auth, "Origin": "https://evil.example"})
            assert got.status_code == 200
            models = httpx.get(base + "/v1/models", headers={**auth, "Origin": "https://evil.example"})
            for r in (pre, got, models):
                assert not [h for h in r.headers if h.lower().startswith("access-control-")], r.headers


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
