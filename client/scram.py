"""SCRAM-SHA-256 (RFC 5802, RFC 7677): password verifiers, and the client's side of the exchange.

A node never holds a password. It holds a **verifier**: a random salt, an iteration count, and two
keys derived from the password with PBKDF2-HMAC-SHA-256 (``StoredKey`` and ``ServerKey``), written as
PostgreSQL writes them, ``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`` (base64). In
the exchange the client proves it knows the password by a proof bound to a fresh server nonce, and
the node proves it holds the verifier by its signature; neither password nor verifier crosses the
wire, and a recorded proof is useless on another connection (its nonce differs).

The exchange's messages are built and checked by ``scramp`` (the SCRAM library pg8000 uses); this
module keeps the wire-independent parts: the verifier's text form, making one from a password, and
checking a password against one (for the HTTP port's Basic authentication and the Redis port's AUTH,
where the client sends the password itself, over TLS).
"""

from __future__ import annotations

import base64
import binascii
import hmac
from dataclasses import dataclass

from scramp import ScramClient, ScramException, ScramMechanism

from client.errors import AuthFailedError
from client.protocol import SCRAM_SHA_256

MIN_ITERATIONS = 4096
"""RFC 7677's minimum PBKDF2 iteration count for SCRAM-SHA-256; also the default."""
MAX_ITERATIONS = 10_000_000
"""A verifier asking for more would let a users file make every login take minutes."""

_MECHANISM = ScramMechanism(SCRAM_SHA_256)


class VerifierError(ValueError):
    """Text that is not a SCRAM-SHA-256 verifier; the message says what is wrong."""


@dataclass(frozen=True)
class Verifier:
    """What a node keeps of a password: salt, iterations, StoredKey and ServerKey (RFC 5802 §3)."""

    iterations: int
    salt: bytes
    stored_key: bytes
    server_key: bytes

    def __str__(self) -> str:
        def b64(data: bytes) -> str:
            return base64.b64encode(data).decode("ascii")

        return f"{SCRAM_SHA_256}${self.iterations}:{b64(self.salt)}${b64(self.stored_key)}:{b64(self.server_key)}"

    def __repr__(self) -> str:  # never the keys, in a log line or a traceback
        return f"Verifier(iterations={self.iterations})"

    @classmethod
    def parse(cls, text: str) -> Verifier:
        """A verifier from its text form; ``VerifierError`` saying what is wrong."""
        try:
            mechanism, rest = text.split("$", 1)
            params, keys = rest.split("$", 1)
            iterations_text, salt_text = params.split(":", 1)
            stored_text, server_text = keys.split(":", 1)
        except ValueError:
            raise VerifierError(
                f"not a verifier: expected {SCRAM_SHA_256}$<iterations>:<salt>$<StoredKey>:<ServerKey>"
            ) from None
        if mechanism != SCRAM_SHA_256:
            raise VerifierError(f"unknown mechanism {mechanism[:32]!r}: only {SCRAM_SHA_256}")
        if not iterations_text.isdigit() or not MIN_ITERATIONS <= int(iterations_text) <= MAX_ITERATIONS:
            raise VerifierError(f"iterations must be a whole number from {MIN_ITERATIONS} to {MAX_ITERATIONS}")
        try:
            salt, stored, server = (
                base64.b64decode(part, validate=True) for part in (salt_text, stored_text, server_text)
            )
        except (binascii.Error, ValueError):
            raise VerifierError("salt and keys must be base64") from None
        if len(stored) != 32 or len(server) != 32 or not salt:
            raise VerifierError("StoredKey and ServerKey are 32 bytes each, and the salt is not empty")
        return cls(int(iterations_text), salt, stored, server)


def make_verifier(password: str, iterations: int = MIN_ITERATIONS) -> Verifier:
    """A verifier for ``password`` with a fresh random salt (PBKDF2 with ``iterations`` rounds)."""
    salt, stored_key, server_key, rounds = _MECHANISM.make_auth_info(password, iteration_count=iterations)
    return Verifier(rounds, salt, stored_key, server_key)


def password_matches(verifier: Verifier, password: str) -> bool:
    """Whether ``password`` is the one ``verifier`` was made from (constant-time comparison)."""
    try:
        _, stored_key, _, _ = _MECHANISM.make_auth_info(
            password, iteration_count=verifier.iterations, salt=verifier.salt
        )
    except ScramException:  # a password SASLprep refuses (control characters): it matches nothing
        return False
    return hmac.compare_digest(stored_key, verifier.stored_key)


class ScramExchange:
    """The client's side of one SCRAM-SHA-256 exchange: ``client_first``, then ``client_final`` with
    the node's server-first message, then ``verify`` with its server-final message. A node that
    answers with anything SCRAM does not allow, or that cannot prove it holds the verifier, raises
    ``AuthFailedError``."""

    def __init__(self, user: str, password: str) -> None:
        self._user = user
        try:
            self._scram = ScramClient([SCRAM_SHA_256], user, password)
        except ScramException as exc:
            raise AuthFailedError(f"cannot authenticate as {user!r}: {exc}") from None

    def client_first(self) -> bytes:
        return str(self._scram.get_client_first()).encode("utf-8")

    def client_final(self, server_first: bytes) -> bytes:
        try:
            self._scram.set_server_first(server_first.decode("utf-8"))
            return str(self._scram.get_client_final()).encode("utf-8")
        except (ScramException, UnicodeDecodeError) as exc:
            raise AuthFailedError(f"the node's SCRAM challenge for {self._user!r} is not valid: {exc}") from None

    def verify(self, server_final: bytes) -> None:
        try:
            self._scram.set_server_final(server_final.decode("utf-8"))
        except (ScramException, UnicodeDecodeError):
            raise AuthFailedError(
                f"the node could not prove it holds {self._user!r}'s verifier: it may not be a member of this cluster"
            ) from None
