"""The Redis-protocol port (KV_RESP_PORT) driven by real Redis tools against in-process nodes: redis-py,
Debian's redis-cli and redis-benchmark, and raw sockets for pipelining, inline commands and bad input.

redis-py 8 asks for RESP3 (HELLO 3) by default; the data and connection tests run with it and with
``protocol=2``. redis-py uses blocking standard sockets, and these tests' nodes run on this thread's gevent hub, so
every redis-py call runs in the hub's thread pool (``off_hub``) while the test's greenlet waits and
the nodes go on serving. The Redis tools run as cooperative subprocesses for the same reason.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import gevent
import gevent.subprocess
import pytest
import redis
from cluster import InProcessCluster, LogSink
from gevent import socket
from polling import wait_until

from client.resp import ReplyParser, RespError, encode_command
from service.resp_handler import COMMANDS

T = TypeVar("T")
READ_TIMEOUT = 5.0
BINARY_VALUE = bytes(range(256)) + b"\r\n$-1\r\n*1\r\n"  # every byte, and RESP's own markers
REDIS_CLI = shutil.which("redis-cli")
REDIS_BENCHMARK = shutil.which("redis-benchmark")
needs_redis_cli = pytest.mark.skipif(
    REDIS_CLI is None, reason="redis-cli is not installed (apt-get install redis-server)"
)
needs_redis_benchmark = pytest.mark.skipif(REDIS_BENCHMARK is None, reason="redis-benchmark is not installed")


def off_hub(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``function(*args, **kwargs)`` in a thread of the hub's pool: a blocking call that must not
    stop the in-process nodes, which run on this thread's hub."""
    result: T = gevent.get_hub().threadpool.apply(function, args, kwargs)
    return result


class Threaded:
    """A redis-py client whose every method call runs ``off_hub``."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.client, name)
        return lambda *args, **kwargs: off_hub(method, *args, **kwargs)


@pytest.fixture
def redis_py(make_cluster: Callable[..., InProcessCluster]) -> Iterator[Callable[..., Threaded]]:
    """Makes redis-py clients for a node, ``redis_py(cluster, "node1", protocol=2)``, closed at teardown
    (before the nodes stop, which would otherwise wait for them to hang up)."""
    clients: list[redis.Redis] = []

    def connect(cluster: InProcessCluster, node_id: str = "node1", **kwargs: Any) -> Threaded:
        client = redis.Redis("127.0.0.1", cluster.resp_ports[node_id], socket_timeout=READ_TIMEOUT, **kwargs)
        clients.append(client)
        return Threaded(client)

    yield connect
    for client in clients:
        off_hub(client.close)


class RawResp:
    """A bare socket to a node's Redis port: bytes out, parsed replies in, and whether it closed."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT)
        self.parser = ReplyParser()
        self.replies: list[Any] = []
        self.eof = False

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read(self, count: int, timeout: float = READ_TIMEOUT) -> list[Any]:
        """The next ``count`` replies; fewer only if the node closed the connection first."""
        deadline = time.monotonic() + timeout
        while len(self.replies) < count and not self.eof:
            self.sock.settimeout(max(0.001, deadline - time.monotonic()))
            try:
                data = self.sock.recv(1 << 16)
            except ConnectionResetError:
                data = b""
            if not data:
                self.eof = True
            self.replies += self.parser.feed(data)
        taken, self.replies = self.replies[:count], self.replies[count:]
        return taken

    def closed_by_node(self, timeout: float = READ_TIMEOUT) -> bool:
        self.read(1, timeout)
        return self.eof

    def close(self) -> None:
        self.sock.close()


def as_text(value: bytes | str) -> str:
    """redis-py decodes some replies in RESP3 and not in RESP2."""
    return value.decode() if isinstance(value, bytes) else value


def run_tool(*command: str, stdin: bytes | None = None) -> str:
    result = gevent.subprocess.run(command, input=stdin, capture_output=True, timeout=60, check=False)
    assert result.returncode == 0, (command, result.returncode, result.stdout, result.stderr)
    output: str = result.stdout.decode("utf-8", errors="replace")
    return output


def requests_counted(cluster: InProcessCluster, node_id: str, op: str, status: str) -> float:
    registry = cluster.node(node_id).metrics.registry
    return registry.get_sample_value("kv_requests_total", {"op": op, "status": status}) or 0.0


@pytest.fixture(params=[3, 2], ids=["resp3", "resp2"])
def protocol(request: pytest.FixtureRequest) -> int:
    """The RESP version redis-py speaks: 3, its default, or 2."""
    version: int = request.param
    return version


@pytest.fixture
def single(make_cluster: Callable[..., InProcessCluster]) -> InProcessCluster:
    """One node with its Redis port and small limits, so oversize input is cheap to send."""
    return make_cluster(1, resp=True, KV_MAX_KEY_BYTES="64", KV_MAX_VALUE_BYTES="4096")


@pytest.fixture
def trio(make_cluster: Callable[..., InProcessCluster]) -> InProcessCluster:
    """Three nodes with N=2, W=2, R=1, each with its Redis port. The three share this process's
    event loop, so while one coordinates a long pipeline the others answer late; with the default
    request timeout (2 s) a peer silent for half a second counts as stalled and is routed around,
    and on a loaded machine writes then failed for want of a fallback. These tests are about the
    Redis protocol, not slow peers (test_slow_nodes.py), so the peers get 8 s (2 s to stall)."""
    return make_cluster(3, resp=True, KV_REQUEST_TIMEOUT_MS="8000")


# --- data commands through redis-py ---------------------------------------------------------------------


def test_redis_py_gets_sets_and_deletes_binary_values(
    single: InProcessCluster, protocol: int, redis_py: Callable[..., Threaded]
) -> None:
    r = redis_py(single, protocol=protocol)
    assert r.set("user:1", BINARY_VALUE) is True
    assert r.get("user:1") == BINARY_VALUE
    assert r.set(BINARY_VALUE[:40], b"") is True  # binary key, empty value
    assert r.get(BINARY_VALUE[:40]) == b""
    assert r.get("missing") is None
    assert r.delete("user:1", "missing", "user:1") == 1  # DEL counts the distinct keys that existed
    assert r.get("user:1") is None
    assert r.delete("user:1") == 0


def test_redis_py_exists_mget_and_mset(
    single: InProcessCluster, protocol: int, redis_py: Callable[..., Threaded]
) -> None:
    r = redis_py(single, protocol=protocol)
    assert r.mset({"a": b"1", "b": BINARY_VALUE, "c": b"3"}) is True
    assert r.mget("a", "missing", "b", "c") == [b"1", None, BINARY_VALUE, b"3"]
    assert r.exists("a", "missing", "a", "c") == 3  # EXISTS counts a key as often as it is named
    assert r.execute_command("MSET", "a", "x", "a", "y") is True  # the last value given wins
    assert r.get("a") == b"y"


def test_set_options_are_refused_by_name_and_nothing_is_written(
    single: InProcessCluster, redis_py: Callable[..., Threaded]
) -> None:
    r = redis_py(single)
    for options, named in [
        ({"ex": 10}, "EX"),
        ({"px": 10}, "PX"),
        ({"nx": True}, "NX"),
        ({"xx": True}, "XX"),
        ({"keepttl": True}, "KEEPTTL"),
        ({"get": True}, "GET"),
        ({"exat": 2_000_000_000}, "EXAT"),
    ]:
        with pytest.raises(redis.ResponseError, match=f"SET option {named} is not supported"):
            r.set("k", "v", **options)
    with pytest.raises(redis.ResponseError, match="syntax error"):
        r.execute_command("SET", "k", "v", "BOGUS")
    assert r.get("k") is None


def test_limits_give_clear_errors_and_the_connection_goes_on(
    single: InProcessCluster, redis_py: Callable[..., Threaded]
) -> None:
    r = redis_py(single)
    with pytest.raises(redis.ResponseError, match=r"^KEY_TOO_LARGE key of 65 bytes exceeds the limit of 64"):
        r.set("k" * 65, "v")
    with pytest.raises(redis.ResponseError, match=r"^VALUE_TOO_LARGE value of 4097 bytes"):
        r.set("k", b"v" * 4097)
    with pytest.raises(redis.ResponseError, match=r"^KEY_TOO_LARGE"):
        r.mget("ok", "k" * 65)
    with pytest.raises(redis.ResponseError, match=r"^VALUE_TOO_LARGE"):
        r.mset({"a": b"1", "b": b"v" * 4097})
    assert r.get("a") is None  # MSET checks every key and value before writing any
    assert r.set("k", b"v" * 4096) is True
    assert r.ping() is True


# --- connection and introspection commands ------------------------------------------------------------


def test_connection_commands_answer_as_redis_does(
    single: InProcessCluster, protocol: int, redis_py: Callable[..., Threaded]
) -> None:
    r = redis_py(single, client_name="tester", protocol=protocol)
    assert r.ping() is True
    assert r.echo(BINARY_VALUE) == BINARY_VALUE
    assert r.execute_command("SELECT", 0) is True
    with pytest.raises(redis.ResponseError, match="DB index is out of range"):
        r.execute_command("SELECT", 1)
    with pytest.raises(redis.ResponseError, match="not an integer"):
        r.execute_command("SELECT", "zero")
    assert as_text(r.client_getname()) == "tester"
    assert r.client_setname("renamed") is True
    assert as_text(r.client_getname()) == "renamed"
    with pytest.raises(redis.ResponseError, match="cannot contain spaces"):
        r.client_setname("two words")
    client_id = r.client_id()
    assert isinstance(client_id, int) and client_id > 0
    info = r.client_info()
    assert info["id"] == client_id and info["name"] == "renamed"
    assert info["lib-name"].startswith("redis-py")  # redis-py sent CLIENT SETINFO on connect
    assert info["resp"] == str(protocol)
    assert any(entry["name"] == "renamed" for entry in r.client_list())
    with pytest.raises(redis.ResponseError, match="unknown subcommand 'KILL'"):
        r.execute_command("CLIENT", "KILL", "x")


def test_hello_chooses_resp2_or_resp3_and_auth_says_there_are_no_users(
    single: InProcessCluster, redis_py: Callable[..., Threaded]
) -> None:
    r = redis_py(single, protocol=2)
    hello = r.execute_command("HELLO", 2, "SETNAME", "greeted")
    fields = dict(zip(hello[::2], hello[1::2], strict=True))
    assert fields[b"proto"] == 2 and fields[b"server"] == b"redis" and fields[b"id"] == r.client_id()
    assert as_text(r.client_getname()) == "greeted"
    assert r.execute_command("HELLO")[:2] == [b"server", b"redis"]
    with pytest.raises(redis.ResponseError, match=r"^NOPROTO"):
        r.execute_command("HELLO", 4)
    assert redis_py(single).execute_command("HELLO")[b"proto"] == 3  # redis-py's default: a RESP3 map
    with pytest.raises(redis.ResponseError, match="this node has no users"):
        r.execute_command("AUTH", "secret")
    with pytest.raises(redis.ResponseError, match="this node has no users"):
        r.execute_command("HELLO", 2, "AUTH", "default", "secret")
    with pytest.raises(redis.ResponseError, match="DB index is out of range"):  # refused at connect
        redis_py(single, db=1).ping()


def test_info_command_and_config_get(
    single: InProcessCluster, protocol: int, redis_py: Callable[..., Threaded]
) -> None:
    r = redis_py(single, protocol=protocol)
    r.set("counted", "1")
    info = r.info()
    assert info["redis_version"] == "7.0.0" and info["redis_mode"] == "standalone"
    assert info["role"] == "master"
    assert info["kv_node_id"] == "node1" and info["node_id"] == "node1"
    assert info["tcp_port"] == single.resp_ports["node1"]
    assert info["connected_clients"] >= 1
    assert info["db0"]["keys"] == 1
    assert info["read_quorum"] == 1 and info["write_quorum"] == 1
    assert set(r.info("server")) >= {"redis_version", "kv_node_id"} and "role" not in r.info("server")
    assert r.execute_command("INFO", "nosuchsection") == {}  # an empty text, as redis-py parses it

    assert r.command_count() == len(COMMANDS)
    listed = r.command()  # redis-py reads Redis 7's ten fields of each entry
    assert set(listed) == {name.decode().lower() for name in COMMANDS}
    assert listed["get"]["arity"] == 2 and set(listed["get"]["flags"]) == {"readonly", "fast"}
    assert (listed["mset"]["first_key_pos"], listed["mset"]["last_key_pos"], listed["mset"]["step_count"]) == (1, -1, 2)
    conn = RawResp(single.resp_ports["node1"])
    conn.send(encode_command("COMMAND", "INFO", "get", "nosuch") + encode_command("COMMAND", "DOCS"))
    assert conn.read(2) == [[[b"get", 2, [b"readonly", b"fast"], 1, 1, 1, [], [], [], []], None], []]
    conn.close()
    assert r.config_get("append*") == {"appendonly": "yes", "appendfsync": "always"}
    assert r.config_get("maxmemory") == {}
    with pytest.raises(redis.ResponseError, match="only CONFIG GET"):
        r.config_set("maxmemory", "1")


def test_every_listed_command_answers_without_an_internal_error(single: InProcessCluster) -> None:
    conn = RawResp(single.resp_ports["node1"])
    names = [name.decode() for name in COMMANDS if name != b"QUIT"]
    for name in names:
        conn.send(encode_command(name, "k", "v"))
    replies = conn.read(len(names))
    assert len(replies) == len(names)
    for name, reply in zip(names, replies, strict=True):
        assert not (isinstance(reply, RespError) and reply.kind == "INTERNAL_ERROR"), (name, reply)


def test_unknown_commands_and_wrong_arity_get_redis_errors(
    single: InProcessCluster, redis_py: Callable[..., Threaded]
) -> None:
    r = redis_py(single)
    with pytest.raises(redis.ResponseError) as caught:
        r.execute_command("FLUSHALL", "ASYNC", "x\r\ny")
    assert str(caught.value) == "unknown command 'FLUSHALL', with args beginning with: 'ASYNC' 'x  y' "
    with pytest.raises(redis.ResponseError, match="wrong number of arguments for 'get' command"):
        r.execute_command("GET")
    with pytest.raises(redis.ResponseError, match="wrong number of arguments for 'mset' command"):
        r.execute_command("MSET", "a", "1", "b")
    with pytest.raises(redis.ResponseError, match="wrong number of arguments for 'ping' command"):
        r.execute_command("PING", "a", "b")
    assert requests_counted(single, "node1", "RESP_UNKNOWN", "ERR") == 1  # one label for every unknown name
    assert r.get("still") is None


# --- pipelining, inline commands, bad input --------------------------------------------------------------


def test_a_pipeline_gets_replies_in_order_and_reads_its_own_writes(
    trio: InProcessCluster, redis_py: Callable[..., Threaded]
) -> None:
    """Through node1, which coordinates keys it holds no copy of: writes wait on other nodes, and reads
    either answer at once or wait, yet every GET sees the SET sent before it on the connection."""
    r = redis_py(trio)
    pipe = r.client.pipeline(transaction=False)
    expected: list[Any] = []
    for i in range(300):
        key = f"p{i % 40}"  # 40 keys, each written several times, so order on a key matters
        pipe.set(key, f"v{i}")
        pipe.get(key)
        pipe.ping()
        expected += [True, f"v{i}".encode(), True]
    pipe.mget("p0", "p39")
    expected.append([b"v280", b"v279"])
    pipe.delete("p0", "p1", "never")
    expected.append(2)
    assert off_hub(pipe.execute) == expected


def test_more_commands_in_flight_than_the_limit_are_all_answered_in_order(single: InProcessCluster) -> None:
    conn = RawResp(single.resp_ports["node1"])
    count = 1500  # well over MAX_IN_FLIGHT_PER_CONNECTION, so the session stops reading and resumes
    writes = b"".join(encode_command("SET", f"k{i}", f"v{i}") + encode_command("GET", f"k{i}") for i in range(count))
    heavy = encode_command("MGET", *(f"k{i}" for i in range(400)))  # more keys than the limit: waits its turn
    conn.send(writes + heavy + encode_command("PING"))
    replies = conn.read(2 * count + 2, timeout=30)
    assert replies[: 2 * count] == [item for i in range(count) for item in ("OK", f"v{i}".encode())]
    assert replies[2 * count :] == [[f"v{i}".encode() for i in range(400)], "PONG"]


def test_resp3_changes_only_null_and_maps(single: InProcessCluster) -> None:
    conn = RawResp(single.resp_ports["node1"])
    conn.send(b"HELLO 3\r\n")
    conn.read(0, timeout=0.5)
    conn.sock.settimeout(READ_TIMEOUT)
    received = b""
    conn.send(b"GET nothing\r\nMGET nothing\r\nCONFIG GET appendonly\r\nPING\r\n")
    expected = b"_\r\n*1\r\n_\r\n%1\r\n$10\r\nappendonly\r\n$3\r\nyes\r\n+PONG\r\n"
    deadline = time.monotonic() + READ_TIMEOUT
    while not received.endswith(expected) and time.monotonic() < deadline:
        received += conn.sock.recv(1 << 16)
    assert received.startswith(b"%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n") and received.endswith(expected)


def test_inline_commands_work_as_typed_into_telnet(single: InProcessCluster) -> None:
    conn = RawResp(single.resp_ports["node1"])
    conn.send(b'PING\r\nSET greeting "hello world\\n"\r\nget greeting\nEXISTS greeting nothing\r\nping "hi there"\r\n')
    assert conn.read(5) == ["PONG", "OK", b"hello world\n", 1, b"hi there"]
    conn.send(b'GET "unbalanced\r\n')
    assert conn.read(1) == [RespError("ERR Protocol error: unbalanced quotes in request")]
    assert conn.closed_by_node()


def test_quit_answers_then_closes_after_the_replies_before_it(
    single: InProcessCluster, redis_py: Callable[..., Threaded]
) -> None:
    conn = RawResp(single.resp_ports["node1"])
    conn.send(encode_command("SET", "q", "1") + encode_command("QUIT") + encode_command("SET", "q", "2"))
    assert conn.read(3) == ["OK", "OK"]
    assert conn.eof
    assert redis_py(single).get("q") == b"1"  # nothing after QUIT ran


@pytest.mark.parametrize(
    ("garbage", "error"),
    [
        (b"*1\r\n:1\r\n", "ERR Protocol error: expected '$', got ':'"),
        (b"*x\r\n", "ERR Protocol error: invalid multibulk length"),
        (b"*1\r\n$-5\r\n", "ERR Protocol error: invalid bulk length"),
        (b"*1\r\n$2\r\nabcd\r\n", "ERR Protocol error: bulk string of 2 bytes is not followed by CRLF"),
    ],
)
def test_malformed_input_ends_that_connection_only(single: InProcessCluster, garbage: bytes, error: str) -> None:
    bystander = RawResp(single.resp_ports["node1"])
    conn = RawResp(single.resp_ports["node1"])
    conn.send(encode_command("SET", "before", "1") + garbage + encode_command("SET", "after", "1"))
    assert conn.read(3) == ["OK", RespError(error)]
    assert conn.eof
    bystander.send(encode_command("GET", "before") + encode_command("GET", "after"))
    assert bystander.read(2) == [b"1", None]


def test_an_oversize_command_is_refused_before_its_bytes_arrive(
    single: InProcessCluster, redis_py: Callable[..., Threaded]
) -> None:
    limit = single.config.max_frame_bytes
    conn = RawResp(single.resp_ports["node1"])
    conn.send(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$%d\r\n" % (limit * 4))  # the value itself never sent
    [reply] = conn.read(1)
    assert isinstance(reply, RespError) and reply.kind == "FRAME_TOO_LARGE", reply
    assert f"exceeds the limit of {limit} bytes" in reply.message
    assert conn.closed_by_node()
    assert redis_py(single).ping() is True


def test_metrics_and_command_logs_name_the_redis_commands(
    single: InProcessCluster, log_sink: LogSink, redis_py: Callable[..., Threaded]
) -> None:
    r = redis_py(single)
    r.set("m", "1")
    r.get("m")
    r.get("nothing")
    assert requests_counted(single, "node1", "RESP_SET", "OK") == 1
    assert requests_counted(single, "node1", "RESP_GET", "OK") == 1
    assert requests_counted(single, "node1", "RESP_GET", "NOT_FOUND") == 1
    logged = [entry for entry in log_sink.events("command") if entry.get("protocol") == "resp"]
    assert [(entry["op"], entry["key"], entry["status"]) for entry in logged] == [
        ("RESP_SET", "m", "OK"),
        ("RESP_GET", "m", "OK"),
        ("RESP_GET", "nothing", "NOT_FOUND"),
    ]


# --- the cluster --------------------------------------------------------------------------------------


def test_any_node_coordinates_and_both_protocols_see_one_store(
    trio: InProcessCluster, redis_py: Callable[..., Threaded]
) -> None:
    on_node1, on_node3 = redis_py(trio, "node1"), redis_py(trio, "node3")
    keys = [f"shared{i}" for i in range(20)]  # some held by node3, some not
    for key in keys:
        assert on_node1.set(key, BINARY_VALUE + key.encode()) is True
    with trio.running_client() as kv:
        for key in keys:
            assert on_node3.get(key) == BINARY_VALUE + key.encode()
            assert kv.get(key) == BINARY_VALUE + key.encode()
        kv.put("from-binary", b"hello")
    assert on_node3.get("from-binary") == b"hello"
    assert on_node1.delete(*keys[:5]) == 5
    assert on_node3.exists(*keys) == 15


def test_quorum_failures_carry_the_status_name(trio: InProcessCluster, redis_py: Callable[..., Threaded]) -> None:
    trio.stop("node2")
    trio.stop("node3")
    trio.settle()
    r = redis_py(trio, "node1")
    with pytest.raises(redis.ResponseError, match=r"^UNAVAILABLE 1 of 2 required replicas acked"):
        r.set("lonely", "1")
    assert r.ping() is True


def test_stopping_the_node_drains_the_redis_port(single: InProcessCluster) -> None:
    conn = RawResp(single.resp_ports["node1"])
    conn.send(encode_command("SET", "drained", "1"))
    assert conn.read(1) == ["OK"]
    single.stop("node1")
    assert conn.closed_by_node()
    with pytest.raises(OSError):
        RawResp(single.resp_ports["node1"])


# --- redis-cli and redis-benchmark (Debian's redis-tools) --------------------------------------------------


@needs_redis_cli
def test_redis_cli_one_shot_and_session(trio: InProcessCluster) -> None:
    cli = [REDIS_CLI or "redis-cli", "-p"]
    port1, port3 = str(trio.resp_ports["node1"]), str(trio.resp_ports["node3"])
    assert run_tool(*cli, port1, "SET", "cli key", "hello world") == "OK\n"
    assert run_tool(*cli, port3, "GET", "cli key") == "hello world\n"
    assert run_tool(*cli, port3, "PING") == "PONG\n"
    assert run_tool(*cli, port1, "EXAT", "x").startswith("ERR unknown command 'EXAT'")
    info = run_tool(*cli, port1, "INFO", "server")
    assert "redis_version:7.0.0" in info and "kv_node_id:node1" in info
    # Commands on standard input: redis-cli first asks for COMMAND DOCS, as in a terminal.
    session = b"SET s1 one\nMSET s2 two s3 three\nMGET s1 s2 s3 nothing\nDEL s1 s2\nEXISTS s1 s3\n"
    assert run_tool(*cli, port1, stdin=session).splitlines() == ["OK", "OK", "one", "two", "three", "", "2", "1"]


@needs_redis_cli
def test_redis_cli_pipe_mode_mass_insertion(trio: InProcessCluster) -> None:
    commands = b"".join(encode_command("SET", f"mass{i}", f"v{i}") for i in range(500))
    output = run_tool(REDIS_CLI or "redis-cli", "-p", str(trio.resp_ports["node2"]), "--pipe", stdin=commands)
    assert "errors: 0, replies: 500" in output, output
    with trio.running_client() as kv:
        assert kv.get("mass499") == b"v499"


@needs_redis_benchmark
def test_redis_benchmark_runs_clean(single: InProcessCluster) -> None:
    port = str(single.resp_ports["node1"])
    result = gevent.subprocess.run(
        [REDIS_BENCHMARK or "redis-benchmark", "-p", port, "-t", "set,get", "-n", "400", "-c", "4", "-q"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    output = (result.stdout + result.stderr).decode("utf-8", errors="replace")
    assert result.returncode == 0, output
    assert "SET:" in output and "GET:" in output, output
    assert "WARNING" not in output and "ERROR" not in output, output  # its CONFIG GET was answered
    wait_until(lambda: requests_counted(single, "node1", "RESP_GET", "OK") >= 1, 5, message="GETs counted")
