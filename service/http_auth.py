"""HTTP Basic authentication for the node's HTTP routes that reveal keys (the dashboard and its
``/api/*``), and for ``/metrics`` when ``KV_METRICS_AUTH`` asks: the same users and verifiers as the
protocol port (``Authenticator.check_password``), so a wrong password is counted, logged and
throttled as one there is. Basic sends the password itself, so use it over HTTPS (``KV_TLS_MODE``).

Checking a password costs a PBKDF2 derivation (a few ms), and the dashboard polls every two seconds:
a password that passed is remembered for ``REMEMBER_SECONDS`` by a keyed hash of the user and the
password (never the password), at most ``MAX_REMEMBERED`` of them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import time
from collections.abc import Iterable
from typing import Any

from service.authentication import Authenticator, AuthRefused
from service.http import WsgiApp

REMEMBER_SECONDS = 60.0
MAX_REMEMBERED = 1024
REALM = "kvstore"


class BasicAuth:
    """Wraps WSGI apps so that they answer only requests with a user's name and password."""

    def __init__(self, authenticator: Authenticator) -> None:
        self._authenticator = authenticator
        self._key = os.urandom(32)
        self._remembered: dict[bytes, float] = {}

    def protect(self, app: WsgiApp) -> WsgiApp:
        def protected(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
            problem = self._check(environ)
            if problem is not None:
                start_response(
                    "401 Unauthorized",
                    [
                        ("WWW-Authenticate", f'Basic realm="{REALM}", charset="UTF-8"'),
                        ("Content-Type", "text/plain; charset=utf-8"),
                        ("Cache-Control", "no-store"),
                    ],
                )
                return [f"{problem}\n".encode()]
            return app(environ, start_response)

        return protected

    def _check(self, environ: dict[str, Any]) -> str | None:
        """``None`` if the request carries a valid user and password, else why not."""
        header = environ.get("HTTP_AUTHORIZATION", "")
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic" or not encoded:
            return "this page needs a user: log in with a user of the cluster (HTTP Basic)"
        try:
            user, separator, password = base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return "malformed Basic credentials"
        if not separator:
            return "malformed Basic credentials"
        token = hmac.new(self._key, f"{user}\0{password}".encode("utf-8", "surrogatepass"), hashlib.sha256).digest()
        now = time.monotonic()
        if self._remembered.get(token, 0.0) > now:
            return None
        peer = f"{environ.get('REMOTE_ADDR', '?')}:{environ.get('REMOTE_PORT', '0')}"
        try:
            self._authenticator.check_password(user, password, peer)
        except AuthRefused as exc:
            return str(exc)
        if len(self._remembered) >= MAX_REMEMBERED:
            self._remembered = {key: until for key, until in self._remembered.items() if until > now}
            if len(self._remembered) >= MAX_REMEMBERED:
                self._remembered.clear()
        self._remembered[token] = now + REMEMBER_SECONDS
        return None
