"""`tunelab ui`: the web app. Routes only: every answer comes from `tunelab.workspace` (runs: list,
draft, check, start, stop, resume), `tunelab.evaluation` (compare, arena, ratings) and the `tunelab
serve` engine (chat, arena answers); the page itself is static files in `static/` with no asset from
anywhere but this server, so it works offline and nothing phones home.

JSON API (all under /api): options, check, upload, runs, runs/NAME, runs/NAME/stop|resume, compare,
chat (server-sent events), arena/contestants|match|vote|leaderboard|export.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import random
import threading
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import (
    FileResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    StreamingResponse,
)
from fastapi.staticfiles import StaticFiles

from tunelab.errors import TunelabError
from tunelab.evaluation import arena
from tunelab.inference.decoding import SamplingOptions
from tunelab.inference.prompts import prompt_ids
from tunelab.runs.layout import RunDir
from tunelab.serve.engine import submit_async
from tunelab.ui.models import ModelPool
from tunelab.workspace import Workspace

STATIC = Path(__file__).parent / "static"
COOKIE = "tunelab_ui_key"
ARENA_MAX_TOKENS = 96
# the page's own rules: scripts, styles, images and requests from this server only
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "frame-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'")  # fmt: skip
# reports are self-contained pages with inline scripts and styles, shown in a frame: they may load nothing
REPORT_CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; "
              "frame-ancestors 'self'; base-uri 'none'")  # fmt: skip


def create_app(runs_dir: str | Path, *, api_key: str | None = None, max_loaded: int = 3,
               seed: int | None = None) -> FastAPI:  # fmt: skip
    from contextlib import asynccontextmanager

    workspace = Workspace(Path(runs_dir))
    pool = ModelPool(workspace.root, max_loaded=max_loaded)
    rng = random.Random(seed)
    pending: dict[str, dict[str, Any]] = {}  # arena matches shown and not yet voted on
    pending_lock = threading.Lock()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            pool.close()
            workspace.close()

    app = FastAPI(title="tunelab ui", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.workspace, app.state.pool = workspace, pool

    @app.exception_handler(TunelabError)
    async def _user_error(request: Request, exc: TunelabError) -> JSONResponse:
        return JSONResponse({"error": str(exc), "field": exc.field}, status_code=400)

    @app.middleware("http")
    async def _guard(request: Request, call_next: Any) -> Any:
        if api_key is not None:
            given = request.query_params.get("key") or request.cookies.get(COOKIE) or ""
            header = request.headers.get("authorization", "")
            if header.lower().startswith("bearer "):
                given = header[7:].strip()
            if not hmac.compare_digest(given.encode(), api_key.encode()):
                return PlainTextResponse("tunelab ui: open this page with ?key=YOUR_KEY (the --api-key it was "
                                         "started with)", status_code=401)  # fmt: skip
            if request.query_params.get("key"):  # remember it, and take it out of the address bar
                response = RedirectResponse(request.url.path)
                response.set_cookie(COOKIE, api_key, httponly=True, samesite="strict")
                return response
        response = await call_next(request)
        report = request.url.path.startswith(("/runs/", "/compare/"))
        response.headers["Content-Security-Policy"] = REPORT_CSP if report else CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    # -- the page ---------------------------------------------------------------------------------

    @app.get("/")
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/favicon.ico")
    async def favicon() -> FileResponse:
        return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")

    # -- runs -------------------------------------------------------------------------------------

    @app.get("/api/options")
    def options() -> dict[str, Any]:
        from tunelab.api import models
        from tunelab.methods.registry import METHODS
        from tunelab.stages.registry import STAGES

        return {"models": [m["name"] for m in models()], "tasks": list(STAGES), "methods": list(METHODS),
                "runs_dir": str(workspace.root), "votes_file": str(arena.votes_path(workspace.root))}  # fmt: skip

    @app.post("/api/upload")
    async def upload(request: Request) -> dict[str, Any]:
        body = await _json(request)
        try:
            content = base64.b64decode(str(body.get("base64", "")), validate=True)
        except (binascii.Error, ValueError):
            raise TunelabError("the upload is not base64", field="base64") from None
        path = await run_in_threadpool(workspace.save_upload, str(body.get("filename", "")), content)
        return {"path": str(path)}

    @app.post("/api/check")
    async def check(request: Request) -> dict[str, Any]:
        return await run_in_threadpool(workspace.check, await _json(request))

    @app.post("/api/runs")
    async def start(request: Request) -> dict[str, Any]:
        # a refused run is the check's answer (started: false, with its problems), not a failed request
        return await run_in_threadpool(workspace.start, await _json(request))

    @app.get("/api/runs")
    def runs() -> list[dict[str, Any]]:
        return workspace.runs()

    @app.get("/api/runs/{name}")
    def run(name: str) -> dict[str, Any]:
        return workspace.details(name)

    @app.post("/api/runs/{name}/stop")
    def stop(name: str) -> dict[str, Any]:
        return {"stopped": workspace.stop(name)}

    @app.post("/api/runs/{name}/resume")
    def resume(name: str) -> dict[str, Any]:
        workspace.resume(name)
        return {"resumed": True}

    @app.get("/runs/{name}/report")
    def report(name: str) -> Any:
        path = workspace.run_dir(name).report
        if not path.is_file():
            return PlainTextResponse("this run has no report yet", status_code=404)
        return FileResponse(path, media_type="text/html")

    # -- compare ------------------------------------------------------------------------------------

    @app.post("/api/compare")
    def compare(body: dict[str, Any]) -> dict[str, Any]:
        from tunelab.evaluation.compare import compare as compare_models

        names = [str(n) for n in body.get("runs") or []]
        dirs = [str(workspace.run_dir(n).path) for n in names]
        if body.get("base"):
            dirs.append("base")
        slug = "-vs-".join(names + (["base"] if body.get("base") else []))[:120] or "none"
        comp = compare_models(dirs, out_dir=workspace.root / "ui" / "compare" / slug,
                              max_examples=body.get("max_examples") or None)  # fmt: skip
        return {"models": comp.models, "baseline": comp.baseline, "primary": comp.primary, "table": comp.table,
                "report": f"/compare/{slug}/report"}  # fmt: skip

    @app.get("/compare/{slug}/report")
    def compare_report(slug: str) -> Any:
        path = workspace.root / "ui" / "compare" / slug / "report.html"
        if "/" in slug or slug.startswith(".") or not path.is_file():
            return PlainTextResponse("no such comparison", status_code=404)
        return FileResponse(path, media_type="text/html")

    # -- chat -------------------------------------------------------------------------------------

    def prompt_for(contestant: str, messages: list[dict[str, str]], max_tokens: int) -> tuple[Any, list[int], Any]:
        engine = pool.engine(contestant)
        loaded = engine.loaded
        ids = prompt_ids(loaded.fmt, loaded.tokenizer, loaded.shape, messages=messages)
        room = (engine.context - len(ids)) if engine.context else max_tokens
        if room < 1:
            raise TunelabError(f"the conversation is {len(ids)} tokens, the model's whole context", field="messages",
                               expected="a shorter conversation (start a new one)")  # fmt: skip
        return engine, ids, SamplingOptions(max_new_tokens=min(max_tokens, room), temperature=0.0)

    @app.post("/api/chat")
    async def chat(request: Request) -> StreamingResponse:
        body = await _json(request)
        messages = [{"role": str(m.get("role")), "content": str(m.get("content", ""))}
                    for m in body.get("messages") or [] if isinstance(m, dict)]  # fmt: skip
        if not messages or messages[-1]["role"] != "user":
            raise TunelabError("the conversation must end with a user message", field="messages")
        max_tokens = max(1, min(int(body.get("max_tokens") or 128), 1024))
        engine, ids, opts = await run_in_threadpool(prompt_for, str(body.get("model", "")), messages, max_tokens)
        job, events = await submit_async(engine, ids, opts)

        async def stream() -> AsyncIterator[bytes]:
            try:
                while True:
                    kind, value = await events.get()
                    if kind == "text":
                        yield _sse({"text": value})
                    elif kind == "done":
                        yield _sse({"done": True, "tokens": len(value.token_ids), "finish": value.finish_reason})
                        break
                    else:
                        yield _sse({"error": f"generation failed: {value}"})
                        break
            finally:
                job.cancelled.set()

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    async def answer(contestant: str, prompt: str) -> str:
        engine, ids, opts = await run_in_threadpool(prompt_for, contestant, [{"role": "user", "content": prompt}],
                                                    ARENA_MAX_TOKENS)  # fmt: skip
        job, events = await submit_async(engine, ids, opts)
        while True:
            kind, value = await events.get()
            if kind == "done":
                return value.text
            if kind == "error":
                raise TunelabError(f"generation failed: {value}")

    # -- arena ------------------------------------------------------------------------------------

    @app.get("/api/arena/contestants")
    def contestants() -> dict[str, Any]:
        return {"contestants": pool.contestants(workspace.runs())}

    @app.post("/api/arena/match")
    async def match(request: Request) -> dict[str, Any]:
        body = await _json(request)
        chosen = [str(c) for c in body.get("contestants") or []]
        a, b = arena.draw_pair(chosen, rng)
        prompt = str(body.get("prompt") or "").strip() or _held_out_prompt(workspace.root, chosen, rng)
        outputs = {a: await answer(a, prompt), b: await answer(b, prompt)}
        match_id = uuid.uuid4().hex[:12]
        with pending_lock:
            pending[match_id] = {"prompt": prompt, "a": (a, outputs[a]), "b": (b, outputs[b])}
        return {"id": match_id, "prompt": prompt, "a": outputs[a], "b": outputs[b]}

    @app.post("/api/arena/vote")
    async def vote(request: Request) -> dict[str, Any]:
        body = await _json(request)
        with pending_lock:
            shown = pending.pop(str(body.get("id")), None)
        if shown is None:
            raise TunelabError("no such match (already voted on, or from before a restart)", field="id")
        record = arena.make_vote(shown["prompt"], shown["a"], shown["b"], str(body.get("vote")),
                                 who=str(body.get("who") or "anonymous")[:64])  # fmt: skip
        arena.record_vote(arena.votes_path(workspace.root), record)
        return {"recorded": record["id"], "a": shown["a"][0], "b": shown["b"][0]}

    @app.get("/api/arena/leaderboard")
    def leaderboard() -> dict[str, Any]:
        votes = arena.read_votes(arena.votes_path(workspace.root))
        models = {v[s]["model"] for v in votes for s in ("a", "b")}
        metrics = {m: workspace.automatic_metrics(m) for m in models}
        return {"votes": len(votes), "rows": arena.leaderboard(votes, metrics=metrics, resamples=500)}

    @app.get("/api/arena/export")
    def export() -> FileResponse:
        out = workspace.root / "ui" / "exports" / "arena_preferences.jsonl"
        arena.export_preferences(arena.votes_path(workspace.root), out)
        return FileResponse(out, media_type="application/x-ndjson", filename="arena_preferences.jsonl")

    return app


async def _json(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise TunelabError("the request body is not JSON") from None
    if not isinstance(body, dict):
        raise TunelabError("the request body is not a JSON object")
    return body


def _sse(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n".encode()


def _held_out_prompt(root: Path, contestants: list[str], rng: random.Random) -> str:
    """A held-out input of one of the contestants' runs (what their evaluation answered)."""
    from tunelab.runs.artifacts import read_predictions

    for contestant in contestants:
        inputs = [p.input for p in read_predictions(RunDir(root / arena.contestant_run(contestant)[0]).predictions)
                  if p.input and p.input.strip()]  # fmt: skip
        if inputs:
            return rng.choice(inputs)
    raise TunelabError("the chosen runs have no held-out prompts", field="prompt", expected="type a prompt")


def serve_ui(runs_dir: str | Path, *, host: str = "127.0.0.1", port: int = 7860, api_key: str | None = None,
             log: Any = print) -> None:  # fmt: skip
    import uvicorn

    from tunelab.serve.app import is_loopback

    app = create_app(runs_dir, api_key=api_key)
    shown = f"[{host}]" if ":" in host else host
    log(f"tunelab ui for {app.state.workspace.root} on http://{shown}:{port}/ "
        f"({'API key required: open it with ?key=KEY' if api_key else 'no API key'}); Ctrl-C stops")  # fmt: skip
    if not is_loopback(host) and not api_key:
        log(f"warning: listening on {host} without --api-key: anyone who can reach this port can start runs")
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
