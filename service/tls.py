"""TLS for a node: its certificates as contexts that SIGHUP reloads, and accepted connections
wrapped according to ``KV_TLS_MODE``.

* ``off``: plaintext only.
* ``required``: TLS only. A connection whose first byte is not a TLS handshake record (0x16) gets
  one plaintext line in its own protocol saying so (``refusal``), then is closed.
* ``migrate``: both, told apart by that first byte: a TLS ClientHello starts with 0x16, a frame of
  ours with its length's high byte, 0 for any frame under 16 MiB, and a Redis command with ``*``
  or a letter, an HTTP request with a method's letter. Peer links are dialled with TLS, falling back
  to plaintext for a peer not yet speaking it, so a cluster moves from ``off`` to ``required`` one
  node at a time without a link failing.

Clients may present a certificate (it is checked against ``KV_TLS_CA`` if they do); a member's
link over TLS must (``tls_without_certificate``), and the member dials its peers with its own
certificate, checking theirs against the CA and the host name in ``KV_PEERS``. TLS 1.2 is the
oldest version spoken. ``TlsContexts.reload`` builds new contexts from the files; connections
accepted or dialled after it use them, those open go on with the old ones.
"""

from __future__ import annotations

import enum
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass

import gevent
from gevent import ssl as gevent_ssl

from client.security import client_context

TLS_HANDSHAKE_RECORD = 0x16
"""The first byte of a TLS connection: a handshake record (RFC 8446 §5.1)."""


class TlsMode(enum.Enum):
    OFF = "off"
    REQUIRED = "required"
    MIGRATE = "migrate"


@dataclass(frozen=True)
class TlsFiles:
    """``KV_TLS_CERT`` (PEM, the chain), ``KV_TLS_KEY`` (PEM) and ``KV_TLS_CA`` (PEM: the CA that
    signs members' and clients' certificates)."""

    cert: str
    key: str
    ca: str


def server_context(files: TlsFiles) -> ssl.SSLContext:
    """The context connections are accepted with; ``OSError``/``ssl.SSLError`` if a file does not load."""
    context: ssl.SSLContext = gevent_ssl.SSLContext(gevent_ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(files.cert, files.key)
    context.load_verify_locations(cafile=files.ca)
    context.verify_mode = ssl.CERT_OPTIONAL  # clients may; members must (checked after the handshake)
    return context


def peer_context(files: TlsFiles) -> ssl.SSLContext:
    """The context peers are dialled with: this node's certificate, theirs checked against the CA."""
    context = client_context(files.ca)
    context.load_cert_chain(files.cert, files.key)
    return context


class TlsContexts:
    """The node's current TLS contexts, rebuilt from the files by ``reload``."""

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self.server = server_context(files)
        self.peer = peer_context(files)

    def reload(self) -> None:
        """Read the files again; if any fails to load, raise and keep the contexts in use."""
        server, peer = server_context(self.files), peer_context(self.files)
        self.server, self.peer = server, peer


class TlsAcceptor:
    """Wraps accepted connections in TLS as ``mode`` says. ``refusal``: what a plaintext connection
    is told in ``required`` mode, in the port's own protocol; ``timeout``: seconds for the first
    byte and the handshake; ``on_failure(peer, reason)`` hears of every failed handshake."""

    def __init__(
        self,
        contexts: TlsContexts,
        mode: TlsMode,
        timeout: float,
        on_failure: Callable[[str, str], None] = lambda peer, reason: None,
    ) -> None:
        self.contexts = contexts
        self.mode = mode
        self._timeout = timeout
        self._on_failure = on_failure

    def accept(self, sock: socket.socket, peer: str, refusal: bytes) -> socket.socket | None:
        """The connection to serve: ``sock`` itself (plaintext), or wrapped in TLS; ``None`` if it
        was refused or its handshake failed (then it is closed)."""
        if self.mode is TlsMode.OFF:
            return sock
        try:
            with gevent.Timeout(self._timeout):
                first = sock.recv(1, socket.MSG_PEEK)
                if not first:
                    sock.close()
                    return None
                if first[0] != TLS_HANDSHAKE_RECORD:
                    if self.mode is TlsMode.MIGRATE:
                        return sock
                    self._on_failure(peer, "plaintext on a TLS-only port")
                    sock.sendall(refusal)
                    _close(sock)
                    return None
                wrapped = self.contexts.server.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
                wrapped.do_handshake()
        except gevent.Timeout:
            self._on_failure(peer, f"no TLS handshake within {self._timeout:g} s")
            sock.close()
            return None
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError: a bad hello, a certificate refused
            self._on_failure(peer, getattr(exc, "reason", None) or str(exc) or type(exc).__name__)
            sock.close()
            return None
        return wrapped


def tls_without_certificate(sock: socket.socket) -> bool:
    """Whether ``sock`` speaks TLS and its client presented no certificate (one it presented was
    checked against the CA during the handshake)."""
    getpeercert = getattr(sock, "getpeercert", None)  # gevent's SSLSocket is not ssl.SSLSocket's subclass
    return getpeercert is not None and not getpeercert()


def _close(sock: socket.socket) -> None:
    """Close after what was sent reaches the client (a close with unread input would reset it)."""
    try:
        sock.shutdown(socket.SHUT_WR)
        with gevent.Timeout(1.0, False):
            while sock.recv(65536):
                pass
    except OSError:
        pass
    sock.close()
