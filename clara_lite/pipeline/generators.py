"""Text generators for synthesis: any OpenAI-compatible endpoint, or a local Hugging Face model.

A generator is anything with ``name`` and ``chat(messages, max_tokens=...) -> str``.

:class:`OpenAICompatible` speaks plain HTTP (``POST {base}/chat/completions``, stdlib only), so it
works with OpenAI, DashScope/Qwen (``https://dashscope.aliyuncs.com/compatible-mode/v1``),
DeepSeek (``https://api.deepseek.com``), Ollama (``http://localhost:11434/v1``) and vLLM
(``http://host:8000/v1``). Its settings come from the environment (``CLARA_LLM_BASE_URL``,
``CLARA_LLM_MODEL``, ``CLARA_LLM_API_KEY``; ``CLARA_VLM_MODEL`` names a vision model on the same
endpoint), else from the OpenAI SDK's own ``OPENAI_BASE_URL`` / ``OPENAI_API_KEY``, else from the seed fork's
``BASE_URL`` / ``MODEL`` / ``VISION_MODEL`` (with a warning: generic names); ours win. Without a model name the
endpoint's first listed model (``GET /models``) is used. The key is never put in a message, log line, repr or file: only in the request header,
checked before the first request (:func:`clara_lite.core.secrets.header_value`); URLs in messages are
shown without credentials or query values (:func:`clara_lite.core.secrets.redact`). Redirects are not
followed: urllib would copy the ``Authorization`` header to whatever host the endpoint names.
Rate limits (429) and server or network errors are retried with exponential back-off, honouring
``Retry-After``.

:class:`LocalModel` runs a chat model through transformers with its chat template, greedy (so a
rerun generates the same text): ``smollm2-135m`` offline here, larger instruct models on Colab.

For example::

    gen = OpenAICompatible.from_env()
    gen.chat([{"role": "user", "content": "Hi"}], max_tokens=8)
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import mimetypes
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Protocol

from ..core.errors import ClaraError
from ..core.hardware import detect_hardware
from ..core.secrets import SHOWN_PARAMS, header_value, redact, url_credentials
from ..model.base import load_base_model

log = logging.getLogger(__name__)

ENV_BASE_URL = "CLARA_LLM_BASE_URL"
ENV_MODEL = "CLARA_LLM_MODEL"
ENV_API_KEY = "CLARA_LLM_API_KEY"
ENV_VISION_MODEL = "CLARA_VLM_MODEL"
RETRY_STATUSES = {408, 409, 425, 429, 500, 502, 503, 504, 529}
# Each setting's environment names, the first one set wins: ours, then the OpenAI SDK's own, then the names of the
# seed fork's guide (generic words, so they are used only when nothing more specific is set, and said in the log).
ENV_NAMES = {
    "base_url": (ENV_BASE_URL, "OPENAI_BASE_URL", "BASE_URL"),
    "model": (ENV_MODEL, "MODEL"),
    "api_key": (ENV_API_KEY, "OPENAI_API_KEY"),
    "vision_model": (ENV_VISION_MODEL, "VISION_MODEL"),
}
FORK_NAMES = {"BASE_URL", "MODEL", "VISION_MODEL"}


def from_environment(setting: str) -> tuple[str | None, str | None]:
    """``(value, the variable it came from)`` for ``setting`` (a key of :data:`ENV_NAMES`), or ``(None, None)``."""
    for name in ENV_NAMES[setting]:
        value = os.environ.get(name, "").strip()
        if value:
            if name in FORK_NAMES:
                log.warning("%s: using %s for the endpoint's %s (set %s to say so explicitly)", name, name,
                            setting.replace("_", " "), ENV_NAMES[setting][0])
            return value, name
    return None, None


def looked_for(setting: str) -> str:
    """The variables :func:`from_environment` reads for ``setting``, for messages."""
    return ", ".join(ENV_NAMES[setting])


class Generator(Protocol):
    name: str

    def chat(self, messages: list[dict], *, max_tokens: int) -> str: ...


class GeneratorError(ClaraError, RuntimeError):
    """The endpoint refused or kept failing; the message never holds the API key.

    ``status`` is the HTTP status of a refusal (None for network errors and unusable replies):
    a 400 about an image is that image's fault, a 401 is the whole run's.
    """
    code = "generator"

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: a number or an HTTP date."""
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        return max(parsedate_to_datetime(value).timestamp() - time.time(), 0.0)
    except (TypeError, ValueError):
        return None


@dataclass
class OpenAICompatible:
    """Chat completions over HTTP. ``api_key`` may be None (Ollama, a local vLLM)."""

    base_url: str
    model: str
    api_key: str | None = field(default=None, repr=False)
    timeout: float = 120.0
    max_retries: int = 6
    backoff: float = 1.0  # first wait in seconds, doubled each retry
    max_wait: float = 120.0  # no single wait is longer, whatever Retry-After says
    temperature: float = 0.0  # 0: as repeatable as the endpoint allows (resume relies on it)
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)
    # what the user set the URL and the key with, for messages (synthesis: the environment; eval: its flags)
    url_setting: str = ENV_BASE_URL
    key_setting: str = ENV_API_KEY

    def __post_init__(self) -> None:
        self.base_url = self.base_url.strip()
        if self.api_key is not None:
            self.api_key = header_value(self.api_key, self.key_setting) or None
        parts = urllib.parse.urlsplit(self.base_url)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"{self.url_setting} must be an http(s) URL such as https://api.openai.com/v1, got "
                             f"{self._redact(self.base_url)!r}")
        if url_credentials(self.base_url):  # urllib would not send it as credentials, only show it in messages
            raise ValueError(f"{self.url_setting} holds a user name or key before '@' "
                             f"({self._redact(self.base_url)}): give the URL without it and put the key in "
                             f"{self.key_setting}")

    @classmethod
    def from_env(cls, model: str | None = None, base_url: str | None = None, **kwargs) -> OpenAICompatible:
        """Settings from the environment (:data:`ENV_NAMES`: ``CLARA_LLM_*``, then the OpenAI SDK's
        ``OPENAI_BASE_URL`` / ``OPENAI_API_KEY``); ``model``/``base_url`` override it. Without a model name
        the endpoint's own list (``GET /models``) gives one: an Ollama or vLLM server lists what it serves."""
        base_url = base_url or from_environment("base_url")[0]
        if not base_url:
            raise ValueError(f"set one of {looked_for('base_url')} (e.g. https://api.openai.com/v1; the key goes "
                             f"in {looked_for('api_key')})")
        generator = cls(base_url, model or from_environment("model")[0] or "", from_environment("api_key")[0],
                        **kwargs)
        if not generator.model:
            generator.model = generator.first_model()
        return generator

    def list_models(self) -> list[str]:
        """The ids of the models the endpoint serves (``GET {base}/models``); a GeneratorError when it cannot say."""
        data = self._request("GET", "/models")
        listed = data.get("data", []) if isinstance(data, dict) else []
        return [m["id"] for m in listed if isinstance(m, dict) and isinstance(m.get("id"), str)] \
            if isinstance(listed, list) else []

    def first_model(self) -> str:
        """The first model the endpoint lists (``GET {base}/models``), logged; an error names the variable."""
        try:
            listed = self.list_models()
        except GeneratorError as err:
            raise ValueError(f"no model named ({looked_for('model')}) and the endpoint did not list one: {err}") \
                from None
        if not listed:
            raise ValueError(f"no model named: set {ENV_MODEL} (the endpoint lists none)")
        log.info("model: %s, the first of %d the endpoint lists (set %s to choose)", listed[0], len(listed),
                 ENV_MODEL)
        return listed[0]

    @property
    def name(self) -> str:  # written into every synthesized row: the model, never the URL or key
        return self.model

    def _redact(self, text: str) -> str:
        # a key may also travel in the URL (?api_key=..., ?key=...): its values are secrets too
        in_url = [v for k, v in urllib.parse.parse_qsl(urllib.parse.urlsplit(self.base_url).query)
                  if k not in SHOWN_PARAMS and len(v) >= 6]
        return redact(text, self.api_key, *in_url)

    def chat(self, messages: list[dict], *, max_tokens: int = 512) -> str:
        return self.reply(messages, max_tokens=max_tokens)[0]

    def reply(self, messages: list[dict], *, max_tokens: int = 512) -> tuple[str, dict]:
        """:meth:`chat`'s text and the response's ``usage`` (``prompt_tokens``, ...; ``{}`` when the server
        sends none)."""
        body = {"model": self.model, "messages": messages, "max_tokens": max_tokens,
                "temperature": self.temperature, "stream": False}
        data = self._post("/chat/completions", body)
        try:
            content = data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise GeneratorError(f"{self._redact(self.base_url)}: unexpected response {self._redact(str(data))[:300]}") from None
        if isinstance(content, list):  # some servers return content parts
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        usage = data.get("usage") if isinstance(data, dict) else None
        return content or "", usage if isinstance(usage, dict) else {}

    def describe_image(self, image: str | Path | bytes, prompt: str, *, max_tokens: int = 512,
                       mime: str | None = None) -> str:
        """A vision model's answer about an image file or its bytes (sent inline as a data URL).

        Send what :func:`.images.prepare_image` returns, with its ``mime``: the file's own bytes
        under a name-guessed type are what endpoints refuse."""
        data = image if isinstance(image, bytes) else Path(image).read_bytes()
        if mime is None:
            mime = (mimetypes.guess_type(Path(image).name)[0] if not isinstance(image, bytes) else None) or "image/png"
        url = f"data:{mime};base64,{base64.b64encode(data).decode()}"
        content = [{"type": "text", "text": prompt}, {"type": "image_url", "image_url": {"url": url}}]
        return self.chat([{"role": "user", "content": content}], max_tokens=max_tokens)

    def _post(self, path: str, body: dict) -> dict:
        return self._request("POST", path, body)

    def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        parts = urllib.parse.urlsplit(self.base_url)  # a ?key=... stays after the path
        url = urllib.parse.urlunsplit(parts._replace(path=parts.path.rstrip("/") + path))
        shown = f"{method} {self._redact(url)}"  # user:key@host and ?api_key=... never reach a message
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        payload = None if body is None else json.dumps(body).encode("utf-8")
        for attempt in range(self.max_retries + 1):
            wait, problem, status = None, "", None
            try:
                request = urllib.request.Request(url, data=payload, headers=headers, method=method)
                with _OPENER.open(request, timeout=self.timeout) as response:
                    raw = response.read()
                try:
                    return json.loads(raw)
                except ValueError:
                    problem = f"not JSON: {self._redact(raw[:200].decode('utf-8', 'replace'))!r}"
            except urllib.error.HTTPError as err:
                detail = self._redact(err.read()[:300].decode("utf-8", "replace"))
                problem, status = f"HTTP {err.code}: {detail}", err.code
                if 300 <= err.code < 400:
                    where = self._redact(err.headers.get("Location") or "(no Location)")
                    raise GeneratorError(
                        f"{shown}: the endpoint redirects (HTTP {err.code}) to {where}; not followed, so the "
                        f"API key is not sent to another address. Set {self.url_setting} to the address that answers "
                        "directly", err.code) from None
                if err.code not in RETRY_STATUSES:
                    hint = " (check the API key)" if err.code in (401, 403) else ""
                    raise GeneratorError(f"{shown}: {problem}{hint}", err.code) from None
                wait = _retry_after(err.headers.get("Retry-After"))
            except (urllib.error.URLError, OSError, http.client.HTTPException) as err:  # refused, reset, timeout
                reason = getattr(err, "reason", err)
                problem = f"network error: {self._redact(str(reason))}"
            if attempt == self.max_retries:
                raise GeneratorError(f"{shown}: {problem} (gave up after {attempt + 1} attempts)", status)
            wait = min(self.backoff * 2**attempt if wait is None else wait, self.max_wait)
            log.warning("%s: %s; retrying in %.1f s (%d/%d)", shown, problem, wait, attempt + 1, self.max_retries)
            self.sleep(wait)
        raise AssertionError("unreachable")


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Every 3xx comes back as an HTTPError: urllib would follow it with our headers, the key included,
    to any host (and turn the POST into a GET)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


class LocalModel:
    """A chat model run locally through transformers (greedy decoding, chat template).

    ``name`` is a registry name (``smollm2-135m``), Hub id or folder; or pass ``model`` and
    ``tokenizer`` already loaded. On a GPU it runs in half precision.
    """

    qa_format = "lines"  # what synthesis asks for by default: small models follow Q:/A: lines, not JSON
    # A model this small writes vague or invented pairs (SmolLM2-135M: 0.75 a passage, benchmarks/local_qa.py):
    # synthesis keeps the answers found in the text and fills up with cloze pairs from the text itself.
    SMALL_B = 1.0  # billions of parameters

    def __init__(self, name: str = "smollm2-135m", *, model=None, tokenizer=None, device: str | None = None,
                 repetition_penalty: float = 1.1):
        import torch

        if model is None:

            device = device or ("cuda" if torch.cuda.is_available() else "cpu")
            # the training plan's dtype: fp32 on CPU, bf16 from Ampere on, fp16 on a T4 (whose bf16
            # torch.cuda.is_bf16_supported() reports, but only emulates)
            dtype = detect_hardware(device=device).dtype
            model, tokenizer = load_base_model(name, dtype=dtype)
            model.to(device)
        self.model, self.tokenizer, self.name = model.eval(), tokenizer, name
        self.repetition_penalty = repetition_penalty  # tiny models loop without it
        self.small = sum(p.numel() for p in model.parameters()) < self.SMALL_B * 1e9

    def chat(self, messages: list[dict], *, max_tokens: int = 256) -> str:
        import torch

        enc = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                 return_dict=True)
        enc = {k: v.to(self.model.device) for k, v in enc.items()}
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        with torch.no_grad():
            out = self.model.generate(**enc, max_new_tokens=max_tokens, do_sample=False, pad_token_id=pad,
                                      repetition_penalty=self.repetition_penalty)
        return self.tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)  # (new,)


def make_generator(kind: str = "auto", model: str | None = None, *, base_url: str | None = None):
    """``api`` (OpenAI-compatible endpoint from the environment), ``local`` (transformers), or
    ``auto``: the endpoint when ``CLARA_LLM_BASE_URL`` is set, else the local ``model``
    (default ``smollm2-135m``)."""
    if kind == "auto":
        kind = "api" if base_url or from_environment("base_url")[0] else "local"
        if kind == "local":
            log.info("generator: local %s (no endpoint: none of %s is set)", model or "smollm2-135m",
                     looked_for("base_url"))
    if kind == "api":
        return OpenAICompatible.from_env(model=model, base_url=base_url)
    if kind == "local":
        return LocalModel(model or "smollm2-135m")
    raise ValueError(f"generator must be 'auto', 'api' or 'local', got {kind!r}")


def make_vision(model: str | None = None, *, base_url: str | None = None) -> OpenAICompatible | None:
    """The vision model (``model`` or ``CLARA_VLM_MODEL``) on the endpoint, or None if none is set."""
    model = model or from_environment("vision_model")[0]
    if not model:
        return None
    return OpenAICompatible.from_env(model=model, base_url=base_url)
