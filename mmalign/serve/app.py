"""The FastAPI app: OpenAI-compatible endpoints plus the web UI page.

Routes: ``GET /`` (web UI), ``GET /health``, ``GET /v1/models``, ``POST /v1/chat/completions``
(JSON, or Server-Sent Events with ``"stream": true``, ending with ``data: [DONE]``).
With an API key, every ``/v1/`` route needs ``Authorization: Bearer KEY`` (the page itself does
not; it asks for the key). Errors use OpenAI's body ``{"error": {"message", "type", "param",
"code"}}`` with a 4xx status (413 for size limits, 415 for unsupported media, 403 for paths
outside the media root, 503 when the queue is full).
"""

from __future__ import annotations

import asyncio
import hmac
import html
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from mmalign.serve.engine import ChatEngine, Completion, Job
from mmalign.serve.protocol import RequestError, ServeLimits, parse_chat_request

UI_PAGE = Path(__file__).parent / "static" / "index.html"


async def _read_body(request: Request, limit: int) -> Any:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"invalid JSON body: {exc}") from exc


def _chunk(job: Job, model: str, delta: dict[str, Any], finish: str | None = None, usage: Any = None) -> str:
    body: dict[str, Any] = {
        "id": job.id,
        "object": "chat.completion.chunk",
        "created": job.created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}] if usage is None else [],
    }
    if usage is not None:
        body["usage"] = usage
    return f"data: {json.dumps(body)}\n\n"


def _usage(c: Completion) -> dict[str, int]:
    return {
        "prompt_tokens": c.prompt_tokens,
        "completion_tokens": c.completion_tokens,
        "total_tokens": c.prompt_tokens + c.completion_tokens,
    }


def create_app(engine: ChatEngine, limits: ServeLimits | None = None, api_key: str | None = None) -> FastAPI:
    """The app serving ``engine`` under ``limits``; ``api_key`` (None: open) guards ``/v1/``."""
    limits = limits or ServeLimits()
    app = FastAPI(title="mmalign chat", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(RequestError)
    async def _request_error(_: Request, exc: RequestError) -> JSONResponse:
        headers = {"Retry-After": "1"} if exc.status == 503 else None
        return JSONResponse(exc.to_json(), status_code=exc.status, headers=headers)

    @app.exception_handler(Exception)
    async def _server_error(_: Request, exc: Exception) -> JSONResponse:
        body = {
            "error": {
                "message": f"{type(exc).__name__}: {exc}",
                "type": "server_error",
                "param": None,
                "code": None,
            }
        }
        return JSONResponse(body, status_code=500)

    @app.middleware("http")
    async def _auth(request: Request, call_next: Any) -> Any:
        if api_key and request.url.path.startswith("/v1/"):
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                err = RequestError(401, "missing or wrong API key (send 'Authorization: Bearer KEY')")
                return JSONResponse(err.to_json(), status_code=401)
        return await call_next(request)

    @app.get("/", response_class=HTMLResponse)
    async def ui() -> HTMLResponse:
        page = UI_PAGE.read_text().replace("{{MODEL}}", html.escape(engine.model_name))
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": engine.model_name, "queued": engine.pending}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        card = {"id": engine.model_name, "object": "model", "created": 0, "owned_by": "mmalign"}
        return {"object": "list", "data": [card]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        body = await _read_body(request, limits.max_body_bytes)
        req = await run_in_threadpool(parse_chat_request, body, engine.placeholders, limits)
        if req.model is not None and req.model != engine.model_name:
            raise RequestError(
                404, f"model {req.model!r} is not served here; use {engine.model_name!r}", "model"
            )
        prepared = await run_in_threadpool(engine.prepare, req)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        job = engine.submit(req, prepared, lambda ev: loop.call_soon_threadsafe(events.put_nowait, ev))
        name = engine.model_name

        if not req.stream:
            try:
                while True:
                    kind, value = await events.get()
                    if kind == "error":
                        raise value
                    if kind == "done":
                        break
            finally:
                job.cancel()
            message = {"role": "assistant", "content": value.text}
            return {
                "id": job.id,
                "object": "chat.completion",
                "created": job.created,
                "model": name,
                "choices": [{"index": 0, "message": message, "finish_reason": value.finish_reason}],
                "usage": _usage(value),
            }

        async def sse() -> AsyncIterator[str]:
            try:
                yield _chunk(job, name, {"role": "assistant", "content": ""})
                while True:
                    kind, value = await events.get()
                    if kind == "delta":
                        yield _chunk(job, name, {"content": value})
                    elif kind == "done":
                        yield _chunk(job, name, {}, value.finish_reason)
                        if req.include_usage:
                            yield _chunk(job, name, {}, usage=_usage(value))
                        break
                    else:  # an error after the headers went out: report it in the stream
                        yield f"data: {json.dumps({'error': {'message': str(value), 'type': 'server_error'}})}\n\n"
                        break
                yield "data: [DONE]\n\n"
            finally:
                job.cancel()  # client gone or stream finished: free the worker

        return StreamingResponse(sse(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    app.state.engine = engine
    app.state.started = time.time()
    return app
