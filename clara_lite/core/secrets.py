"""Secrets (API keys, tokens, passwords and signatures in URLs) never reach a message, log line or file.

The bottom of the package, with :mod:`clara_lite.core.layout`: it imports nothing from clara_lite, so
every layer hides secrets the same way, through :func:`redact`. Why one function: the ways a key
leaks are many (an error body that echoes the request, a URL with ``user:key@`` or ``?api_key=``,
a library's exception text) and a second, weaker copy of the rules is where the next leak comes from.

:func:`header_value` checks a secret before it goes into an HTTP header: a key pasted with its
line break makes ``http.client`` raise ``Invalid header value b'Bearer sk-…\\n'``, which prints it.
"""

from __future__ import annotations

import base64
import json
import os
import re
from urllib.parse import parse_qsl, quote, quote_plus, urlsplit

MASK = "***"
SHOWN_PARAMS = ("id", "export", "usp")  # query parameters safe to show (a Drive file id); any other may be a token
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>()\[\]{}]+")
# user:password@ right after the scheme, the password up to the last "@" before the host: a key with an
# unescaped "/" in it ends urlsplit's netloc early and would be shown as host and path
_CREDENTIALS = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*://)[^/?#@:\s]*:[^@\s]*@")
SECRET_ENV = re.compile(r"(TOKEN|API_KEY|SECRET|PASSWORD)$", re.IGNORECASE)  # variables whose values are hidden
MIN_SECRET = 8  # shorter values are not searched for (a 3-letter "key" would mask ordinary words)
TRIMMED = 2  # an echo cut by up to this many characters at either end is still the secret


def url_credentials(url: str) -> bool:
    """Whether ``url`` carries ``user:password@`` (also when the password holds a ``/``)."""
    return bool(_CREDENTIALS.match(url)) or "@" in urlsplit(url).netloc


def _url(url: str) -> str:
    url = _CREDENTIALS.sub(r"\1", url)
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:  # not a port: show no more than the host
        port = None
    host = (parts.hostname or "") + (f":{port}" if port else "")
    params = parse_qsl(parts.query, keep_blank_values=True)
    shown = [f"{k}={v}" for k, v in params if k in SHOWN_PARAMS]
    if len(shown) < len(params) or parts.query and not params:
        shown.append("…")
    return f"{parts.scheme}://{host}{parts.path}" + (f"?{'&'.join(shown)}" if shown else "")


def _base64_cores(secret: bytes) -> set[str]:
    """The base64 characters that depend on ``secret``'s bytes alone, at each of the three alignments
    it can have inside a longer encoded text (``Basic base64(user:key)``, a JSON body encoded whole)."""
    cores = set()
    for offset in range(3):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            text = encode(b"\0" * offset + secret).decode()
            first, end = -(-8 * offset // 6), (8 * (offset + len(secret))) // 6
            if end - first >= MIN_SECRET:
                cores.add(text[first:end])
    return cores


def _forms(secret: str) -> set[str]:
    """``secret`` as an echo may carry it: itself, cut by a character or two at either end, JSON-escaped,
    URL-encoded, base64-encoded."""
    cut = {secret[i:len(secret) - j] for i in range(TRIMMED + 1) for j in range(TRIMMED + 1)}
    forms = {c for c in cut if len(c) >= MIN_SECRET} | {secret}
    for form in list(forms):
        escaped = json.dumps(form)[1:-1]
        forms |= {escaped, escaped.replace("/", "\\/"), quote(form, safe=""), quote_plus(form, safe="")}
    forms |= _base64_cores(secret.encode())
    return forms


def environment_secrets() -> list[str]:
    """Values of the environment's ``*_TOKEN``, ``*_API_KEY``, ``*_SECRET``, ``*PASSWORD`` variables."""
    return [v for k, v in os.environ.items() if SECRET_ENV.search(k) and len(v.strip()) >= MIN_SECRET]


def redact(text: str, *secrets: str | None) -> str:
    """``text`` with each of ``secrets`` (and each secret of the environment: :func:`environment_secrets`)
    replaced by ``***``, also JSON-escaped, URL-encoded, base64'd or cut by a character or two; and every
    URL in it shown without its user:password and with query values other than a Drive ``id`` hidden
    (signed links carry tokens).

    >>> redact("https://user:pw@example.com/f.zip?sig=abc&id=1")
    'https://example.com/f.zip?id=1&…'
    >>> redact("HTTP 401: bad key Bearer sk-123", "sk-123")
    'HTTP 401: bad key Bearer ***'
    """
    text = str(text)
    forms: set[str] = set()
    for secret in {*secrets, *environment_secrets()}:
        if secret:
            forms |= _forms(secret) if len(secret) >= MIN_SECRET else {secret}
    for form in sorted(forms, key=len, reverse=True):  # the longest first: a cut form never splits a whole one
        if form in text:
            text = text.replace(form, MASK)
    return _URL.sub(lambda m: _url(m.group(0)), text) if "://" in text else text


def header_value(value: str, name: str) -> str:
    """``value`` without surrounding whitespace, ready for an HTTP header; a ValueError naming
    ``name`` (never the value) when it holds a line break, a control character or a character
    HTTP headers cannot carry (they are Latin-1)."""
    value = value.strip()
    for i, char in enumerate(value):
        if ord(char) < 32 or ord(char) == 127 or ord(char) > 255:
            what = "a line break" if char in "\r\n" else f"character U+{ord(char):04X}"
            raise ValueError(f"{name} holds {what} at position {i + 1} of {len(value)}: it cannot go into an "
                             f"HTTP header. Set {name} again, copying only the key itself")
    return value
