"""The ``kv bench`` command line: its options, a run from the first target to the exit status, and
where the output goes.

The report goes to stdout; with ``--json -`` stdout carries the JSON only and the text report goes
to stderr. With ``--plot`` the report is drawn too. Exit status: 0 done and read-back passed, 1
read-back failed, 2 could not run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from bench.plot import plot_report
from bench.report import compare, format_report
from bench.runner import measure
from bench.targets import BenchError
from bench.worker import TargetSpec
from bench.workload import MAX_THETA, parse_mix
from client.address import parse_address
from client.cli_security import SecurityOptionError, add_security_options, security_settings
from client.client import split_addresses
from client.progress import Progress

DEFAULT_TIMEOUT = 5.0
"""Seconds a request may take before it counts as a TIMEOUT error; as ``Client``: above a node's own
2 s request timeout, so the node's answer arrives first."""
OPS_MODE_TIME_CAP = 600.0
"""With ``--ops`` and no ``--duration``, measurement still ends after ten minutes."""

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_ERROR = 2

EPILOG = """what is measured:
  Each connection keeps --pipeline requests in flight (closed loop). Against the
  cluster a connection is token-aware: one socket per node, each request to its
  key's primary replica. Against Redis it is one socket sending GET/SET/DEL.
  With both --cluster and --redis, the cluster is measured first, then Redis,
  with the same generator, seed and settings, and the ratios are reported.
  After measurement every key whose final value is known is read back.

  One Python process generates some 10-30 thousand ops/s; use --processes to
  drive a faster target (each process gets connections/processes connections).

where output goes:
  The report goes to stdout; with --json - the JSON goes there instead and the
  report to stderr. A status line on stderr, about once a second, when stderr is
  a terminal or with --progress (in place on a terminal, a line a second if not).

exit status: 0 done and read-back passed, 1 read-back failed, 2 could not run.

examples:
  kv bench --cluster 127.0.0.1:5000,127.0.0.1:5001,127.0.0.1:5002
  kv bench --cluster 127.0.0.1:7301 --redis 127.0.0.1:6390 --duration 5
  kv bench --redis 127.0.0.1:6390 --mix get=90,put=10 --distribution uniform
  kv bench --cluster 127.0.0.1:5000 --ops 100000 --pipeline 8 --processes 2 \\
           --json report.json --plot report.png
"""


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def _positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, not {text}")
    return value


def _positive_float(text: str) -> float:
    value = _non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be above 0")
    return value


def _quorum(text: str) -> int:
    value = _int(text)
    if not 1 <= value <= 255:
        raise argparse.ArgumentTypeError(f"must be 1..255, not {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kv bench",
        description="Measure throughput and latency of the cluster and/or Redis under the same load.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    targets = parser.add_argument_group("targets (at least one)")
    targets.add_argument("--cluster", metavar="HOST:PORT,...", help="seed addresses of our cluster")
    targets.add_argument("--redis", metavar="HOST:PORT", help="a Redis server (port 6379 if omitted)")
    run = parser.add_argument_group("run")
    run.add_argument(
        "--connections", metavar="N", type=_positive_int, default=50, help="connections in total (default 50)"
    )
    run.add_argument(
        "--duration",
        metavar="SECONDS",
        type=_positive_float,
        help="seconds to measure (default 10); with --ops, a time cap instead (default 600)",
    )
    run.add_argument(
        "--ops", metavar="N", type=_positive_int, help="measure this many operations instead of a duration"
    )
    run.add_argument(
        "--warmup",
        metavar="SECONDS",
        type=_non_negative_float,
        default=2.0,
        help="seconds of load before measuring (default 2)",
    )
    run.add_argument(
        "--pipeline",
        metavar="DEPTH",
        type=_positive_int,
        default=1,
        help="requests each connection keeps in flight (default 1)",
    )
    run.add_argument(
        "--processes",
        metavar="N",
        type=_positive_int,
        default=1,
        help="worker processes generating load, each with connections/processes connections (default 1)",
    )
    run.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=_positive_float,
        default=DEFAULT_TIMEOUT,
        help="seconds before a request is a TIMEOUT (default 5)",
    )
    run.add_argument("--seed", metavar="N", type=_int, default=1, help="random seed of keys and ops (default 1)")
    load = parser.add_argument_group("load")
    load.add_argument("--keys", metavar="N", type=_positive_int, default=10_000, help="distinct keys (default 10000)")
    load.add_argument(
        "--distribution", choices=("uniform", "zipfian"), default="zipfian", help="key popularity (default zipfian)"
    )
    load.add_argument(
        "--zipf-theta",
        metavar="THETA",
        type=_non_negative_float,
        default=0.99,
        help="zipfian exponent: 0 is uniform, 0.99 (the default) as in YCSB, higher is more skewed",
    )
    load.add_argument(
        "--value-size", metavar="BYTES", type=_positive_int, default=100, help="bytes per value written (default 100)"
    )
    load.add_argument(
        "--mix",
        metavar="RATIOS",
        default="get=50,put=50,delete=0",
        help="op ratios, e.g. get=90,put=9,delete=1 (default %(default)s)",
    )
    load.add_argument(
        "--r", metavar="N", type=_quorum, help="read quorum for the cluster's GETs (default: the node's R)"
    )
    load.add_argument(
        "--w", metavar="N", type=_quorum, help="write quorum for the cluster's PUTs/DELETEs (default: the node's W)"
    )
    add_security_options(parser)
    output = parser.add_argument_group("output")
    output.add_argument("--json", metavar="FILE", help="write the full report as JSON ('-' for stdout)")
    output.add_argument("--plot", metavar="FILE.png", help="draw latency percentiles and throughput (needs matplotlib)")
    output.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="live status line on stderr (default: only when stderr is a terminal)",
    )
    return parser


def parse_options(argv: Sequence[str]) -> argparse.Namespace:
    """The options, checked together; exits with status 2 and the reason on a bad combination."""
    parser = build_parser()
    options = parser.parse_args(list(argv))
    if not options.cluster and not options.redis:
        parser.error("give --cluster, --redis, or both")
    try:
        if options.cluster:
            split_addresses(options.cluster)
            for address in split_addresses(options.cluster):
                parse_address(address)
        if options.redis:
            parse_address(options.redis, default_port=6379)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        mix = parse_mix(options.mix)
    except ValueError as exc:
        parser.error(f"--mix: {exc}")
    options.mix = mix.describe()
    if not 0 <= options.zipf_theta <= MAX_THETA:
        parser.error(f"--zipf-theta must be from 0 (uniform) to {MAX_THETA:g}")
    if options.duration is None:
        options.duration = 10.0 if options.ops is None else OPS_MODE_TIME_CAP
    if options.processes > options.connections:
        parser.error("--processes cannot exceed --connections")
    if mix.writes and options.keys < options.connections:
        parser.error("--keys must be at least --connections: each connection writes keys of its own")
    if options.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            parser.error("--plot needs matplotlib: pip install 'kvstore[bench]'")
    return options


def run_config(options: argparse.Namespace) -> dict[str, Any]:
    """The exact configuration for the report: every option, and the machine that generated load."""
    config = {name: value for name, value in vars(options).items() if name not in ("progress",)}
    config["host"] = {
        "hostname": platform.node(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": f"{platform.python_version()} ({platform.python_implementation()})",
    }
    return config


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_options(sys.argv[1:] if argv is None else argv)
    progress = Progress(sys.stderr, sys.stderr.isatty() if options.progress is None else options.progress)
    targets = []
    if options.cluster:
        seeds = ",".join(split_addresses(options.cluster))
        try:
            credentials, tls = security_settings(options)
        except SecurityOptionError as exc:
            print(f"kv bench: {exc}", file=sys.stderr)
            return 2
        targets.append(TargetSpec("kv", "cluster", seeds, credentials, tls))
    if options.redis:
        targets.append(TargetSpec("redis", "redis", options.redis))
    report: dict[str, Any] = {
        "tool": "kv bench",
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": run_config(options),
        "targets": [],
    }
    try:
        for target in targets:
            report["targets"].append(measure(target, options, progress))
    except BenchError as exc:
        print(f"kv bench: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("\nkv bench: interrupted", file=sys.stderr)
        return EXIT_ERROR
    report["comparison"] = compare(report["targets"])
    text = format_report(report)
    if options.json == "-":
        sys.stderr.write(text)
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(text)
        if options.json:
            with open(options.json, "w", encoding="utf-8") as handle:
                json.dump(report, handle, indent=2)
                handle.write("\n")
    sys.stdout.flush()
    if options.plot:
        plot_report(report, options.plot)
    passed = all(target["check"]["passed"] for target in report["targets"])
    return EXIT_OK if passed else EXIT_CHECK_FAILED
