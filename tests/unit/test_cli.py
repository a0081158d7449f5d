"""The ``kv`` command line against three in-process nodes: one-shot commands, line mode, errors."""

from __future__ import annotations

import io

import pytest
from cluster import InProcessCluster, free_port
from hypothesis import given
from hypothesis import strategies as st

from client import cli


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


def test_status_prints_every_node_and_fails_when_one_is_down(kv, cluster: InProcessCluster) -> None:
    code, lines, _ = kv("status")
    assert code == 0
    assert lines == [", ".join(f"{node_id} {cluster.address(node_id)} up" for node_id in cluster.node_ids)]

    cluster.stop("node3")
    code, lines, _ = kv("status")
    assert code == 2
    assert len(lines) == 1
    assert f"node3 {cluster.address('node3')} down" in lines[0]
    assert f"node1 {cluster.address('node1')} up" in lines[0]


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
    assert all(name in lines[6] for name in ("GET", "PUT", "DELETE", "WHERE", "STATUS"))


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
    for usage in ("GET key", "PUT key value...", "DELETE key", "WHERE key", "STATUS", "EXIT"):
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
