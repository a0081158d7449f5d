"""The ``kv`` command line against three in-process nodes: one-shot commands, line mode, quoting,
any bytes in and out, errors."""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import time
from pathlib import Path

import pytest
from cluster import InProcessCluster, free_port
from gevent import subprocess
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client import cli, protocol
from client.cli import ValueFormat
from client.client import Client
from client.protocol import MemberView, PeerState, Record, Version
from client.quoting import QuotingError, quote

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def kv(cluster: InProcessCluster, capsys: pytest.CaptureFixture[str]):
    """Runs ``kv --nodes <cluster> ARGS...``; returns (exit code, stdout lines, stderr)."""

    def run(*args: str) -> tuple[int, list[str], str]:
        code = cli.main(["--nodes", ",".join(cluster.addresses), *args])
        captured = capsys.readouterr()
        return code, captured.out.splitlines(), captured.err

    return run


def run_lines(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], nodes: str, text: str):
    """Line mode with a text-only stdin (a StringIO, as a caller of ``main`` might pass)."""
    stdin = io.StringIO(text)
    assert not stdin.isatty()
    monkeypatch.setattr("sys.stdin", stdin)
    code = cli.main(["--nodes", nodes])
    captured = capsys.readouterr()
    return code, captured.out.splitlines(), captured.err


def run_piped(nodes: str, data: bytes, *options: str) -> tuple[int, bytes, str]:
    """``printf DATA | kv --nodes NODES OPTIONS...``: stdin and stdout are bytes under text wrappers
    that can encode nothing but ASCII, as in the C locale, so only what goes through as bytes gets
    through. Returns (exit code, stdout, stderr)."""
    stdin = io.TextIOWrapper(io.BytesIO(data), encoding="ascii")
    stdout = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
    stderr = io.StringIO()
    original_stdin, sys.stdin = sys.stdin, stdin
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = cli.main(["--nodes", nodes, *options])
    finally:
        sys.stdin = original_stdin
    stdout.flush()
    return code, stdout.buffer.getvalue(), stderr.getvalue()  # type: ignore[attr-defined]


@pytest.fixture
def pipe(cluster: InProcessCluster):
    """Runs ``printf DATA | kv --nodes <cluster> OPTIONS...``; returns (exit code, stdout lines as
    bytes, stderr as bytes)."""

    def run(data: bytes, *options: str) -> tuple[int, list[bytes], bytes]:
        code, out, err = run_piped(",".join(cluster.addresses), data, *options)
        lines = out.split(b"\n")
        assert lines.pop() == b"", out  # every line ends with a newline
        return code, lines, err.encode()

    return run


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
    assert kv("get", "multi") == (0, ['"a\\nb"'], "")


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


# --- quoting, as redis-cli does it ----------------------------------------------------------------


def test_a_quoted_key_with_a_space_is_one_key(pipe, cluster: InProcessCluster) -> None:
    assert pipe(b'PUT "a b" c\nGET "a b"\n') == (0, [b"OK", b"c"], b"")
    client = cluster.client()
    assert client.get(b"a b") == b"c"
    assert client.get(b'"a') is None  # not the key `"a` with the value `b" c`


def test_a_key_written_one_shot_reads_back_in_line_mode(kv, pipe) -> None:
    assert kv("put", "sp key", "v1") == (0, ["OK"], "")  # what the shell passes for: kv put "sp key" v1
    assert pipe(b"GET \"sp key\"\nGET 'sp key'\nGET sp key\n") == (
        0,
        [b"v1", b"v1", b"ERROR BAD_REQUEST usage: GET key"],
        b"",
    )


def test_a_quoted_value_is_taken_exactly(pipe, cluster: InProcessCluster) -> None:
    session = b'PUT pad "  padded  "\nGET pad\nPUT empty ""\nGET empty\nPUT single \' x \'\nGET single\n'
    assert pipe(session) == (0, [b"OK", b'"  padded  "', b"OK", b'""', b"OK", b'" x "'], b"")
    client = cluster.client()
    assert client.get("pad") == b"  padded  "
    assert client.get("empty") == b""  # an empty value exists: it is not a missing key
    assert client.get("single") == b" x "


def test_an_unquoted_value_is_the_rest_of_the_line_as_written(pipe, cluster: InProcessCluster) -> None:
    session = b'PUT k   hello   big  world  \nGET k\nPUT it it\'s "fine"\\n\nGET it\n'
    assert pipe(session) == (0, [b"OK", b"hello   big  world", b"OK", b'it\'s "fine"\\n'], b"")
    assert cluster.client().get("it") == b'it\'s "fine"\\n'  # quotes and backslashes inside are bytes


def test_a_stored_status_word_prints_quoted_unlike_the_status(pipe) -> None:
    session = (
        b'PUT nf NOT_FOUND\nPUT ok OK\nPUT err "ERROR BAD_REQUEST x"\nPUT q \'"quoted"\'\n'
        b"GET nf\nGET ok\nGET err\nGET q\nGET missing\n"
    )
    code, lines, _ = pipe(session)
    assert code == 0
    assert lines[4:] == [b'"NOT_FOUND"', b'"OK"', b'"ERROR BAD_REQUEST x"', b'"\\"quoted\\""', b"NOT_FOUND"]


def test_escapes_in_double_quotes(pipe, cluster: InProcessCluster) -> None:
    assert pipe(b'PUT esc "a\\nb\\t\\x41\\\\\\"\\xff"\nGET esc\n') == (0, [b"OK", b'"a\\nb\\tA\\\\\\"\\xff"'], b"")
    assert cluster.client().get("esc") == b'a\nb\tA\\"\xff'


@pytest.mark.parametrize(
    ("line", "error"),
    [
        (b'GET "abc', b"ERROR BAD_REQUEST unbalanced quotes"),
        (b'PUT k "abc', b"ERROR BAD_REQUEST unbalanced quotes"),
        (b"PUT 'k v", b"ERROR BAD_REQUEST unbalanced quotes"),
        (b'GET "a"b', b"ERROR BAD_REQUEST unbalanced quotes: a closing quote must be followed by a blank"),
        (b'PUT k "a" b', b"ERROR BAD_REQUEST a value that starts with a quote must be one quoted argument"),
    ],
)
def test_unbalanced_quotes_are_one_error_line_and_the_session_goes_on(pipe, line: bytes, error: bytes) -> None:
    code, lines, err = pipe(line + b"\nPUT after ok\nGET after\n")
    assert (code, len(lines), lines[1:], err) == (0, 3, [b"OK", b"ok"], b"")
    assert lines[0].startswith(error), lines[0]


def test_bytes_that_are_not_utf8_on_stdin(pipe, cluster: InProcessCluster) -> None:
    session = b'PUT bin \xff\xfe\nGET bin\nGET "bin"\nPUT \xff\xfe key\nGET \xff\xfe\nGET "\\xff\\xfe"\n'
    assert pipe(session) == (0, [b"OK", b'"\\xff\\xfe"', b'"\\xff\\xfe"', b"OK", b"key", b"key"], b"")
    client = cluster.client()
    assert client.get(b"bin") == b"\xff\xfe"
    assert client.get(b"\xff\xfe") == b"key"


def test_one_shot_arguments_are_the_shells_bytes(kv, pipe, cluster: InProcessCluster) -> None:
    assert kv("put", "empty", "") == (0, ["OK"], "")  # kv put empty ""
    assert kv("get", "empty") == (0, ['""'], "")  # exists, so exit 0 and not NOT_FOUND
    assert kv("put", "pad", " a ") == (0, ["OK"], "")
    assert kv("put", "bin", os.fsdecode(b"\xff\xfe")) == (0, ["OK"], "")  # kv put bin $'\xff\xfe'
    assert kv("put", "esc", "\\x41") == (0, ["OK"], "")  # no escapes: the shell did the quoting
    client = cluster.client()
    assert [client.get(key) for key in ("empty", "pad", "bin", "esc")] == [b"", b" a ", b"\xff\xfe", b"\\x41"]
    assert pipe(b'GET pad\nGET bin\nGET esc\nPUT pad " a "\n') == (
        0,
        [b'" a "', b'"\\xff\\xfe"', b"\\x41", b"OK"],
        b"",
    )


def test_raw_and_no_raw(pipe, cluster: InProcessCluster) -> None:
    client = cluster.client()
    client.put("nl", b"a\nb\xff")
    client.put("word", b"hello")
    assert pipe(b"GET nl\nGET word\nGET missing\n", "--raw") == (0, [b"a", b"b\xff", b"hello", b"NOT_FOUND"], b"")
    assert pipe(b"GET nl\nGET word\n", "--no-raw") == (0, [b'"a\\nb\\xff"', b'"hello"'], b"")
    assert pipe(b"GET nl\nGET word\n") == (0, [b'"a\\nb\\xff"', b"hello"], b"")


def test_on_a_terminal_values_print_quoted(kv, monkeypatch: pytest.MonkeyPatch) -> None:
    kv("put", "word", "hello")
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert kv("get", "word") == (0, ['"hello"'], "")
    assert kv("get", "missing") == (1, ["NOT_FOUND"], "")
    assert kv("--raw", "get", "word") == (0, ["hello"], "")


def kv_subprocess(cluster: InProcessCluster, data: bytes, *options: str) -> subprocess.CompletedProcess[bytes]:
    """``kv`` as its own process, in the C locale with an ASCII stdio encoding: nothing in the way
    bytes are read or written may depend on the locale. (gevent's subprocess, so the in-process
    nodes go on serving while the test waits for it.)"""
    env = {**os.environ, "LANG": "C", "LC_ALL": "C", "PYTHONIOENCODING": "ascii", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "client", "--nodes", ",".join(cluster.addresses), *options]
    return subprocess.run(command, input=data, capture_output=True, env=env, timeout=30, check=False)


def test_bytes_in_and_out_of_a_real_pipe_in_the_c_locale(cluster: InProcessCluster) -> None:
    session = b'PUT bin \xff\xfe\nGET bin\nGET nope\nPUT nl "a\\nb"\nGET nl\n'
    session += b"PUT caf\xc3\xa9 \xe2\x98\x95\nGET caf\xc3\xa9\n"  # UTF-8 text prints as itself
    result = kv_subprocess(cluster, session)
    assert (result.returncode, result.stderr) == (0, b"")
    assert result.stdout == b'OK\n"\\xff\\xfe"\nNOT_FOUND\nOK\n"a\\nb"\nOK\n\xe2\x98\x95\n'
    result = kv_subprocess(cluster, b"GET bin\nGET nl\n", "--raw")
    assert (result.returncode, result.stdout, result.stderr) == (0, b"\xff\xfe\na\nb\n", b"")


# --- never a traceback -------------------------------------------------------------------------------

keys_and_values = st.binary(max_size=64) | st.text(max_size=32).map(str.encode)


def is_exit(line: bytes) -> bool:
    try:
        return cli.split_command(line)[0] in ("EXIT", "QUIT")
    except QuotingError:
        return False


def reports_progress(line: bytes) -> bool:
    """REPAIR writes its progress to stderr by design (``cli._progress``): not a stray message."""
    try:
        return cli.split_command(line)[0] == "REPAIR"
    except QuotingError:
        return False


arguments = st.one_of(
    st.binary(min_size=1, max_size=12),  # blanks in it make more arguments
    keys_and_values.map(quote),
    st.sampled_from([b'"', b"'", b"\\", b'"\\x', b'""', b'"a"b', b"'\\'", b"\r", b"\x00"]),
)
line_mode_lines = st.one_of(
    st.binary(max_size=40),
    st.tuples(st.sampled_from([b"GET", b"get", b"DELETE", b"WHERE", b'"GET"']), arguments).map(b" ".join),
    st.tuples(st.sampled_from([b"PUT", b"put", b"'PUT'"]), arguments, arguments | st.binary(max_size=30)).map(
        b" ".join
    ),
    st.lists(arguments, max_size=4).map(b" ".join),
    st.sampled_from([b"", b" ", b"STATUS", b"HELP", b"GET", b"PUT k"]),
).map(lambda line: line.replace(b"\n", b" "))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lines=st.lists(line_mode_lines.filter(lambda line: not is_exit(line) and not reports_progress(line)), max_size=8),
    final_newline=st.booleans(),
)
def test_random_bytes_in_line_mode_give_one_line_per_command_and_no_traceback(
    cluster: InProcessCluster, lines: list[bytes], final_newline: bool
) -> None:
    data = b"\n".join(lines) + (b"\n" if final_newline else b"")
    commands = len(list(io.BytesIO(data)))  # lines as a pipe delivers them: the last may lack its newline
    code, output, err = run_piped(",".join(cluster.addresses), data)
    assert (code, err) == (0, "")
    printed = output.split(b"\n")
    assert printed.pop() == b""
    assert len(printed) == commands, (data, printed)
    assert not any(line.startswith(b"ERROR INTERNAL_ERROR kv failed") for line in printed), printed


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pairs=st.lists(st.tuples(keys_and_values, keys_and_values), min_size=1, max_size=5))
def test_random_keys_and_values_round_trip_through_the_cli(
    cluster: InProcessCluster, pairs: list[tuple[bytes, bytes]]
) -> None:
    """PUT each pair quoted, GET each key back on a pipe, and read the printed value as PUT's value
    again: the same bytes, whatever they are."""
    written = dict(pairs)
    session = b"".join(b"PUT " + quote(key) + b" " + quote(value) + b"\n" for key, value in written.items())
    session += b"".join(b"GET " + quote(key) + b"\n" for key in written)
    code, output, err = run_piped(",".join(cluster.addresses), session)
    assert (code, err) == (0, "")
    printed = output.split(b"\n")[:-1]
    assert printed[: len(written)] == [b"OK"] * len(written)
    for (key, value), shown in zip(written.items(), printed[len(written) :], strict=True):
        assert cli.split_command(b"PUT k " + shown) == ("PUT", [b"k", value]), (key, value, shown)


def test_an_unexpected_failure_is_one_line_and_the_session_goes_on(
    pipe, monkeypatch: pytest.MonkeyPatch, cluster: InProcessCluster
) -> None:
    def broken(self: Client, key: bytes, *, r: int | None = None) -> bytes | None:
        raise RuntimeError("boom")

    monkeypatch.setattr(Client, "get", broken)
    assert pipe(b"GET a\nPUT a 1\n") == (0, [b"ERROR INTERNAL_ERROR kv failed: RuntimeError: boom", b"OK"], b"")


def test_ctrl_c_exits_130_without_a_traceback(kv, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(self: Client, key: bytes, *, r: int | None = None) -> bytes | None:
        raise KeyboardInterrupt

    monkeypatch.setattr(Client, "get", interrupted)
    assert kv("get", "k") == (130, [], "")


class ClosedPipe(io.RawIOBase):
    """A stdout whose reader has gone, as ``kv ... | head -0`` leaves it."""

    def writable(self) -> bool:
        return True

    def write(self, data: object) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_a_closed_stdout_exits_2_without_a_traceback(
    cluster: InProcessCluster, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdout", io.TextIOWrapper(io.BufferedWriter(ClosedPipe()), encoding="ascii"))
    assert cli.main(["--nodes", ",".join(cluster.addresses), "get", "k"]) == cli.EXIT_ERROR


# --- help and how values print -------------------------------------------------------------------------


def test_help_exits_0_and_documents_kv_nodes_and_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(["--help"])
    assert caught.value.code == 0
    out = capsys.readouterr().out
    assert "KV_NODES" in out
    for usage in ("GET key", "PUT key value...", "DELETE key", "WHERE key", "STATUS", "REPAIR", "EXIT"):
        assert usage in out, usage


def test_help_answers_the_quoting_question_with_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    for text in ('"..." takes the escapes', 'PUT "sp key"', 'GET "sp key"', 'kv put k ""', "--raw", "--no-raw"):
        assert text in out, text
    interactive = io.StringIO()
    with contextlib.redirect_stdout(interactive):
        cli.run_lines(None, [b"help\n"], cli.Output(ValueFormat.QUOTED), interactive=True)  # type: ignore[arg-type]
    assert 'PUT "sp key"' in interactive.getvalue()


@pytest.mark.parametrize(
    ("value", "plain", "quoted"),
    [
        (b"plain text", "plain text", '"plain text"'),
        ("naïve ☕".encode(), "naïve ☕", '"naïve ☕"'),
        (b"a\nb", '"a\\nb"', '"a\\nb"'),
        (b"a\r\nb\tc", '"a\\r\\nb\\tc"', '"a\\r\\nb\\tc"'),
        (b"\x00\x1b[31m", '"\\x00\\x1b[31m"', '"\\x00\\x1b[31m"'),
        (b"\xff\xfe", '"\\xff\\xfe"', '"\\xff\\xfe"'),
        (b"", '""', '""'),
        (b" lead", '" lead"', '" lead"'),
        (b"trail ", '"trail "', '"trail "'),
        (b"NOT_FOUND", '"NOT_FOUND"', '"NOT_FOUND"'),
        (b"OK", '"OK"', '"OK"'),
        (b"ERROR", '"ERROR"', '"ERROR"'),
        (b"ERROR TIMEOUT x", '"ERROR TIMEOUT x"', '"ERROR TIMEOUT x"'),
        (b"OKAY", "OKAY", '"OKAY"'),
        (b'"hi"', '"\\"hi\\""', '"\\"hi\\""'),
        (b"'hi'", "\"'hi'\"", "\"'hi'\""),
        (b"C:\\dir", "C:\\dir", '"C:\\\\dir"'),
    ],
)
def test_how_a_value_prints(value: bytes, plain: str, quoted: str) -> None:
    assert cli.format_value(value, ValueFormat.PLAIN) == plain.encode()
    assert cli.format_value(value, ValueFormat.QUOTED) == quoted.encode()
    assert cli.format_value(value, ValueFormat.RAW) == value


@given(
    key=keys_and_values, value=keys_and_values, value_format=st.sampled_from([ValueFormat.PLAIN, ValueFormat.QUOTED])
)
def test_a_printed_value_reads_back_as_the_same_bytes(key: bytes, value: bytes, value_format: ValueFormat) -> None:
    printed = cli.format_value(value, value_format)
    assert b"\n" not in printed and b"\r" not in printed  # one line
    line = b"PUT " + cli.format_value(key, ValueFormat.QUOTED) + b" " + printed + b"\n"
    assert cli.split_command(line) == ("PUT", [key, value])
    assert cli.split_command(b"get " + cli.format_value(key, ValueFormat.QUOTED)) == ("GET", [key])


@given(key=keys_and_values.filter(bool), value=keys_and_values)
def test_one_shot_arguments_map_to_the_same_command_as_a_quoted_line(key: bytes, value: bytes) -> None:
    argv = [os.fsdecode(key), os.fsdecode(value)]  # what Python makes of the shell's bytes
    assert cli.one_shot_command("put", argv) == ("PUT", [key, value])
    assert cli.one_shot_command("put", argv) == cli.split_command(
        b"PUT " + cli.format_value(key, ValueFormat.QUOTED) + b" " + cli.format_value(value, ValueFormat.QUOTED)
    )


def test_an_error_message_is_printed_on_one_line() -> None:
    assert cli.one_line("node said:\nsecond line\x1b[31m \udcff") == b"node said:\\nsecond line\\x1b[31m \\udcff"


def test_kv_bench_where_the_bench_package_is_missing_is_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delitem(sys.modules, "bench.cli", raising=False)
    monkeypatch.setitem(sys.modules, "bench", None)  # what an install without the package looks like to import
    assert cli.main(["bench", "--help"]) == cli.EXIT_ERROR
    err = capsys.readouterr().err
    assert err.startswith("kv bench: the bench package is not installed") and err.count("\n") == 1
