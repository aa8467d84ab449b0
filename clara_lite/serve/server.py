"""``clara-lite serve``: a small HTTP JSON API over an index, for an app that should not load the model itself.

    GET  /health                                  {"status": "ok", "chunks": N, "retriever": ..., "fingerprint": ...}
    POST /search {"question": "...", "k": 5}      {"question": ..., "hits": [{score, source, page, start, end, text, ...}]}
    POST /ask    {"question": "...", "k": 5, "max_new_tokens": 64}   {"question": ..., "answer": ..., "sources": [...]}

A request the API cannot use gets a 4xx with the reason (422 for a malformed body, 400 for a
value the index refuses), never a traceback; the model answers one request at a time (a lock), as
one model on one device does anyway. Loopback by default: the API has no authentication.
"""

# no `from __future__ import annotations`: FastAPI reads the request models from the annotations of local functions

import logging
import threading

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
MAX_QUESTION_CHARS = 4000


def create_app(index, *, default_k: int | None = None, max_new_tokens: int = 64):
    """The FastAPI application serving ``index`` (a :class:`~clara_lite.serve.index.ClaraIndex`)."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel, ConfigDict, Field

    lock = threading.Lock()
    default_tokens = max_new_tokens  # (a class body assigning a name cannot read the argument of that name)

    class Search(BaseModel):
        model_config = ConfigDict(extra="forbid")
        question: str = Field(min_length=1, max_length=MAX_QUESTION_CHARS)
        k: int | None = Field(default=None, ge=1, le=100)

    class Ask(Search):
        max_new_tokens: int = Field(default=default_tokens, ge=1, le=1024)

    app = FastAPI(title="clara_lite index", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError):
        reasons = [f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e.get('msg')}"
                   for e in err.errors()]
        return JSONResponse({"error": "invalid request", "reasons": reasons}, status_code=422)

    @app.exception_handler(ValueError)
    async def _refused(request: Request, err: ValueError):
        return JSONResponse({"error": str(err)}, status_code=400)

    @app.exception_handler(Exception)
    async def _failed(request: Request, err: Exception):
        log.exception("request to %s failed", request.url.path)
        return JSONResponse({"error": f"internal error ({type(err).__name__}); see the server log"}, status_code=500)

    @app.get("/health")
    def health():
        with lock:  # the first call may build the retriever
            name = index.retriever().name
        return {"status": "ok", "chunks": len(index.chunks), "retriever": name,
                "fingerprint": index.meta["fingerprint"]["id"]}

    @app.post("/search")
    def search(body: Search):
        with lock:
            hits = index.search(body.question, body.k or default_k)
        return {"question": body.question, "hits": [h.to_dict() for h in hits]}

    @app.post("/ask")
    def ask(body: Ask):
        with lock:
            answer = index.ask(body.question, body.k or default_k, max_new_tokens=body.max_new_tokens)
        return answer.to_dict()

    return app


def serve(index, *, host: str = LOOPBACK, port: int = 8000, default_k: int | None = None,
          max_new_tokens: int = 64) -> None:
    """Run the API with uvicorn until interrupted."""
    import uvicorn

    if host not in (LOOPBACK, "localhost", "::1"):
        log.warning("serving on %s: the API has no authentication; anyone who reaches this port can query it", host)
    index.retriever()  # build the retriever and the decoder before the first request
    _ = index.decoder
    uvicorn.run(create_app(index, default_k=default_k, max_new_tokens=max_new_tokens), host=host, port=port,
                log_level="info")
