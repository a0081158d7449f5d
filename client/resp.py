"""RESP2, the Redis wire format, over bytes only: both directions, for a client and for a server.

This module owns the byte layout of RESP2 and nothing else: no sockets, no clocks, no meaning of
commands. Two programs use it: the benchmark, which drives Redis with the same pipelined socket as
our own store (``encode_command`` and ``ReplyParser``), and a node's Redis-protocol port, which reads
commands and writes replies (``CommandParser`` and the ``encode_*`` functions).

Replies map to Python values as follows: simple string -> ``str``, error -> ``RespError`` (a value,
not an exception, so one failed command in a pipeline does not hide the replies behind it), integer
-> ``int``, bulk string -> ``bytes``, null bulk string and null array -> ``None``, array -> ``list``.
Bytes that are not RESP2 raise ``RespProtocolError``; the stream is unusable after that. A server
may also answer in RESP3 where it differs for the replies a key-value store sends, null
(``RESP3_NULL``) and maps (``encode_map``), for clients that ask for it (redis-py 8 does by default).

Commands are what Redis accepts (the "unified request protocol" and inline commands, as in Redis's
``networking.c``): an array of bulk strings, ``*2\\r\\n$3\\r\\nGET\\r\\n$1\\r\\nk\\r\\n``, or one line of
words, ``GET k\\r\\n``, as typed into telnet. Both parse to a list of ``bytes`` arguments.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Union

from client.protocol import ProtocolError

CRLF = b"\r\n"

MAX_LINE_BYTES = 64 * 1024
"""Longest header, simple-string or inline-command line accepted: Redis's PROTO_INLINE_MAX_SIZE. A
line that grows past it without a CRLF is garbage, not a reply or command still arriving."""
MAX_BULK_BYTES = 512 * 1024 * 1024
"""Redis's proto-max-bulk-len: no real reply carries a longer string."""
MAX_ARRAY_LENGTH = 1024 * 1024 * 1024
MAX_COMMAND_ARGUMENTS = 1024 * 1024
"""Redis's limit on the arguments of one command (a larger count is "invalid multibulk length")."""
MAX_DEPTH = 32
"""Arrays nested deeper than this are refused, so hostile input cannot exhaust the recursion limit."""
SMALLEST_ARGUMENT_BYTES = len(b"$0\r\n\r\n")
"""What an argument of a command costs on the wire at least: a command announcing more arguments
than its byte limit can hold is refused at its header, before any of them is buffered."""

_INTEGER = re.compile(rb"-?[0-9]+")
_TYPE_BYTES = (b"+", b"-", b":", b"$", b"*")


class RespProtocolError(ProtocolError):
    """Bytes that are not RESP2. A kind of ``ProtocolError``, which ``client.transport``'s pipelined
    socket takes as the end of a stream that can no longer be trusted.

    Raised by ``CommandParser.feed``, ``commands`` holds the commands that were complete before the
    bad bytes, in order: a server answers those, then the error, then closes (as Redis does)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.commands: list[list[bytes]] = []


class OversizeCommandError(RespProtocolError):
    """A command longer than the parser's byte limit (announced, so none of it was buffered)."""

    def __init__(self, length: int, limit: int) -> None:
        super().__init__(f"command of at least {length} bytes exceeds the limit of {limit} bytes")
        self.length = length
        self.limit = limit


@dataclass(frozen=True, slots=True)
class RespError:
    """A ``-ERR ...`` reply. ``kind`` is its first word (``ERR``, ``WRONGTYPE``, ``OOM``...)."""

    message: str

    @property
    def kind(self) -> str:
        return self.message.split(" ", 1)[0] if self.message else "ERR"


Reply = Union[str, int, bytes, None, RespError, list["Reply"]]  # noqa: UP007  # recursive alias


# --- encoding: commands (client side) -------------------------------------------------------------


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


# --- encoding: replies (server side) --------------------------------------------------------------

OK = b"+OK\r\n"
PONG = b"+PONG\r\n"
NULL = b"$-1\r\n"
"""The null bulk string: GET of a missing key."""
RESP3_NULL = b"_\r\n"
"""RESP3's null, sent instead of ``NULL`` to a client that chose RESP3 with ``HELLO 3``."""


def encode_bulk(value: bytes | None) -> bytes:
    """A bulk string (binary-safe), or the null bulk string for ``None``."""
    if value is None:
        return NULL
    return b"$%d\r\n%b\r\n" % (len(value), value)


def encode_integer(number: int) -> bytes:
    return b":%d\r\n" % number


def encode_error(message: str) -> bytes:
    """An error reply; ``message`` starts with its kind (``ERR unknown command``). CR and LF, which
    would end the line early, become spaces, as Redis does with the text it echoes in errors."""
    text = message.replace("\r", " ").replace("\n", " ")
    return b"-" + text.encode("utf-8", errors="replace") + CRLF


def encode_map(pairs: list[tuple[Reply, Reply]], protocol: int) -> bytes:
    """A map: in RESP3 (``protocol`` 3) its own type, ``%<count>``; in RESP2 the flat array of keys
    and values that Redis sends in its place."""
    if protocol == 2:
        return encode_reply([item for pair in pairs for item in pair])
    return b"%%%d\r\n" % len(pairs) + b"".join(encode_reply(key) + encode_reply(value) for key, value in pairs)


def encode_reply(reply: Reply) -> bytes:
    """``reply`` as a server sends it; the inverse of ``ReplyParser``.

    ``None`` encodes as a null bulk string; a ``str`` must not contain CR or LF (``ValueError``).
    """
    if reply is None:
        return NULL
    if isinstance(reply, RespError | str):
        text = reply.message if isinstance(reply, RespError) else reply
        if "\r" in text or "\n" in text:
            raise ValueError("a simple string or error cannot contain CR or LF")
        prefix = b"-" if isinstance(reply, RespError) else b"+"
        return prefix + text.encode("utf-8") + CRLF
    if isinstance(reply, bool):
        raise TypeError("RESP2 has no boolean type")
    if isinstance(reply, int):
        return encode_integer(reply)
    if isinstance(reply, bytes | bytearray):
        return encode_bulk(bytes(reply))
    if isinstance(reply, list):
        return b"*%d\r\n" % len(reply) + b"".join(encode_reply(item) for item in reply)
    raise TypeError(f"cannot encode {type(reply).__name__} as a RESP2 reply")


# --- parsing: replies (client side) ---------------------------------------------------------------


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

    def _parse(self, buffer: bytearray, offset: int, depth: int) -> tuple[Reply, int]:
        if offset >= len(buffer):
            raise _Incomplete
        kind = buffer[offset : offset + 1]
        if kind not in _TYPE_BYTES:  # refuse at once, without waiting for a CRLF that may never come
            raise RespProtocolError(f"unknown RESP2 type byte {bytes(kind)!r}")
        line, offset = _line(buffer, offset + 1, "line")
        if kind == b"+":
            return _text(line), offset
        if kind == b"-":
            return RespError(_text(line)), offset
        if kind == b":":
            return _integer(line, "integer reply"), offset
        if kind == b"$":
            length = _integer(line, "bulk length")
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
            length = _integer(line, "array length")
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


def _line(buffer: bytearray, start: int, what: str) -> tuple[bytes, int]:
    """The line at ``start`` without its CRLF, and the offset after it; ``_Incomplete`` if it has no
    CRLF yet (``RespProtocolError`` once it is too long to be one)."""
    end = buffer.find(CRLF, start, start + MAX_LINE_BYTES + 2)
    if end < 0:
        if len(buffer) - start > MAX_LINE_BYTES + 1:
            raise RespProtocolError(f"{what} longer than {MAX_LINE_BYTES} bytes without CRLF")
        raise _Incomplete
    line = bytes(buffer[start:end])
    if b"\r" in line or b"\n" in line:
        raise RespProtocolError(f"stray CR or LF in {what} {line[:40]!r}")
    return line, end + 2


def _integer(line: bytes, what: str) -> int:
    if not _INTEGER.fullmatch(line):
        raise RespProtocolError(f"{what} is not an integer: {line[:40]!r}")
    return int(line)


def _text(line: bytes) -> str:
    return line.decode("utf-8", errors="replace")


# --- parsing: commands (server side) --------------------------------------------------------------


class CommandParser:
    """Incremental command parser: feed it whatever the socket returned, get back complete commands,
    each a list of ``bytes`` arguments (its name first, as sent).

    Stateful, so a large command arriving in many reads is parsed once, not again at each read. A
    command longer than ``max_command_bytes`` (all its bytes on the wire) raises
    ``OversizeCommandError`` as soon as its header announces it. Arrays of zero or negative length
    and empty inline lines are skipped, as Redis skips them. After any ``RespProtocolError`` the
    parser refuses more input: the stream cannot be trusted.
    """

    def __init__(self, max_command_bytes: int) -> None:
        self._limit = max_command_bytes
        self._buffer = bytearray()
        self._args: list[bytes] | None = None  # the array command being read, None between commands
        self._wanted = 0  # its arguments still to read
        self._size = 0  # its bytes read or announced so far
        self._bulk = -1  # length of the argument whose header was read, -1 before its header
        self._failure: RespProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes held for a command that is not complete yet."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[list[bytes]]:
        """Append ``data`` and return every command now complete; keep a partial one buffered."""
        if self._failure is not None:
            raise self._failure
        buffer = self._buffer
        buffer += data
        commands: list[list[bytes]] = []
        offset = 0
        try:
            while offset < len(buffer):
                if self._args is not None:
                    offset = self._read_arguments(buffer, offset, commands)
                    if self._args is not None:  # the rest has not arrived
                        break
                elif buffer[offset] == 0x2A:  # "*": an array of bulk strings
                    start = offset
                    offset = self._read_header(buffer, offset)
                    if offset == start:
                        break
                else:
                    start = offset
                    offset = self._read_inline(buffer, offset, commands)
                    if offset == start:
                        break
        except RespProtocolError as exc:
            exc.commands = commands
            self._failure = exc
            buffer.clear()
            raise
        del buffer[:offset]
        return commands

    def _read_header(self, buffer: bytearray, offset: int) -> int:
        """Read ``*<count>``; returns the offset after it, or ``offset`` if the line is not complete."""
        try:
            line, after = _line(buffer, offset + 1, "multibulk length")
        except _Incomplete:
            return offset
        if line[:1] == b"-" and line[1:].isdigit():
            return after  # a null or negative array: nothing to run (as Redis)
        if not _is_length(line) or int(line) > MAX_COMMAND_ARGUMENTS:
            raise RespProtocolError("invalid multibulk length")
        count = int(line)
        if count == 0:
            return after
        size = after - offset
        least = size + count * SMALLEST_ARGUMENT_BYTES
        if least > self._limit:
            raise OversizeCommandError(least, self._limit)
        self._args, self._wanted, self._size, self._bulk = [], count, size, -1
        return after

    def _read_arguments(self, buffer: bytearray, offset: int, commands: list[list[bytes]]) -> int:
        """Read as many of the current command's arguments as have arrived."""
        args = self._args
        assert args is not None
        end = len(buffer)
        while self._wanted:
            if self._bulk < 0:
                if offset >= end:
                    return offset
                if buffer[offset] != 0x24:  # "$"
                    raise RespProtocolError(f"expected '$', got {chr(buffer[offset])!r}")
                try:
                    line, after = _line(buffer, offset + 1, "bulk length")
                except _Incomplete:
                    return offset
                if not _is_length(line) or int(line) > MAX_BULK_BYTES:
                    raise RespProtocolError("invalid bulk length")
                self._bulk = int(line)
                # What is still to come: this argument, its CRLF, and the least the others take.
                self._size += after - offset + self._bulk + 2
                least = self._size + (self._wanted - 1) * SMALLEST_ARGUMENT_BYTES
                if least > self._limit:
                    raise OversizeCommandError(least, self._limit)
                offset = after
            stop = offset + self._bulk
            if stop + 2 > end:
                return offset
            if buffer[stop : stop + 2] != CRLF:
                raise RespProtocolError(f"bulk string of {self._bulk} bytes is not followed by CRLF")
            args.append(bytes(buffer[offset:stop]))
            offset = stop + 2
            self._bulk = -1
            self._wanted -= 1
        commands.append(args)
        self._args = None
        return offset

    def _read_inline(self, buffer: bytearray, offset: int, commands: list[list[bytes]]) -> int:
        """Read one inline command line (ended by LF, CR before it optional), as Redis does."""
        limit = min(MAX_LINE_BYTES, self._limit)
        end = buffer.find(b"\n", offset, offset + limit + 1)
        if end < 0:
            if len(buffer) - offset > limit:
                raise RespProtocolError("too big inline request")
            return offset
        line = bytes(buffer[offset:end])
        args = split_inline(line[:-1] if line.endswith(b"\r") else line)
        if args:
            commands.append(args)
        return end + 1


def _is_length(line: bytes) -> bool:
    """A non-negative decimal without sign, spaces or leading zeros, as Redis's string2ll demands."""
    return line.isdigit() and (len(line) == 1 or line[0] != 0x30) and len(line) <= 18


# --- inline commands ------------------------------------------------------------------------------

_ESCAPES = {ord("n"): b"\n", ord("r"): b"\r", ord("t"): b"\t", ord("b"): b"\b", ord("a"): b"\a"}
_HEX = b"0123456789abcdefABCDEF"
_SPACE = b" \t\n\r\v\f\0"


def split_inline(line: bytes) -> list[bytes]:
    """The words of an inline command, split as Redis's ``sdssplitargs`` splits them.

    Words are separated by spaces; ``"..."`` holds spaces and the escapes ``\\n \\r \\t \\b \\a \\\\
    \\"`` and ``\\xHH``; ``'...'`` holds anything but ``\\'``. A closing quote must end its word.
    Raises ``RespProtocolError("unbalanced quotes in request")`` otherwise.
    """
    words: list[bytes] = []
    i, end = 0, len(line)
    while True:
        while i < end and line[i] in _SPACE:
            i += 1
        if i == end:
            return words
        word = bytearray()
        quote = 0  # the quote character the word is inside, or 0
        while True:
            if i == end:
                if quote:
                    raise RespProtocolError("unbalanced quotes in request")
                break
            char = line[i]
            if quote == 0x22:  # inside "..."
                if char == 0x5C and i + 3 < end + 0 and line[i + 1] == 0x78 and _is_hex(line[i + 2 : i + 4]):
                    word.append(int(line[i + 2 : i + 4], 16))
                    i += 4
                    continue
                if char == 0x5C and i + 1 < end:
                    word += _ESCAPES.get(line[i + 1], line[i + 1 : i + 2])
                    i += 2
                    continue
                if char == 0x22:
                    if i + 1 < end and line[i + 1] not in _SPACE:
                        raise RespProtocolError("unbalanced quotes in request")
                    i += 1
                    break
                word.append(char)
            elif quote == 0x27:  # inside '...'
                if char == 0x5C and i + 1 < end and line[i + 1] == 0x27:
                    word.append(0x27)
                    i += 2
                    continue
                if char == 0x27:
                    if i + 1 < end and line[i + 1] not in _SPACE:
                        raise RespProtocolError("unbalanced quotes in request")
                    i += 1
                    break
                word.append(char)
            elif char in _SPACE:
                break
            elif char in (0x22, 0x27):
                quote = char
            else:
                word.append(char)
            i += 1
        words.append(bytes(word))


def _is_hex(pair: bytes) -> bool:
    return len(pair) == 2 and pair[0] in _HEX and pair[1] in _HEX
