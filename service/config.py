"""Node configuration: read from environment variables, checked completely before anything starts.

``load_config`` is pure (it takes a mapping), reports every problem at once, and each message names
the variable and says what a valid value looks like, so a wrong setting stops the node at start-up
with instructions rather than failing later under traffic.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from client import protocol
from client.address import format_address, parse_address
from client.protocol import NodeAddress
from client.ring import DEFAULT_PARTITIONS
from service.cores import available_cores

NODE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_N = 255  # N, R and W travel as one byte (and R, W <= N)
MAX_WORKERS = 64
"""The most worker processes a node runs: each takes the low bits of its HLC stamps' logical
counter (``versioning``), and 6 bits leave 1,024 stamps per millisecond per worker."""
MB = 1024 * 1024
DEFAULT_OUTPUT_LIMIT_BYTES = 16 * MB
"""A client connection's default hard limit: 16 requests for 1 MiB values in flight, or their replies
unsent, before the node stops reading it (Redis holds a replica's output to 256 MB, a pub/sub
client's to 32 MB; a client here has back-pressure, so it needs less)."""
OUTPUT_LIMIT_FRAMES = 4  # the default hard limit holds at least this many of the largest frames


class ConfigError(Exception):
    """One or more settings are wrong; ``problems`` lists each with the fix."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Config:
    node_id: str
    cluster: tuple[NodeAddress, ...]  # every member, this node included
    host: str
    port: int
    http_port: int
    data_dir: str
    n: int  # replicas per key (N), not the replica objects
    write_quorum: int  # W
    read_quorum: int  # R
    partitions: int
    max_key_bytes: int
    max_value_bytes: int
    max_frame_bytes: int
    max_connections: int
    handshake_timeout: float  # seconds to complete HELLO, or for a started frame's next byte
    idle_timeout: float  # seconds; 0: never
    client_output_limit_bytes: int  # requests in flight and unsent replies, per connection
    client_output_timeout: float  # seconds replies may wait with none taken; 0: forever
    request_timeout: float
    connect_timeout: float
    drain_timeout: float
    storage_limit_bytes: int
    fsync_always: bool
    hint_window: float
    tombstone_grace: float
    anti_entropy_interval: float
    read_repair_chance: float  # 0..1
    max_clock_offset_ms: int
    log_commands: bool
    log_level: str
    resp_port: int = 0  # the Redis-protocol port; 0: none
    users_file: str = ""  # users, roles and verifiers; "": no authentication
    cluster_secret_file: str = ""  # the members' shared secret; required with users in a cluster
    insecure: bool = False  # KV_INSECURE: serve other machines with no users
    tls_mode: str = "off"  # off, required, migrate
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    metrics_auth: bool = False  # /metrics asks for a user too
    cluster_name: str = "kv"  # with the founding ids and the partitions, gives the cluster id
    seeds: tuple[str, ...] = ()  # host:port of members a new node asks to join (KV_SEEDS)
    workers: int = 1  # processes serving this node (KV_WORKERS); 1: the node is this one process
    auto_join: bool = False  # on a first start, ask a seed to add this node (KV_AUTO_JOIN=true)
    wait_to_join: bool = False  # on a first start, wait until a member adds this node (KV_AUTO_JOIN=wait)
    stream_rate_bytes_per_s: float = 25 * 1024 * 1024  # partition streaming into this node; 0: unpaced

    @property
    def peers(self) -> tuple[NodeAddress, ...]:
        """Every member but this node."""
        return tuple(node for node in self.cluster if node.node_id != self.node_id)


@dataclass(frozen=True)
class Setting:
    name: str
    default: str | None
    help: str


SETTINGS = [
    Setting("KV_NODE_ID", None, "this node's id, unique in the cluster, e.g. node1"),
    Setting("KV_PEERS", None, "every member, this node included: id=host:port,id=host:port,..."),
    Setting(
        "KV_CLUSTER_NAME",
        "kv",
        "the cluster's name; with KV_PEERS' ids and KV_PARTITIONS it makes the cluster id that members check",
    ),
    Setting("KV_SEEDS", "", "host:port,... of members a new node asks to join (with KV_AUTO_JOIN)"),
    Setting(
        "KV_AUTO_JOIN",
        "false",
        "on a first start, true: ask a seed (KV_SEEDS) to add this node; wait: listen until an admin adds it "
        "(kv cluster join HOST:PORT) and learn of it from KV_SEEDS; KV_PEERS then names only itself. "
        "false: form the cluster from KV_PEERS",
    ),
    Setting("KV_HOST", "0.0.0.0", "address the protocol, Redis-protocol and HTTP servers bind"),
    Setting("KV_PORT", "5000", "protocol port (0: any free port)"),
    Setting("KV_HTTP_PORT", "8000", "HTTP port for /metrics and /healthz (0: any free port)"),
    Setting("KV_RESP_PORT", "0", "Redis-protocol (RESP2) port for redis-cli and Redis clients (0: off)"),
    Setting("KV_DATA_DIR", "/data", "directory for the LMDB store"),
    Setting("KV_N", "2", "replicas per key (N)"),
    Setting("KV_W", "2", "acks a write waits for (W), 1..N"),
    Setting("KV_R", "1", "replies a read waits for (R), 1..N"),
    Setting("KV_PARTITIONS", str(DEFAULT_PARTITIONS), "ring partitions; identical on every node"),
    Setting("KV_MAX_KEY_BYTES", str(protocol.DEFAULT_MAX_KEY_BYTES), "largest key accepted"),
    Setting("KV_MAX_VALUE_BYTES", str(protocol.DEFAULT_MAX_VALUE_BYTES), "largest value accepted"),
    Setting("KV_MAX_FRAME_BYTES", "", "largest frame; default: max value + max key + 1024"),
    Setting("KV_MAX_CONNECTIONS", "1024", "client connections served at once (links from other members apart)"),
    Setting(
        "KV_HANDSHAKE_TIMEOUT_MS", "5000", "time a new connection has to send HELLO, and a started frame its next byte"
    ),
    Setting(
        "KV_IDLE_TIMEOUT_S", "300", "a connection with no request and nothing in flight this long is closed (0: never)"
    ),
    Setting(
        "KV_CLIENT_OUTPUT_LIMIT_MB",
        "",
        "hard limit on a connection's requests in flight and unsent replies; at it the node stops reading "
        "the connection; default 16, or room for 4 of the largest frames if more",
    ),
    Setting(
        "KV_CLIENT_OUTPUT_TIMEOUT_S",
        "30",
        "a client whose replies wait this long with none read is not reading, and is disconnected (0: never)",
    ),
    Setting("KV_REQUEST_TIMEOUT_MS", "2000", "how long a coordinator waits for replicas"),
    Setting("KV_CONNECT_TIMEOUT_MS", "500", "how long connecting to a peer may take"),
    Setting("KV_DRAIN_TIMEOUT_S", "10", "on SIGTERM, how long in-flight requests may take to finish"),
    Setting("KV_STORAGE_LIMIT_MB", "4096", "largest size the store may grow to"),
    Setting(
        "KV_FSYNC",
        "always",
        "always: ack a write once fsynced; periodic: once in the OS page cache, fsync every second "
        "(a node crash loses nothing, a machine crash up to a second, like Redis appendfsync everysec)",
    ),
    Setting("KV_HINT_WINDOW_S", "10800", "how long a hint for a down node is kept; then anti-entropy repairs"),
    Setting("KV_TOMBSTONE_GRACE_S", "86400", "how long a delete's tombstone is kept at least"),
    Setting("KV_ANTI_ENTROPY_INTERVAL_S", "30", "seconds between anti-entropy rounds (0: only on demand)"),
    Setting(
        "KV_MAX_CLOCK_OFFSET_MS",
        "500",
        "the most two nodes' clocks may disagree; a timestamp further ahead of this node's clock is refused "
        "(CLOCK_SKEW), and a node whose clock is that far off most peers' refuses to stamp writes",
    ),
    Setting(
        "KV_STREAM_RATE_MBPS",
        "25",
        "MiB per second a node receives partitions at when membership changes (0: unpaced); Cassandra's "
        "stream throughput is the model",
    ),
    Setting(
        "KV_READ_REPAIR_PERCENT",
        "10",
        "% of reads with R below the replicas up that also ask the rest and repair stale ones",
    ),
    Setting(
        "KV_USERS_FILE",
        "",
        "file (or secret) of users: NAME ROLE VERIFIER per line (kv users hash prints one); set, every "
        "connection must authenticate",
    ),
    Setting(
        "KV_CLUSTER_SECRET_FILE",
        "",
        "file (or secret) holding the members' shared secret (16+ bytes): members authenticate to each other with it",
    ),
    Setting(
        "KV_INSECURE",
        "false",
        "true lets a node bound to a non-loopback address run without users (anyone who reaches it can do anything)",
    ),
    Setting("KV_TLS_MODE", "off", "off; required: TLS only; migrate: TLS and plaintext both (for switching over)"),
    Setting("KV_TLS_CERT", "", "this node's certificate chain (PEM); it must name the host KV_PEERS gives it"),
    Setting("KV_TLS_KEY", "", "this node's private key (PEM)"),
    Setting("KV_TLS_CA", "", "the CA (PEM) that signs the members' and clients' certificates"),
    Setting("KV_METRICS_AUTH", "false", "true: /metrics asks for a user too (HTTP Basic), as the dashboard does"),
    Setting(
        "KV_WORKERS",
        "1",
        "processes serving the node's ports and sharing its store, 1 to 64, or auto: the cores the "
        "container may use (CPU affinity and cgroup quota)",
    ),
    Setting("KV_LOG_COMMANDS", "true", "log every client command (turn off for benchmarks)"),
    Setting("KV_LOG_LEVEL", "info", "debug, info, warning or error"),
]
_DEFAULTS = {setting.name: setting.default for setting in SETTINGS}

T = TypeVar("T")


def parse_cluster(text: str) -> tuple[NodeAddress, ...]:
    """``"node1=host:5000,node2=host:5001"`` as node addresses; raises ``ValueError`` with the reason."""
    nodes: list[NodeAddress] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        node_id, sep, address = item.partition("=")
        node_id = node_id.strip()
        if not sep:
            raise ValueError(f"{item!r} is not id=host:port")
        if not NODE_ID_PATTERN.match(node_id):
            raise ValueError(f"node id {node_id!r} must be 1-64 letters, digits, '.', '_' or '-'")
        host, port = parse_address(address)
        nodes.append(NodeAddress(node_id, host, port))
    if not nodes:
        raise ValueError("no members listed")
    ids = [node.node_id for node in nodes]
    duplicates = sorted({node_id for node_id in ids if ids.count(node_id) > 1})
    if duplicates:
        raise ValueError(f"node ids listed twice: {', '.join(duplicates)}")
    return tuple(nodes)


def load_config(environ: Mapping[str, str], *, cores: Callable[[], int] = available_cores) -> Config:
    """The configuration in ``environ``, or ``ConfigError`` listing every problem found. ``cores``
    gives ``KV_WORKERS``'s default (``service.cores.available_cores``)."""
    problems: list[str] = []
    invalid: set[str] = set()  # settings that did not parse; checks across settings skip them

    def valid(*names: str) -> bool:
        return not invalid.intersection(names)

    def raw(name: str) -> str:
        value = environ.get(name, "").strip()
        return value if value else (_DEFAULTS[name] or "")

    def parsed(name: str, parse: Callable[[str], T], fallback: T) -> T:
        try:
            return parse(raw(name))
        except ValueError as exc:
            problems.append(f"{name}={raw(name)!r}: {exc}")
            invalid.add(name)
            return fallback

    def integer(name: str, low: int, high: int) -> int:
        def parse(text: str) -> int:
            try:
                number = int(text)
            except ValueError:
                raise ValueError(f"must be a whole number from {low} to {high}") from None
            if not low <= number <= high:
                raise ValueError(f"must be from {low} to {high}")
            return number

        return parsed(name, parse, low)

    node_id = raw("KV_NODE_ID")
    if not node_id:
        problems.append("KV_NODE_ID is not set: give this node a unique id, e.g. KV_NODE_ID=node1")
    elif not NODE_ID_PATTERN.match(node_id):
        problems.append(f"KV_NODE_ID={node_id!r}: must be 1-64 letters, digits, '.', '_' or '-'")

    cluster: tuple[NodeAddress, ...] = ()
    if not raw("KV_PEERS"):
        problems.append("KV_PEERS is not set: list every member, this node included, as id=host:port,...")
    else:
        cluster = parsed("KV_PEERS", parse_cluster, ())
        if cluster and node_id and node_id not in {node.node_id for node in cluster}:
            problems.append(f"KV_PEERS does not list this node ({node_id}): add {node_id}=<host>:<port>")

    # 0 lets the OS pick a free port: useful for tests, never for a real cluster's KV_PEERS.
    port = integer("KV_PORT", 0, 65535)
    http_port = integer("KV_HTTP_PORT", 0, 65535)
    if port == http_port != 0 and valid("KV_PORT", "KV_HTTP_PORT"):
        problems.append(f"KV_PORT and KV_HTTP_PORT are both {port}: give them different ports")
    # Unlike the others, 0 turns the Redis port off: it is optional, and off unless asked for.
    resp_port = integer("KV_RESP_PORT", 0, 65535)
    for other, number in (("KV_PORT", port), ("KV_HTTP_PORT", http_port)):
        if resp_port == number != 0 and valid("KV_RESP_PORT", other):
            problems.append(f"KV_RESP_PORT and {other} are both {number}: give them different ports")

    n = integer("KV_N", 1, MAX_N)
    write_quorum = integer("KV_W", 1, MAX_N)
    read_quorum = integer("KV_R", 1, MAX_N)
    joining = bool(raw("KV_SEEDS")) and raw("KV_AUTO_JOIN").lower() in {"true", "wait"}
    if cluster and n > len(cluster) and valid("KV_N") and not joining:
        problems.append(f"KV_N={n} exceeds the {len(cluster)} members in KV_PEERS: lower KV_N or add members")
    if write_quorum > n and valid("KV_N", "KV_W"):
        problems.append(f"KV_W={write_quorum} exceeds KV_N={n}: a write cannot wait for more replicas than N")
    if read_quorum > n and valid("KV_N", "KV_R"):
        problems.append(f"KV_R={read_quorum} exceeds KV_N={n}: a read cannot wait for more replicas than N")

    max_key = integer("KV_MAX_KEY_BYTES", 1, protocol.MAX_KEY_FIELD)
    max_value = integer("KV_MAX_VALUE_BYTES", 0, 1 << 30)
    smallest_frame = max_key + max_value + protocol.FRAME_OVERHEAD
    if raw("KV_MAX_FRAME_BYTES"):
        max_frame = integer("KV_MAX_FRAME_BYTES", 1, 1 << 31)
        if max_frame < smallest_frame and valid("KV_MAX_FRAME_BYTES", "KV_MAX_KEY_BYTES", "KV_MAX_VALUE_BYTES"):
            problems.append(
                f"KV_MAX_FRAME_BYTES={max_frame} cannot carry the largest key and value: "
                f"set it to at least {smallest_frame} (max key + max value + {protocol.FRAME_OVERHEAD})"
            )
    else:
        max_frame = smallest_frame

    output_limit = _output_limit(raw, integer, max_frame, problems)

    hint_window = integer("KV_HINT_WINDOW_S", 1, 365 * 86400)
    tombstone_grace = integer("KV_TOMBSTONE_GRACE_S", 1, 3650 * 86400)
    if tombstone_grace <= hint_window and valid("KV_HINT_WINDOW_S", "KV_TOMBSTONE_GRACE_S"):
        problems.append(
            f"KV_TOMBSTONE_GRACE_S={tombstone_grace} must exceed KV_HINT_WINDOW_S={hint_window}: "
            "a hint delivered after its delete's tombstone was purged would bring the key back"
        )

    # Above a minute the bound protects little; the hint window must dwarf it, or a hint's age could
    # not be told apart from the clocks' disagreement.
    max_clock_offset_ms = integer("KV_MAX_CLOCK_OFFSET_MS", 1, 60_000)
    if max_clock_offset_ms >= hint_window * 1000 and valid("KV_MAX_CLOCK_OFFSET_MS", "KV_HINT_WINDOW_S"):
        problems.append(
            f"KV_MAX_CLOCK_OFFSET_MS={max_clock_offset_ms} must be below KV_HINT_WINDOW_S={hint_window} (in ms)"
        )

    fsync = raw("KV_FSYNC").lower()
    if fsync not in {"always", "periodic"}:
        problems.append(f"KV_FSYNC={fsync!r}: must be always or periodic")

    security = _security(raw, parsed, cluster, problems)

    cluster_name = raw("KV_CLUSTER_NAME")
    if not NODE_ID_PATTERN.match(cluster_name):
        problems.append(f"KV_CLUSTER_NAME={cluster_name!r}: must be 1-64 letters, digits, '.', '_' or '-'")
    seeds: tuple[str, ...] = parsed("KV_SEEDS", _seeds, ())
    join_mode = parsed("KV_AUTO_JOIN", _join_mode, "false")
    if join_mode != "false" and not seeds and "KV_SEEDS" not in invalid:
        problems.append(f"KV_AUTO_JOIN={join_mode} needs KV_SEEDS: the host:port of one or more members to ask")

    log_commands = parsed("KV_LOG_COMMANDS", _boolean, True)
    log_level = raw("KV_LOG_LEVEL").lower()
    if log_level not in {"debug", "info", "warning", "error"}:
        problems.append(f"KV_LOG_LEVEL={log_level!r}: must be debug, info, warning or error")

    # One process unless asked: two workers measured 0.72-1.44x one on two cores (BENCHMARKS.md,
    # "Workers"), at more CPU per op, and a node of several cannot yet leave the cluster.
    def parse_workers(text: str) -> int:
        if text == "auto":
            return min(MAX_WORKERS, cores())
        if not text.isdigit() or not 1 <= int(text) <= MAX_WORKERS:
            raise ValueError(f"must be a whole number from 1 to {MAX_WORKERS}, or auto (one per core)")
        return int(text)

    workers = parsed("KV_WORKERS", parse_workers, 1)

    config = Config(
        node_id=node_id,
        cluster=cluster,
        host=raw("KV_HOST"),
        port=port,
        http_port=http_port,
        data_dir=raw("KV_DATA_DIR"),
        n=n,
        write_quorum=write_quorum,
        read_quorum=read_quorum,
        partitions=integer("KV_PARTITIONS", 1, 0xFFFF),
        max_key_bytes=max_key,
        max_value_bytes=max_value,
        max_frame_bytes=max_frame,
        max_connections=integer("KV_MAX_CONNECTIONS", 1, 1_000_000),
        handshake_timeout=integer("KV_HANDSHAKE_TIMEOUT_MS", 1, 600_000) / 1000,
        idle_timeout=float(integer("KV_IDLE_TIMEOUT_S", 0, 7 * 86400)),
        client_output_limit_bytes=output_limit,
        client_output_timeout=float(integer("KV_CLIENT_OUTPUT_TIMEOUT_S", 0, 86400)),
        request_timeout=integer("KV_REQUEST_TIMEOUT_MS", 1, 3_600_000) / 1000,
        connect_timeout=integer("KV_CONNECT_TIMEOUT_MS", 1, 600_000) / 1000,
        drain_timeout=float(integer("KV_DRAIN_TIMEOUT_S", 0, 3600)),
        storage_limit_bytes=integer("KV_STORAGE_LIMIT_MB", 1, 1 << 24) * 1024 * 1024,
        fsync_always=fsync != "periodic",
        hint_window=float(hint_window),
        tombstone_grace=float(tombstone_grace),
        anti_entropy_interval=float(integer("KV_ANTI_ENTROPY_INTERVAL_S", 0, 86400)),
        read_repair_chance=integer("KV_READ_REPAIR_PERCENT", 0, 100) / 100,
        max_clock_offset_ms=max_clock_offset_ms,
        log_commands=log_commands,
        log_level=log_level,
        resp_port=resp_port,
        cluster_name=cluster_name,
        seeds=seeds,
        workers=workers,
        auto_join=join_mode == "true",
        wait_to_join=join_mode == "wait",
        stream_rate_bytes_per_s=float(integer("KV_STREAM_RATE_MBPS", 0, 100_000) * MB),
        **security,
    )
    if problems:
        raise ConfigError(problems)
    return config


def _output_limit(
    raw: Callable[[str], str], integer: Callable[[str, int, int], int], max_frame: int, problems: list[str]
) -> int:
    """``KV_CLIENT_OUTPUT_LIMIT_MB`` in bytes, or its default; what is wrong goes to ``problems``.

    The limit must hold two of the largest frames: a request carrying one and a reply carrying
    another are always admitted, however full the connection is."""
    smallest = 2 * max_frame
    if not raw("KV_CLIENT_OUTPUT_LIMIT_MB"):
        return max(DEFAULT_OUTPUT_LIMIT_BYTES, -(-OUTPUT_LIMIT_FRAMES * max_frame // MB) * MB)
    limit = integer("KV_CLIENT_OUTPUT_LIMIT_MB", 1, 1 << 20) * MB
    if limit < smallest:
        problems.append(
            f"KV_CLIENT_OUTPUT_LIMIT_MB={limit // MB} cannot hold two of the largest frames ({smallest} bytes): "
            f"set it to at least {-(-smallest // MB)}, or lower KV_MAX_VALUE_BYTES"
        )
    return limit


LOOPBACK_HOSTS = frozenset({"localhost", "ip6-localhost"})
TLS_MODES = ("off", "required", "migrate")


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only (127.0.0.0/8, ::1, localhost)."""
    if host.lower() in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _security(
    raw: Callable[[str], str],
    parsed: Callable[[str, Callable[[str], bool], bool], bool],
    cluster: tuple[NodeAddress, ...],
    problems: list[str],
) -> dict[str, Any]:
    """The security settings, checked together; what is wrong goes to ``problems``. The files they
    name are read when the node starts (``service.security``)."""
    users_file = raw("KV_USERS_FILE")
    secret_file = raw("KV_CLUSTER_SECRET_FILE")
    insecure = parsed("KV_INSECURE", _boolean, False)
    host = raw("KV_HOST")
    if not users_file and not insecure and not is_loopback(host):
        problems.append(
            f"KV_HOST={host} serves other machines, and no users are set (protected mode): set KV_USERS_FILE "
            "and KV_CLUSTER_SECRET_FILE so clients and members must authenticate (deploy/make-secrets.sh makes "
            "both), or KV_INSECURE=true to let anyone who reaches the node do anything"
        )
    if users_file and not secret_file and len(cluster) > 1:
        problems.append(
            "KV_USERS_FILE is set but KV_CLUSTER_SECRET_FILE is not: members authenticate to each other with "
            "the cluster secret; give every member the same secret file (16 or more random bytes)"
        )
    if secret_file and not users_file:
        problems.append(
            "KV_CLUSTER_SECRET_FILE is set but KV_USERS_FILE is not: without users nothing is authenticated; "
            "set KV_USERS_FILE too, or neither"
        )
    tls_mode = raw("KV_TLS_MODE").lower()
    if tls_mode not in TLS_MODES:
        problems.append(f"KV_TLS_MODE={tls_mode!r}: must be off, required or migrate")
    tls = {name: raw(f"KV_TLS_{name.upper()}") for name in ("cert", "key", "ca")}
    if tls_mode in ("required", "migrate"):
        missing = [f"KV_TLS_{name.upper()}" for name, path in tls.items() if not path]
        if missing:
            problems.append(f"KV_TLS_MODE={tls_mode} needs {', '.join(missing)}: the node's certificate, key and CA")
    return {
        "users_file": users_file,
        "cluster_secret_file": secret_file,
        "insecure": insecure,
        "tls_mode": tls_mode,
        "tls_cert": tls["cert"],
        "tls_key": tls["key"],
        "tls_ca": tls["ca"],
        "metrics_auth": parsed("KV_METRICS_AUTH", _boolean, False),
    }


def _seeds(text: str) -> tuple[str, ...]:
    """``host:port,host:port`` as formatted addresses; ``ValueError`` naming the bad one."""
    return tuple(format_address(*parse_address(item.strip())) for item in text.split(",") if item.strip())


def _join_mode(text: str) -> str:
    """KV_AUTO_JOIN: ``"true"``, ``"wait"`` or ``"false"`` (booleans' other spellings accepted)."""
    if text.lower() == "wait":
        return "wait"
    try:
        return "true" if _boolean(text) else "false"
    except ValueError:
        raise ValueError("must be true, wait or false") from None


def _boolean(text: str) -> bool:
    lowered = text.lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError("must be true or false")
