"""Node addresses as text: ``host:port`` parsed and formatted, IPv6 hosts in brackets. Pure.

Every place that turns a host and a port into text, or text into a host and a port, goes through
these two functions, so an IPv6 address (``[::1]:5000``) survives the round trip everywhere: in
seeds, in the addresses a client learns from HELLO and TOPOLOGY, in ``KV_PEERS`` and in messages.
"""

from __future__ import annotations

DEFAULT_PORT = 5000
"""The protocol port when an address names only a host: a node's default ``KV_PORT``."""


def parse_address(text: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """``"host:port"``, ``"[v6]:port"``, or a bare host (then ``default_port``) as ``(host, port)``.

    A bare IPv6 host without brackets (``"::1"``) is a host: its colons cannot be told from a port's.
    Raises ``ValueError`` naming the address and what is wrong with it.
    """
    stripped = text.strip()
    if not stripped:
        raise ValueError("empty node address")
    if stripped.startswith("["):
        host, _, rest = stripped[1:].partition("]")
        port_text = rest.removeprefix(":")
    elif stripped.count(":") == 1:
        host, port_text = stripped.split(":")
    else:
        host, port_text = stripped, ""
    if not host:
        raise ValueError(f"node address {text!r} has no host")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"node address {text!r} has an invalid port {port_text!r}")
    return host, int(port_text)


def format_address(host: str, port: int) -> str:
    """``host:port``, with an IPv6 host in brackets (``[::1]:5000``) so that it parses back."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
