"""Addresses as text: parsing and formatting, IPv6 included, and the round trip between them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from client.address import DEFAULT_PORT, format_address, parse_address
from client.protocol import NodeAddress


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("node1:5001", ("node1", 5001)),
        ("  127.0.0.1:7000 ", ("127.0.0.1", 7000)),
        ("node1", ("node1", DEFAULT_PORT)),
        ("[::1]:5003", ("::1", 5003)),
        ("[::1]", ("::1", DEFAULT_PORT)),
        ("[fe80::1%eth0]:6", ("fe80::1%eth0", 6)),
        ("::1", ("::1", DEFAULT_PORT)),  # unbracketed IPv6: all host, as its colons cannot be a port's
    ],
)
def test_addresses_parse_to_host_and_port(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


def test_a_bare_host_takes_the_default_port_given() -> None:
    assert parse_address("redis", default_port=6379) == ("redis", 6379)


@pytest.mark.parametrize(
    ("text", "reason"),
    [("", "empty"), ("  ", "empty"), (":5000", "no host"), ("[]:5000", "no host"), ("h:x", "invalid port"),
     ("h:0", "invalid port"), ("h:65536", "invalid port"), ("[::1]:-1", "invalid port")],
)  # fmt: skip
def test_bad_addresses_are_refused_with_the_reason(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_address(text)


def test_an_ipv6_host_is_formatted_in_brackets() -> None:
    assert format_address("::1", 5000) == "[::1]:5000"
    assert format_address("node1", 5000) == "node1:5000"
    assert NodeAddress("n1", "::1", 5001).address == "[::1]:5001"


hosts = st.one_of(
    st.from_regex(r"[a-z0-9]([a-z0-9.-]{0,20}[a-z0-9])?", fullmatch=True),
    st.ip_addresses().map(str),
)


@given(hosts, st.integers(min_value=1, max_value=65535))
def test_a_formatted_address_parses_back(host: str, port: int) -> None:
    assert parse_address(format_address(host, port)) == (host, port)
