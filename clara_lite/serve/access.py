"""Who may use ``clara-lite serve``: an API key whenever the server listens beyond loopback.

The key comes from ``--api-key-file FILE`` (its first line) or the environment variable
:data:`API_KEY_ENV`; clients send ``Authorization: Bearer KEY`` (what OpenAI's clients do with their
``api_key``). Without a key the server starts only on a loopback address: on ``0.0.0.0`` or a LAN
address it refuses (:class:`OpenDoor`, exit status 2), since anyone who reaches the port could read the
knowledge base and keep the model busy. The key is compared in constant time (``hmac.compare_digest``),
never logged and never echoed in a response; a refused request is answered 401 before its body is read.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
from pathlib import Path

from ..core.errors import ClaraError
from .openai_api import error_body, openai_path

API_KEY_ENV = "CLARA_SERVE_API_KEY"  # ends in API_KEY: core.secrets redacts its value from every message
MIN_KEY_CHARS = 16
NEW_KEY = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"


class OpenDoor(ClaraError, ValueError):
    """A server that would listen beyond loopback without a key, or a key that is no key."""

    code = "serve_key"


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable only from this machine (``127.0.0.0/8``, ``::1``, ``localhost``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def read_api_key(key_file: str | None = None, environ=os.environ) -> str | None:
    """The key from ``key_file`` (its first line), else from :data:`API_KEY_ENV`; None when neither is set."""
    if key_file:
        try:
            lines = Path(key_file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeError) as err:
            raise OpenDoor(f"--api-key-file {key_file}: cannot be read ({type(err).__name__})") from None
        key, where = (lines[0].strip() if lines else ""), f"--api-key-file {key_file}"
    else:
        key, where = environ.get(API_KEY_ENV), API_KEY_ENV
        if key is None:
            return None
        key = key.strip()
    if len(key) < MIN_KEY_CHARS or any(c.isspace() or not c.isprintable() for c in key):
        raise OpenDoor(f"{where}: the API key must be at least {MIN_KEY_CHARS} printable characters without "
                       f"spaces; make one with {NEW_KEY}")
    return key


def require_key(host: str, api_key: str | None) -> None:
    """Refuse to listen beyond loopback without a key (:class:`OpenDoor`)."""
    if api_key is None and not is_loopback(host):
        raise OpenDoor(f"serving on {host} needs an API key: anyone who reaches the port could query the index. "
                       f"Set {API_KEY_ENV} or pass --api-key-file FILE (make a key with {NEW_KEY}); clients send "
                       "'Authorization: Bearer KEY'. Or serve on 127.0.0.1 (the default)")


class BearerKey:
    """ASGI middleware: every HTTP request must carry ``Authorization: Bearer <key>`` (401 otherwise,
    before the body is read; OpenAI's error shape under ``/v1/``). Under ``login_paths`` (the chat page, which
    a browser opens without that header) the app behind asks for the key itself (a login form)."""

    def __init__(self, app, key: str, login_paths=()):
        self.app, self.expected = app, f"Bearer {key}".encode()
        self.login_paths = tuple(login_paths)

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        if any(path == p or path.startswith(p + "/") for p in self.login_paths):
            return await self.app(scope, receive, send)
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = dict(scope.get("headers") or ()).get(b"authorization", b"")
        if hmac.compare_digest(given, self.expected):
            return await self.app(scope, receive, send)
        message = ("no API key: send 'Authorization: Bearer KEY'" if not given
                   else "the API key is not this server's")
        body = (error_body(401, message, "invalid_api_key") if openai_path(scope.get("path", ""))
                else {"error": message})
        data = json.dumps(body).encode()
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                                (b"www-authenticate", b"Bearer"), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": data})
        return None
