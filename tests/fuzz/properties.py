"""What must hold for any bytes given to the codec, one check per fuzz target; pure and quick.

Each check takes arbitrary bytes, and returns normally when the property holds. A decoder may only
decode or raise ``ProtocolError`` (``OversizeFrameError`` is one); any other exception
(``struct.error``, ``IndexError``, ``UnicodeDecodeError``, ``ValueError``, ``RecursionError``, ...)
escapes the check and is the bug the fuzzer reports. What decodes must encode back to the very same
bytes wherever the encoding is canonical, which every frame, request and reply body is but one: an
error's message is decoded leniently (bad UTF-8 becomes U+FFFD), because ``encode_error`` cuts long
messages at a byte count that may split a character.

Input layouts (the first bytes steer, the rest is what the decoder sees):

* ``check_frames``: byte 0's low 2 bits + 1 say how many chunk sizes follow (each byte + 1); its top
  bit picks a 64-byte frame limit instead of the default. The rest is a stream, fed to one
  ``FrameDecoder`` in chunks of those sizes in turn, and to another all at once.
* ``check_request``: byte 0 is the op code, the rest the body.
* ``check_reply``: byte 0 picks the decoder in ``REPLY_DECODERS`` (modulo their number), the rest
  is the body.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from client import protocol
from client.protocol import BodyReader, Frame, FrameDecoder, ProtocolError, Status

SMALL_FRAME_LIMIT = 64


def _chunks(data: bytes) -> tuple[list[int], int, bytes]:
    """Chunk sizes, frame limit and stream encoded in ``data`` (see the module docstring)."""
    if not data:
        return [1], protocol.DEFAULT_MAX_FRAME_BYTES, b""
    count = (data[0] & 0x03) + 1
    sizes = [size + 1 for size in data[1 : 1 + count]] or [1]
    limit = SMALL_FRAME_LIMIT if data[0] & 0x80 else protocol.DEFAULT_MAX_FRAME_BYTES
    return sizes, limit, data[1 + count :]


def _feed_all(decoder: FrameDecoder, pieces: list[bytes]) -> tuple[list[Frame], ProtocolError | None]:
    frames: list[Frame] = []
    for piece in [*pieces, b""]:  # the empty feed raises a break found after complete frames
        try:
            frames += decoder.feed(piece)
        except ProtocolError as exc:
            return frames, exc
    return frames, None


def check_frames(data: bytes) -> None:
    """``FrameDecoder.feed``: frames or ``ProtocolError``, whatever the chunking; frames re-encode to
    the bytes they came from, and what is left buffered is exactly the incomplete tail."""
    sizes, limit, stream = _chunks(data)
    pieces = []
    offset = 0
    for index in range(len(stream)):  # bounded: every chunk takes at least one byte
        if offset >= len(stream):
            break
        size = sizes[index % len(sizes)]
        pieces.append(stream[offset : offset + size])
        offset += size
    chunked = FrameDecoder(limit)
    frames, error = _feed_all(chunked, pieces)
    whole = FrameDecoder(limit)
    whole_frames, whole_error = _feed_all(whole, [stream])
    assert frames == whole_frames, "chunking changed the frames decoded"
    assert type(error) is type(whole_error), f"chunking changed the error: {error!r} vs {whole_error!r}"
    consumed = b"".join(protocol.encode_frame(*frame) for frame in frames)
    assert stream.startswith(consumed), "a frame does not re-encode to the bytes it came from"
    for frame in frames:
        assert len(protocol.encode_frame(*frame)) <= limit, "a frame over the limit was returned"
    if error is None:
        assert chunked.buffered == len(stream) - len(consumed), "buffered bytes are not the unread tail"


def check_request(data: bytes) -> None:
    """``decode_request``: a request or ``ProtocolError``; a decoded request encodes back to the same
    op and body, and the GET and PUT fast paths agree with the general decoder."""
    if not data:
        return
    code, body = data[0], data[1:]
    try:
        request = protocol.decode_request(Frame(0, code, body))
    except ProtocolError:
        request = None
    request_type = protocol.REQUEST_TYPES.get(code)
    if request_type is not None:  # the general decoder, which the fast paths must match
        reader = BodyReader(body)
        try:
            general: Any = request_type.decode(reader)
            reader.end()
        except ProtocolError:
            general = None
        assert general == request, f"fast path gave {request!r}, general decoder {general!r}"
    if request is not None:
        assert protocol.request_body(request) == (code, body), f"{request!r} does not encode back to its bytes"


def _error_body(status: Status) -> Callable[[protocol.ErrorReply], bytes]:
    def encode(reply: protocol.ErrorReply) -> bytes:
        encoded = protocol.encode_error(0, status, reply.message, reply.acked, reply.required)
        return encoded[protocol.HEADER.size :]

    return encode


def _decode_error(status: Status) -> Callable[[bytes], protocol.ErrorReply]:
    return lambda body: protocol.decode_error(status, body)


REPLY_DECODERS: dict[str, tuple[Callable[[bytes], Any], Callable[[Any], bytes]]] = {
    "hello": (protocol.decode_hello_reply, protocol.encode_hello_reply),
    "topology": (protocol.decode_topology_reply, protocol.encode_topology_reply),
    "version": (protocol.decode_version, protocol.encode_version),
    "value": (protocol.decode_value, lambda reply: protocol.encode_value(*reply)),
    "record": (protocol.decode_record, protocol.encode_record),
    "replica_put": (protocol.decode_replica_put_reply, protocol.encode_replica_put_reply),
    "ping": (protocol.decode_ping_reply, protocol.encode_ping_reply),
    "digests": (protocol.decode_digests_reply, protocol.encode_digests_reply),
    "partition_keys": (protocol.decode_partition_keys_reply, protocol.encode_partition_keys_reply),
    "partition_records": (protocol.decode_partition_records_reply, protocol.encode_partition_records_reply),
    "repair": (protocol.decode_repair_reply, protocol.encode_repair_reply),
    "members": (protocol.decode_members_reply, protocol.encode_members_reply),
    "stats": (protocol.decode_stats_reply, protocol.encode_stats_reply),
    "auth_start": (protocol.decode_auth_start_reply, protocol.encode_auth_start_reply),
    "auth": (protocol.decode_auth_reply, protocol.encode_auth_reply),
    "user_set": (protocol.decode_user_set_reply, protocol.encode_user_set_reply),
    "users": (protocol.decode_users_reply, protocol.encode_users_reply),
    "identify": (protocol.decode_identify_reply, protocol.encode_identify_reply),
    "membership": (protocol.decode_membership_reply, protocol.encode_membership_reply),
    "epoch": (protocol.decode_epoch_reply, protocol.encode_epoch_reply),
    "error": (_decode_error(Status.BAD_REQUEST), _error_body(Status.BAD_REQUEST)),
    "quorum_error": (_decode_error(Status.UNAVAILABLE), _error_body(Status.UNAVAILABLE)),
}
"""Decoder name -> (decode body, encode the decoded value back to a body)."""
REPLY_NAMES = list(REPLY_DECODERS)


def check_reply(data: bytes) -> None:
    """Every ``decode_*`` reply decoder: a value or ``ProtocolError``; the value encodes back to the
    same body (for an error: when its message is valid UTF-8 and ``encode_error`` kept all of it)."""
    if not data:
        return
    name = REPLY_NAMES[data[0] % len(REPLY_NAMES)]
    decode, encode = REPLY_DECODERS[name]
    body = data[1:]
    try:
        decoded = decode(body)
    except ProtocolError:
        return
    encoded = encode(decoded)
    if isinstance(decoded, protocol.ErrorReply):
        again = decode(encoded)
        assert (again.status, again.acked, again.required) == (decoded.status, decoded.acked, decoded.required)
        # A cut message ends in "..."; a message that was not UTF-8 on the wire decodes to U+FFFD,
        # three bytes each, so it may be cut even though its wire form fitted.
        kept = again.message.removesuffix("...") if again.message != decoded.message else again.message
        assert decoded.message.startswith(kept), "encode_error changed the message, not just cut it"
        if again.message != decoded.message or "\ufffd" in decoded.message:
            return  # cut by the length cap, or not UTF-8 on the wire: lenient by design
    assert encoded == body, f"{name}: {decoded!r} encodes to {encoded.hex()}, not {body.hex()}"


CHECKS: dict[str, Callable[[bytes], None]] = {
    "frames": check_frames,
    "requests": check_request,
    "replies": check_reply,
}
"""Fuzz target name -> its check."""
