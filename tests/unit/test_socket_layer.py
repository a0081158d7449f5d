"""The socket layer under Connection: FrameWriter (frames from many greenlets leave whole, in order,
in as few sends as it can), receive, and opening a connection."""

from __future__ import annotations

import gevent
import pytest
from gevent import socket

from client import connection as connection_module
from client.connection import Connection, FrameWriter, receive
from client.errors import NodeUnreachableError


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

    monkeypatch.setattr(connection_module.socket, "create_connection", self_connecting)
    with pytest.raises(NodeUnreachableError, match="nothing listens there"):
        Connection("127.0.0.1", port).connect()
