"""The RAG users run today as a comparison system: a chat model behind any OpenAI-compatible endpoint (Ollama,
vLLM, llama.cpp, OpenAI) reading the same documents' text as ``text-rag`` (``clara-lite eval --systems
...,text-rag-endpoint --endpoint URL --endpoint-model NAME``).

Why here and not a second client: :class:`~clara_lite.pipeline.generators.OpenAICompatible` already refuses
redirects (which would carry the key to another host), honours ``Retry-After`` and hides the key in every
message. The key comes from :data:`ENV_KEY` only: another variable's key (``OPENAI_API_KEY``) is never sent to an
address the user typed for something else. The comparison records the endpoint's URL shown without credentials
or query values, and its model; never the key.

The prompt is ``text-rag``'s (:func:`~clara_lite.model.inputs.text_answer_messages`: the same system text,
documents and question, as chat messages), greedy (temperature 0), ``max_tokens`` the eval's
``--max-new-tokens``. For example::

    endpoint = open_endpoint("http://localhost:11434/v1", "qwen2.5:1.5b")   # checked: reachable, key, model
    answers, prompt_tokens = endpoint_answers(endpoint, questions, read, max_new_tokens=32)
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence

from ..core.errors import ClaraError
from ..core.secrets import redact
from ..model import inputs
from ..pipeline.generators import GeneratorError, OpenAICompatible

log = logging.getLogger(__name__)

ENV_KEY = "CLARA_ENDPOINT_API_KEY"  # ends in API_KEY: core.secrets hides its value from every message
URL_FLAG = "--endpoint"
EXAMPLES = "Ollama: http://localhost:11434/v1, vLLM: http://HOST:8000/v1"


class EndpointError(ClaraError, RuntimeError):
    """The comparison's endpoint cannot answer: unreachable, the key refused, the model not served. The
    message names the URL (without credentials) and what to do; it never holds the key."""

    code = "endpoint"


def open_endpoint(url: str, model: str, *, api_key: str | None = None, environ=os.environ) -> OpenAICompatible:
    """A client for ``model`` at ``url``, checked before any question is asked (``GET {url}/models``): a
    wrong address, a refused key or a model the server does not list fails now, not after the other
    systems have run. ``api_key``: else :data:`ENV_KEY`, else none (a local Ollama needs none)."""
    if not (model or "").strip():
        raise ValueError(f"text-rag-endpoint needs --endpoint-model NAME: the model {redact(url)} should answer "
                         "with (GET /v1/models lists them; Ollama: ollama list)")
    key = api_key if api_key is not None else (environ.get(ENV_KEY) or "").strip() or None
    client = OpenAICompatible(url, model.strip(), key, url_setting=URL_FLAG, key_setting=ENV_KEY)
    shown = redact(client.base_url, key)
    probe = dataclasses.replace(client, max_retries=1, backoff=0.5, timeout=min(client.timeout, 30.0))
    try:
        served = probe.list_models()
    except GeneratorError as err:
        raise _explained(err, shown, client.model) from None
    if served and client.model not in served:
        raise EndpointError(f"text-rag-endpoint at {shown}: model {client.model!r} is not served there; it lists "
                            f"{', '.join(served[:20])}. "
                            "Pass one of them to --endpoint-model (Ollama: ollama pull NAME first)")
    log.info("text-rag-endpoint: %s, model %s (%s)", shown, client.model,
             "key from " + ENV_KEY if key else f"no key: {ENV_KEY} is not set")
    return client


def _explained(err: GeneratorError, shown: str, model: str) -> EndpointError:
    """``err`` with what to do for it (its message is already redacted)."""
    if err.status in (401, 403):
        todo = f"the endpoint refused the key: set {ENV_KEY} to a key it accepts"
    elif err.status == 404:
        todo = (f"is {model!r} served there (GET {shown}/models lists what is), and is --endpoint the address "
                f"clients put before /chat/completions, usually ending in /v1 ({EXAMPLES})?")
    elif err.status is None:
        todo = f"is the server running and reachable from here? ({EXAMPLES})"
    else:
        todo = "see the endpoint's own message"
    return EndpointError(f"text-rag-endpoint at {shown}: {err}. {todo[0].upper()}{todo[1:]}")


def describe_endpoint(client: OpenAICompatible) -> dict:
    """What answered, for comparison.json: ``{"url", "model"}``, the URL without credentials or query values."""
    return {"url": redact(client.base_url, client.api_key), "model": client.model}


def endpoint_answers(client: OpenAICompatible, questions: Sequence[str], read: Sequence[Sequence[str]],
                     max_new_tokens: int) -> tuple[list[str], list[int] | None]:
    """Each question answered by the endpoint from its documents' text, and the prompt tokens the endpoint
    counted (None when it does not report ``usage``)."""
    answers, tokens = [], []
    for i, (question, docs) in enumerate(zip(questions, read, strict=True)):
        try:
            text, usage = client.reply(inputs.text_answer_messages(question, docs), max_tokens=max_new_tokens)
        except GeneratorError as err:
            shown = redact(client.base_url, client.api_key)
            raise _explained(err, shown, client.model) from None
        answers.append(redact(text.strip(), client.api_key))  # a server that echoes the key does not leak it
        tokens.append(usage.get("prompt_tokens"))
        if (i + 1) % 50 == 0:
            log.info("text-rag-endpoint: %d of %d questions", i + 1, len(questions))
    counted = all(isinstance(n, int) for n in tokens)
    return answers, tokens if counted else None
