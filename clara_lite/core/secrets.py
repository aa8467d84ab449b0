"""Secrets (API keys, tokens, passwords and signatures in URLs) never reach a message, log line or file.

The bottom of the package, with :mod:`clara_lite.core.layout`: it imports nothing from clara_lite, so
every layer hides secrets the same way, through :func:`redact`. Why one function: the ways a key
leaks are many (an error body that echoes the request, a URL with ``user:key@`` or ``?api_key=``,
a library's exception text) and a second, weaker copy of the rules is where the next leak comes from.

:func:`header_value` checks a secret before it goes into an HTTP header: a key pasted with its
line break makes ``http.client`` raise ``Invalid header value b'Bearer sk-…\\n'``, which prints it.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlsplit

MASK = "***"
SHOWN_PARAMS = ("id", "export", "usp")  # query parameters safe to show (a Drive file id); any other may be a token
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>()\[\]{}]+")


def _url(url: str) -> str:
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


def redact(text: str, *secrets: str | None) -> str:
    """``text`` with each of ``secrets`` replaced by ``***`` and every URL in it shown without its
    user:password and with query values other than a Drive ``id`` hidden (signed links carry tokens).

    >>> redact("https://user:pw@example.com/f.zip?sig=abc&id=1")
    'https://example.com/f.zip?id=1&…'
    >>> redact("HTTP 401: bad key Bearer sk-123", "sk-123")
    'HTTP 401: bad key Bearer ***'
    """
    text = str(text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
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
