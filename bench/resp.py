"""RESP2, the Redis wire format, over bytes only: command encoding and an incremental reply parser.

This module owns the byte layout of RESP2 and nothing else: no sockets, no clocks. It exists so the
benchmark can drive Redis with the same code path, pipelining and timing as our own store instead of
through a client library with its own connection handling.

Replies map to Python values as follows: simple string -> ``str``, error -> ``RespError`` (a value,
not an exception, so one failed command in a pipeline does not hide the replies behind it), integer
-> ``int``, bulk string -> ``bytes``, null bulk string and null array -> ``None``, array -> ``list``.
Bytes that are not RESP2 raise ``RespProtocolError``; the stream is unusable after that.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Union

from client.protocol import ProtocolError

CRLF = b"\r\n"

MAX_LINE_BYTES = 64 * 1024
"""Longest header or simple-string line accepted, like Redis's own inline limit: a line that grows
past it without a CRLF is garbage, not a reply still arriving."""
MAX_BULK_BYTES = 512 * 1024 * 1024
"""Redis's proto-max-bulk-len: no real reply carries a longer string."""
MAX_ARRAY_LENGTH = 1024 * 1024 * 1024
MAX_DEPTH = 32
"""Arrays nested deeper than this are refused, so hostile input cannot exhaust the recursion limit."""

_INTEGER = re.compile(rb"-?[0-9]+")
_TYPE_BYTES = (b"+", b"-", b":", b"$", b"*")


class RespProtocolError(ProtocolError):
    """Bytes that are not a RESP2 reply. A kind of ``ProtocolError``, which ``client.transport``'s
    pipelined socket takes as the end of a stream that can no longer be trusted."""


@dataclass(frozen=True, slots=True)
class RespError:
    """A ``-ERR ...`` reply. ``kind`` is its first word (``ERR``, ``WRONGTYPE``, ``OOM``...)."""

    message: str

    @property
    def kind(self) -> str:
        return self.message.split(" ", 1)[0] if self.message else "ERR"


Reply = Union[str, int, bytes, None, RespError, list["Reply"]]  # noqa: UP007  # recursive alias


# --- encoding --------------------------------------------------------------------------------------


def _argument(arg: bytes | str | int) -> bytes:
    if isinstance(arg, bytes | bytearray | memoryview):
        return bytes(arg)
    if isinstance(arg, str):
        return arg.encode("utf-8")
    if isinstance(arg, int) and not isinstance(arg, bool):
        return str(arg).encode("ascii")
    raise TypeError(f"a RESP command argument is bytes, str or int, not {type(arg).__name__}")


def encode_command(*args: bytes | str | int) -> bytes:
    """A command as a RESP array of bulk strings: ``encode_command("GET", "k")``."""
    if not args:
        raise ValueError("a command needs at least its name")
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        raw = _argument(arg)
        parts.append(b"$%d\r\n%b\r\n" % (len(raw), raw))
    return b"".join(parts)


def encode_reply(reply: Reply) -> bytes:
    """``reply`` as a server would send it (the inverse of ``ReplyParser``; used by tests and fakes).

    ``None`` encodes as a null bulk string; a ``str`` must not contain CR or LF.
    """
    if reply is None:
        return b"$-1\r\n"
    if isinstance(reply, RespError | str):
        text = reply.message if isinstance(reply, RespError) else reply
        if "\r" in text or "\n" in text:
            raise ValueError("a simple string or error cannot contain CR or LF")
        prefix = b"-" if isinstance(reply, RespError) else b"+"
        return prefix + text.encode("utf-8") + CRLF
    if isinstance(reply, bool):
        raise TypeError("RESP2 has no boolean type")
    if isinstance(reply, int):
        return b":%d\r\n" % reply
    if isinstance(reply, bytes | bytearray):
        return b"$%d\r\n%b\r\n" % (len(reply), bytes(reply))
    if isinstance(reply, list):
        return b"*%d\r\n" % len(reply) + b"".join(encode_reply(item) for item in reply)
    raise TypeError(f"cannot encode {type(reply).__name__} as a RESP2 reply")


# --- parsing ---------------------------------------------------------------------------------------


class _Incomplete(Exception):
    """The buffer ends inside a reply: wait for more bytes."""


class ReplyParser:
    """Incremental reply parser: feed it whatever the socket returned, get back complete replies."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Reply]:
        """Append ``data`` and return every reply now complete; keep any partial reply buffered.

        Raises ``RespProtocolError`` for malformed input.
        """
        buffer = self._buffer
        buffer += data
        replies: list[Reply] = []
        offset = 0
        while offset < len(buffer):
            try:
                reply, offset = self._parse(buffer, offset, 0)
            except _Incomplete:
                break
            replies.append(reply)
        if offset:
            del buffer[:offset]
        return replies

    @property
    def buffered(self) -> int:
        """Bytes held for a reply that is not complete yet."""
        return len(self._buffer)

    def _line(self, buffer: bytearray, start: int) -> tuple[bytes, int]:
        end = buffer.find(CRLF, start, start + MAX_LINE_BYTES + 2)
        if end < 0:
            if len(buffer) - start > MAX_LINE_BYTES + 1:
                raise RespProtocolError(f"line longer than {MAX_LINE_BYTES} bytes without CRLF")
            raise _Incomplete
        line = bytes(buffer[start:end])
        if b"\r" in line or b"\n" in line:
            raise RespProtocolError(f"stray CR or LF in line {line[:40]!r}")
        return line, end + 2

    def _integer(self, line: bytes, what: str) -> int:
        if not _INTEGER.fullmatch(line):
            raise RespProtocolError(f"{what} is not an integer: {line[:40]!r}")
        return int(line)

    def _parse(self, buffer: bytearray, offset: int, depth: int) -> tuple[Reply, int]:
        if offset >= len(buffer):
            raise _Incomplete
        kind = buffer[offset : offset + 1]
        if kind not in _TYPE_BYTES:  # refuse at once, without waiting for a CRLF that may never come
            raise RespProtocolError(f"unknown RESP2 type byte {bytes(kind)!r}")
        line, offset = self._line(buffer, offset + 1)
        if kind == b"+":
            return _text(line), offset
        if kind == b"-":
            return RespError(_text(line)), offset
        if kind == b":":
            return self._integer(line, "integer reply"), offset
        if kind == b"$":
            length = self._integer(line, "bulk length")
            if length == -1:
                return None, offset
            if not 0 <= length <= MAX_BULK_BYTES:
                raise RespProtocolError(f"bulk length {length} outside 0..{MAX_BULK_BYTES} (or -1)")
            end = offset + length
            if end + 2 > len(buffer):
                raise _Incomplete
            if buffer[end : end + 2] != CRLF:
                raise RespProtocolError(f"bulk string of {length} bytes is not followed by CRLF")
            return bytes(buffer[offset:end]), end + 2
        if kind == b"*":
            length = self._integer(line, "array length")
            if length == -1:
                return None, offset
            if not 0 <= length <= MAX_ARRAY_LENGTH:
                raise RespProtocolError(f"array length {length} outside 0..{MAX_ARRAY_LENGTH} (or -1)")
            if depth >= MAX_DEPTH:
                raise RespProtocolError(f"arrays nested deeper than {MAX_DEPTH}")
            items: list[Reply] = []
            for _ in range(length):
                item, offset = self._parse(buffer, offset, depth + 1)
                items.append(item)
            return items, offset
        raise AssertionError("unreachable: the type byte was checked above")


def _text(line: bytes) -> str:
    return line.decode("utf-8", errors="replace")
