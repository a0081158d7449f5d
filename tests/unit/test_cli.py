"""The ``kv`` command line against three in-process nodes: one-shot commands, line mode, errors."""

from __future__ import annotations

import io
import re
import sys
import time

import pytest
from cluster import InProcessCluster, free_port
from hypothesis import given
from hypothesis import strategies as st

from client import cli, protocol
from client.protocol import MemberView, PeerState, Record, Version


@pytest.fixture
def kv(cluster: InProcessCluster, capsys: pytest.CaptureFixture[str]):
    """Runs ``kv --nodes <cluster> ARGS...``; returns (exit code, stdout lines, stderr)."""

    def run(*args: str) -> tuple[int, list[str], str]:
        code = cli.main(["--nodes", ",".join(cluster.addresses), *args])
        captured = capsys.readouterr()
        return code, captured.out.splitlines(), captured.err

    return run


def run_lines(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], nodes: str, text: str):
    stdin = io.StringIO(text)
    assert not stdin.isatty()
    monkeypatch.setattr("sys.stdin", stdin)
    code = cli.main(["--nodes", nodes])
    captured = capsys.readouterr()
    return code, captured.out.splitlines(), captured.err


# --- one-shot commands -----------------------------------------------------------------------------


def test_put_then_get_joins_the_rest_of_the_line(kv) -> None:
    assert kv("put", "k", "hello", "world") == (0, ["OK"], "")
    assert kv("get", "k") == (0, ["hello world"], "")
    assert kv("GET", "k") == (0, ["hello world"], "")  # commands are case-insensitive


def test_get_of_a_missing_key_prints_not_found_and_exits_1(kv) -> None:
    assert kv("get", "nope") == (1, ["NOT_FOUND"], "")


def test_delete_then_get(kv) -> None:
    kv("put", "gone", "soon")
    assert kv("delete", "gone") == (0, ["OK"], "")
    assert kv("get", "gone") == (1, ["NOT_FOUND"], "")


def test_where_prints_the_replica_addresses_on_one_line(kv, cluster: InProcessCluster) -> None:
    code, lines, _ = kv("where", "k")
    assert code == 0
    assert lines == [" ".join(cluster.address(node_id) for node_id in cluster.replicas_of("k"))]


def test_status_prints_every_node_as_the_first_node_sees_it(kv, cluster: InProcessCluster) -> None:
    code, lines, err = kv("status")
    assert (code, err) == (0, "")
    everyone_up = ", ".join(f"{node_id} {cluster.address(node_id)} up" for node_id in cluster.node_ids)
    assert lines == [f"{everyone_up} [as seen by node1]"]

    cluster.stop("node3")
    cluster.settle()  # node1's failure detector has noticed
    code, lines, _ = kv("status")
    assert code == 2
    assert len(lines) == 1
    assert re.fullmatch(
        rf"node1 {cluster.address('node1')} up, node2 {cluster.address('node2')} up, "
        rf"node3 {cluster.address('node3')} suspect for [0-9]+s \[as seen by node1\]",
        lines[0],
    ), lines[0]


def test_status_counts_the_hints_the_viewer_holds(kv, cluster: InProcessCluster) -> None:
    ring = cluster.ring()
    key = next(
        f"hinted-{i}"
        for i in range(10_000)
        if ring.partition_owners(ring.partition(f"hinted-{i}".encode()))[1:] == ("node3", "node1")
    )  # node1 is the fallback that holds node3's writes for this key
    cluster.stop("node3")
    cluster.settle()
    assert kv("put", key, "held") == (0, ["OK"], "")
    code, lines, _ = kv("status")
    assert code == 2
    assert re.search(
        rf"node3 {cluster.address('node3')} suspect for [0-9]+s \(1 hints held for it\) \[as seen", lines[0]
    )
    assert f"node2 {cluster.address('node2')} up, " in lines[0]  # no hints are held for node2


class StubClient:
    """Just what STATUS asks of a client: ``members()`` and ``node_address()``."""

    def __init__(self, viewer: str, members: list[MemberView]) -> None:
        self._viewer = viewer
        self._members = members

    def members(self) -> tuple[str, list[MemberView]]:
        return self._viewer, self._members

    def node_address(self, node_id: str) -> str:
        return f"{node_id}.example:5000"


@pytest.mark.parametrize(
    ("state", "seconds", "shown"),
    [
        (PeerState.DOWN, 5, "down for 5s"),
        (PeerState.DOWN, 600, "down for 10m"),
        (PeerState.SUSPECT, 3 * 3600, "suspect for 3.0h"),
        (PeerState.DOWN, None, "down"),  # never seen up: no duration
    ],
)
def test_status_shows_how_long_a_node_has_been_down(state: PeerState, seconds: int | None, shown: str) -> None:
    since_ms = 0 if seconds is None else int(time.time() * 1000) - seconds * 1000 - 400
    members = [MemberView("a", PeerState.UP, 1, 0), MemberView("b", state, since_ms, 7)]
    outcome = cli.run_command(StubClient("a", members), "STATUS", [])  # type: ignore[arg-type]
    assert outcome.exit_code == 2
    assert outcome.line == f"a a.example:5000 up, b b.example:5000 {shown} (7 hints held for it) [as seen by a]"


@pytest.mark.parametrize(
    ("flags", "shown"),
    [(protocol.PING_FLAG_STORAGE_FULL, "up (storage full)"), (protocol.PING_FLAG_CATCHING_UP, "up (catching up)")],
)
def test_status_shows_a_node_whose_store_is_full_or_catching_up(flags: int, shown: str) -> None:
    members = [MemberView("a", PeerState.UP, 1, 0), MemberView("b", PeerState.UP, 1, 40, flags)]
    outcome = cli.run_command(StubClient("a", members), "STATUS", [])  # type: ignore[arg-type]
    assert outcome.exit_code == 2  # degraded: a script checking the exit status sees it
    assert outcome.line == f"a a.example:5000 up, b b.example:5000 {shown} (40 hints held for it) [as seen by a]"


def test_status_of_an_unreachable_cluster_is_one_error_line(capsys: pytest.CaptureFixture[str]) -> None:
    nodes = f"127.0.0.1:{free_port()}"
    assert cli.main(["--nodes", nodes, "status"]) == 2
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("ERROR UNREACHABLE ")


REPAIR_LINE = re.compile(r"OK (\d+) partitions compared, (\d+) keys differed, (\d+) copied")


def comparisons(cluster: InProcessCluster, nodes: list[str] | None = None) -> int:
    """Partition comparisons one round on every node makes: per partition, each replica in ``nodes``
    with each other replica in ``nodes``."""
    ring = cluster.ring()
    members = set(nodes or cluster.node_ids)
    total = 0
    for partition in range(ring.partitions):
        owners = [node_id for node_id in ring.partition_owners(partition)[: cluster.config.n] if node_id in members]
        total += len(owners) * (len(owners) - 1)
    return total


def test_repair_reports_what_every_node_compared_and_copied(kv, cluster: InProcessCluster) -> None:
    kv("put", "in-sync", "v")
    key = "out-of-sync"
    first, second = cluster.replicas_of(key)
    node = cluster.node(first)
    record = Record(Version(node.clock.now(), first), b"only on one replica")
    node.store.write(key.encode(), record)  # as if the write to the second replica was lost

    code, lines, err = kv("repair")
    assert code == 0
    assert lines == [f"OK {comparisons(cluster)} partitions compared, 1 keys differed, 1 copied"]
    progress = err.splitlines()
    assert [line.split(":")[0] for line in progress] == [
        f"repair {i}/3 {node_id}" for i, node_id in enumerate(cluster.node_ids, 1)
    ]
    assert all(REPAIR_LINE.search("OK" + line.split(":", 1)[1]) for line in progress), progress
    assert cluster.node(second).storage.get(key.encode()) == record

    code, lines, _ = kv("repair")
    assert (code, lines) == (0, [f"OK {comparisons(cluster)} partitions compared, 0 keys differed, 0 copied"])


def test_repair_with_a_node_down_names_what_was_not_compared(kv, cluster: InProcessCluster) -> None:
    cluster.stop("node3")
    code, lines, err = kv("repair")
    assert code == 2
    assert lines == [
        f"ERROR UNREACHABLE {comparisons(cluster, ['node1', 'node2'])} partitions compared, 0 keys differed, "
        "0 copied; not compared: node1->node3, node2->node3, node3"
    ]
    assert "repair 3/3 node3: ERROR UNREACHABLE" in err


def test_a_value_with_a_newline_prints_on_one_line(kv) -> None:
    assert kv("put", "multi", "a\nb") == (0, ["OK"], "")
    assert kv("get", "multi") == (0, ["a\\nb"], "")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["frob", "k"], "ERROR BAD_REQUEST unknown command 'FROB'"),
        (["get"], "ERROR BAD_REQUEST usage: GET key"),
        (["get", "a", "b"], "ERROR BAD_REQUEST usage: GET key"),
        (["put", "k"], "ERROR BAD_REQUEST usage: PUT key value"),
        (["status", "extra"], "ERROR BAD_REQUEST usage: STATUS"),
        (["repair", "node1"], "ERROR BAD_REQUEST usage: REPAIR"),
    ],
)
def test_bad_one_shot_input_is_one_error_line(kv, args: list[str], expected: str) -> None:
    code, lines, err = kv(*args)
    assert code == 2
    assert len(lines) == 1
    assert lines[0].startswith(expected)
    assert err == ""


def test_nodes_come_from_kv_nodes(
    cluster: InProcessCluster, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KV_NODES", ",".join(cluster.addresses))
    assert cli.main(["put", "env", "works"]) == 0
    assert cli.main(["get", "env"]) == 0
    assert capsys.readouterr().out.splitlines() == ["OK", "works"]


def test_a_bad_nodes_option_is_one_error_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--nodes", "127.0.0.1:notaport", "get", "k"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("ERROR BAD_REQUEST --nodes:")
    assert len(captured.err.splitlines()) == 1


@pytest.mark.parametrize("nodes", ["127.0.0.1:1", "free"])
def test_an_unreachable_cluster_is_one_error_line_without_traceback(
    capsys: pytest.CaptureFixture[str], nodes: str
) -> None:
    if nodes == "free":
        nodes = f"127.0.0.1:{free_port()}"
    code = cli.main(["--nodes", nodes, "get", "k"])
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.out.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("ERROR UNREACHABLE ")
    assert nodes in lines[0]
    assert "Traceback" not in captured.out + captured.err
    assert captured.err == ""


def test_a_key_too_long_for_the_protocol_is_one_error_line(kv) -> None:
    code, lines, _ = kv("get", "k" * 70_000)
    assert code == 2
    assert len(lines) == 1
    assert lines[0].startswith("ERROR KEY_TOO_LARGE")


# --- line mode -------------------------------------------------------------------------------------


def test_line_mode_runs_the_seed_session(
    cluster: InProcessCluster, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    session = "PUT foo bar\nGET foo\nDELETE foo\nGET foo\nEXIT\n"
    code, lines, err = run_lines(monkeypatch, capsys, ",".join(cluster.addresses), session)
    assert (code, lines, err) == (0, ["OK", "bar", "OK", "NOT_FOUND"], "")


def test_line_mode_stops_at_exit_and_at_end_of_input(
    cluster: InProcessCluster, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    nodes = ",".join(cluster.addresses)
    _, lines, _ = run_lines(monkeypatch, capsys, nodes, "PUT a 1\nquit\nPUT a 2\n")
    assert lines == ["OK"]
    _, lines, _ = run_lines(monkeypatch, capsys, nodes, "GET a\nput b two words")  # no final newline
    assert lines == ["1", "OK"]
    _, lines, _ = run_lines(monkeypatch, capsys, nodes, "get b\n")
    assert lines == ["two words"]


def test_line_mode_prints_one_error_line_per_bad_command(
    cluster: InProcessCluster, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    session = "FROB x\nGET\nPUT onlykey\nDELETE a b\n\nGET missing\nHELP\n"
    code, lines, err = run_lines(monkeypatch, capsys, ",".join(cluster.addresses), session)
    assert code == 0
    assert err == ""
    assert len(lines) == 7, lines
    assert lines[0] == "ERROR BAD_REQUEST unknown command 'FROB'; try HELP"
    assert lines[1] == "ERROR BAD_REQUEST usage: GET key"
    assert lines[2] == "ERROR BAD_REQUEST usage: PUT key value..."
    assert lines[3] == "ERROR BAD_REQUEST usage: DELETE key"
    assert lines[4] == "ERROR BAD_REQUEST empty command"
    assert lines[5] == "NOT_FOUND"
    assert all(name in lines[6] for name in ("GET", "PUT", "DELETE", "WHERE", "STATUS", "REPAIR"))


def test_line_mode_against_an_unreachable_cluster(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, lines, err = run_lines(monkeypatch, capsys, "127.0.0.1:1", "GET a\nPUT a b\n")
    assert code == 0
    assert len(lines) == 2
    assert all(line.startswith("ERROR UNREACHABLE ") for line in lines)
    assert "Traceback" not in err


# --- help and printable ----------------------------------------------------------------------------


def test_help_exits_0_and_documents_kv_nodes_and_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(["--help"])
    assert caught.value.code == 0
    out = capsys.readouterr().out
    assert "KV_NODES" in out
    for usage in ("GET key", "PUT key value...", "DELETE key", "WHERE key", "STATUS", "REPAIR", "EXIT"):
        assert usage in out, usage


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"plain text", "plain text"),
        ("naïve ☕".encode(), "naïve ☕"),
        (b"a\nb", "a\\nb"),
        (b"a\r\nb\tc", "a\\r\\nb\\tc"),
        (b"\x00\x1b[31m", "\\x00\\x1b[31m"),
        (b"\xff\xfe", "\\xff\\xfe"),
        (b"", ""),
    ],
)
def test_printable_escapes_control_characters(value: bytes, expected: str) -> None:
    assert cli.printable(value) == expected


@given(st.binary(max_size=64) | st.text(max_size=32).map(str.encode))
def test_printable_is_always_one_printable_line(value: bytes) -> None:
    text = cli.printable(value)
    assert text.isprintable()
    assert len(text.splitlines()) <= 1
    if value.isascii() and all(0x20 <= byte < 0x7F for byte in value):
        assert text == value.decode()


def test_kv_bench_where_the_bench_package_is_missing_is_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delitem(sys.modules, "bench.cli", raising=False)
    monkeypatch.setitem(sys.modules, "bench", None)  # what an install without the package looks like to import
    assert cli.main(["bench", "--help"]) == cli.EXIT_ERROR
    err = capsys.readouterr().err
    assert err.startswith("kv bench: the bench package is not installed") and err.count("\n") == 1
