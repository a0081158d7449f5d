"""The protocol floor: the least work a node on this stack can do per request, as a yardstick.

A gevent ``StreamServer`` that speaks the node's protocol with the node's own codec and keeps values
in a dict in memory: no durability, no replication, no quorum, no clock, no metrics, no logs, and
every reply to one read's worth of requests in one ``send``. It reads and writes sockets the way
the node does (``receive``, one ``sendall``), so a store built on gevent, Python and this protocol
can hardly serve more than this does on the same machine; ``bench/benchmarks.py`` runs it beside
Redis and the node: the gap between Redis and the floor is the runtime's, the gap between the floor
and the node is the node's own work.

It is a measuring instrument, not a server to run: nothing it holds survives it.

    python3 -m bench.protocol_floor --port 7000
"""

from __future__ import annotations

import argparse
import contextlib

from gevent import socket
from gevent.server import StreamServer

from client import protocol
from client.protocol import NodeAddress, Status, Version
from client.transport import receive

NODE_ID = "floor"


def serve(port: int) -> None:
    hello = protocol.encode_hello_reply(
        protocol.HelloReply(
            protocol.PROTOCOL_VERSION,
            NODE_ID,
            protocol.DEFAULT_MAX_KEY_BYTES,
            protocol.DEFAULT_MAX_VALUE_BYTES,
            protocol.DEFAULT_MAX_FRAME_BYTES,
        )
    )
    topology = protocol.encode_topology_reply(
        protocol.TopologyReply(1, 1, 1, 4096, (NodeAddress(NODE_ID, "127.0.0.1", port),))
    )
    values: dict[bytes, tuple[Version, bytes]] = {}
    versions = iter(range(1, 1 << 62))

    def answer(frame: protocol.Frame) -> bytes:
        request = protocol.decode_request(frame)
        match request:
            case protocol.Get(key, _):
                stored = values.get(key)
                if stored is None:
                    return protocol.encode_response(frame.request_id, Status.NOT_FOUND)
                return protocol.encode_response(frame.request_id, Status.OK, protocol.encode_value(*stored))
            case protocol.Put(key, value, _, _):
                version = Version(next(versions), NODE_ID)
                values[key] = (version, value)
                return protocol.encode_response(frame.request_id, Status.OK, protocol.encode_version(version))
            case protocol.Delete(key, _, _):
                values.pop(key, None)
                return protocol.encode_response(
                    frame.request_id, Status.OK, protocol.encode_version(Version(next(versions), NODE_ID))
                )
            case protocol.Hello():
                return protocol.encode_response(frame.request_id, Status.OK, hello)
            case protocol.Topology():
                return protocol.encode_response(frame.request_id, Status.OK, topology)
            case protocol.Ping():
                return protocol.encode_response(frame.request_id, Status.OK)
        return protocol.encode_error(frame.request_id, Status.BAD_REQUEST, f"the floor does not serve {request}")

    def session(sock: socket.socket, _address: tuple[str, int]) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        decoder = protocol.FrameDecoder(protocol.DEFAULT_MAX_FRAME_BYTES)
        # A client that went away or sent garbage ends its own session, nothing more.
        try:
            with contextlib.suppress(OSError, protocol.ProtocolError):
                while data := receive(sock):
                    sock.sendall(b"".join(answer(frame) for frame in decoder.feed(data)))
        finally:
            sock.close()

    print(f"protocol floor listening on 127.0.0.1:{port}", flush=True)
    StreamServer(("127.0.0.1", port), session).serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True, help="port to listen on, on 127.0.0.1")
    serve(parser.parse_args().port)


if __name__ == "__main__":
    main()
