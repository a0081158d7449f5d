"""Authentication and roles on a real in-process cluster: SCRAM-SHA-256 after HELLO, users from a
users file, members by the cluster secret, FORBIDDEN for ops a role may not run."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from cluster import InProcessCluster
from raw_connection import RawConnection
from security_kit import CLUSTER_SECRET, PASSWORDS, as_user, auth_settings

from client import protocol
from client.errors import AuthFailedError, AuthRequiredError, ForbiddenError
from client.protocol import Frame, Op, Record, Role, Status, Version
from client.scram import ScramExchange, Verifier, make_verifier
from client.security import Credentials, Security

pytestmark = pytest.mark.unit


@pytest.fixture
def secured(make_cluster, tmp_path: Path) -> InProcessCluster:
    return make_cluster(3, **auth_settings(tmp_path / "secrets"))


def authenticate(raw: RawConnection, user: str, password: str, request_id: int = 2) -> tuple[Frame, bytes]:
    """A SCRAM exchange over ``raw``: AUTH_FINISH's reply, and the client-final message sent."""
    exchange = ScramExchange(user, password)
    first = raw.call(request_id, protocol.AuthStart(exchange.client_first()))
    assert first.code == Status.OK, protocol.decode_error(Status(first.code), first.body)
    final = exchange.client_final(protocol.decode_auth_start_reply(first.body))
    return raw.call(request_id + 1, protocol.AuthFinish(final)), final


def test_users_and_members_authenticate_and_the_cluster_works(secured: InProcessCluster) -> None:
    writer = secured.client()
    writer.security = as_user("writer")
    writer.put("k", b"v")  # W=2: the coordinator's peer link authenticated with the cluster secret
    reader = secured.client()
    reader.security = as_user("reader")
    assert reader.get("k") == b"v"
    for node_id in secured.replicas_of("k"):  # both replicas hold it: a member's REPLICA_PUT got through
        assert secured.node(node_id).store.read(b"k") is not None


def test_a_wrong_password_and_an_unknown_user_are_refused_alike(secured: InProcessCluster) -> None:
    messages = []
    for credentials in (Credentials("writer", "not-it"), Credentials("nobody", "whatever")):
        client = secured.client()
        client.security = Security(credentials)
        with pytest.raises(AuthFailedError) as caught:
            client.get("k")
        messages.append(caught.value.message.split(": ", 1)[-1])
    assert messages[0] == messages[1]  # nothing tells an unknown user from a wrong password


def test_a_failed_authentication_closes_the_connection(secured: InProcessCluster, connect) -> None:
    raw = connect(secured.addresses[0])
    raw.hello()
    reply, _ = authenticate(raw, "writer", "wrong")
    assert reply.code == Status.AUTH_FAILED
    assert raw.read_until_closed() == []


def test_a_replayed_client_final_message_is_refused(secured: InProcessCluster, connect) -> None:
    first = connect(secured.addresses[0])
    first.hello()
    reply, final = authenticate(first, "writer", PASSWORDS["writer"])
    assert reply.code == Status.OK
    assert protocol.decode_auth_reply(reply.body) == protocol.AuthReply(
        "writer", Role.READWRITE, protocol.decode_auth_reply(reply.body).server_final
    )
    # An eavesdropper replays the exchange on a connection of its own: the node's nonce is new.
    replay = connect(secured.addresses[0])
    replay.hello()
    exchange = ScramExchange("writer", "irrelevant")
    start = replay.call(2, protocol.AuthStart(exchange.client_first()))
    assert start.code == Status.OK
    refused = replay.call(3, protocol.AuthFinish(final))
    assert refused.code == Status.AUTH_FAILED


def test_before_authentication_only_hello_and_the_auth_ops_are_answered(secured: InProcessCluster, connect) -> None:
    raw = connect(secured.addresses[0])
    raw.hello()
    record = Record(Version(1, "node2"), b"x")
    for request_id, request in enumerate(
        [protocol.Ping(), protocol.Get(b"k"), protocol.Put(b"k", b"v"), protocol.ReplicaPut(b"k", record)], 10
    ):
        reply = raw.call(request_id, request)
        assert reply.code == Status.AUTH_REQUIRED
    client = secured.client()
    with pytest.raises(AuthRequiredError):
        client.get("k")
    assert secured.node("node1").store.read(b"k") is None


def _try_every_op(raw: RawConnection) -> dict[Op, int]:
    record = Record(Version(1, "node2"), b"x")
    requests: list[protocol.Request] = [
        protocol.Ping(),
        protocol.Get(b"k"),
        protocol.Topology(),
        protocol.Members(),
        protocol.Stats(),
        protocol.Put(b"k", b"v"),
        protocol.Delete(b"k"),
        protocol.Repair(),
        protocol.Users(),
        protocol.UserSet(1, "ghost", Role.NONE),
        protocol.ReplicaGet(b"k"),
        protocol.ReplicaPut(b"k", record),
        protocol.HintedPut(b"k", record, "node2"),
        protocol.Digests((0,)),
        protocol.PartitionKeys(0),
    ]
    return {request.OP: raw.call(100 + i, request).code for i, request in enumerate(requests)}


READ = {Op.PING, Op.GET, Op.TOPOLOGY, Op.MEMBERS, Op.STATS}
WRITE = READ | {Op.PUT, Op.DELETE}
ADMIN = WRITE | {Op.REPAIR, Op.USERS, Op.USER_SET, Op.REPLICA_GET, Op.DIGESTS, Op.PARTITION_KEYS}


@pytest.mark.parametrize(("user", "allowed"), [("reader", READ), ("writer", WRITE), ("admin", ADMIN)])
def test_each_role_runs_exactly_its_ops(secured: InProcessCluster, connect, user: str, allowed: set[Op]) -> None:
    raw = connect(secured.addresses[0])
    raw.hello()
    assert authenticate(raw, user, PASSWORDS[user])[0].code == Status.OK
    statuses = _try_every_op(raw)
    assert {op for op, status in statuses.items() if status != Status.FORBIDDEN} == allowed
    # The connection stayed usable through every refusal, and a refusal names the op and the user.
    raw.request(7, protocol.HintedPut(b"k", Record(Version(1, "node2"), b"x"), "node2"))
    refusal = raw.read_frame()
    message = protocol.decode_error(Status.FORBIDDEN, refusal.body).message
    assert "HINTED_PUT" in message and user in message
    assert raw.call(8, protocol.Ping()).code == Status.OK


def test_forbidden_reaches_the_library_as_its_own_error(secured: InProcessCluster) -> None:
    reader = secured.client()
    reader.security = as_user("reader")
    with pytest.raises(ForbiddenError, match="PUT is not allowed for reader"):
        reader.put("k", b"v")
    assert reader.get("k") is None  # the same connection goes on


def test_a_process_without_the_cluster_secret_cannot_act_as_a_member(secured: InProcessCluster, connect) -> None:
    raw = connect(secured.addresses[0])
    raw.request(1, protocol.Hello(client_name="node:node2"))
    assert raw.read_frame().code == Status.OK
    reply, _ = authenticate(raw, "node:node2", "a guessed secret 0123456789")
    assert reply.code == Status.AUTH_FAILED
    # With the secret it is a member, and may send replica writes.
    member = connect(secured.addresses[0])
    member.request(1, protocol.Hello(client_name="node:node2"))
    member.read_frame()
    reply, _ = authenticate(member, "node:node2", CLUSTER_SECRET)
    assert protocol.decode_auth_reply(reply.body).role == Role.PEER
    put = member.call(5, protocol.ReplicaPut(b"k", Record(Version(1 << 20, "node2"), b"x")))
    assert put.code == Status.OK
    # A user, even an admin, may not pose as a member's link.
    posing = connect(secured.addresses[0])
    posing.request(1, protocol.Hello(client_name="node:node2"))
    posing.read_frame()
    assert authenticate(posing, "admin", PASSWORDS["admin"])[0].code == Status.AUTH_FAILED


def test_repeated_failures_are_counted_by_user(secured: InProcessCluster, connect) -> None:
    for attempt in range(2):
        raw = connect(secured.addresses[0])
        raw.hello()
        authenticate(raw, "writer" if attempt == 0 else f"guess{attempt}", "wrong")
    families = secured.node("node1").metrics.registry
    assert families.get_sample_value("kv_auth_failures_total", {"user": "writer"}) == 1
    assert families.get_sample_value("kv_auth_failures_total", {"user": "(unknown)"}) == 1


def test_no_password_or_verifier_appears_in_any_log_line(make_cluster, tmp_path: Path, log_sink) -> None:
    settings = auth_settings(tmp_path / "secrets")
    cluster = make_cluster(3, **settings)
    good = cluster.client()
    good.security = as_user("admin")
    good.put("k", b"v")
    for password in ("wrong-1", "wrong-2"):
        bad = cluster.client()
        bad.security = Security(Credentials("writer", password))
        with pytest.raises(AuthFailedError):
            bad.get("k")
    text = "\n".join(log_sink.lines)
    assert "auth_failed" in text
    secrets = [*PASSWORDS.values(), "wrong-1", "wrong-2", CLUSTER_SECRET]
    for line in Path(settings["KV_USERS_FILE"]).read_text().splitlines()[1:]:
        verifier = Verifier.parse(line.split()[2])  # its salt and both keys, as they are written
        secrets += [
            str(verifier).split(":", 1)[1],
            *(base64.b64encode(part).decode() for part in (verifier.salt, verifier.stored_key, verifier.server_key)),
        ]
    for secret in secrets:
        assert secret not in text, f"{secret!r} is in the log"


def test_users_changed_by_an_admin_apply_over_the_file(secured: InProcessCluster, connect) -> None:
    admin = secured.client()
    admin.security = as_user("admin")
    node = secured.addresses[0]
    change = protocol.UserSet(2_000, "carol", Role.READWRITE, str(make_verifier("carol-pw")))
    assert protocol.decode_user_set_reply(admin.call_node(node, change).body) is True
    assert protocol.decode_user_set_reply(admin.call_node(node, change).body) is False  # already held
    carol = RawConnection(node)
    try:
        carol.hello()
        assert authenticate(carol, "carol", "carol-pw")[0].code == Status.OK
    finally:
        carol.close()
    # Removing a user of the file hides it; an older change does not undo a newer one.
    admin.call_node(node, protocol.UserSet(3_000, "reader", Role.NONE))
    admin.call_node(node, protocol.UserSet(2_500, "reader", Role.READ, str(make_verifier("x"))))
    users = protocol.decode_users_reply(admin.call_node(node, protocol.Users()).body)
    assert [(user.user, user.role) for user in users] == [
        ("admin", Role.ADMIN),
        ("carol", Role.READWRITE),
        ("writer", Role.READWRITE),
    ]
    # The change survives a restart.
    secured.restart("node1")
    assert secured.node("node1").security.authenticator.identify("carol") is not None
    assert secured.node("node1").security.authenticator.identify("reader") is None
