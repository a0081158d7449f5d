"""Node configuration: defaults, and a ConfigError naming the variable for every wrong setting."""

from __future__ import annotations

import pytest

from client.protocol import FRAME_OVERHEAD, NodeAddress
from service.config import ConfigError, load_config

MINIMAL = {"KV_NODE_ID": "node1", "KV_PEERS": "node1=host1:5000,node2=host2:5000", "KV_INSECURE": "true"}


def problems_for(**overrides: str | None) -> list[str]:
    """The problems ``load_config`` reports for the minimal config with ``overrides`` (None: unset)."""
    environ = {**MINIMAL, **overrides}
    environ = {name: value for name, value in environ.items() if value is not None}
    with pytest.raises(ConfigError) as caught:
        load_config(environ)
    assert str(caught.value) == "\n".join(caught.value.problems)
    return caught.value.problems


def test_minimal_config_gets_the_documented_defaults() -> None:
    config = load_config(MINIMAL)
    assert config.node_id == "node1"
    assert config.cluster == (NodeAddress("node1", "host1", 5000), NodeAddress("node2", "host2", 5000))
    assert config.peers == (NodeAddress("node2", "host2", 5000),)
    assert (config.n, config.write_quorum, config.read_quorum) == (2, 2, 1)
    assert (config.port, config.http_port) == (5000, 8000)
    assert config.resp_port == 0  # the Redis port is off unless asked for
    assert config.host == "0.0.0.0"
    assert config.data_dir == "/data"
    assert config.partitions == 4096
    assert config.max_key_bytes == 1024
    assert config.max_value_bytes == 1024 * 1024
    assert config.max_frame_bytes == 1024 * 1024 + 1024 + 1024
    assert config.max_connections == 1024
    assert config.request_timeout == 2.0
    assert config.connect_timeout == 0.5
    assert config.drain_timeout == 10.0
    assert config.storage_limit_bytes == 4096 * 1024 * 1024
    assert config.log_commands is True
    assert config.log_level == "info"
    assert config.hint_window == 10800.0
    assert config.tombstone_grace == 86400.0
    assert config.anti_entropy_interval == 30.0
    assert config.read_repair_chance == 0.10
    assert config.handshake_timeout == 5.0
    assert config.idle_timeout == 300.0
    assert config.client_output_limit_bytes == 16 * 1024 * 1024
    assert config.client_output_timeout == 30.0


@pytest.mark.parametrize(("text", "chance"), [("0", 0.0), ("25", 0.25), ("100", 1.0)])
def test_read_repair_percent_becomes_a_chance(text: str, chance: float) -> None:
    assert load_config({**MINIMAL, "KV_READ_REPAIR_PERCENT": text}).read_repair_chance == chance


@pytest.mark.parametrize("text", ["150", "-1", "ten", "12.5"])
def test_a_read_repair_percent_outside_0_to_100_is_refused(text: str) -> None:
    assert problems_for(KV_READ_REPAIR_PERCENT=text) == [
        f"KV_READ_REPAIR_PERCENT={text!r}: must be "
        + ("from 0 to 100" if text.lstrip("-").isdigit() else "a whole number from 0 to 100")
    ]


def test_hint_window_grace_and_anti_entropy_interval_are_read() -> None:
    config = load_config(
        {**MINIMAL, "KV_HINT_WINDOW_S": "1", "KV_TOMBSTONE_GRACE_S": "2", "KV_ANTI_ENTROPY_INTERVAL_S": "0"}
    )
    assert (config.hint_window, config.tombstone_grace, config.anti_entropy_interval) == (1.0, 2.0, 0.0)


def test_blank_values_fall_back_to_defaults() -> None:
    config = load_config({**MINIMAL, "KV_PORT": "  ", "KV_N": "", "KV_LOG_LEVEL": ""})
    assert config.port == 5000
    assert config.n == 2
    assert config.log_level == "info"


def test_settings_are_read() -> None:
    config = load_config(
        {
            "KV_NODE_ID": "node2",
            "KV_INSECURE": "true",
            "KV_PEERS": " node1=a:5001 , node2=b:5002, node3=[::1]:5003 ,",
            "KV_PORT": "6000",
            "KV_HTTP_PORT": "0",
            "KV_N": "3",
            "KV_W": "1",
            "KV_R": "3",
            "KV_MAX_KEY_BYTES": "10",
            "KV_MAX_VALUE_BYTES": "100",
            "KV_REQUEST_TIMEOUT_MS": "250",
            "KV_STORAGE_LIMIT_MB": "1",
            "KV_LOG_COMMANDS": "Off",
            "KV_LOG_LEVEL": "DEBUG",
        }
    )
    assert [node.node_id for node in config.peers] == ["node1", "node3"]
    assert config.cluster[2] == NodeAddress("node3", "::1", 5003)
    assert (config.port, config.http_port) == (6000, 0)
    assert (config.n, config.write_quorum, config.read_quorum) == (3, 1, 3)
    assert config.max_frame_bytes == 10 + 100 + 1024
    assert config.request_timeout == 0.25
    assert config.storage_limit_bytes == 1024 * 1024
    assert config.log_commands is False
    assert config.log_level == "debug"


def test_frame_limit_exactly_large_enough_is_accepted() -> None:
    config = load_config(
        {
            **MINIMAL,
            "KV_MAX_KEY_BYTES": "16",
            "KV_MAX_VALUE_BYTES": "100",
            "KV_MAX_FRAME_BYTES": str(116 + FRAME_OVERHEAD),
        }
    )
    assert config.max_frame_bytes == 116 + FRAME_OVERHEAD


@pytest.mark.parametrize(("text", "expected"), [("1", True), ("yes", True), ("ON", True), ("0", False), ("no", False)])
def test_booleans(text: str, expected: bool) -> None:
    assert load_config({**MINIMAL, "KV_LOG_COMMANDS": text}).log_commands is expected


@pytest.mark.parametrize(
    ("overrides", "variable", "detail"),
    [
        pytest.param({"KV_NODE_ID": None}, "KV_NODE_ID", "not set", id="missing-node-id"),
        pytest.param({"KV_FSYNC": "sometimes"}, "KV_FSYNC", "always or periodic", id="bad-fsync"),
        pytest.param({"KV_NODE_ID": "-node"}, "KV_NODE_ID", "letters", id="bad-node-id"),
        pytest.param({"KV_PEERS": None}, "KV_PEERS", "not set", id="missing-peers"),
        pytest.param({"KV_NODE_ID": "node9"}, "KV_PEERS", "node9", id="node-not-in-peers"),
        pytest.param({"KV_PEERS": "node1=a:5000,node2=b:5000,node1=c:5000"}, "KV_PEERS", "twice", id="duplicate-ids"),
        pytest.param({"KV_PEERS": "node1=a:5000,node2"}, "KV_PEERS", "id=host:port", id="peer-without-address"),
        pytest.param({"KV_PEERS": "node1=a:5000,node2=b:99999"}, "KV_PEERS", "port", id="peer-bad-port"),
        pytest.param({"KV_W": "3"}, "KV_W", "KV_N=2", id="W-over-N"),
        pytest.param({"KV_R": "3"}, "KV_R", "KV_N=2", id="R-over-N"),
        pytest.param({"KV_N": "3", "KV_W": "1"}, "KV_N", "2 members", id="N-over-members"),
        pytest.param({"KV_N": "0"}, "KV_N", "from 1", id="N-zero"),
        pytest.param({"KV_PORT": "70000"}, "KV_PORT", "65535", id="port-too-high"),
        pytest.param({"KV_HTTP_PORT": "-1"}, "KV_HTTP_PORT", "65535", id="http-port-negative"),
        pytest.param({"KV_PORT": "6000", "KV_HTTP_PORT": "6000"}, "KV_HTTP_PORT", "6000", id="same-ports"),
        pytest.param({"KV_PORT": "http"}, "KV_PORT", "whole number", id="port-not-a-number"),
        pytest.param({"KV_RESP_PORT": "5000"}, "KV_RESP_PORT", "KV_PORT are both 5000", id="resp-port-is-kv-port"),
        pytest.param({"KV_RESP_PORT": "8000"}, "KV_RESP_PORT", "KV_HTTP_PORT are both 8000", id="resp-is-http-port"),
        pytest.param({"KV_RESP_PORT": "65536"}, "KV_RESP_PORT", "65535", id="resp-port-too-high"),
        pytest.param({"KV_RESP_PORT": "redis"}, "KV_RESP_PORT", "whole number", id="resp-port-not-a-number"),
        pytest.param({"KV_MAX_VALUE_BYTES": "1MB"}, "KV_MAX_VALUE_BYTES", "whole number", id="value-not-a-number"),
        pytest.param({"KV_REQUEST_TIMEOUT_MS": "1.5"}, "KV_REQUEST_TIMEOUT_MS", "whole number", id="timeout-float"),
        pytest.param({"KV_MAX_KEY_BYTES": "70000"}, "KV_MAX_KEY_BYTES", "65535", id="key-over-u16"),
        pytest.param({"KV_MAX_FRAME_BYTES": "1000"}, "KV_MAX_FRAME_BYTES", "at least 1050624", id="frame-too-small"),
        pytest.param({"KV_LOG_COMMANDS": "maybe"}, "KV_LOG_COMMANDS", "true or false", id="bad-bool"),
        pytest.param({"KV_LOG_LEVEL": "verbose"}, "KV_LOG_LEVEL", "debug, info", id="bad-log-level"),
        pytest.param(
            {"KV_HINT_WINDOW_S": "100", "KV_TOMBSTONE_GRACE_S": "100"},
            "KV_TOMBSTONE_GRACE_S",
            "must exceed KV_HINT_WINDOW_S=100",
            id="grace-equal-to-hint-window",
        ),
        pytest.param(
            {"KV_TOMBSTONE_GRACE_S": "3600"},
            "KV_TOMBSTONE_GRACE_S",
            "KV_HINT_WINDOW_S=10800",
            id="grace-below-default-window",
        ),
        pytest.param({"KV_HINT_WINDOW_S": "0"}, "KV_HINT_WINDOW_S", "from 1", id="hint-window-zero"),
        pytest.param({"KV_TOMBSTONE_GRACE_S": "soon"}, "KV_TOMBSTONE_GRACE_S", "whole number", id="grace-not-a-number"),
        pytest.param(
            {"KV_ANTI_ENTROPY_INTERVAL_S": "-1"}, "KV_ANTI_ENTROPY_INTERVAL_S", "from 0", id="interval-negative"
        ),
        pytest.param({"KV_HANDSHAKE_TIMEOUT_MS": "0"}, "KV_HANDSHAKE_TIMEOUT_MS", "from 1", id="handshake-zero"),
        pytest.param({"KV_IDLE_TIMEOUT_S": "-5"}, "KV_IDLE_TIMEOUT_S", "from 0", id="idle-negative"),
        pytest.param({"KV_IDLE_TIMEOUT_S": "5m"}, "KV_IDLE_TIMEOUT_S", "whole number", id="idle-not-a-number"),
        pytest.param(
            {"KV_CLIENT_OUTPUT_LIMIT_MB": "2"},
            "KV_CLIENT_OUTPUT_LIMIT_MB",
            "set it to at least 3, or lower KV_MAX_VALUE_BYTES",
            id="output-limit-below-two-frames",
        ),
        pytest.param({"KV_CLIENT_OUTPUT_LIMIT_MB": "0"}, "KV_CLIENT_OUTPUT_LIMIT_MB", "from 1", id="output-limit-zero"),
        pytest.param(
            {"KV_CLIENT_OUTPUT_TIMEOUT_S": "-1"}, "KV_CLIENT_OUTPUT_TIMEOUT_S", "from 0", id="output-timeout-negative"
        ),
    ],
)
def test_wrong_setting_names_the_variable(overrides: dict[str, str | None], variable: str, detail: str) -> None:
    problems = problems_for(**overrides)
    named = [problem for problem in problems if variable in problem]
    assert named, f"no problem names {variable}: {problems}"
    assert any(detail in problem for problem in named), f"no problem about {variable} says {detail!r}: {problems}"


def test_a_resp_port_is_taken_and_zero_ports_never_clash() -> None:
    assert load_config({**MINIMAL, "KV_RESP_PORT": "6379"}).resp_port == 6379
    config = load_config({**MINIMAL, "KV_PORT": "0", "KV_HTTP_PORT": "0", "KV_RESP_PORT": "0"})
    assert (config.port, config.http_port, config.resp_port) == (0, 0, 0)


def test_single_member_cluster_needs_n_of_one() -> None:
    problems = problems_for(KV_PEERS="node1=a:5000")
    assert any("KV_N=2" in problem and "1 members" in problem for problem in problems)
    config = load_config({**MINIMAL, "KV_PEERS": "node1=a:5000", "KV_N": "1", "KV_W": "1"})
    assert config.peers == ()


def test_several_problems_are_reported_at_once() -> None:
    problems = problems_for(KV_NODE_ID=None, KV_PORT="abc", KV_R="9", KV_LOG_LEVEL="loud", KV_LOG_COMMANDS="perhaps")
    for variable in ("KV_NODE_ID", "KV_PORT", "KV_R", "KV_LOG_LEVEL", "KV_LOG_COMMANDS"):
        assert any(variable in problem for problem in problems), f"{variable} missing from {problems}"
    assert len(problems) >= 5


def test_config_error_is_an_exception_listing_problems() -> None:
    error = ConfigError(["a", "b"])
    assert error.problems == ["a", "b"]
    assert str(error) == "a\nb"


def test_an_unparsable_grace_does_not_also_report_a_comparison_with_the_hint_window() -> None:
    problems = problems_for(KV_TOMBSTONE_GRACE_S="soon")
    assert len([problem for problem in problems if "KV_TOMBSTONE_GRACE_S" in problem]) == 1


def test_fsync_defaults_to_always_and_accepts_periodic() -> None:
    assert load_config(MINIMAL).fsync_always is True
    assert load_config({**MINIMAL, "KV_FSYNC": "periodic"}).fsync_always is False
    assert load_config({**MINIMAL, "KV_FSYNC": "ALWAYS"}).fsync_always is True


def test_connection_limits_are_read() -> None:
    config = load_config(
        {
            **MINIMAL,
            "KV_HANDSHAKE_TIMEOUT_MS": "250",
            "KV_IDLE_TIMEOUT_S": "0",
            "KV_CLIENT_OUTPUT_LIMIT_MB": "3",
            "KV_CLIENT_OUTPUT_TIMEOUT_S": "0",
        }
    )
    assert (config.handshake_timeout, config.idle_timeout) == (0.25, 0.0)
    assert (config.client_output_limit_bytes, config.client_output_timeout) == (3 * 1024 * 1024, 0.0)


def test_the_default_output_limit_grows_to_hold_four_of_the_largest_frames() -> None:
    config = load_config({**MINIMAL, "KV_MAX_VALUE_BYTES": str(10 * 1024 * 1024)})
    assert config.client_output_limit_bytes >= 4 * config.max_frame_bytes
    assert config.client_output_limit_bytes % (1024 * 1024) == 0


# --- security ---------------------------------------------------------------------------------------


def test_a_node_serving_other_machines_without_users_refuses_to_start() -> None:
    (problem,) = problems_for(KV_INSECURE=None)
    assert problem.startswith("KV_HOST=0.0.0.0 serves other machines")
    assert "KV_USERS_FILE" in problem and "KV_INSECURE=true" in problem
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        assert load_config({**MINIMAL, "KV_INSECURE": "", "KV_HOST": host}).insecure is False
    assert load_config({**MINIMAL, "KV_INSECURE": "", "KV_USERS_FILE": "/u", "KV_CLUSTER_SECRET_FILE": "/s"})


def test_security_settings_are_checked_together() -> None:
    assert "KV_CLUSTER_SECRET_FILE is not" in problems_for(KV_USERS_FILE="/run/secrets/users")[0]
    assert "KV_USERS_FILE is not" in problems_for(KV_CLUSTER_SECRET_FILE="/run/secrets/secret")[0]
    assert problems_for(KV_TLS_MODE="on") == ["KV_TLS_MODE='on': must be off, required or migrate"]
    (problem,) = problems_for(KV_TLS_MODE="required", KV_TLS_CERT="/c")
    assert problem == "KV_TLS_MODE=required needs KV_TLS_KEY, KV_TLS_CA: the node's certificate, key and CA"
    config = load_config({**MINIMAL, "KV_TLS_MODE": "MIGRATE", "KV_TLS_CERT": "c", "KV_TLS_KEY": "k", "KV_TLS_CA": "a"})
    assert (config.tls_mode, config.tls_cert, config.tls_key, config.tls_ca) == ("migrate", "c", "k", "a")
    assert load_config(MINIMAL).tls_mode == "off"
