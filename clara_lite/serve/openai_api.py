"""The OpenAI-compatible face of ``clara-lite serve``: what apps that speak the OpenAI API (a chatbot, Open
WebUI, LangChain or LlamaIndex with a ``base_url``) call.

    GET  /v1/models              {"object": "list", "data": [{"id": MODEL, "object": "model", ...}]}
    GET  /v1/models/MODEL        that one model
    POST /v1/chat/completions    OpenAI's request; the answer as a ``chat.completion`` with ``sources``, or with
                                 ``"stream": true`` server-sent ``chat.completion.chunk`` events ending in
                                 ``data: [DONE]``, the sources in the last chunk (the one with ``finish_reason``)

How a conversation becomes a question: the last message must be the user's; its text is the question the
decoder answers. Up to :data:`FOLDED_TURNS` earlier user messages are folded into the retrieval query
(earlier turns first, one per line, the question last; at most :data:`MAX_QUESTION_CHARS` characters in
all), so a follow-up ("and where does she work?") retrieves the documents of the conversation. System,
developer and assistant messages are not read: the decoder's prompt is the one it was trained with.

Extra fields (OpenAI's clients keep them: ``completion.sources``, ``chunk.sources``): ``sources`` is a
list of ``{"score", "id", "source", "page", "title", "start", "end", "text"}`` (``source`` is the file, ``start``
and ``end`` the character span in it), best first; a request may set ``k``, the chunks to read (1..100).
Decoding is greedy: ``temperature``, ``top_p``, ``seed`` and the other sampling fields are accepted and
ignored; ``n`` above 1 and non-text content (images) are refused. ``max_tokens`` (or
``max_completion_tokens``) bounds the answer. Streams are real: each token is sent as soon as it is
decoded (a piece of text ends at a whole character; see :class:`~.decoding.TextStream`), and a client that
goes away stops the decoding of its answer at the next token (the others decoded with it go on:
concurrent requests are decoded together, :mod:`.batching`).

Errors have OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``: 400
``invalid_request_error`` for a malformed request (OpenAI's status, where the rest of this API says 422),
404 ``model_not_found``, 413, 503 ``server_error`` (the index is being changed: retry), 500.
"""

# no `from __future__ import annotations`: FastAPI reads the request model from the route's annotation

import asyncio
import json
import logging
import threading
import time
import uuid

from .decoding import TextStream

log = logging.getLogger(__name__)

PREFIX = "/v1/"
MODEL_NAME = "clara-lite"  # the model id served unless `clara-lite serve --model-name` says otherwise
FOLDED_TURNS = 2  # earlier user messages folded into the retrieval query
MAX_QUESTION_CHARS = 4000  # a question's characters, here and in /search and /ask
MAX_ANSWER_TOKENS = 1024
TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 403: "invalid_request_error",
         404: "invalid_request_error", 405: "invalid_request_error", 413: "invalid_request_error",
         422: "invalid_request_error", 429: "rate_limit_error"}


class StreamCancelled(Exception):
    """Raised inside the decoder when the client of a stream went away."""


class RequestError(Exception):
    """A request this API refuses, with OpenAI's status, code and parameter."""

    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param


def openai_path(path: str) -> bool:
    return path.startswith(PREFIX)


def error_body(status: int, message: str, code: str | None = None, param: str | None = None) -> dict:
    """OpenAI's error object for ``status``."""
    return {"error": {"message": message, "type": TYPES.get(status, "server_error"), "param": param, "code": code}}


def conversation(messages) -> tuple[str, str]:
    """``(question, retrieval query)`` of a chat's messages (see the module docstring).

    >>> conversation([{"role": "user", "content": "Who is Ada?"}, {"role": "assistant", "content": "A cook."},
    ...               {"role": "user", "content": [{"type": "text", "text": "Where does she live?"}]}])
    ('Where does she live?', 'Who is Ada?\\nWhere does she live?')
    """
    texts = [(m["role"], _text(m.get("content"), i)) for i, m in enumerate(messages)]
    if not texts or texts[-1][0] != "user":
        raise RequestError(400, "the last message must be the user's: it is the question", param="messages")
    question = texts[-1][1].strip()
    if not question:
        raise RequestError(400, "the last user message has no text", param="messages")
    if len(question) > MAX_QUESTION_CHARS:
        raise RequestError(400, f"the question is {len(question)} characters, at most {MAX_QUESTION_CHARS}",
                           param="messages")
    query = [question]
    for text in reversed([t.strip() for role, t in texts[:-1] if role == "user" and t.strip()][-FOLDED_TURNS:]):
        if sum(len(q) + 1 for q in query) + len(text) > MAX_QUESTION_CHARS:
            break
        query.insert(0, text)
    return question, "\n".join(query)


def _text(content, i: int) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    parts = []
    for part in content:
        if part.get("type") != "text":
            raise RequestError(400, f"messages[{i}]: only text content is read, not {part.get('type')!r}",
                               param=f"messages[{i}].content")
        parts.append(part.get("text") or "")
    return "".join(parts)


def request_models():
    """The pydantic models of the requests (built on first use: pydantic is imported only to serve)."""
    from typing import Literal

    from pydantic import BaseModel, ConfigDict, Field

    class Part(BaseModel):
        model_config = ConfigDict(extra="allow")
        type: str
        text: str | None = None

    class Message(BaseModel):
        model_config = ConfigDict(extra="allow")  # name, tool_calls, ...: not read
        role: Literal["system", "developer", "user", "assistant", "tool", "function"]
        content: str | list[Part] | None = None

    class StreamOptions(BaseModel):
        model_config = ConfigDict(extra="allow")
        include_usage: bool = False

    class ChatRequest(BaseModel):
        model_config = ConfigDict(extra="allow")  # temperature, top_p, seed, user, ...: accepted, not used
        model: str = Field(min_length=1, max_length=200)
        messages: list[Message] = Field(min_length=1, max_length=256)
        stream: bool = False
        stream_options: StreamOptions | None = None
        max_tokens: int | None = Field(default=None, ge=1, le=MAX_ANSWER_TOKENS)
        max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_ANSWER_TOKENS)
        n: int = Field(default=1, ge=1, le=1)
        k: int | None = Field(default=None, ge=1, le=100)

    return ChatRequest


def add_openai_routes(app, index, *, batcher, model_name: str = MODEL_NAME, default_k: int | None = None,
                      max_new_tokens: int = 64, streams=None) -> None:
    """Add the ``/v1`` routes to ``app``. ``batcher``: the :class:`~.batching.Batcher` that decodes the
    answers; ``streams``: a semaphore of the streams allowed at once."""
    from fastapi.responses import JSONResponse, StreamingResponse

    ChatRequest = request_models()
    created = int(time.time())
    card = {"id": model_name, "object": "model", "created": created, "owned_by": "clara-lite"}

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [card]}

    @app.get("/v1/models/{name:path}")
    def model(name: str):
        if name != model_name:
            raise RequestError(404, f"the model {name!r} does not exist: this server has {model_name!r}",
                               code="model_not_found", param="model")
        return card

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest):
        if body.model != model_name:
            raise RequestError(404, f"the model {body.model!r} does not exist: this server answers as {model_name!r}",
                               code="model_not_found", param="model")
        question, query = conversation([m.model_dump() for m in body.messages])
        tokens = body.max_completion_tokens or body.max_tokens or max_new_tokens
        k = body.k or default_k
        reply = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": model_name}
        if not body.stream:
            answer = await asyncio.wrap_future(batcher.submit(question, k, tokens, query=query))
            return {**reply, "object": "chat.completion",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.text},
                                 "logprobs": None, "finish_reason": _finish(answer)}],
                    "usage": _usage(answer), "sources": [h.to_dict() for h in answer.hits]}
        if streams is not None and not streams.acquire(blocking=False):
            raise RequestError(429, "too many streams at once: retry shortly", code="too_many_streams")
        events: asyncio.Queue = asyncio.Queue()
        loop, cancelled = asyncio.get_running_loop(), threading.Event()

        def on_token(token_id: int) -> None:
            if cancelled.is_set():
                raise StreamCancelled
            loop.call_soon_threadsafe(events.put_nowait, ("token", token_id))

        def done(future) -> None:  # in the decoder's thread, after the last on_token
            if streams is not None:
                streams.release()
            err = future.exception()
            loop.call_soon_threadsafe(events.put_nowait, ("done", future.result()) if err is None else ("error", err))

        try:
            future = batcher.submit(question, k, tokens, query=query, on_token=on_token)
        except BaseException:
            if streams is not None:
                streams.release()
            raise
        future.add_done_callback(done)
        first = await events.get()  # before any byte is sent: a fault here still gets its status code
        if first[0] == "error":
            raise first[1]
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        chunk = {**reply, "object": "chat.completion.chunk"}

        def event(delta: dict, finish: str | None = None, **extra) -> str:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return f"data: {json.dumps({**chunk, 'choices': [choice], **extra})}\n\n"

        async def sse():
            text = TextStream(index.model.tokenizer)
            try:
                yield event({"role": "assistant", "content": ""})
                kind, value = first
                while kind == "token":
                    piece = text.push(value)
                    if piece:
                        yield event({"content": piece})
                    kind, value = await events.get()
                if kind == "done":
                    rest = text.finish(value.text)
                    if rest:
                        yield event({"content": rest})
                    yield event({}, _finish(value), sources=[h.to_dict() for h in value.hits])
                    if include_usage:
                        yield f"data: {json.dumps({**chunk, 'choices': [], 'usage': _usage(value)})}\n\n"
                else:
                    log.error("a stream failed after it began: %s: %s", type(value).__name__, value)
                    yield f"data: {json.dumps(error_body(500, 'the answer failed midway; see the server log'))}\n\n"
                yield "data: [DONE]\n\n"
            finally:
                cancelled.set()  # the client went away (or the stream ended): stop decoding for it

        return StreamingResponse(sse(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.exception_handler(RequestError)
    async def _refused(request, err: RequestError):
        return JSONResponse(error_body(err.status, err.message, err.code, err.param), status_code=err.status)


def _finish(answer) -> str:
    return "stop" if answer.stopped else "length"


def _usage(answer) -> dict:
    return {"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.new_tokens,
            "total_tokens": answer.prompt_tokens + answer.new_tokens}
