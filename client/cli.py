"""The ``kv`` command line: one-shot commands, a REPL on a terminal, and line mode on a pipe.

    kv get foo                       one command, then exit
    kv                               on a terminal: prompt, history, HELP
    printf 'PUT a 1\\nGET a\\n' | kv   on a pipe: no prompt, exactly one output line per command

Every command prints ``OK``, a value, ``NOT_FOUND`` or ``ERROR <CODE> <message>``, and every failure,
including an unreachable cluster or a typo, is one such line, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from client.client import Client
from client.errors import KVError
from client.protocol import PeerState

DEFAULT_NODES = "127.0.0.1:5000,127.0.0.1:5001,127.0.0.1:5002"
"""Where ``docker compose up`` publishes the three nodes, so ``kv`` works there with no flags."""
HISTORY_FILE = os.path.expanduser("~/.kv_history")

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_ERROR = 2


@dataclass(frozen=True)
class CommandResult:
    """What a command prints (one line) and the exit status it gives a one-shot ``kv``."""

    line: str
    exit_code: int = EXIT_OK


@dataclass(frozen=True)
class Command:
    usage: str
    summary: str
    run: Callable[[Client, list[str]], CommandResult]
    min_args: int
    max_args: int | None  # None: the last argument is the rest of the line


def printable(value: bytes) -> str:
    """A value as one line: UTF-8 text, with control characters and invalid bytes escaped."""
    text = value.decode("utf-8", errors="backslashreplace")
    if text.isprintable():
        return text
    escapes = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
    return "".join(ch if ch.isprintable() else escapes.get(ch, f"\\x{ord(ch):02x}") for ch in text)


def _get(client: Client, args: list[str]) -> CommandResult:
    value = client.get(args[0])
    return CommandResult("NOT_FOUND", EXIT_NOT_FOUND) if value is None else CommandResult(printable(value))


def _put(client: Client, args: list[str]) -> CommandResult:
    client.put(args[0], args[1])
    return CommandResult("OK")


def _delete(client: Client, args: list[str]) -> CommandResult:
    client.delete(args[0])
    return CommandResult("OK")


def _where(client: Client, args: list[str]) -> CommandResult:
    return CommandResult(" ".join(client.where(args[0])))


def _status(client: Client, args: list[str]) -> CommandResult:
    viewer, members = client.members()
    now_ms = int(time.time() * 1000)
    parts = []
    for member in members:
        state = member.state.name.lower()
        if member.state is not PeerState.UP and member.since_ms:
            state += f" for {_duration((now_ms - member.since_ms) / 1000)}"
        if member.storage_full:
            state += " (storage full)"
        elif member.catching_up:
            state += " (catching up)"
        hints = f" ({member.hints} hints held for it)" if member.hints else ""
        parts.append(f"{member.node_id} {client.node_address(member.node_id)} {state}{hints}")
    all_well = all(member.state is PeerState.UP and not member.flags for member in members)
    return CommandResult(", ".join(parts) + f" [as seen by {viewer}]", EXIT_OK if all_well else EXIT_ERROR)


def _repair(client: Client, args: list[str]) -> CommandResult:
    total_partitions = total_differing = total_repaired = 0
    unreached: list[str] = []
    nodes = [node.node_id for node in client.topology().nodes]
    for index, node_id in enumerate(nodes, 1):
        try:
            result = client.repair(node_id)
        except KVError as exc:
            unreached.append(node_id)
            _progress(f"repair {index}/{len(nodes)} {node_id}: ERROR {exc.code} {exc.message}")
            continue
        total_partitions += result.partitions
        total_differing += result.differing
        total_repaired += result.repaired
        unreached += [f"{node_id}->{peer}" for peer in result.failed_peers]
        _progress(
            f"repair {index}/{len(nodes)} {node_id}: {result.partitions} partitions compared, "
            f"{result.differing} keys differed, {result.repaired} copied"
        )
    line = f"{total_partitions} partitions compared, {total_differing} keys differed, {total_repaired} copied"
    if unreached:
        return CommandResult(f"ERROR UNREACHABLE {line}; not compared: {', '.join(unreached)}", EXIT_ERROR)
    return CommandResult(f"OK {line}")


def _progress(line: str) -> None:
    """Progress of long commands goes to stderr, so stdout keeps one line per command."""
    print(line, file=sys.stderr, flush=True)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


COMMANDS: dict[str, Command] = {
    "GET": Command("GET key", "print the key's value, or NOT_FOUND", _get, 1, 1),
    "PUT": Command("PUT key value...", "store the rest of the line as the key's value", _put, 2, None),
    "DELETE": Command("DELETE key", "delete the key", _delete, 1, 1),
    "WHERE": Command("WHERE key", "the key's replicas as host:port, primary first", _where, 1, 1),
    "STATUS": Command(
        "STATUS", "every node: up, suspect or down (and storage full), as the cluster sees it", _status, 0, 0
    ),
    "REPAIR": Command("REPAIR", "run anti-entropy on every node now; report keys that differed", _repair, 0, 0),
}
SESSION_COMMANDS = {"HELP": "this list", "EXIT": "leave (also QUIT or Ctrl-D)"}


def help_text() -> str:
    rows = [(command.usage, command.summary) for command in COMMANDS.values()]
    rows += list(SESSION_COMMANDS.items())
    width = max(len(usage) for usage, _ in rows)
    return "\n".join(f"  {usage:<{width}}  {summary}" for usage, summary in rows)


def split_command(line: str) -> tuple[str, list[str]]:
    """``"PUT k a b"`` as ``("PUT", ["k", "a b"])``: the value of PUT is the rest of the line."""
    words = line.strip().split(maxsplit=1)
    if not words:
        return "", []
    name = words[0].upper()
    rest = words[1] if len(words) > 1 else ""
    command = COMMANDS.get(name)
    if command is not None and command.max_args is None:
        key_and_value = rest.split(maxsplit=1)
        return name, key_and_value
    return name, rest.split()


def run_command(client: Client, name: str, args: list[str]) -> CommandResult:
    command = COMMANDS.get(name)
    if command is None:
        return CommandResult(f"ERROR BAD_REQUEST unknown command {name!r}; try HELP", EXIT_ERROR)
    if len(args) < command.min_args or (command.max_args is not None and len(args) > command.max_args):
        return CommandResult(f"ERROR BAD_REQUEST usage: {command.usage}", EXIT_ERROR)
    try:
        return command.run(client, args)
    except KVError as exc:
        return CommandResult(f"ERROR {exc.code} {exc.message}", EXIT_ERROR)


def run_lines(client: Client, lines: Iterable[str], interactive: bool) -> int:
    """Run commands line by line until EXIT or end of input; print one line per command."""
    for line in lines:
        name, args = split_command(line)
        if not name:
            if not interactive:
                print("ERROR BAD_REQUEST empty command", flush=True)
            continue
        if name in ("EXIT", "QUIT"):
            break
        if name == "HELP":
            print(help_text() if interactive else " | ".join(c.usage for c in COMMANDS.values()), flush=True)
            continue
        print(run_command(client, name, args).line, flush=True)
    return EXIT_OK


def _prompt_lines(prompt: str) -> Iterator[str]:
    while True:
        try:
            yield input(prompt)
        except EOFError:
            print()
            return
        except KeyboardInterrupt:
            print()  # like a shell: Ctrl-C abandons the line, Ctrl-D leaves


def repl(client: Client, nodes: str) -> int:
    try:
        import readline
    except ImportError:
        readline = None  # type: ignore[assignment]
    if readline is not None:
        with contextlib.suppress(OSError):
            readline.read_history_file(HISTORY_FILE)
    print(f"kv: cluster at {nodes}. Type HELP for commands, EXIT to leave.")
    try:
        return run_lines(client, _prompt_lines("kv> "), interactive=True)
    finally:
        if readline is not None:
            with contextlib.suppress(OSError):
                readline.write_history_file(HISTORY_FILE)


EPILOG = f"""commands:
{help_text()}

Without a command, kv reads commands from stdin: with a prompt and history on a
terminal, or silently from a pipe, printing exactly one line per command.
Each command prints OK, the value, NOT_FOUND, or ERROR <CODE> <message>.

exit status of a one-shot command: 0 done, 1 NOT_FOUND, 2 error.

kv bench [options] measures throughput and latency of the cluster (and of
Redis, for comparison); see kv bench --help.

examples:
  kv put greeting hello world
  kv get greeting
  kv --nodes node1:5000,node2:5000 where greeting
  printf 'PUT a 1\\nGET a\\n' | kv
  kv bench --cluster 127.0.0.1:5000 --duration 5
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kv",
        description="Client for the key-value store cluster.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--nodes",
        default=os.environ.get("KV_NODES", DEFAULT_NODES),
        help="comma-separated host:port of any cluster nodes (env KV_NODES; default %(default)s)",
    )
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for a reply (default 5)")
    parser.add_argument("command", nargs="?", help="GET, PUT, DELETE, WHERE, STATUS or REPAIR (case-insensitive)")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the command's arguments")
    return parser


def _bench(argv: list[str]) -> int:
    """``kv bench``: the load generator in the ``bench`` package beside this library. Imported here,
    when asked for, so the library never loads it; an install without it says so in one line."""
    try:
        from bench.cli import main as bench_main
    except ModuleNotFoundError as exc:
        if exc.name not in ("bench", "bench.cli"):  # bench is there, but something it needs is not: a real error
            raise
        print("kv bench: the bench package is not installed here; run it from a source checkout", file=sys.stderr)
        return EXIT_ERROR
    return bench_main(argv)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "bench":  # a tool of its own, with its own options
        return _bench(args[1:])
    options = build_parser().parse_args(args)
    try:
        client = Client(options.nodes, timeout=options.timeout, client_name="kv-cli")
    except ValueError as exc:
        print(f"ERROR BAD_REQUEST --nodes: {exc}", file=sys.stderr)
        return EXIT_ERROR
    with client:
        if options.command:
            name = options.command.upper()
            args = options.args
            command = COMMANDS.get(name)
            if command is not None and command.max_args is None and len(args) > command.min_args:
                args = [args[0], " ".join(args[1:])]
            result = run_command(client, name, args)
            print(result.line)
            return result.exit_code
        if sys.stdin.isatty():
            return repl(client, options.nodes)
        return run_lines(client, sys.stdin, interactive=False)


if __name__ == "__main__":
    sys.exit(main())
