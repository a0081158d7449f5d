"""The Redis-protocol server: accepts connections, reads RESP2 commands, writes replies in order.

Each connection is a ``RespSession``: it parses commands (``client.resp.CommandParser``), hands each
to the ``RespHandler`` and writes the replies with ``FrameWriter``, several to a send when they are
ready together. RESP has no request ids, so replies must leave in the order the commands came, but
commands need not run one after the other: a command that must wait on replicas runs in a greenlet
of its own, so a pipeline of writes shares group commits as the binary protocol's requests do. A
command waits only for the earlier commands of its connection that touch one of its keys, so each
key sees its commands in the order sent (read-your-writes on a connection, as with Redis) while
commands on other keys overlap, as they do through Twemproxy or Dynomite. Reads and commands that
need no other node are answered in the reading greenlet, at no greenlet's cost.

Limits as on the binary port: a command longer than ``KV_MAX_FRAME_BYTES`` gets a ``FRAME_TOO_LARGE``
error and ends its connection; bytes that are not RESP get ``-ERR Protocol error: ...`` and end it
too (after the replies to the commands before them, as Redis does); keys and values over their limits
get an error and the connection goes on. At most ``MAX_IN_FLIGHT_PER_CONNECTION`` keys' worth of
commands wait for their replies per connection; past that the session stops reading, which pushes
back on the client through TCP. Input never crashes the node.
"""

from __future__ import annotations

import socket
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, ClassVar

from gevent.event import Event

from client.address import format_address
from client.resp import CommandParser, OversizeCommandError, RespProtocolError, encode_error
from client.transport import FrameWriter, receive
from service import greenlets
from service.coordinator import MustWait
from service.logging import printable_key
from service.metrics import Metrics
from service.resp_handler import COMMANDS, UNKNOWN_OP, CommandSpec, Outcome, RespClient, RespHandler, error
from service.server import (
    MAX_IN_FLIGHT_PER_CONNECTION,
    ConnectionServer,
    ServerSettings,
    close_after_replies,
    interrupt_recv,
)


class _StopReading(Exception):
    """Raised into a session's recv to make it stop taking commands."""


class _Command:
    """One command on its way through a session, and its place in the connection's reply order:
    ``reply`` is empty until it has run."""

    __slots__ = ("args", "done", "keys", "reply", "spec", "started", "weight")

    def __init__(self, spec: CommandSpec | None, args: list[bytes], started: float) -> None:
        self.spec = spec
        self.args = args
        self.keys = spec.keys(args) if spec is not None else []
        self.weight = max(1, len(self.keys))  # what it counts toward MAX_IN_FLIGHT_PER_CONNECTION
        self.started = started
        self.reply: bytes | None = None
        self.done: Event | None = None  # made only when a later command waits for this one

    @property
    def op(self) -> str:
        return self.spec.op if self.spec is not None else UNKNOWN_OP

    def wait(self) -> None:
        if self.reply is None:
            if self.done is None:
                self.done = Event()
            self.done.wait()


@dataclass(frozen=True)
class _Shared:
    """What every session of one server uses."""

    handler: RespHandler
    metrics: Metrics
    settings: ServerSettings


class RespSession:
    """One Redis-protocol connection; ``client`` is its state as CLIENT and HELLO see it."""

    def __init__(self, sock: socket.socket, client: RespClient, shared: _Shared, log: Any) -> None:
        self.sock = sock
        self._client = client
        self._handler = shared.handler
        self._metrics = shared.metrics
        self._log = log
        self._log_commands = shared.settings.log_commands
        self._parser = CommandParser(shared.settings.max_frame_bytes)
        self._writer = FrameWriter(sock)
        self._pending: deque[_Command] = deque()  # replies not sent yet, in command order
        self._weight = 0  # keys (at least one per command) of the commands in _pending
        self._room = Event()  # set while _weight is under the limit
        self._room.set()
        self._drained = Event()  # set while _pending is empty
        self._drained.set()
        self._busy: dict[bytes, _Command] = {}  # key -> the latest unfinished command on it
        self._stopping = False
        self._broken = False  # a send failed: replies still to come are dropped

    def run(self) -> None:
        try:
            self._read_commands()
        except _StopReading:
            pass
        except OSError as exc:  # the peer reset the connection; nothing to answer
            self._log.debug("connection_error", error=str(exc))
        finally:
            self._drained.wait()
            close_after_replies(self.sock)
            self._handler.close_client(self._client)

    def stop_reading(self) -> None:
        """Stop taking new commands; those in flight still get their replies (graceful shutdown)."""
        self._stopping = True
        interrupt_recv(self.sock, _StopReading())

    def _read_commands(self) -> None:
        while not self._stopping:
            data = receive(self.sock)
            if not data:
                return
            failure: RespProtocolError | None = None
            try:
                commands = self._parser.feed(data)
            except RespProtocolError as exc:
                commands, failure = exc.commands, exc
            # Replies ready during the burst leave together after it (one send).
            self._writer.hold()
            try:
                for args in commands:
                    self._dispatch(args)
                    if self._client.closing:  # QUIT: what follows it is not run
                        return
                if failure is not None:
                    self._refuse(failure)
                    return
            finally:
                self._writer.release()

    def _dispatch(self, args: list[bytes]) -> None:
        """Give the command its place in the reply order and run it here or in a greenlet of its own."""
        command = _Command(COMMANDS.get(args[0].upper()), args, time.perf_counter())
        self._enqueue(command)
        busy = self._busy
        earlier = [busy[key] for key in command.keys if key in busy] if busy else []
        if (command.spec is None or not command.spec.waits) and not earlier:
            try:
                self._finish(command, self._run(command, inline=True))
                return
            except MustWait:  # a read that needs another node: this one holds no copy, R > 1, or it failed
                pass
        for key in command.keys:
            busy[key] = command
        greenlets.spawn(self._run_in_turn, command, earlier)

    def _enqueue(self, command: _Command) -> None:
        # A command heavier than the limit alone waits for an empty queue, then goes.
        while self._pending and self._weight + command.weight > MAX_IN_FLIGHT_PER_CONNECTION:
            self._writer.release()  # what is ready goes out while the session waits
            self._room.clear()
            self._room.wait()
            self._writer.hold()
        self._pending.append(command)
        self._weight += command.weight
        self._drained.clear()

    def _run_in_turn(self, command: _Command, earlier: list[_Command]) -> None:
        """Run ``command`` once the earlier commands on its keys have run (a greenlet of its own)."""
        for before in earlier:
            before.wait()
        outcome = self._run(command, inline=False)
        busy = self._busy
        for key in command.keys:
            if busy.get(key) is command:
                del busy[key]
        self._finish(command, outcome)

    def _run(self, command: _Command, *, inline: bool) -> Outcome:
        try:
            return self._handler.run(command.spec, command.args, self._client, inline=inline)
        except MustWait:
            raise
        except Exception:  # a bug must cost one command, never the connection or the node
            self._log.exception("command_failed", op=command.op)
            return error("INTERNAL_ERROR internal error; the node logged the details")

    def _finish(self, command: _Command, outcome: Outcome) -> None:
        reply, status = outcome
        command.reply = reply
        if command.done is not None:
            command.done.set()
        elapsed = time.perf_counter() - command.started
        self._metrics.observe_request(command.op, status, elapsed)
        if self._log_commands and command.keys:
            self._log.info(
                "command",
                op=command.op,
                key=printable_key(command.keys[0]),
                keys=len(command.keys),
                status=status,
                duration_ms=round(elapsed * 1000, 3),
            )
        self._flush()

    def _flush(self) -> None:
        """Send the replies at the head of the order that are ready."""
        pending = self._pending
        while pending and (reply := pending[0].reply) is not None:
            self._weight -= pending.popleft().weight
            if self._broken:
                continue
            try:
                self._writer.write(reply, wait_for_more=bool(pending))
            except OSError:
                self._broken = True
                self.stop_reading()
        if self._weight < MAX_IN_FLIGHT_PER_CONNECTION:
            self._room.set()
        if not pending:
            self._drained.set()

    def _refuse(self, failure: RespProtocolError) -> None:
        """Answer bytes that are not RESP, after the replies before them; the connection then ends."""
        if isinstance(failure, OversizeCommandError):
            self._log.warning("command_too_large", length=failure.length, limit=failure.limit)
            message = f"FRAME_TOO_LARGE {failure} (KV_MAX_FRAME_BYTES)"
        else:
            self._log.warning("malformed_command", error=str(failure))
            message = f"ERR Protocol error: {failure}"
        command = _Command(None, [], time.perf_counter())
        self._enqueue(command)
        command.reply = encode_error(message)
        self._flush()


class RespServer(ConnectionServer):
    """The Redis protocol's server: a ``RespSession`` per connection, its commands run by ``handler``."""

    log_context: ClassVar[dict[str, str]] = {"protocol": "resp"}
    tls_refusal: ClassVar[bytes] = encode_error(
        "ERR this port accepts only TLS connections (KV_TLS_MODE=required): redis-cli --tls --cacert CA"
    )

    def __init__(
        self,
        listener: socket.socket | tuple[str, int],
        handler: RespHandler,
        metrics: Metrics,
        log: Any,
        settings: ServerSettings,
    ) -> None:
        super().__init__(listener, metrics, log, settings)
        self._shared = _Shared(handler, metrics, settings)

    def open_session(self, sock: socket.socket, peer: str, log: Any) -> RespSession:
        host, port = sock.getsockname()[:2]
        client = self._shared.handler.open_client(peer, format_address(host, port))
        return RespSession(sock, client, self._shared, log)
