r"""The CLI's quoting (``client.quoting``): redis-cli's argument splitting over bytes, and ``quote``,
which writes any bytes so that they read back the same."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from client.quoting import QuotingError, is_bare, quote, split_args

# --- splitting ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "args"),
    [
        (b'PUT "a b" c', [b"PUT", b"a b", b"c"]),
        (b'GET "a b"', [b"GET", b"a b"]),
        (b"  GET\t k  \r\n", [b"GET", b"k"]),
        (b'""', [b""]),
        (b"''", [b""]),
        (rb'"a\nb\r\t\b\a\\\"c"', [b'a\nb\r\t\b\a\\"c']),
        (rb'"\xff\xFE\x00\x41"', [b"\xff\xfe\x00A"]),
        (rb'"\xzz\q"', [b"xzzq"]),  # as redis-cli: a backslash before anything else is dropped
        (rb"'it\'s \"raw\" \n'", [b'it\'s \\"raw\\" \\n']),  # single quotes: only \' is an escape
        (rb"a\nb", [b"a\\nb"]),  # outside quotes a backslash is an ordinary byte
        (b'ab"c d" e', [b"abc d", b"e"]),  # a quote may open mid-word
        (b"\xff\xfe \x00", [b"\xff\xfe", b"\x00"]),  # bytes that are not UTF-8, and NUL, are bytes
        (b"", []),
        (b" \t\r\n\v\f", []),
    ],
)
def test_split_args_as_redis_cli_does(line: bytes, args: list[bytes]) -> None:
    assert split_args(line) == args


@pytest.mark.parametrize(
    "line",
    [
        b'GET "abc',  # never closed
        b"GET 'abc",
        b'GET "a"b',  # a closing quote must be followed by a blank or the end
        b"GET 'a'b",
        b'GET "abc\\"',  # the last quote is escaped, so the quote stays open
        b'GET "abc\\',
    ],
)
def test_unbalanced_quotes_are_refused(line: bytes) -> None:
    with pytest.raises(QuotingError, match=r"^unbalanced quotes"):
        split_args(line)


# --- quoting -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "quoted"),
    [
        (b"bar", b'"bar"'),
        (b"a\nb", rb'"a\nb"'),
        (b"\xff\xfe", rb'"\xff\xfe"'),
        (b"", b'""'),
        (b' say "hi" \\ ', rb'" say \"hi\" \\ "'),
        (b"\x00\x1b[31m\x7f", rb'"\x00\x1b[31m\x7f"'),
        ("naïve ☕".encode(), '"naïve ☕"'.encode()),  # printable UTF-8 text stays readable
        ("\u202e".encode(), rb'"\xe2\x80\xae"'),  # a format character (right-to-left override) does not
        (b"\r\t\a\b", rb'"\r\t\a\b"'),
    ],
)
def test_quote_escapes_what_is_not_printable_text(data: bytes, quoted: bytes) -> None:
    assert quote(data) == quoted
    assert split_args(quote(data)) == [data]


@given(st.binary(max_size=200) | st.text(max_size=50).map(str.encode))
def test_any_bytes_quoted_read_back_as_themselves(data: bytes) -> None:
    quoted = quote(data)
    assert split_args(quoted) == [data]
    assert split_args(b"GET " + quoted + b" " + quoted) == [b"GET", data, data]
    text = quoted.decode("utf-8")  # always valid UTF-8, and one printable line
    assert text.isprintable()


@given(st.binary(max_size=200) | st.text(max_size=50).map(str.encode))
def test_a_bare_value_is_printable_text_that_reads_back_as_written(data: bytes) -> None:
    if is_bare(data):
        text = data.decode("utf-8")
        assert text.isprintable() and text == text.strip(" ") and text
        assert data[:1] not in (b'"', b"'")


@pytest.mark.parametrize(
    ("data", "bare"),
    [
        (b"hello world", True),
        ("naïve ☕".encode(), True),
        (b"C:\\dir", True),
        (b"", False),
        (b" padded", False),
        (b"padded ", False),
        (b'"quoted"', False),
        (b"'quoted'", False),
        (b"a\tb", False),
        (b"\xff", False),
    ],
)
def test_is_bare(data: bytes, bare: bool) -> None:
    assert is_bare(data) is bare
