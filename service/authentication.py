"""Who a connection is: SCRAM-SHA-256 exchanges checked against the users and the cluster secret,
passwords checked for the ports that receive them, and user administration.

A **user** authenticates with the verifier its ``UserDirectory`` holds (``service.users``). A
**member** of the cluster authenticates as ``node:<id>`` with the cluster secret
(``KV_CLUSTER_SECRET_FILE``) as its password: the node makes a verifier from the secret once, at
start, so the secret itself is never compared or sent, and the member gets the ``peer`` role. Any
valid node id is taken, not only the members this node knows: a node that joins the cluster has
the secret before any record lists it (it asks a seed to admit it, and members learn of it by
gossip), and which member a link is, is IDENTIFY's check against the membership record
(``membership_view``), made on every link.

An exchange for a user that does not exist goes on as for one that does, with a decoy verifier
derived from the name (RFC 5802 §9 recommends it), and fails at the proof with the same message as
a wrong password: an attacker cannot learn which users exist. Every failure is reported
(``AuthEvents``: the metric and a rate-limited log line) and spaces out the next attempts from the
same address (``service.auth_throttle``), waited out here, in the connection's own greenlet.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from dataclasses import dataclass
from typing import Any

import gevent
from scramp import ScramException, ScramMechanism

from client.protocol import SCRAM_SHA_256, AuthFinish, AuthReply, AuthStart, Role, UserSet, UserView
from client.scram import MIN_ITERATIONS, Verifier, VerifierError, make_verifier, password_matches
from service.admission import PEER_NAME_PREFIX
from service.auth_throttle import AuthThrottle
from service.membership import NAME_PATTERN
from service.roles import role_name
from service.users import UserDirectory, check_user_name

UNKNOWN_USER_LABEL = "(unknown)"
"""The ``user`` label of failures for names no user has: a label per name tried would let anyone
grow the node's metrics without bound."""
MIN_CLUSTER_SECRET_BYTES = 16
"""A cluster secret must be at least this long (128 bits when random): it is every member's password."""


class AuthRefused(Exception):
    """Authentication failed; the message is what the client is told (never which part was wrong)."""


class AuthEvents:
    """What authentication reports; ``events.NodeEvents`` turns it into metrics and log lines."""

    def auth_failed(self, user: str, peer: str, reason: str, failures: int) -> None:
        """An attempt as ``user`` (a label: a known name, a member, or ``UNKNOWN_USER_LABEL``) from
        ``peer`` failed for ``reason``; ``failures`` in a row from that address so far."""

    def authenticated(self, user: str, role: Role, peer: str) -> None:
        """``peer`` authenticated as ``user`` with ``role``."""


@dataclass(frozen=True)
class Identity:
    """Who an authenticated connection is."""

    user: str
    role: Role


class Authenticator:
    """Checks credentials for one node. ``users``: the users (``None``: authentication is off, every
    connection may do anything); ``cluster_secret``: the members' shared password, with which any
    ``node:<id>`` authenticates (see the module docstring)."""

    def __init__(self, users: UserDirectory | None, cluster_secret: str | None, events: AuthEvents) -> None:
        self.users = users
        self.required = users is not None
        self._peer_verifier = make_verifier(cluster_secret) if cluster_secret else None
        self._events = events
        self._throttle = AuthThrottle()
        self._decoy_key = os.urandom(32)
        self.mechanism = ScramMechanism(SCRAM_SHA_256)
        """scramp's SCRAM-SHA-256, which makes each exchange's server side."""

    def exchange(self, peer: str) -> ServerExchange:
        """A new SCRAM exchange for a connection from ``peer`` (``host:port``)."""
        return ServerExchange(self, peer)

    def identify(self, name: str) -> tuple[Verifier, Identity] | None:
        """The verifier and identity ``name`` authenticates as, ``None`` if no user or member has it."""
        member = name.startswith(PEER_NAME_PREFIX) and NAME_PATTERN.match(name[len(PEER_NAME_PREFIX) :])
        if member and self._peer_verifier is not None:
            return self._peer_verifier, Identity(name, Role.PEER)
        user = self.users.lookup(name) if self.users is not None else None
        if user is None:
            return None
        return user.verifier, Identity(name, user.role)

    def decoy(self, name: str) -> Verifier:
        """A verifier for a name nobody has: the same for that name every time (so its salt gives
        nothing away), and no password matches it."""
        digest = hmac.new(self._decoy_key, name.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()
        stored = hmac.new(self._decoy_key, b"stored" + digest, hashlib.sha256).digest()
        server = hmac.new(self._decoy_key, b"server" + digest, hashlib.sha256).digest()
        return Verifier(MIN_ITERATIONS, digest[:16], stored, server)

    def check_password(self, name: str, password: str, peer: str) -> Identity:
        """The identity ``name`` has if ``password`` is its password (the HTTP port's Basic
        authentication, the Redis port's AUTH); ``AuthRefused`` otherwise, counted and throttled
        as a failed exchange is. Members cannot log in this way."""
        self.wait_turn(peer, name)
        found = self.identify(name)
        if found is None or found[1].role is Role.PEER or not password_matches(found[0], password):
            self.failed(name, peer, "unknown user" if found is None else "wrong password")
        assert found is not None  # failed() raised otherwise
        self.succeeded(found[1], peer)
        return found[1]

    def wait_turn(self, peer: str, name: str) -> None:
        """Wait for this address's turn to try a proof (``AuthThrottle``); ``AuthRefused`` if it would
        wait too long."""
        address = peer.rpartition(":")[0] or peer
        wait = self._throttle.turn(address, time.monotonic())
        if wait is None:
            self._events.auth_failed(self._label(name), peer, "throttled", 0)
            raise AuthRefused("too many failed authentications from this address; wait a minute before trying again")
        if wait:
            gevent.sleep(wait)

    def failed(self, name: str, peer: str, reason: str) -> None:
        """Count and report a failure, then raise ``AuthRefused``."""
        address = peer.rpartition(":")[0] or peer
        failures = self._throttle.failed(address, time.monotonic())
        self._events.auth_failed(self._label(name), peer, reason, failures)
        raise AuthRefused("authentication failed: unknown user or wrong password")

    def succeeded(self, identity: Identity, peer: str) -> None:
        self._throttle.succeeded(peer.rpartition(":")[0] or peer)
        self._events.authenticated(identity.user, identity.role, peer)

    def _label(self, name: str) -> str:
        return name if self.identify(name) is not None else UNKNOWN_USER_LABEL

    # --- user administration (USER_SET, USERS) ----------------------------------------------------

    def set_user(self, change: UserSet) -> bool:
        """Apply a USER_SET; whether it changed anything (an as-new change may be held already).
        ``ValueError`` for a change that cannot apply: no users here, a bad name, role or verifier."""
        if self.users is None:
            raise ValueError("this node has no users (KV_USERS_FILE is not set), so none can be changed")
        check_user_name(change.user)
        try:
            role = Role(change.role)
        except ValueError:
            raise ValueError(f"unknown role code {change.role}") from None
        if role is Role.PEER:
            raise ValueError("the peer role belongs to members of the cluster, never to a user")
        verifier = None
        if role is not Role.NONE:
            try:
                verifier = Verifier.parse(change.verifier)
            except VerifierError as exc:
                raise ValueError(f"the verifier for {change.user!r}: {exc}") from None
        return self.users.apply(change.version, change.user, role, verifier)

    def list_users(self) -> list[UserView]:
        return self.users.users() if self.users is not None else []


class ServerExchange:
    """The node's side of one connection's SCRAM exchange: ``start`` with AUTH_START, ``finish``
    with AUTH_FINISH. Each raises ``AuthRefused`` with the message to send."""

    def __init__(self, authenticator: Authenticator, peer: str) -> None:
        self._auth = authenticator
        self._peer = peer
        self._scram: Any = None  # scramp's ScramServer (untyped) while an exchange is under way
        self._name = ""
        self._identity: Identity | None = None

    def start(self, request: AuthStart) -> bytes:
        """The server-first message for the client-first message in ``request``."""
        if request.mechanism != SCRAM_SHA_256:
            raise AuthRefused(f"unknown mechanism {request.mechanism[:32]!r}: this node speaks {SCRAM_SHA_256}")
        self._identity = None

        def verifier_of(name: str) -> tuple[bytes, bytes, bytes, int]:
            self._name = name
            found = self._auth.identify(name)
            verifier = self._auth.decoy(name) if found is None else found[0]
            self._identity = None if found is None else found[1]
            return verifier.salt, verifier.stored_key, verifier.server_key, verifier.iterations

        scram = self._auth.mechanism.make_server(verifier_of)
        try:
            scram.set_client_first(request.client_first.decode("utf-8"))
            server_first: str = scram.get_server_first()
        except (ScramException, UnicodeDecodeError) as exc:
            self._scram = None
            raise AuthRefused(f"not a SCRAM client-first message: {exc}") from None
        self._scram = scram
        return server_first.encode("utf-8")

    def finish(self, request: AuthFinish) -> tuple[Identity, AuthReply]:
        """Who the client proved it is, and the reply to send; the exchange is over either way."""
        scram, self._scram = self._scram, None
        if scram is None:
            raise AuthRefused("send AUTH_START before AUTH_FINISH")
        self._auth.wait_turn(self._peer, self._name)
        try:
            scram.set_client_final(request.client_final.decode("utf-8"))
            server_final: str = scram.get_server_final()
        except (ScramException, UnicodeDecodeError):
            self._auth.failed(self._name, self._peer, "unknown user" if self._identity is None else "wrong proof")
        identity = self._identity
        if identity is None:  # a decoy's proof cannot match; guard anyway
            self._auth.failed(self._name, self._peer, "unknown user")
        assert identity is not None
        self._auth.succeeded(identity, self._peer)
        return identity, AuthReply(identity.user, identity.role, server_final.encode("utf-8"))


def describe(identity: Identity) -> str:
    """``alice (readwrite)``: how messages name a connection's user."""
    return f"{identity.user} ({role_name(identity.role)})"
