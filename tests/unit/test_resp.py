"""RESP2 encoding and the incremental reply parser: exact bytes, round trips, partial input, garbage."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.resp import (
    MAX_DEPTH,
    MAX_LINE_BYTES,
    ReplyParser,
    RespError,
    RespProtocolError,
    encode_command,
    encode_reply,
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
