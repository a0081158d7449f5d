"""Who gets a connection (service/admission.py) and when one is closed (service/connection_limits.py):
pure bookkeeping and clocks, driven without sockets."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client.protocol import HEADER, MAX_ERROR_MESSAGE_BYTES, Op, clip_message
from service.admission import Admission, Seat, Ticket
from service.connection_limits import (
    PEER_LIMIT_FACTOR,
    SMALL_REPLY_BYTES,
    Activity,
    Close,
    ConnectionLimits,
    Watch,
    reservation,
)
from service.events import Throttle

MEMBERS = ("node2", "node3")


def admission(max_clients: int = 2, links: int = 2, waiting: int = 2) -> Admission:
    return Admission(max_clients, MEMBERS, links, waiting)


# --- admission --------------------------------------------------------------------------------------


def test_connections_take_client_slots_then_wait_then_are_refused() -> None:
    seats = admission()
    assert [seats.arrive() for _ in range(5)] == [
        Ticket(Seat.CLIENT),
        Ticket(Seat.CLIENT),
        Ticket(Seat.WAITING),
        Ticket(Seat.WAITING),
        None,
    ]


def test_a_member_waiting_for_a_slot_gets_a_link_of_its_own() -> None:
    seats = admission(max_clients=1)
    seats.arrive()
    waiting = seats.arrive()
    assert waiting == Ticket(Seat.WAITING)
    assert seats.identify(waiting, "node:node2") == Ticket(Seat.PEER, "node2")
    assert (seats.clients, seats.waiting, seats.links["node2"]) == (1, 0, 1)


def test_a_client_waiting_for_a_slot_is_refused_unless_one_came_free() -> None:
    seats = admission(max_clients=1)
    first = seats.arrive()
    assert first is not None
    waiting = [seats.arrive(), seats.arrive()]
    assert seats.identify(waiting[0], "kv-client") is None  # all taken: refused, its place given up
    assert seats.waiting == 1
    seats.leave(first)
    assert seats.identify(waiting[1], "kv-client") == Ticket(Seat.CLIENT)
    assert (seats.clients, seats.waiting) == (1, 0)


def test_a_member_in_a_client_slot_moves_to_its_link_and_frees_the_slot() -> None:
    seats = admission()
    ticket = seats.arrive()
    assert ticket is not None
    assert seats.identify(ticket, "node:node3") == Ticket(Seat.PEER, "node3")
    assert seats.clients == 0


@pytest.mark.parametrize("name", ["node:node1", "node:nodeX", "node:", "node2", "Node:node2", "kv-cli"])
def test_only_another_members_exact_name_earns_a_link(name: str) -> None:
    seats = admission()
    ticket = seats.arrive()
    assert ticket is not None
    assert seats.identify(ticket, name) == Ticket(Seat.CLIENT)


def test_a_member_past_its_links_is_treated_as_a_client() -> None:
    seats = admission(max_clients=2, links=1)
    tickets = [seats.arrive() for _ in range(2)]
    assert seats.identify(tickets[0], "node:node2") == Ticket(Seat.PEER, "node2")
    assert seats.identify(tickets[1], "node:node2") == Ticket(Seat.CLIENT)  # its one link is taken
    assert seats.arrive() == Ticket(Seat.CLIENT)  # the slot the first one left
    waiting = seats.arrive()
    assert waiting == Ticket(Seat.WAITING)
    assert seats.identify(waiting, "node:node2") is None


OPS = st.lists(
    st.one_of(
        st.just(("arrive", None)),
        st.tuples(st.just("identify"), st.sampled_from(["node:node2", "node:node3", "node:node9", "client"])),
        st.just(("leave", None)),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(ops=OPS, data=st.data())
def test_seats_taken_always_match_the_tickets_held_and_stay_within_bounds(
    ops: list[tuple[str, str | None]], data: st.DataObject
) -> None:
    seats = admission(max_clients=3, links=2, waiting=2)
    held: list[Ticket | None] = []
    unnamed: list[int] = []  # indexes into held of tickets whose connection has not said HELLO yet
    for op, name in ops:
        if op == "arrive":
            ticket = seats.arrive()
            if ticket is None:
                assert seats.clients == 3 and seats.waiting == 2
                continue
            held.append(ticket)
            unnamed.append(len(held) - 1)
        elif op == "identify" and unnamed:
            index = unnamed.pop(data.draw(st.integers(0, len(unnamed) - 1)))
            ticket = held[index]
            assert ticket is not None and name is not None
            new = seats.identify(ticket, name)
            assert new is None or new.seat is not Seat.WAITING
            held[index] = new  # None: refused, holds nothing
        elif op == "leave" and held:
            index = data.draw(st.integers(0, len(held) - 1))
            ticket = held[index]
            if ticket is not None:
                seats.leave(ticket)
            held[index] = None
            unnamed = [i for i in unnamed if i != index]
        live = [ticket for ticket in held if ticket is not None]
        assert seats.clients == sum(ticket.seat is Seat.CLIENT for ticket in live) <= 3
        assert seats.waiting == sum(ticket.seat is Seat.WAITING for ticket in live) <= 2
        for member in MEMBERS:
            assert seats.links[member] == sum(ticket.member == member for ticket in live) <= 2


# --- the bytes a request reserves ---------------------------------------------------------------------


def test_a_read_reserves_a_whole_frame_for_its_reply_and_a_write_a_small_one() -> None:
    assert reservation(Op.GET, 10, 1_000_000) == HEADER.size + 10 + 1_000_000
    assert reservation(Op.REPLICA_GET, 10, 1_000_000) == HEADER.size + 10 + 1_000_000
    assert reservation(Op.PUT, 500_000, 1_000_000) == HEADER.size + 500_000 + SMALL_REPLY_BYTES
    assert SMALL_REPLY_BYTES > MAX_ERROR_MESSAGE_BYTES + 264  # an error, or a version with a 255-byte node id


def test_a_peer_link_gets_larger_limits_and_the_same_timeouts_to_start() -> None:
    client = ConnectionLimits(16, 30.0, 5.0, 300.0)
    peer = client.for_peer()
    assert (peer.buffer_bytes, peer.output_timeout) == (16 * PEER_LIMIT_FACTOR, 30.0 * PEER_LIMIT_FACTOR)
    assert (peer.handshake_timeout, peer.idle_timeout) == (5.0, 300.0)


@pytest.mark.parametrize(
    ("timeouts", "interval"),
    [((5.0, 300.0, 30.0), 1.0), ((0.3, 300.0, 30.0), 0.075), ((0.01, 0.0, 0.0), 0.05), ((5.0, 2.0, 0.0), 0.5)],
)
def test_connections_are_checked_four_times_per_shortest_limit(timeouts: tuple[float, ...], interval: float) -> None:
    handshake, idle, output = timeouts
    assert ConnectionLimits(1, output, handshake, idle).check_interval == pytest.approx(interval)


# --- when a connection is closed ------------------------------------------------------------------------

LIMITS = ConnectionLimits(buffer_bytes=1 << 20, output_timeout=10.0, handshake_timeout=2.0, idle_timeout=60.0)


def activity(**changes: object) -> Activity:
    fields: dict[str, object] = {
        "bytes_received": 0,
        "requests_received": 0,
        "partial_frame": False,
        "in_flight": 0,
        "unsent": 0,
        "bytes_sent": 0,
    }
    return Activity(**{**fields, **changes})  # type: ignore[arg-type]


def test_a_quiet_connection_is_closed_at_the_idle_timeout() -> None:
    watch = Watch(LIMITS, now=0.0)
    assert watch.check(activity(), 59.0) is None
    assert watch.check(activity(), 60.0) is Close.IDLE_TIMEOUT


def test_requests_and_work_in_flight_keep_a_connection_from_idling() -> None:
    watch = Watch(LIMITS, now=0.0)
    assert watch.check(activity(requests_received=1), 50.0) is None
    assert watch.check(activity(requests_received=1, in_flight=1), 100.0) is None
    assert watch.check(activity(requests_received=1), 159.0) is None
    assert watch.check(activity(requests_received=1), 160.0) is Close.IDLE_TIMEOUT


def test_bytes_that_never_make_a_request_do_not_keep_a_connection_open() -> None:
    """A slow loris: a byte now and then, never a whole frame."""
    watch = Watch(LIMITS, now=0.0)
    for second in range(1, 60):
        assert watch.check(activity(bytes_received=second, partial_frame=True), float(second)) is None
    assert watch.check(activity(bytes_received=60, partial_frame=True), 60.0) is Close.IDLE_TIMEOUT


def test_a_frame_with_no_byte_for_the_handshake_timeout_is_closed() -> None:
    watch = Watch(LIMITS, now=0.0)
    assert watch.check(activity(bytes_received=3, partial_frame=True, requests_received=1), 1.0) is None
    assert watch.check(activity(bytes_received=3, partial_frame=True, requests_received=1), 2.9) is None
    assert watch.check(activity(bytes_received=3, partial_frame=True, requests_received=1), 3.0) is Close.FRAME_TIMEOUT


def test_replies_that_nobody_takes_close_the_connection_and_slow_progress_does_not() -> None:
    watch = Watch(LIMITS, now=0.0)
    assert watch.check(activity(unsent=500, bytes_sent=100), 1.0) is None
    assert watch.check(activity(unsent=500, bytes_sent=200), 10.5) is None  # slow, but reading
    assert watch.check(activity(unsent=500, bytes_sent=200), 20.0) is None
    assert watch.check(activity(unsent=500, bytes_sent=200), 20.5) is Close.OUTPUT_LIMIT


def test_the_output_clock_starts_only_when_replies_wait() -> None:
    watch = Watch(LIMITS, now=0.0)
    assert watch.check(activity(requests_received=1, in_flight=1), 30.0) is None
    assert watch.check(activity(requests_received=1, unsent=10), 35.0) is None
    assert watch.check(activity(requests_received=1, unsent=10), 45.0) is Close.OUTPUT_LIMIT


def test_zero_turns_the_idle_and_output_timeouts_off() -> None:
    watch = Watch(ConnectionLimits(1 << 20, 0.0, 2.0, 0.0), now=0.0)
    assert watch.check(activity(unsent=10), 1e9) is None


# --- error messages and log throttling ------------------------------------------------------------------


@given(text=st.text(max_size=2000), limit=st.integers(3, 600))
def test_a_clipped_message_fits_is_valid_utf8_and_keeps_its_start(text: str, limit: int) -> None:
    clipped = clip_message(text, limit)
    assert len(clipped.encode()) <= limit
    if len(text.encode()) <= limit:
        assert clipped == text
    else:
        assert clipped.endswith("...") and text.startswith(clipped[:-3])


def test_a_multibyte_character_is_never_cut_in_half() -> None:
    assert clip_message("é" * 10, 8) == "éé..."  # 2 bytes each: two fit in the 5 before "..."


def test_a_throttle_lets_one_line_through_per_interval_and_counts_the_rest() -> None:
    now = [100.0]
    throttle = Throttle(1.0, now=lambda: now[0])
    assert throttle.add("connection_refused", 1) == 1
    assert [throttle.add("connection_refused", 1) for _ in range(5)] == [None] * 5
    assert throttle.add("handshake_timeout", 1) == 1  # each event has its own interval
    now[0] += 1.0
    assert throttle.add("connection_refused", 1) == 6  # this line, and the 5 held back
    assert throttle.add("connection_refused", 1) is None
