r"""The ``kv`` command line's quoting: how a line of bytes splits into arguments, and how a value is
written so that it reads back as the same bytes. Pure: bytes in, bytes out.

The rules are redis-cli's: ``sdssplitargs`` (redis ``src/sds.c``) for input, ``sdscatrepr`` for output.
They work on bytes, so any byte can be typed and any byte shown:

- Arguments are separated by blanks: space, tab, CR, LF, VT, FF.
- Outside quotes every byte stands for itself, a backslash included.
- ``"..."`` takes the escapes ``\n \r \t \b \a \\ \"`` and ``\xHH`` (two hex digits, either case).
  A backslash before any other character is dropped, as redis-cli drops it: ``"\q"`` is ``q``.
- ``'...'`` takes one escape, ``\'``; every other byte stands for itself.
- A quote may open in the middle of a word (``ab"c d"`` is ``abc d``), but a closing quote must be
  followed by a blank or the end of the line. A line that breaks this, or leaves a quote open, is
  refused whole (``QuotingError``), never half-read.

Two differences from redis-cli, both because input here is bytes, not a C string: a NUL byte is an
ordinary byte, and VT and FF separate arguments wherever space does (redis-cli skips them only
before an argument).

``quote`` writes any bytes as one double-quoted argument that ``split_args`` reads back unchanged.
Unlike ``sdscatrepr``, which escapes every non-ASCII byte, it keeps printable UTF-8 text as it is
(``"naïve"``, not ``"na\xc3\xafve"``), and escapes as ``\xHH`` only bytes that are not part of
printable text: invalid UTF-8, control characters, and invisible or format characters.
"""

from __future__ import annotations

BLANKS = b" \t\r\n\v\f"
"""What separates arguments (``bytes.isspace``'s set)."""
QUOTES = b"\"'"

_DOUBLE_QUOTED_ESCAPES = {
    ord("n"): b"\n",
    ord("r"): b"\r",
    ord("t"): b"\t",
    ord("b"): b"\b",
    ord("a"): b"\a",
}
_REPR_ESCAPES = {"\\": b"\\\\", '"': b'\\"', "\n": b"\\n", "\r": b"\\r", "\t": b"\\t", "\a": b"\\a", "\b": b"\\b"}
_HEX_DIGITS = b"0123456789abcdefABCDEF"
_BACKSLASH = ord("\\")
_DOUBLE_QUOTE = ord('"')
_SINGLE_QUOTE = ord("'")
_SURROGATE_ESCAPES = range(0xDC80, 0xDD00)
"""Where the ``surrogateescape`` error handler puts each byte that is not valid UTF-8."""


class QuotingError(ValueError):
    """A line whose quotes do not pair up: a quote left open, or a closing quote with no blank after it."""


def next_arg(line: bytes, start: int = 0) -> tuple[bytes, int] | None:
    """The first argument at or after ``start``, skipping blanks, and the index just after it;
    ``None`` when only blanks are left. Raises ``QuotingError`` for unbalanced quotes."""
    i, end = start, len(line)
    while i < end and line[i] in BLANKS:
        i += 1
    if i == end:
        return None
    arg = bytearray()
    while i < end and line[i] not in BLANKS:
        byte = line[i]
        if byte == _DOUBLE_QUOTE:
            i = _double_quoted(line, i + 1, arg)
        elif byte == _SINGLE_QUOTE:
            i = _single_quoted(line, i + 1, arg)
        else:
            arg.append(byte)
            i += 1
    return bytes(arg), i


def _double_quoted(line: bytes, i: int, arg: bytearray) -> int:
    """Reads a ``"..."`` part from just after its opening quote into ``arg``; returns the index after
    the closing quote."""
    end = len(line)
    while i < end:
        byte = line[i]
        if byte == _DOUBLE_QUOTE:
            return _closed(line, i + 1)
        if byte == _BACKSLASH and i + 1 < end:
            escaped = line[i + 1]
            if escaped == ord("x") and i + 3 < end and _is_hex(line[i + 2 : i + 4]):
                arg.append(int(line[i + 2 : i + 4], 16))
                i += 4
                continue
            arg += _DOUBLE_QUOTED_ESCAPES.get(escaped, bytes((escaped,)))
            i += 2
            continue
        arg.append(byte)
        i += 1
    raise QuotingError("unbalanced quotes")


def _single_quoted(line: bytes, i: int, arg: bytearray) -> int:
    """Reads a ``'...'`` part from just after its opening quote into ``arg``; returns the index after
    the closing quote."""
    end = len(line)
    while i < end:
        byte = line[i]
        if byte == _BACKSLASH and i + 1 < end and line[i + 1] == _SINGLE_QUOTE:
            arg.append(_SINGLE_QUOTE)
            i += 2
            continue
        if byte == _SINGLE_QUOTE:
            return _closed(line, i + 1)
        arg.append(byte)
        i += 1
    raise QuotingError("unbalanced quotes")


def _closed(line: bytes, after: int) -> int:
    if after < len(line) and line[after] not in BLANKS:
        raise QuotingError("unbalanced quotes: a closing quote must be followed by a blank or the end of the line")
    return after


def _is_hex(pair: bytes) -> bool:
    return len(pair) == 2 and all(byte in _HEX_DIGITS for byte in pair)


def split_args(line: bytes) -> list[bytes]:
    """Every argument on ``line``: ``b'GET "a b"'`` is ``[b"GET", b"a b"]``. Raises ``QuotingError``."""
    args: list[bytes] = []
    position = 0
    while (found := next_arg(line, position)) is not None:
        arg, position = found
        args.append(arg)
    return args


def quote(data: bytes) -> bytes:
    r"""``data`` as one double-quoted argument that ``split_args`` reads back as ``data``:
    ``b'a "b"\n\xff'`` is ``b'"a \\"b\\"\\n\\xff"'``, shown as ``"a \"b\"\n\xff"``."""
    text = data.decode("utf-8", errors="surrogateescape")
    if text.isprintable() and "\\" not in text and '"' not in text:
        return b'"' + data + b'"'
    parts = [b'"']
    for char in text:
        if char in _REPR_ESCAPES:
            parts.append(_REPR_ESCAPES[char])
        elif ord(char) in _SURROGATE_ESCAPES:
            parts.append(b"\\x%02x" % (ord(char) - 0xDC00))
        elif char.isprintable():
            parts.append(char.encode("utf-8"))
        else:
            parts.extend(b"\\x%02x" % byte for byte in char.encode("utf-8"))
    parts.append(b'"')
    return b"".join(parts)


def is_bare(data: bytes) -> bool:
    """Whether ``data`` reads the same unquoted, and cannot be mistaken for a quoted form: printable
    UTF-8 text, not empty, no blank at either end, and no quote at the start."""
    if not data or data[0] in QUOTES or data[0] in BLANKS or data[-1] in BLANKS:
        return False
    try:
        return data.decode("utf-8").isprintable()
    except UnicodeDecodeError:
        return False
