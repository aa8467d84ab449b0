"""``clara-lite serve``: a small HTTP JSON API over an index, for an app that should not load the model itself.

    GET  /health                                  {"status": "ok", "chunks": N, "retriever": ..., "fingerprint": ...,
                                                   "generation": G}
    POST /search {"question": "...", "k": 5}      {"question": ..., "hits": [{score, source, page, start, end, text, ...}]}
    POST /ask    {"question": "...", "k": 5, "max_new_tokens": 64}   {"question": ..., "answer": ..., "sources": [...]}
    GET  /v1/models, POST /v1/chat/completions   OpenAI's API, streaming too (:mod:`.openai_api`)
    GET  /ui                                      with ``--ui``: a chat page in the browser (:mod:`.ui`, Gradio)

Status codes: 413 for a body over :data:`MAX_BODY_BYTES` (refused before any of it is parsed, so a
huge body costs neither memory nor the event loop's time: ``/health`` is never kept waiting behind
one); 422 for a malformed body (not JSON, a missing, empty, whitespace-only or over-long question, k
outside 1..100, an unknown field); 503 when the index is being changed by another process and this
request met the change (retry); 500 for any other fault of the server. Error bodies name no file of
the server: details go to its log. Under ``/v1/`` every error has OpenAI's shape (:mod:`.openai_api`). A client that has not sent its request line and headers
:data:`HEAD_TIMEOUT_S` after connecting (or after its previous response) is disconnected.

Answers (``/ask`` and ``/v1/chat/completions``, streams too) are decoded by one worker thread, requests
that arrive close together in one batch of at most ``max_batch`` (:mod:`.batching`; the same answers
as alone); the event loop only waits for them. When ``max_queue`` requests already wait: 503 with
``Retry-After``. At most :data:`MAX_STREAMS` streams are decoded or waiting at once (more: 429).

Loopback by default. Beyond it (``--host 0.0.0.0``) an API key is required and every request must
carry it (``Authorization: Bearer KEY``, 401 otherwise): :mod:`.access`.

Index changes by other processes (``clara-lite index add|remove`` while serving) are seen: each
request first calls :meth:`~clara_lite.serve.index.ClaraIndex.refresh` (one ``stat`` of index.json;
a reload when its generation moved and the update is complete), and a request whose memory read
meets a part file of another generation reloads and is answered once more, or gets 503.
"""

# no `from __future__ import annotations`: FastAPI reads the request models from the annotations of local functions

import asyncio
import json
import logging
import threading

from ..core.hardware import decide_serving_batch, probe_device
from .access import BearerKey, require_key
from .batching import MAX_BATCH, WINDOW_S, Batcher, Busy
from .openai_api import MAX_QUESTION_CHARS, MODEL_NAME, add_openai_routes, error_body, openai_path

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
MAX_BODY_BYTES = 64 << 10  # a question of 4000 characters, escaped, fits many times over
MAX_STREAMS = 8  # streamed answers decoded or waiting for the model at once (each holds a thread)
HEAD_TIMEOUT_S = 10.0  # a request's line and headers must arrive within this (uvicorn alone waits forever)


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes is answered 413 before the app reads it
    (by its Content-Length, or while a chunked body arrives: at most ``limit`` bytes are held)."""

    def __init__(self, app, limit: int = MAX_BODY_BYTES):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or ()).get(b"content-length")
        if length is not None and (not length.strip().isdigit() or int(length) > self.limit):
            return await self._too_large(send, scope.get("path", ""))
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return None  # the client went away
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.limit:
                return await self._too_large(send, scope.get("path", ""))
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    async def _too_large(self, send, path: str):
        message = f"request body over {self.limit} bytes"
        data = json.dumps(error_body(413, message) if openai_path(path) else {"error": message}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": data})


def head_timeout_protocol(seconds: float = HEAD_TIMEOUT_S):
    """uvicorn's h11 protocol, closing a connection whose next request head (line and headers) has not
    arrived ``seconds`` after the connection opened or the previous response ended: a client that sends
    its headers a byte at a time (slowloris) holds a connection that long, not forever."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeadTimeout(H11Protocol):
        def connection_made(self, transport):
            super().connection_made(transport)
            self._expect_head()

        def on_response_complete(self):
            super().on_response_complete()
            self._expect_head()

        def _expect_head(self):
            waiting_for = self.cycle  # a new request head makes a new cycle

            def late():
                if self.cycle is waiting_for and not self.transport.is_closing():
                    self.transport.close()

            self.loop.call_later(seconds, late)

    return HeadTimeout


def create_app(index, *, default_k: int | None = None, max_new_tokens: int = 64, model_name: str = MODEL_NAME,
               api_key: str | None = None, max_streams: int = MAX_STREAMS, max_batch: int = MAX_BATCH,
               batch_window_s: float = WINDOW_S, max_queue: int | None = None, ui: bool = False):
    """The FastAPI application serving ``index`` (a :class:`~clara_lite.serve.index.ClaraIndex`);
    ``model_name`` is the model id of the OpenAI-compatible routes; with ``api_key`` every request
    must carry it. ``max_batch``, ``batch_window_s``, ``max_queue``: see :mod:`.batching`; ``ui``: the chat page
    at ``/ui`` (:mod:`.ui`; behind a login form asking for the key)."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel, ConfigDict, Field, field_validator
    from starlette.exceptions import HTTPException

    from .index_folder import IndexChanged, IndexFolderError

    lock = threading.Lock()
    default_tokens = max_new_tokens  # (a class body assigning a name cannot read the argument of that name)

    class Search(BaseModel):
        model_config = ConfigDict(extra="forbid")
        question: str = Field(min_length=1, max_length=MAX_QUESTION_CHARS)
        k: int | None = Field(default=None, ge=1, le=100)

        @field_validator("question")
        @classmethod
        def _not_blank(cls, value: str) -> str:
            if not value.strip():
                raise ValueError("the question is only whitespace")
            return value

    class Ask(Search):
        max_new_tokens: int = Field(default=default_tokens, ge=1, le=1024)

    app = FastAPI(title="clara_lite index", docs_url=None, redoc_url=None, openapi_url=None)

    def error(request: Request, status: int, message: str, code: str | None = None, headers=None, **extra):
        """An error body: OpenAI's shape under /v1/, else ``{"error": message, ...extra}``."""
        body = error_body(status, message, code) if openai_path(request.url.path) else {"error": message, **extra}
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError):
        reasons = [f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e.get('msg')}"
                   for e in err.errors()]
        if openai_path(request.url.path):  # OpenAI answers a malformed request 400
            return error(request, 400, "invalid request: " + "; ".join(reasons), "invalid_request")
        return error(request, 422, "invalid request", reasons=reasons)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, err: HTTPException):
        if openai_path(request.url.path):
            return error(request, err.status_code, str(err.detail), headers=err.headers)
        return JSONResponse({"detail": err.detail}, status_code=err.status_code, headers=err.headers)

    async def _unavailable(request: Request, err: Exception):
        log.warning("request to %s met the index changing or incomplete: %s", request.url.path, err)
        return error(request, 503, "the index is being changed or is incomplete; retry shortly", "index_changing",
                     headers={"Retry-After": "1"})

    app.add_exception_handler(IndexChanged, _unavailable)

    @app.exception_handler(Busy)
    async def _busy(request: Request, err: Busy):
        return error(request, 503, f"the server is busy: {err}", "server_busy", headers={"Retry-After": "1"})
    app.add_exception_handler(IndexFolderError, _unavailable)

    @app.exception_handler(Exception)
    async def _failed(request: Request, err: Exception):
        log.exception("request to %s failed", request.url.path)
        return error(request, 500, f"internal error ({type(err).__name__}); see the server log")

    def current(work):
        """``work()`` on the index as it is on disk now: once more after a change met mid-request."""
        with lock:
            index.refresh()
            try:
                return work()
            except IndexChanged:
                if not index.refresh():
                    raise
                return work()

    @app.get("/health")
    def health():
        name = current(lambda: index.retriever().name)  # the first call may build the retriever
        return {"status": "ok", "chunks": len(index.chunks), "retriever": name,
                "fingerprint": index.meta["fingerprint"]["id"], "generation": index.meta.get("generation", 0)}

    @app.post("/search")
    def search(body: Search):
        hits = current(lambda: index.search(body.question, body.k or default_k))
        return {"question": body.question, "hits": [h.to_dict() for h in hits]}

    batcher = Batcher(index, current, max_batch=max_batch, window_s=batch_window_s, max_queue=max_queue)
    app.state.batcher = batcher

    @app.post("/ask")
    async def ask(body: Ask):
        future = batcher.submit(body.question, body.k or default_k, body.max_new_tokens)
        return (await asyncio.wrap_future(future)).to_dict()

    add_openai_routes(app, index, batcher=batcher, model_name=model_name, default_k=default_k,
                      max_new_tokens=max_new_tokens, streams=threading.BoundedSemaphore(max_streams))
    if ui:
        from .ui import UI_PATH, mount_chat_page

        mount_chat_page(app, index, run=current, default_k=default_k, max_new_tokens=max_new_tokens,
                        api_key=api_key, path=UI_PATH)
    opened = (UI_PATH,) if ui else ()
    return BodyLimit(app) if api_key is None else BearerKey(BodyLimit(app), api_key, login_paths=opened)


def serve(index, *, host: str = LOOPBACK, port: int = 8000, default_k: int | None = None,
          max_new_tokens: int = 64, model_name: str = MODEL_NAME, api_key: str | None = None,
          max_streams: int = MAX_STREAMS, max_batch: int | None = None, ui: bool = False) -> None:
    """Run the API with uvicorn until interrupted (refused beyond loopback without ``api_key``); ``max_batch``
    None: the device's (:func:`~clara_lite.core.hardware.decide_serving_batch`)."""
    import uvicorn

    require_key(host, api_key)
    if max_batch is None:
        max_batch, why = decide_serving_batch(probe_device(index.model.device))
        log.info("max batch %d (from the device; --max-batch overrides): %s", max_batch, why)
    else:
        log.info("max batch %d (--max-batch)", max_batch)
    log.info("serving on %s:%d, %s", host, port, "API key required (Authorization: Bearer)" if api_key
             else "loopback only, no API key")
    if ui:
        log.info("chat page: http://%s:%d/ui", host, port)
    index.retriever()  # build the retriever and the decoder before the first request
    log.info("answers decoded by %s", index.decoder.how)
    app = create_app(index, default_k=default_k, max_new_tokens=max_new_tokens, model_name=model_name,
                     api_key=api_key, max_streams=max_streams, max_batch=max_batch, ui=ui)
    uvicorn.run(app, host=host, port=port, log_level="info", h11_max_incomplete_event_size=MAX_BODY_BYTES,
                http=head_timeout_protocol())
