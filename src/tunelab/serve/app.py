"""An OpenAI-compatible HTTP API for a run: `GET /v1/models`, `POST /v1/chat/completions`,
`POST /v1/completions` (both with `stream: true` as server-sent events).

- Chat prompts are formatted with the run's training template, token for token as `tunelab
  generate` does, so a greedy chat answer equals `tunelab generate`'s. `/v1/completions` continues
  the prompt as raw text.
- One worker thread owns the model (`engine.py`). Requests wait in a bounded queue; whatever has
  queued up while the model was busy is decoded together as one batch (up to `max_batch` rows), and
  each row streams its own tokens. While requests wait, a running row yields after `chunk_tokens`
  tokens so that they join the next batch (a long answer does not hold up short ones), and a batch
  that fails is retried row by row (one bad row does not fail its neighbours).
- `max_tokens` (or `max_completion_tokens`) above `max_tokens_cap` is refused with a 400 naming the
  field, as OpenAI refuses more than a model's completion limit; it is not clamped.
- With an API key, every request needs `Authorization: Bearer KEY` (401 otherwise).
- Browsers: no CORS headers are ever sent (a preflight grants nothing), and POSTs must be
  `Content-Type: application/json` (415 otherwise), so a web page cannot drive a key-less local server
  with a "simple" cross-site form or `text/plain` request.
- Bad input gets an OpenAI-style JSON error with a 4xx status: {"error": {"message", "type",
  "param", "code"}}; only a bug inside the server is a 500.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from tunelab.inference.decoding import SamplingOptions, Sequence
from tunelab.inference.prompts import prompt_ids
from tunelab.serve.engine import Engine, Job, submit_async
from tunelab.serve.schemas import ApiError, ChatRequest, CompletionRequest, SamplingBody, validation_message

MAX_BODY_BYTES = 2 * 1024 * 1024
DEFAULT_MAX_TOKENS_CAP = 1024


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# -- the app -------------------------------------------------------------------------------------


def create_app(loaded: Any, *, api_key: str | None = None, model_id: str | None = None, max_batch: int = 8,
               max_queue: int = 64, default_max_tokens: int = 512, max_tokens_cap: int = DEFAULT_MAX_TOKENS_CAP,
               chunk_tokens: int = 32, engine: Engine | None = None) -> Any:
    """The FastAPI app serving LOADED (a `tunelab.api.LoadedRun` of a generative run). A request may ask
    for at most `max_tokens_cap` new tokens (400 above); one that names none gets `default_max_tokens`
    (at most the cap)."""
    from contextlib import asynccontextmanager

    loaded.require_generative()
    if max_tokens_cap < 1:
        raise ValueError("max_tokens_cap must be at least 1")
    default_max_tokens = min(default_max_tokens, max_tokens_cap)
    engine = engine or Engine(loaded, max_batch=max_batch, max_queue=max_queue, chunk_tokens=chunk_tokens)
    model_id = model_id or loaded.run.path.name
    created = int(time.time())
    tokenizer = loaded.tokenizer

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        engine.start()
        try:
            yield
        finally:
            engine.stop()

    app = FastAPI(title="tunelab", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.engine = engine

    def error_response(exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(ApiError(400, str(exc.errors()[0].get("msg", "invalid request"))))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return error_response(ApiError(exc.status_code, message, code=code))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        return error_response(ApiError(500, f"internal server error: {type(exc).__name__}", type_="server_error"))

    @app.middleware("http")
    async def _auth(request: Request, call_next: Any) -> Any:
        if api_key is not None and request.url.path != "/health":
            header = request.headers.get("authorization", "")
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
                message = ("missing API key: send the header 'Authorization: Bearer KEY'" if not header
                           else "invalid API key")
                return error_response(ApiError(401, message, code="invalid_api_key"))
        return await call_next(request)

    async def parse(request: Request, cls: type[BaseModel]) -> Any:
        content_type = request.headers.get("content-type", "")
        if content_type.partition(";")[0].strip().lower() != "application/json":
            got = f"got {content_type!r}" if content_type else "none given"
            raise ApiError(415, f"Content-Type must be application/json ({got})", code="unsupported_media_type")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            raise ApiError(413, f"request body is larger than {MAX_BODY_BYTES} bytes", code="request_too_large")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise ApiError(413, f"request body is larger than {MAX_BODY_BYTES} bytes", code="request_too_large")
            chunks.append(chunk)
        try:
            data = json.loads(b"".join(chunks), parse_constant=_no_constant)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"could not parse the request body as JSON: {exc}", code="invalid_json") from None
        if not isinstance(data, dict):
            raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
        try:
            body = cls.model_validate(data)
        except ValidationError as exc:
            message, param = validation_message(exc)
            raise ApiError(400, message, param=param) from None
        body.check_supported()
        return body

    def sampling(body: SamplingBody, n_prompt: int, requested: int | None,
                 param: str = "max_tokens") -> SamplingOptions:
        limit = engine.context
        if limit is not None and n_prompt >= limit:
            raise ApiError(400, f"the prompt is {n_prompt} tokens; this model's maximum context length is {limit} "
                           "tokens", param="messages" if isinstance(body, ChatRequest) else "prompt",
                           code="context_length_exceeded")
        if requested is not None and requested > max_tokens_cap:
            raise ApiError(400, f"{param} is too large: {requested}; this server allows at most {max_tokens_cap} "
                           "completion tokens per request", param=param, code="invalid_value")
        room = (limit - n_prompt) if limit is not None else default_max_tokens
        if requested is not None and requested > room:
            raise ApiError(400, f"this model's maximum context length is {limit} tokens; you requested {n_prompt + requested}"
                           f" ({n_prompt} in the prompt, {requested} for the completion)",
                           param=param, code="context_length_exceeded")
        max_tokens = requested if requested is not None else min(default_max_tokens, room)
        temperature = 1.0 if body.temperature is None else body.temperature
        top_p = 1.0 if body.top_p is None else body.top_p
        if top_p == 0:
            temperature = 0.0
        return SamplingOptions(max_new_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=body.seed,
                               stop=body.stops())

    def usage(n_prompt: int, row: Sequence) -> dict[str, int]:
        return {"prompt_tokens": n_prompt, "completion_tokens": len(row.token_ids),
                "total_tokens": n_prompt + len(row.token_ids)}

    def finish_reason(row: Sequence) -> str:
        return "length" if row.finish_reason == "length" else "stop"

    async def run_job(ids: list[int], options: SamplingOptions) -> tuple[Job, asyncio.Queue]:
        return await submit_async(engine, ids, options)

    async def collect(job: Job, events: asyncio.Queue) -> Sequence:
        try:
            while True:
                kind, value = await events.get()
                if kind == "done":
                    return value
                if kind == "error":
                    raise ApiError(500, f"generation failed: {value}", type_="server_error")
        finally:
            job.cancelled.set()  # no-op when finished; stops decoding if the client went away

    def sse(payload: Any) -> bytes:
        return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n".encode()

    async def stream(job: Job, events: asyncio.Queue, chunk: Callable[[dict, str | None], dict],
                     first: dict | None, n_prompt: int, include_usage: bool, base: dict) -> AsyncIterator[bytes]:
        try:
            if first is not None:
                yield sse(chunk(first, None))
            while True:
                kind, value = await events.get()
                if kind == "text":
                    yield sse(chunk({"content": value}, None))
                elif kind == "done":
                    yield sse(chunk({}, finish_reason(value)))
                    if include_usage:
                        yield sse({**base, "choices": [], "usage": usage(n_prompt, value)})
                    break
                else:
                    yield sse({"error": {"message": f"generation failed: {value}", "type": "server_error",
                                         "param": None, "code": None}})
                    break
            yield b"data: [DONE]\n\n"
        finally:
            job.cancelled.set()

    sse_headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok"}

    def model_card() -> dict[str, Any]:
        return {"id": model_id, "object": "model", "created": created, "owned_by": "tunelab"}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str) -> dict[str, Any]:
        if name != model_id:
            raise ApiError(404, f"the model {name!r} does not exist; this server serves {model_id!r}",
                           param="model", code="model_not_found")
        return model_card()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        body: ChatRequest = await parse(request, ChatRequest)
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                    for m in body.messages]
        try:
            ids = prompt_ids(loaded.fmt, loaded.tokenizer, loaded.shape, messages=messages)
        except Exception as exc:  # noqa: BLE001 - a template that rejects these messages (e.g. no system role)
            raise ApiError(400, f"messages: cannot be formatted with this model's chat template: {exc}",
                           param="messages") from None
        if body.max_completion_tokens is not None:
            options = sampling(body, len(ids), body.max_completion_tokens, "max_completion_tokens")
        else:
            options = sampling(body, len(ids), body.max_tokens)
        job, events = await run_job(ids, options)
        base = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": model_id,
                "system_fingerprint": None}
        if body.stream:
            def chunk(delta: dict, reason: str | None) -> dict:
                return {**base, "object": "chat.completion.chunk",
                        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}]}

            include = bool(body.stream_options and body.stream_options.include_usage)
            gen = stream(job, events, chunk, {"role": "assistant", "content": ""}, len(ids), include,
                         {**base, "object": "chat.completion.chunk"})
            return StreamingResponse(gen, media_type="text/event-stream", headers=sse_headers)
        row = await collect(job, events)
        return {**base, "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": row.text},
                             "logprobs": None, "finish_reason": finish_reason(row)}],
                "usage": usage(len(ids), row)}

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        body: CompletionRequest = await parse(request, CompletionRequest)
        prompt = body.prompt
        if isinstance(prompt, list):
            if prompt and all(isinstance(p, int) for p in prompt):
                vocab = len(tokenizer)
                if any(p < 0 or p >= vocab for p in prompt):
                    raise ApiError(400, f"prompt: token ids must be in [0, {vocab})", param="prompt")
                ids = list(prompt)
            elif len(prompt) == 1:
                ids = tokenizer(prompt[0])["input_ids"]
            else:
                raise ApiError(400, "prompt: give one prompt per request", param="prompt")
        else:
            ids = tokenizer(prompt)["input_ids"]
        if not ids:
            raise ApiError(400, "prompt: is empty", param="prompt")
        options = sampling(body, len(ids), body.max_tokens)
        job, events = await run_job(ids, options)
        base = {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": model_id,
                "system_fingerprint": None}
        if body.stream:
            def chunk(delta: dict, reason: str | None) -> dict:
                return {**base, "object": "text_completion",
                        "choices": [{"index": 0, "text": delta.get("content", ""), "logprobs": None,
                                     "finish_reason": reason}]}

            include = bool(body.stream_options and body.stream_options.include_usage)
            gen = stream(job, events, chunk, None, len(ids), include, {**base, "object": "text_completion"})
            return StreamingResponse(gen, media_type="text/event-stream", headers=sse_headers)
        row = await collect(job, events)
        return {**base, "object": "text_completion",
                "choices": [{"index": 0, "text": row.text, "logprobs": None, "finish_reason": finish_reason(row)}],
                "usage": usage(len(ids), row)}

    return app


def is_loopback(host: str) -> bool:
    import ipaddress

    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve(run_dir: Any, *, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          model_id: str | None = None, max_batch: int = 8, default_max_tokens: int = 512,
          max_tokens_cap: int = DEFAULT_MAX_TOKENS_CAP, trust_remote_code: bool = False, threads: int | None = None,
          log: Callable[[str], None] = print) -> None:
    """Load a run and serve it until interrupted (`tunelab serve`). The run's model is loaded without
    running code shipped with it unless `trust_remote_code` (a run directory may come from anyone)."""
    import uvicorn

    from tunelab.errors import TunelabError
    from tunelab.runs.loading import load_run, run_config

    run, cfg = run_config(run_dir)
    if cfg.model.trust_remote_code and not trust_remote_code:
        raise TunelabError("model.trust_remote_code is true: serving this run would run code shipped with its model; "
                           "pass --trust-remote-code if you trust this run", file=str(run.config))
    if threads:
        import torch

        torch.set_num_threads(threads)
    # explicit, so the loader never takes it from the config alone; with the flag, as the run asks
    loaded = load_run(run_dir, trust_remote_code=trust_remote_code and cfg.model.trust_remote_code)
    app = create_app(loaded, api_key=api_key, model_id=model_id, max_batch=max_batch,
                     default_max_tokens=default_max_tokens, max_tokens_cap=max_tokens_cap)
    name = model_id or loaded.run.path.name
    shown = f"[{host}]" if ":" in host else host
    log(f"serving {loaded.run.path} as model {name!r} on http://{shown}:{port}/v1 "
        f"({'API key required' if api_key else 'no API key'}; batches of up to {max_batch}; at most {max_tokens_cap} "
        "tokens per answer); Ctrl-C stops")
    if not is_loopback(host) and not api_key:
        log(f"warning: listening on {host} without --api-key: anyone who can reach this port can use the model")
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
