"""Hostile input over raw sockets: garbage ends only its own connection, oversize requests get an error
reply and the connection goes on, and the node keeps serving everyone else throughout."""

from __future__ import annotations

import contextlib
import random
import struct
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

from client import protocol
from client.protocol import Op, Status

if TYPE_CHECKING:
    from containers import Cluster

    from client.client import Client

TARGET = "node1"


def garbage(seed: int, size: int) -> bytes:
    """``size`` random bytes, except that the first frame's code is never HELLO (which would open a session)."""
    data = bytearray(random.Random(seed).randbytes(size))
    if data[protocol.CODE_OFFSET] == Op.HELLO:
        data[protocol.CODE_OFFSET] ^= 0xFF
    return bytes(data)


def header(length: int, request_id: int, code: int) -> bytes:
    return struct.pack(">IIB", length, request_id, code)


@pytest.fixture
def limits(cluster: Cluster) -> protocol.HelloReply:
    with cluster.raw(TARGET) as raw:
        return raw.hello()


@pytest.fixture
def node_serves(cluster: Cluster) -> Iterator[None]:
    """Checks after the test that the target node still answers PING and GET, and /healthz is 200."""
    yield
    with cluster.client() as kv:
        assert_node_serves(cluster, kv)


def assert_node_serves(cluster: Cluster, kv: Client) -> None:
    address = kv.node_address(TARGET)
    assert kv.call_node(address, protocol.Ping()).code == Status.OK
    key = f"alive-{uuid.uuid4().hex[:8]}"
    kv.put(key, b"still here")
    frame = kv.call_node(address, protocol.Get(key.encode()))  # coordinated by the target node itself
    assert frame.code == Status.OK and protocol.decode_value(frame.body)[1] == b"still here"
    assert kv.get(key) == b"still here"
    assert cluster.healthz(TARGET) == 200


def error_frames(data: bytes) -> list[tuple[int, Status, str]]:
    """``(request id, status, message)`` of each frame the node sent before closing."""
    frames = protocol.FrameDecoder().feed(data)
    return [
        (frame.request_id, Status(frame.code), protocol.decode_error(Status(frame.code), frame.body).message)
        for frame in frames
    ]


# --- garbage closes the connection --------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_random_bytes_close_the_connection(
    cluster: Cluster, limits: protocol.HelloReply, node_serves: None, seed: int
) -> None:
    # More than one maximum frame: whatever length the random header announces, the node has either
    # rejected it or received the whole first frame, which is not HELLO, so it must hang up.
    payload = garbage(seed, limits.max_frame_bytes + 4096)
    with cluster.raw(TARGET) as raw:
        # The node may hang up while the rest is still being sent: that is the point.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            raw.send(payload)
        raw.wait_closed_by_peer()


@pytest.mark.parametrize("after_hello", [False, True], ids=["before-hello", "after-hello"])
def test_two_gib_frame_header_gets_frame_too_large_and_close(
    cluster: Cluster, node_serves: None, after_hello: bool
) -> None:
    with cluster.raw(TARGET) as raw:
        if after_hello:
            raw.hello()
        raw.send(header(2**31, 77, Op.PUT))  # announces 2 GiB and sends nothing of it
        sent_back = raw.wait_closed_by_peer()
    replies = error_frames(sent_back)
    assert len(replies) == 1, replies
    request_id, status, message = replies[0]
    assert (request_id, status) == (77, Status.FRAME_TOO_LARGE), replies
    assert "exceeds the limit" in message


@pytest.mark.parametrize(
    "first",
    [
        protocol.Ping(),
        protocol.Get(b"some-key"),
        protocol.Put(b"some-key", b"value"),
        protocol.Topology(),
        protocol.ReplicaGet(b"some-key"),
    ],
    ids=lambda request: type(request).__name__,
)
def test_non_hello_first_frame_gets_bad_request_and_close(
    cluster: Cluster, node_serves: None, first: protocol.Request
) -> None:
    with cluster.raw(TARGET) as raw:
        raw.send(protocol.encode_request(5, first))
        sent_back = raw.wait_closed_by_peer()
    assert [(request_id, status) for request_id, status, _ in error_frames(sent_back)] == [(5, Status.BAD_REQUEST)]
    with cluster.client() as kv:
        assert kv.get("some-key") is None, "a PUT sent before HELLO was executed"


def test_frame_shorter_than_its_header_closes_a_negotiated_connection(cluster: Cluster, node_serves: None) -> None:
    with cluster.raw(TARGET) as raw:
        raw.hello()
        raw.send(protocol.encode_request(2, protocol.Ping()))
        assert raw.read_frame().code == Status.OK
        raw.send(header(2, 3, Op.PING))  # a length of 2 cannot even hold the request id and code
        raw.wait_closed_by_peer()


def test_garbage_connections_are_released(cluster: Cluster, node_serves: None, wait_until: Callable[..., Any]) -> None:
    baseline = cluster.sample(TARGET, "kv_connections")
    assert baseline is not None, "no kv_connections gauge"
    for seed in range(20):
        with cluster.raw(TARGET) as raw:
            raw.send(header(2**31 + seed, seed, Op.GET) if seed % 2 else protocol.encode_request(seed, protocol.Ping()))
            raw.wait_closed_by_peer()
    wait_until(
        lambda: cluster.sample(TARGET, "kv_connections") <= baseline,
        10,
        message=f"kv_connections on {TARGET} to return to {baseline} after 20 rejected connections",
    )


# --- oversize requests get an error and the connection goes on ---------------------------------------------


def test_oversize_value_gets_value_too_large_and_the_connection_goes_on(cluster: Cluster, node_serves: None) -> None:
    key = f"big-{uuid.uuid4().hex[:8]}".encode()
    with cluster.raw(TARGET) as raw:
        hello = raw.hello()
        assert hello.max_value_bytes == 1024 * 1024
        value = b"v" * (hello.max_value_bytes + 1)
        raw.send(protocol.encode_request(10, protocol.Put(key, value)))
        reply = raw.read_frame(timeout=10)
        assert (reply.request_id, reply.code) == (10, Status.VALUE_TOO_LARGE), reply[:2]
        assert str(hello.max_value_bytes) in protocol.decode_error(Status.VALUE_TOO_LARGE, reply.body).message

        raw.send(protocol.encode_request(11, protocol.Ping()))
        pong = raw.read_frame()
        assert (pong.request_id, pong.code) == (11, Status.OK)

        # A value of exactly the limit is accepted on the same connection.
        raw.send(protocol.encode_request(12, protocol.Put(key, value[:-1])))
        stored = raw.read_frame(timeout=10)
        assert (stored.request_id, stored.code) == (12, Status.OK), stored[:2]

    with cluster.client() as kv:
        assert kv.get(key) == value[:-1]


def test_oversize_key_gets_key_too_large_and_the_connection_goes_on(cluster: Cluster, node_serves: None) -> None:
    with cluster.raw(TARGET) as raw:
        hello = raw.hello()
        assert hello.max_key_bytes == 1024
        key = b"k" * (hello.max_key_bytes + 1)
        for request_id, request in enumerate(
            [protocol.Put(key, b"value"), protocol.Get(key), protocol.Delete(key), protocol.ReplicaGet(key)], 20
        ):
            raw.send(protocol.encode_request(request_id, request))
            reply = raw.read_frame()
            assert (reply.request_id, reply.code) == (request_id, Status.KEY_TOO_LARGE), (request, reply[:2])

        raw.send(protocol.encode_request(30, protocol.Ping()))
        pong = raw.read_frame()
        assert (pong.request_id, pong.code) == (30, Status.OK)

        # A key of exactly the limit is accepted on the same connection.
        longest = b"k" * (hello.max_key_bytes - 32) + uuid.uuid4().hex.encode()
        assert len(longest) == hello.max_key_bytes
        raw.send(protocol.encode_request(31, protocol.Put(longest, b"value")))
        stored = raw.read_frame()
        assert (stored.request_id, stored.code) == (31, Status.OK), stored[:2]

    # Stored under its full length: a key that differs only in its last byte is another key.
    sibling = longest[:-1] + (b"0" if longest[-1:] != b"0" else b"1")
    with cluster.client() as kv:
        assert kv.get(longest) == b"value"
        assert kv.get(sibling) is None
