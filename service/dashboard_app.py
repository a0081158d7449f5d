"""The dashboard over HTTP: its page, and the two JSON endpoints the page reads.

The page is plain HTML, CSS and JavaScript in ``service/dashboard/``, packaged with the code and read
once when the node starts: no build step, nothing fetched from elsewhere. ``/api/cluster`` and
``/api/key?key=...`` answer with ``ClusterView``'s JSON (``docs/dashboard.md`` documents it). A key is
percent-encoded bytes, so any key, UTF-8 or not, can be looked up.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from importlib import resources
from typing import Any
from urllib.parse import unquote_to_bytes

from service.cluster_report import Json
from service.cluster_view import ClusterView
from service.http import WsgiApp

PAGE_FILES = {
    "/dashboard": ("index.html", "text/html; charset=utf-8"),
    "/dashboard/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
    "/dashboard/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
}
"""Path -> (file in ``service/dashboard/``, content type)."""

PAGE_HEADERS = [
    # Everything the page loads comes from this node; nothing may frame it.
    (
        "Content-Security-Policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-cache"),
]

StartResponse = Callable[..., Any]


class PageFilesMissingError(Exception):
    """The dashboard's files are not where the package should have them (a broken install)."""


def read_page_files() -> dict[str, tuple[bytes, str]]:
    """Path -> (content, content type), read from the installed package. Raises
    ``PageFilesMissingError`` naming the file that is missing."""
    folder = resources.files("service") / "dashboard"
    files = {}
    for path, (name, content_type) in PAGE_FILES.items():
        try:
            files[path] = ((folder / name).read_bytes(), content_type)
        except OSError as exc:
            raise PageFilesMissingError(
                f"the dashboard's {name} is missing from the installed package ({exc}): reinstall kvstore"
            ) from exc
    return files


def dashboard_routes(view: ClusterView) -> dict[str, WsgiApp]:
    """The dashboard's routes, for ``http.make_app``: the page, its files and the JSON API; ``/``
    leads to the page."""
    routes: dict[str, WsgiApp] = {
        path: _file(content, content_type) for path, (content, content_type) in read_page_files().items()
    }
    routes["/"] = routes["/dashboard/"] = _redirect("/dashboard")
    routes["/api/cluster"] = _json_endpoint(lambda environ: view.cluster())
    routes["/api/key"] = _json_endpoint(lambda environ: view.lookup(query_bytes(environ, "key")))
    return routes


def query_bytes(environ: dict[str, Any], name: str) -> bytes:
    """The raw bytes of query parameter ``name`` (percent-decoded, ``+`` as a space); empty if absent.
    ``urllib.parse.parse_qs`` would decode them as UTF-8 and lose any other byte."""
    for pair in environ.get("QUERY_STRING", "").split("&"):
        field, _, value = pair.partition("=")
        if unquote_to_bytes(field.replace("+", " ")) == name.encode():
            return unquote_to_bytes(value.replace("+", " "))
    return b""


def _file(content: bytes, content_type: str) -> WsgiApp:
    headers = [("Content-Type", content_type), ("Content-Length", str(len(content))), *PAGE_HEADERS]

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", headers)
        return [b"" if environ.get("REQUEST_METHOD") == "HEAD" else content]

    return app


def _redirect(location: str) -> WsgiApp:
    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        start_response("302 Found", [("Location", location), ("Content-Type", "text/plain; charset=utf-8")])
        return [f"see {location}\n".encode()]

    return app


def _json_endpoint(answer: Callable[[dict[str, Any]], Json]) -> WsgiApp:
    """An endpoint answering GET with ``answer(environ)`` as JSON; ``ValueError`` is the caller's
    mistake (400), anything else the node's (500); both answer ``{"error": message}``."""

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
            return _json(start_response, "405 Method Not Allowed", {"error": "only GET is allowed"})
        try:
            body = answer(environ)
        except ValueError as exc:
            return _json(start_response, "400 Bad Request", {"error": str(exc)})
        except Exception as exc:  # the page shows the message; the node goes on
            return _json(start_response, "500 Internal Server Error", {"error": f"{type(exc).__name__}: {exc}"})
        return _json(start_response, "200 OK", body)

    return app


def _json(start_response: StartResponse, status: str, body: Json) -> list[bytes]:
    raw = json.dumps(body, separators=(",", ":")).encode()
    start_response(
        status,
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(raw))),
            ("Cache-Control", "no-store"),
            ("X-Content-Type-Options", "nosniff"),
        ],
    )
    return [raw]
