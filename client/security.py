"""What a client needs to reach a secured cluster: a user and password, and TLS settings.

``Security`` travels with every connection a client (or a node, to its peers) opens: ``Credentials``
make the connection authenticate right after HELLO (``client.connection``, with SCRAM-SHA-256 from
``client.scram``, so the password never crosses the wire), and ``TlsSettings`` make it speak TLS
(1.2 or later) and check the node's certificate against a CA.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field

from gevent import ssl as gevent_ssl


@dataclass(frozen=True)
class Credentials:
    """A user and its password; the password never appears in a repr."""

    user: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class TlsSettings:
    """TLS for a client's connections. ``ca``: PEM file of the CA that signed the nodes' certificates
    (``None``: the system's trusted CAs); ``cert`` and ``key``: a client certificate, for nodes that
    ask for one; ``check_hostname``: whether a node's certificate must name the host dialled."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    check_hostname: bool = True

    def context(self) -> ssl.SSLContext:
        """A client context for these settings; ``OSError`` or ``ssl.SSLError`` if a file does not load."""
        context = client_context(self.ca, self.check_hostname)
        if self.cert:
            context.load_cert_chain(self.cert, self.key or None)
        return context


def client_context(ca: str | None, check_hostname: bool = True) -> ssl.SSLContext:
    """A TLS client context (gevent's, so it works without monkey-patching): TLS 1.2 or later, the
    server's certificate verified against ``ca`` (the system's CAs if ``None``)."""
    context: ssl.SSLContext = gevent_ssl.SSLContext(gevent_ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = check_hostname
    context.verify_mode = ssl.CERT_REQUIRED
    if ca:
        context.load_verify_locations(cafile=ca)
    else:
        context.load_default_certs()
    return context


@dataclass(frozen=True)
class Security:
    """How a client secures its connections: ``credentials`` to authenticate with (``None``: none),
    ``tls`` to speak TLS with (``None``: plaintext). ``tls_context`` is built once from ``tls``."""

    credentials: Credentials | None = None
    tls: TlsSettings | None = None
    tls_context: ssl.SSLContext | None = field(default=None, compare=False, repr=False)

    @classmethod
    def of(cls, credentials: Credentials | None = None, tls: TlsSettings | None = None) -> Security:
        """Settings with their TLS context built; ``OSError``/``ssl.SSLError`` if a TLS file does not load."""
        return cls(credentials, tls, tls.context() if tls is not None else None)


NO_SECURITY = Security()
"""Plaintext, no authentication: a cluster with ``KV_INSECURE=true``, or one on 127.0.0.1 only."""
