"""The socket layer (client/transport.py): FrameWriter (frames from many greenlets leave whole, in
order, in as few sends as it can), receive, opening a connection, and the pipelined socket with its
two ways of matching replies to requests: by id and in order."""

from __future__ import annotations

import gevent
import pytest
from gevent import socket
from gevent.event import Event
from hypothesis import given, settings
from hypothesis import strategies as st
from polling import wait_until

from client import protocol
from client import transport as transport_module
from client.connection import Connection
from client.errors import (
    NodeUnreachableError,
    ProtocolViolationError,
    RequestTimeoutError,
    TooManyConnectionsError,
)
from client.protocol import MAX_REQUEST_ID, Status
from client.transport import HELD_FLUSH_BYTES, SEND_CHUNK_BYTES, ById, FrameWriter, InOrder, PipelinedSocket, receive


class RecordingSocket:
    """Stands in for a socket: records each ``sendall``."""

    def __init__(self) -> None:
        self.sends: list[bytes] = []

    def sendall(self, data: bytes) -> None:
        self.sends.append(bytes(data))


def test_a_plain_write_is_sent_at_once() -> None:
    sock = RecordingSocket()
    writer = FrameWriter(sock)
    writer.write(b"one")
    writer.write(b"two")
    assert sock.sends == [b"one", b"two"]


def test_frames_written_in_one_turn_with_wait_for_more_leave_in_one_send() -> None:
    sock = RecordingSocket()
    writer = FrameWriter(sock)
    writers = [gevent.spawn(writer.write, frame, wait_for_more=True) for frame in (b"a", b"b", b"c")]
    gevent.joinall(writers, timeout=5, raise_error=True)
    assert sock.sends == [b"abc"]


def test_held_frames_leave_together_at_release() -> None:
    sock = RecordingSocket()
    writer = FrameWriter(sock)
    writer.hold()
    writer.write(b"1")
    writer.write(b"2", wait_for_more=True)  # held: does not wait, does not send
    assert sock.sends == []
    writer.release()
    assert sock.sends == [b"12"]
    writer.release()  # nothing queued: nothing sent
    assert sock.sends == [b"12"]


def test_a_waiting_writer_that_is_interrupted_still_sends_what_was_queued() -> None:
    sock = RecordingSocket()
    writer = FrameWriter(sock)
    waiting = gevent.spawn(writer.write, b"first", wait_for_more=True)
    gevent.sleep(0)  # it is now waiting for the turn to end
    writer.write(b"second")  # queued behind the waiting writer
    waiting.kill(TimeoutError("interrupted"), block=True)
    assert sock.sends == [b"firstsecond"]
    writer.write(b"third")  # and the writer is usable afterwards
    assert sock.sends[-1] == b"third"


def test_a_failed_send_reaches_the_writer_and_leaves_the_writer_reusable() -> None:
    class FailingSocket(RecordingSocket):
        def sendall(self, data: bytes) -> None:
            raise ConnectionResetError("reset by peer")

    writer = FrameWriter(FailingSocket())
    with pytest.raises(ConnectionResetError):
        writer.write(b"x")
    with pytest.raises(ConnectionResetError):  # not stuck believing another greenlet is writing
        writer.write(b"y")


class YieldingSocket(RecordingSocket):
    """A socket whose every send lets other greenlets run first, as a send that waits for room does."""

    def sendall(self, data: bytes) -> None:
        gevent.sleep(0)
        super().sendall(data)


FRAME_SIZES = st.one_of(
    st.integers(1, 64), st.integers(1, 64 * 1024), st.integers(SEND_CHUNK_BYTES - 2, 3 * SEND_CHUNK_BYTES)
)


@settings(max_examples=60, deadline=None)
@given(bursts=st.lists(st.tuples(st.booleans(), st.lists(FRAME_SIZES, min_size=1, max_size=6)), min_size=1, max_size=5))
def test_every_frame_leaves_whole_once_and_in_order_in_bounded_sends(bursts: list[tuple[bool, list[int]]]) -> None:
    """Frames from several greenlets, some written as held bursts, some large enough to leave in
    pieces: the bytes sent are exactly the frames in the order they were written."""
    sock = YieldingSocket()
    writer = FrameWriter(sock)
    written: list[bytes] = []

    def burst(index: int, held: bool, sizes: list[int]) -> None:
        if held:
            writer.hold()
        for number, size in enumerate(sizes):
            frame = bytes([index * 16 + number]) * size
            written.append(frame)
            writer.write(frame, wait_for_more=not held)
        if held:
            writer.release()

    greenlets = [gevent.spawn(burst, index, held, sizes) for index, (held, sizes) in enumerate(bursts)]
    gevent.joinall(greenlets, timeout=10, raise_error=True)
    assert b"".join(sock.sends) == b"".join(written)
    assert all(len(chunk) <= SEND_CHUNK_BYTES for chunk in sock.sends)
    assert (writer.queued, writer.sent) == (0, sum(map(len, written)))


def test_a_held_burst_is_sent_once_it_reaches_the_flush_size() -> None:
    sock = RecordingSocket()
    writer = FrameWriter(sock)
    writer.hold()
    frame = b"r" * (64 * 1024)
    for _ in range(HELD_FLUSH_BYTES // len(frame) - 1):
        writer.write(frame)
    assert sock.sends == [] and writer.queued == HELD_FLUSH_BYTES - len(frame)
    writer.write(frame)  # reaches the flush size: sent although held
    assert b"".join(sock.sends) == frame * (HELD_FLUSH_BYTES // len(frame)) and writer.queued == 0


def test_a_failed_send_drops_every_frame_queued() -> None:
    class StuckSocket(RecordingSocket):
        def __init__(self) -> None:
            super().__init__()
            self.gate = Event()

        def sendall(self, data: bytes) -> None:
            self.gate.wait()
            raise BrokenPipeError("the peer is gone")

    sock = StuckSocket()
    writer = FrameWriter(sock)
    first = gevent.spawn(writer.write, b"a" * 1000)
    gevent.sleep(0)
    writer.write(b"b" * 5000)  # queued behind the stuck send
    assert writer.queued == 6000
    sock.gate.set()
    with pytest.raises(BrokenPipeError):
        first.get(timeout=1)
    assert writer.queued == 0 and writer.sent == 0


def test_over_a_real_socket_a_send_the_kernel_cuts_short_is_finished_in_order() -> None:
    """A plain gevent socket is sent to straight through the kernel socket; a chunk larger than its
    send buffer is taken in part, and the rest follows once the reader makes room."""
    left, right = socket.socketpair()
    left.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    writer = FrameWriter(left)
    frames = [bytes([index]) * size for index, size in enumerate([10, SEND_CHUNK_BYTES - 1, 300, 70_000])]
    received = bytearray()

    def read_slowly() -> None:
        total = sum(map(len, frames))
        while len(received) < total:
            gevent.sleep(0.001)
            received.extend(right.recv(8192))

    reader = gevent.spawn(read_slowly)
    writers = [gevent.spawn(writer.write, frame) for frame in frames]
    gevent.joinall([*writers, reader], timeout=20, raise_error=True)
    assert bytes(received) == b"".join(frames)
    assert (writer.queued, writer.sent) == (0, len(received))
    left.close()
    right.close()


def test_over_a_closed_socket_a_write_raises_and_drops_its_frame() -> None:
    left, right = socket.socketpair()
    writer = FrameWriter(left)
    writer.write(b"before")
    assert right.recv(100) == b"before"
    left.close()
    with pytest.raises(OSError):
        writer.write(b"after")
    assert writer.queued == 0
    right.close()


def test_request_ids_skip_0_when_they_wrap_around() -> None:
    matching = ById(1024)
    matching._ids = iter([MAX_REQUEST_ID, MAX_REQUEST_ID + 1, MAX_REQUEST_ID + 2])  # type: ignore[assignment]
    assert [matching.expect()[0], matching.expect()[0]] == [MAX_REQUEST_ID, 1]


def test_an_error_frame_with_request_id_0_fails_every_request_on_the_socket() -> None:
    matching = ById(1024)
    waiters = [matching.expect()[1] for _ in range(3)]
    with pytest.raises(TooManyConnectionsError, match="full"):
        matching.feed(protocol.encode_error(0, Status.TOO_MANY_CONNECTIONS, "full"))
    assert not any(waiter.ready() for waiter in waiters)  # PipelinedSocket fails them with the error


def test_an_answer_with_request_id_0_is_a_protocol_violation() -> None:
    with pytest.raises(ProtocolViolationError, match="request id 0"):
        ById(1024).feed(protocol.encode_response(0, Status.OK))


def test_receive_on_a_closed_socket_raises_an_os_error_as_recv_does() -> None:
    left, right = socket.socketpair()
    right.sendall(b"ping")
    assert receive(left) == b"ping"
    left.close()
    with pytest.raises(OSError):
        receive(left)
    right.close()


def test_a_connection_to_itself_is_unreachable_not_a_garbled_reply(monkeypatch: pytest.MonkeyPatch) -> None:
    """With nothing listening on a port in the ephemeral range, the kernel can pick that port as
    the source and connect the socket to itself; its HELLO then comes back as the "reply"."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()

    def self_connecting(address: tuple[str, int], timeout: float | None = None) -> socket.socket:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)  # what the kernel may choose on its own: the destination port as source
        sock.connect(address)
        return sock

    monkeypatch.setattr(transport_module.socket, "create_connection", self_connecting)
    with pytest.raises(NodeUnreachableError, match="nothing listens there"):
        Connection("127.0.0.1", port).connect()


# --- the pipelined socket --------------------------------------------------------------------------


class Lines:
    """A decoder for tests: each newline-terminated line is a reply; a line "garbage" is not."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[bytes]:
        *lines, self._buffer = (self._buffer + data).split(b"\n")
        if b"garbage" in lines:
            raise protocol.ProtocolError("not a line")
        return lines


def in_order_pair() -> tuple[PipelinedSocket[bytes], socket.socket]:
    ours, theirs = socket.socketpair()
    return PipelinedSocket(ours, "server", InOrder(Lines())), theirs


def by_id_pair() -> tuple[PipelinedSocket[protocol.Frame], socket.socket]:
    ours, theirs = socket.socketpair()
    return PipelinedSocket(ours, "node", ById(protocol.DEFAULT_MAX_FRAME_BYTES)), theirs


def test_in_order_replies_go_to_the_requests_in_the_order_they_were_sent() -> None:
    pipe, server = in_order_pair()
    calls = [gevent.spawn(pipe.call, f"q{i}\n".encode(), 5) for i in range(3)]
    gevent.sleep(0)
    assert server.recv(100) == b"q0\nq1\nq2\n"
    server.sendall(b"a0\na1\n")
    server.sendall(b"a2\n")
    assert [call.get(timeout=5) for call in calls] == [b"a0", b"a1", b"a2"]
    pipe.close()
    server.close()


def test_an_in_order_request_that_timed_out_still_takes_its_reply() -> None:
    pipe, server = in_order_pair()
    with pytest.raises(RequestTimeoutError, match=r"no reply from server within 0\.01 s"):
        pipe.call(b"slow\n", 0.01)
    later = gevent.spawn(pipe.call, b"next\n", 5)
    gevent.sleep(0)
    server.sendall(b"for slow\nfor next\n")
    assert later.get(timeout=5) == b"for next"  # not the reply meant for the abandoned request
    pipe.close()
    server.close()


def test_a_reply_to_no_request_fails_the_socket() -> None:
    pipe, server = in_order_pair()
    server.sendall(b"unasked\n")
    wait_until(lambda: not pipe.is_open, message="the socket to fail")
    with pytest.raises(ProtocolViolationError, match="bad reply from server: a reply to no request"):
        pipe.call(b"q\n", 5)
    server.close()


def test_replies_by_id_may_come_in_any_order() -> None:
    pipe, server = by_id_pair()
    ids = [pipe.expect() for _ in range(3)]
    for request_id, _ in ids:
        pipe.write(protocol.encode_request(request_id, protocol.Ping()))
    for request_id, _ in reversed(ids):
        server.sendall(protocol.encode_response(request_id, protocol.Status.OK, str(request_id).encode()))
    replies = [pipe.wait(request_id, done, 5) for request_id, done in ids]
    assert [(frame.request_id, frame.body) for frame in replies] == [(i, str(i).encode()) for i, _ in ids]
    pipe.close()
    server.close()


@pytest.mark.parametrize(
    ("server_does", "error", "message"),
    [
        ("close", NodeUnreachableError, "server closed the connection"),
        ("garble", ProtocolViolationError, "bad reply from server: not a line"),
    ],
)
def test_when_the_socket_fails_every_waiting_request_gets_the_error(
    server_does: str, error: type[Exception], message: str
) -> None:
    pipe, server = in_order_pair()
    calls = [gevent.spawn(pipe.call, b"q\n", 5) for _ in range(3)]
    gevent.sleep(0)
    assert server.recv(100) == b"q\nq\nq\n"  # read, so that closing is an orderly end, not a reset
    if server_does == "close":
        server.close()
    else:
        server.sendall(b"garbage\n")
    for call in calls:
        with pytest.raises(error, match=message):
            call.get(timeout=5)
    with pytest.raises(error, match=message):  # and so does every later request
        pipe.call(b"q\n", 5)
    server.close()


def test_close_fails_the_waiting_requests_as_closed() -> None:
    pipe, server = by_id_pair()
    request_id, done = pipe.expect()
    pipe.close()
    with pytest.raises(NodeUnreachableError, match="connection to node closed"):
        pipe.wait(request_id, done, 5)
    assert not pipe.is_open
    server.close()
