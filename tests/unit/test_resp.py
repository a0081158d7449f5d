"""The RESP2 codec (client/resp.py), both directions: command and reply encoding, the incremental
reply parser (the benchmark's) and command parser (the node's Redis port); exact bytes, round trips,
partial input in any chunking, and malformed or oversize input."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from client.resp import (
    MAX_COMMAND_ARGUMENTS,
    MAX_DEPTH,
    MAX_LINE_BYTES,
    CommandParser,
    OversizeCommandError,
    ReplyParser,
    RespError,
    RespProtocolError,
    encode_bulk,
    encode_command,
    encode_error,
    encode_integer,
    encode_reply,
    split_inline,
)

# --- encoding --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("PING",), b"*1\r\n$4\r\nPING\r\n"),
        (("GET", b"key"), b"*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n"),
        ((b"SET", b"k", b"v"), b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n"),
        (("SET", "k", b""), b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n"),
        (("EXPIRE", "k", 60), b"*3\r\n$6\r\nEXPIRE\r\n$1\r\nk\r\n$2\r\n60\r\n"),
        (("INCRBY", "k", -5), b"*3\r\n$6\r\nINCRBY\r\n$1\r\nk\r\n$2\r\n-5\r\n"),
        (("SET", "caf\u00e9", b"a\r\nb"), b"*3\r\n$3\r\nSET\r\n$5\r\ncaf\xc3\xa9\r\n$4\r\na\r\nb\r\n"),
    ],
)
def test_commands_encode_as_arrays_of_bulk_strings(args: tuple, expected: bytes) -> None:
    assert encode_command(*args) == expected


def test_a_command_needs_a_name() -> None:
    with pytest.raises(ValueError):
        encode_command()


@pytest.mark.parametrize("bad", [1.5, True, None, ["x"]])
def test_arguments_other_than_bytes_str_or_int_are_refused(bad: object) -> None:
    with pytest.raises(TypeError):
        encode_command("SET", "k", bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("OK", b"+OK\r\n"),
        (RespError("ERR unknown command"), b"-ERR unknown command\r\n"),
        (42, b":42\r\n"),
        (-1, b":-1\r\n"),
        (b"hello", b"$5\r\nhello\r\n"),
        (b"", b"$0\r\n\r\n"),
        (None, b"$-1\r\n"),
        ([], b"*0\r\n"),
        ([b"a", 1, None, ["x"]], b"*4\r\n$1\r\na\r\n:1\r\n$-1\r\n*1\r\n+x\r\n"),
    ],
)
def test_replies_encode_as_redis_sends_them(reply: object, expected: bytes) -> None:
    assert encode_reply(reply) == expected  # type: ignore[arg-type]


# --- parsing ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"+PONG\r\n", "PONG"),
        (b"-WRONGTYPE Operation against a key\r\n", RespError("WRONGTYPE Operation against a key")),
        (b":0\r\n", 0),
        (b":-123\r\n", -123),
        (b"$3\r\nfoo\r\n", b"foo"),
        (b"$0\r\n\r\n", b""),
        (b"$4\r\na\r\nb\r\n", b"a\r\nb"),
        (b"$-1\r\n", None),
        (b"*-1\r\n", None),
        (b"*0\r\n", []),
        (b"*2\r\n$1\r\na\r\n*1\r\n:7\r\n", [b"a", [7]]),
    ],
)
def test_each_reply_type_parses(data: bytes, expected: object) -> None:
    parser = ReplyParser()
    assert parser.feed(data) == [expected]
    assert parser.buffered == 0


def test_an_error_reply_kind_is_its_first_word() -> None:
    assert RespError("WRONGTYPE Operation against a key").kind == "WRONGTYPE"
    assert RespError("OOM").kind == "OOM"
    assert RespError("").kind == "ERR"


def test_pipelined_replies_come_out_in_order() -> None:
    parser = ReplyParser()
    assert parser.feed(b"+OK\r\n$1\r\nv\r\n$-1\r\n:1\r\n") == ["OK", b"v", None, 1]


def test_a_partial_reply_waits_for_the_rest() -> None:
    parser = ReplyParser()
    assert parser.feed(b"+OK\r\n$5\r\nhel") == ["OK"]
    assert parser.buffered == len(b"$5\r\nhel")
    assert parser.feed(b"lo") == []
    assert parser.feed(b"\r") == []
    assert parser.feed(b"\n*2\r\n:1\r\n") == [b"hello"]
    assert parser.feed(b":2\r\n") == [[1, 2]]
    assert parser.buffered == 0


reply_values = st.recursive(
    st.none()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.binary(max_size=40)
    | st.text(alphabet=st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=20)
    | st.builds(
        RespError,
        st.text(alphabet=st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=20),
    ),
    lambda children: st.lists(children, max_size=5),
    max_leaves=20,
)


@given(st.lists(reply_values, min_size=1, max_size=5))
def test_every_reply_round_trips_whole(replies: list) -> None:
    data = b"".join(encode_reply(reply) for reply in replies)
    assert ReplyParser().feed(data) == replies


@given(st.lists(reply_values, min_size=1, max_size=4))
def test_every_reply_round_trips_fed_byte_by_byte(replies: list) -> None:
    data = b"".join(encode_reply(reply) for reply in replies)
    parser = ReplyParser()
    parsed = []
    for i in range(len(data)):
        parsed += parser.feed(data[i : i + 1])
    assert parsed == replies
    assert parser.buffered == 0


@given(st.lists(reply_values, min_size=1, max_size=4), st.lists(st.integers(min_value=1, max_value=9), max_size=40))
def test_every_reply_round_trips_in_any_chunking(replies: list, sizes: list[int]) -> None:
    data = b"".join(encode_reply(reply) for reply in replies)
    parser = ReplyParser()
    parsed, offset = [], 0
    for size in sizes:
        parsed += parser.feed(data[offset : offset + size])
        offset += size
    parsed += parser.feed(data[offset:])
    assert parsed == replies


# --- malformed input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"?what\r\n",  # unknown type byte
        b"_\r\n",  # RESP3 null: not RESP2
        b":12a\r\n",
        b": 12\r\n",
        b":1_000\r\n",  # Python's int() would accept it; RESP does not
        b":\r\n",
        b"$abc\r\n",
        b"$-2\r\n",
        b"$3\r\nabcde\r\n",  # data longer than announced
        b"*-2\r\n",
        b"*x\r\n",
        b"+OK\n\r\n",  # a bare LF inside a line
        b"$99999999999\r\n",  # over the bulk limit
        b"*1\r\n" * (MAX_DEPTH + 1) + b":1\r\n",
    ],
)
def test_malformed_input_raises_the_modules_error(data: bytes) -> None:
    with pytest.raises(RespProtocolError):
        ReplyParser().feed(data)


@pytest.mark.parametrize("data", [b"?what\r\n", b"$3\r\nabcde\r\n", b":1_0\r\n"])
def test_malformed_input_raises_when_fed_byte_by_byte_too(data: bytes) -> None:
    parser = ReplyParser()
    with pytest.raises(RespProtocolError):
        for i in range(len(data)):
            parser.feed(data[i : i + 1])


def test_a_line_that_never_ends_is_refused_rather_than_buffered_forever() -> None:
    parser = ReplyParser()
    parser.feed(b"+")
    with pytest.raises(RespProtocolError):
        for _ in range(MAX_LINE_BYTES // 1024 + 2):
            parser.feed(b"x" * 1024)


def test_replies_a_simple_string_cannot_hold_are_not_encoded() -> None:
    with pytest.raises(ValueError):
        encode_reply("two\r\nlines")
    with pytest.raises(TypeError):
        encode_reply(True)  # type: ignore[arg-type]


def test_server_reply_helpers_match_the_generic_encoder() -> None:
    assert encode_bulk(b"a\r\nb") == encode_reply(b"a\r\nb") == b"$4\r\na\r\nb\r\n"
    assert encode_bulk(None) == encode_reply(None) == b"$-1\r\n"
    assert encode_integer(-7) == encode_reply(-7) == b":-7\r\n"


def test_an_error_reply_cannot_be_ended_early_by_text_it_echoes() -> None:
    assert encode_error("ERR unknown command 'a\r\n+OK'") == b"-ERR unknown command 'a  +OK'\r\n"


# --- command parsing (the server side) -------------------------------------------------------------

LIMIT = 1 << 20


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"*1\r\n$4\r\nPING\r\n", [[b"PING"]]),
        (b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n", [[b"GET", b"k"]]),
        (b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n", [[b"SET", b"k", b""]]),
        (b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$4\r\na\r\nb\r\n", [[b"SET", b"k", b"a\r\nb"]]),  # binary-safe
        (b"*0\r\n*-1\r\n*1\r\n$1\r\nx\r\n", [[b"x"]]),  # empty and null arrays are skipped
        (b"PING\r\n", [[b"PING"]]),
        (b"GET k\n", [[b"GET", b"k"]]),  # inline: LF alone ends the line too
        (b"\r\n\n  \r\nPING\r\n", [[b"PING"]]),  # blank lines are skipped
        (b"SET \"a b\" 'c d'\r\n", [[b"SET", b"a b", b"c d"]]),
        (b"PING\r\n*1\r\n$4\r\nPING\r\nECHO x\r\n", [[b"PING"], [b"PING"], [b"ECHO", b"x"]]),
    ],
)
def test_each_form_of_command_parses(data: bytes, expected: list[list[bytes]]) -> None:
    parser = CommandParser(LIMIT)
    assert parser.feed(data) == expected
    assert parser.buffered == 0


commands = st.lists(st.lists(st.binary(max_size=30), min_size=1, max_size=6), min_size=1, max_size=5)


@given(commands, st.lists(st.integers(min_value=1, max_value=9), max_size=60))
def test_every_command_round_trips_in_any_chunking(sent: list[list[bytes]], sizes: list[int]) -> None:
    data = b"".join(encode_command(*args) for args in sent)
    parser = CommandParser(LIMIT)
    parsed, offset = [], 0
    for size in sizes:
        parsed += parser.feed(data[offset : offset + size])
        offset += size
    parsed += parser.feed(data[offset:])
    assert parsed == sent
    assert parser.buffered == 0


def test_a_partial_command_waits_for_the_rest_and_keeps_what_it_read() -> None:
    parser = CommandParser(LIMIT)
    assert parser.feed(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhel") == []
    assert parser.buffered == len(b"hel")  # the arguments already read are not buffered again
    assert parser.feed(b"lo\r") == []
    assert parser.feed(b"\nGET") == [[b"SET", b"k", b"hello"]]
    assert parser.feed(b" k\r\n") == [[b"GET", b"k"]]


def quote_inline(word: bytes) -> bytes:
    """``word`` in double quotes with every byte outside printable ASCII (and quote, backslash) as \\xHH."""
    escaped = b"".join(
        bytes([byte]) if 0x20 <= byte < 0x7F and byte not in b'"\\' else b"\\x%02x" % byte for byte in word
    )
    return b'"' + escaped + b'"'


@given(st.lists(st.binary(max_size=20), min_size=1, max_size=6))
def test_inline_words_in_double_quotes_round_trip(words: list[bytes]) -> None:
    assert split_inline(b" ".join(quote_inline(word) for word in words)) == words


@pytest.mark.parametrize(
    ("line", "words"),
    [
        (b"  set  a   b ", [b"set", b"a", b"b"]),
        (b'"\\n\\r\\t\\b\\a\\\\\\"\\x41"', [b'\n\r\t\b\a\\"A']),
        (b"'it\\'s' 'a\\nb'", [b"it's", b"a\\nb"]),  # single quotes keep backslashes but \\'
        (b'a"b c"d', None),  # a closing quote must end its word
        (b'"open', None),
        (b"'open", None),
        (b'x"y z" w', [b"xy z", b"w"]),  # a quote may start inside a word
        (b'ab"c d"', [b"abc d"]),
        (b"", []),
    ],
)
def test_inline_lines_split_as_redis_splits_them(line: bytes, words: list[bytes] | None) -> None:
    if words is None:
        with pytest.raises(RespProtocolError, match="unbalanced quotes"):
            split_inline(line)
    else:
        assert split_inline(line) == words


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"*x\r\n", "invalid multibulk length"),
        (b"*01\r\n", "invalid multibulk length"),
        (b"*+1\r\n", "invalid multibulk length"),
        (b"* 1\r\n", "invalid multibulk length"),
        (b"*%d\r\n" % (MAX_COMMAND_ARGUMENTS + 1), "invalid multibulk length"),
        (b"*1\r\n:1\r\n", "expected '\\$', got ':'"),
        (b"*1\r\n$-1\r\n", "invalid bulk length"),
        (b"*1\r\n$1_0\r\n", "invalid bulk length"),
        (b"*1\r\n$\r\n", "invalid bulk length"),
        (b"*1\r\n$3\r\nabcde\r\n", "not followed by CRLF"),
        (b'GET "k\r\n', "unbalanced quotes"),
    ],
)
def test_malformed_commands_raise_with_redis_wording(data: bytes, message: str) -> None:
    with pytest.raises(RespProtocolError, match=message):
        CommandParser(LIMIT).feed(data)


def test_commands_before_malformed_bytes_are_kept_and_the_parser_then_refuses_everything() -> None:
    parser = CommandParser(LIMIT)
    with pytest.raises(RespProtocolError) as caught:
        parser.feed(b"PING\r\n*1\r\n$4\r\nECHO\r\n*1\r\n?")
    assert caught.value.commands == [[b"PING"], [b"ECHO"]]
    with pytest.raises(RespProtocolError):
        parser.feed(b"PING\r\n")


def test_a_command_over_the_limit_is_refused_at_its_header_before_its_bytes_arrive() -> None:
    parser = CommandParser(1000)
    assert parser.feed(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n") == []
    with pytest.raises(OversizeCommandError) as caught:
        parser.feed(b"$2000\r\n")
    assert caught.value.limit == 1000 and caught.value.length > 2000
    assert parser.buffered == 0


def test_a_command_announcing_more_arguments_than_its_limit_holds_is_refused_at_once() -> None:
    with pytest.raises(OversizeCommandError):
        CommandParser(1000).feed(b"*500\r\n")


def test_a_command_just_within_the_limit_parses() -> None:
    data = encode_command("SET", "k", b"v" * 100)
    assert CommandParser(len(data)).feed(data) == [[b"SET", b"k", b"v" * 100]]
    with pytest.raises(OversizeCommandError):
        CommandParser(len(data) - 1).feed(data)


@pytest.mark.parametrize("limit", [LIMIT, 100])
def test_an_inline_line_that_never_ends_is_refused_rather_than_buffered_forever(limit: int) -> None:
    parser = CommandParser(limit)
    with pytest.raises(RespProtocolError, match="too big inline request"):
        for _ in range(MAX_LINE_BYTES // 1024 + 2):
            parser.feed(b"x" * 1024)


@given(st.binary(max_size=200))
def test_any_bytes_either_parse_or_raise_the_modules_error(data: bytes) -> None:
    parser = CommandParser(LIMIT)
    try:
        for args in parser.feed(data):
            assert args and all(isinstance(arg, bytes) for arg in args)
    except RespProtocolError:
        pass
