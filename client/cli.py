r"""The ``kv`` command line: one-shot commands, a REPL on a terminal, and line mode on a pipe.

    kv get foo                       one command, then exit
    kv                               on a terminal: prompt, history, HELP
    printf 'PUT a 1\nGET a\n' | kv   on a pipe: no prompt, exactly one output line per command

Every command prints ``OK``, a value, ``NOT_FOUND`` or ``ERROR <CODE> <message>``, and every failure,
including an unreachable cluster, a typo, unbalanced quotes or bytes that are not UTF-8, is one such
line, never a traceback.

Keys and values are bytes from end to end: lines are read from ``sys.stdin.buffer`` and split by
``client.quoting`` (redis-cli's rules), one-shot arguments are the shell's bytes
(``os.fsencode``), and output is written to ``sys.stdout.buffer``, so neither the locale nor
``PYTHONIOENCODING`` can make a byte fail to read or print. How a value prints is a
``ValueFormat``: quoted on a terminal, bare when unambiguous on a pipe, or raw.
"""

from __future__ import annotations

import argparse
import contextlib
import enum
import io
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO

import gevent

from client import protocol
from client.cli_cluster import cluster_command
from client.cli_security import SecurityOptionError, add_security_options, security_from, users_command
from client.client import Client
from client.errors import KVError
from client.progress import Progress
from client.protocol import PeerState
from client.quoting import BLANKS, QUOTES, QuotingError, is_bare, next_arg, quote, split_args

DEFAULT_NODES = "127.0.0.1:5000,127.0.0.1:5001,127.0.0.1:5002"
"""Where ``docker compose up`` publishes the three nodes, so ``kv`` works there with no flags."""
HISTORY_FILE = os.path.expanduser("~/.kv_history")

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
"""Ctrl-C: 128 + SIGINT, as a shell reports a command it interrupted."""

STATUS_WORDS = frozenset({b"OK", b"NOT_FOUND", b"ERROR"})
"""First words of the lines that are not values; a value starting with one prints quoted on a pipe."""


class ValueFormat(enum.Enum):
    """How ``GET`` prints a value (every other line is the same in all three)."""

    QUOTED = "quoted"
    """Always double-quoted and escaped (``"bar"``, ``"a\\nb"``, ``"\\xff"``): on a terminal, or ``--no-raw``."""
    PLAIN = "plain"
    """Bare when ``plain_value`` says it cannot be misread, quoted otherwise: on a pipe."""
    RAW = "raw"
    """The stored bytes as they are, then a newline (``--raw``); a value may then span several lines."""


def plain_value(value: bytes) -> bool:
    """Whether a value prints bare on a pipe: printable UTF-8 text, not empty, no blank at either
    end, no quote at the start, and not starting with a status word (``OK``, ``NOT_FOUND``, ``ERROR``)."""
    return is_bare(value) and value.split(b" ", 1)[0] not in STATUS_WORDS


def format_value(value: bytes, value_format: ValueFormat) -> bytes:
    """``value`` as ``GET`` prints it, without the newline."""
    if value_format is ValueFormat.RAW or (value_format is ValueFormat.PLAIN and plain_value(value)):
        return value
    return quote(value)


def one_line(text: str) -> bytes:
    """A status or error line as UTF-8 on one line: control characters, and anything else that is
    not printable (a node's message may hold any text), escaped as ``\\xHH``/``\\uHHHH``."""
    if not text.isprintable():
        text = "".join(char if char.isprintable() else ascii(char)[1:-1] for char in text)
    return text.encode("utf-8", errors="backslashreplace")


@dataclass(frozen=True)
class CommandResult:
    """What a command prints and the exit status it gives a one-shot ``kv``. ``line`` is a status
    line (``OK``, ``NOT_FOUND``, ``ERROR ...``, a report) as ``str``, or a stored value as ``bytes``,
    which is printed in the session's ``ValueFormat``."""

    line: str | bytes
    exit_code: int = EXIT_OK


class Output:
    """Writes one line per command to stdout as bytes, flushed, so a pipe reader sees each answer
    as soon as it is ready."""

    def __init__(self, value_format: ValueFormat) -> None:
        self.value_format = value_format

    def result(self, result: CommandResult) -> None:
        line = result.line
        self.write(format_value(line, self.value_format) if isinstance(line, bytes) else one_line(line))

    def text(self, text: str) -> None:
        """Lines this program wrote (help, banners), printed as they are."""
        self.write(text.encode("utf-8", errors="backslashreplace"))

    @staticmethod
    def write(line: bytes) -> None:
        stdout = sys.stdout
        stdout.flush()  # whatever went through the text layer (the REPL's prompt) comes first
        binary: IO[bytes] | None = getattr(stdout, "buffer", None)
        if binary is None:  # a text-only stdout, such as a caller's StringIO
            stdout.write(line.decode("utf-8", errors="backslashreplace") + "\n")
            stdout.flush()
            return
        binary.write(line + b"\n")
        binary.flush()


@dataclass(frozen=True)
class Command:
    usage: str
    summary: str
    run: Callable[[Client, list[bytes]], CommandResult]
    min_args: int
    max_args: int | None  # None: the last argument is the rest of the line (PUT's value)


def _get(client: Client, args: list[bytes]) -> CommandResult:
    value = client.get(args[0])
    return CommandResult("NOT_FOUND", EXIT_NOT_FOUND) if value is None else CommandResult(value)


def _put(client: Client, args: list[bytes]) -> CommandResult:
    client.put(args[0], args[1])
    return CommandResult("OK")


def _delete(client: Client, args: list[bytes]) -> CommandResult:
    client.delete(args[0])
    return CommandResult("OK")


def _where(client: Client, args: list[bytes]) -> CommandResult:
    return CommandResult(" ".join(client.where(args[0])))


def _status(client: Client, args: list[bytes]) -> CommandResult:
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


def _repair(client: Client, args: list[bytes]) -> CommandResult:
    total_partitions = total_differing = total_repaired = 0
    unreached: list[str] = []
    nodes = [node.node_id for node in client.topology().nodes]
    for index, node_id in enumerate(nodes, 1):
        label = f"repair {index}/{len(nodes)} {node_id}"
        try:
            result = repair_with_progress(client, node_id, label)
        except KVError as exc:
            unreached.append(node_id)
            _progress(f"{label}: ERROR {exc.code} {exc.message}")
            continue
        total_partitions += result.partitions
        total_differing += result.differing
        total_repaired += result.repaired
        unreached += [f"{node_id}->{peer}" for peer in result.failed_peers]
        _progress(
            f"{label}: {result.partitions} partitions compared, "
            f"{result.differing} keys differed, {result.repaired} copied"
        )
    line = f"{total_partitions} partitions compared, {total_differing} keys differed, {total_repaired} copied"
    if unreached:
        return CommandResult(f"ERROR UNREACHABLE {line}; not compared: {', '.join(unreached)}", EXIT_ERROR)
    return CommandResult(f"OK {line}")


def _progress(line: str) -> None:
    """Progress of long commands goes to stderr, so stdout keeps one line per command."""
    print(line, file=sys.stderr, flush=True)


REPAIR_POLL_INTERVAL = 0.5
"""Seconds between STATS polls while a node runs REPAIR: the line moves twice a second."""


def repair_with_progress(client: Client, node_id: str, label: str) -> protocol.RepairReply:
    """REPAIR on ``node_id``; meanwhile, when stderr is a terminal, a status line there with the
    round's progress as the node's STATS tell it: partitions compared, keys found differing and
    copied. The REPAIR call alone decides the outcome: a failed poll only draws nothing."""
    line = Progress(sys.stderr, sys.stderr.isatty(), interval=REPAIR_POLL_INTERVAL)
    if not line.enabled:
        return client.repair(node_id)

    def repair() -> protocol.RepairReply | KVError:
        try:
            return client.repair(node_id)
        except KVError as exc:  # returned, not raised: gevent would print a dying greenlet's traceback
            return exc

    running = gevent.spawn(repair)
    try:
        while not running.ready():  # REPAIR's own timeout bounds this
            running.join(timeout=REPAIR_POLL_INTERVAL)
            if running.ready():
                break
            with contextlib.suppress(KVError, protocol.ProtocolError):
                round_progress = client.stats(node_id).repair
                if round_progress.running:
                    line.show(f"{label}: {repair_progress_text(round_progress)}")
    finally:
        running.kill()  # only if this greenlet was interrupted: the REPAIR call is done otherwise
        line.done()
    outcome: protocol.RepairReply | KVError = running.get()
    if isinstance(outcome, KVError):
        raise outcome
    return outcome


def repair_progress_text(progress: protocol.RepairProgress) -> str:
    """``"1365/2730 partitions compared (50%), 3 keys differed, 1 copied"``."""
    share = 100 * progress.partitions_compared // max(1, progress.partitions_total)
    return (
        f"{progress.partitions_compared}/{progress.partitions_total} partitions compared ({share}%), "
        f"{progress.keys_differing} keys differed, {progress.keys_copied} copied"
    )


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


COMMANDS: dict[str, Command] = {
    "GET": Command("GET key", "print the key's value, or NOT_FOUND", _get, 1, 1),
    "PUT": Command(
        "PUT key value...", "store the value: one quoted argument exactly, or the rest of the line", _put, 2, None
    ),
    "DELETE": Command("DELETE key", "delete the key", _delete, 1, 1),
    "WHERE": Command("WHERE key", "the key's replicas as host:port, primary first", _where, 1, 1),
    "STATUS": Command(
        "STATUS", "every node: up, suspect or down (and storage full), as the cluster sees it", _status, 0, 0
    ),
    "REPAIR": Command("REPAIR", "run anti-entropy on every node now; report keys that differed", _repair, 0, 0),
}
SESSION_COMMANDS = {"HELP": "this list", "EXIT": "leave (also QUIT or Ctrl-D)"}

QUOTING_HELP = r"""quoting, as redis-cli:
  Blanks separate arguments; outside quotes every byte stands for itself.
  "..." takes the escapes \n \r \t \b \a \\ \" and \xHH; '...' takes \'.
  PUT's value is one quoted argument, taken exactly ("" is the empty value,
  " a " keeps its spaces), or else the rest of the line as written, less the
  blanks at its ends: PUT k hello world stores "hello world".
    PUT "sp key" "  two spaces each side  "
    GET "sp key"
    PUT bin "\xff\xfe\n"
"""

OUTPUT_HELP = r"""output:
  On a terminal a value prints quoted and escaped: "bar", "a\nb", "\xff".
  On a pipe it prints bare when it is printable text with no blank at its
  ends that cannot be taken for OK, NOT_FOUND, ERROR or a quoted value, and
  quoted otherwise ("NOT_FOUND", "" for the empty value). Either way a quoted
  value reads back as the same bytes. --raw prints the stored bytes as they
  are (a value with a newline then takes several lines); --no-raw always quotes.
"""


def help_text() -> str:
    rows = [(command.usage, command.summary) for command in COMMANDS.values()]
    rows += list(SESSION_COMMANDS.items())
    width = max(len(usage) for usage, _ in rows)
    return "\n".join(f"  {usage:<{width}}  {summary}" for usage, summary in rows)


def split_command(line: bytes) -> tuple[str, list[bytes]]:
    r"""A line as its command name (upper case) and arguments: ``b'PUT "a b" hello world'`` is
    ``("PUT", [b"a b", b"hello world"])``, ``b'GET "\xff"'`` is ``("GET", [b"\xff"])``, and a blank
    line is ``("", [])``. Raises ``QuotingError`` for unbalanced quotes."""
    first = next_arg(line)
    if first is None:
        return "", []
    name_bytes, position = first
    name = _command_name(name_bytes)
    command = COMMANDS.get(name)
    if command is None or command.max_args is not None:
        return name, split_args(line[position:])
    args: list[bytes] = []
    for _ in range(command.min_args - 1):  # the arguments before the value: PUT's key
        found = next_arg(line, position)
        if found is None:
            return name, args
        arg, position = found
        args.append(arg)
    rest = line[position:].strip(BLANKS)
    return name, ([*args, _rest_of_line_value(rest)] if rest else args)


def _command_name(name: bytes) -> str:
    """A command's name in upper case (ASCII letters only: no byte changes length), as text; a byte
    that is not UTF-8 shows as ``\\xHH`` in the unknown-command error."""
    return name.upper().decode("utf-8", errors="backslashreplace")


def _rest_of_line_value(rest: bytes) -> bytes:
    """PUT's value from the rest of its line, blanks at both ends removed: one quoted argument taken
    exactly, or else the text as written (quotes and backslashes inside it are ordinary bytes)."""
    if rest[0] not in QUOTES:
        return rest
    found = next_arg(rest)
    assert found is not None  # rest starts with a quote, not a blank
    value, end = found
    if end != len(rest):
        raise QuotingError('a value that starts with a quote must be one quoted argument: PUT key "a b c"')
    return value


def one_shot_command(name: str, args: list[str]) -> tuple[str, list[bytes]]:
    """The command a shell's arguments ask for: each argument is its bytes as the shell passed them
    (no escapes: the shell has done the quoting), and PUT's words after the key are joined by one
    space, so ``kv put k hello world`` stores ``hello world``."""
    name = _command_name(_argv_bytes(name))
    raw = [_argv_bytes(arg) for arg in args]
    command = COMMANDS.get(name)
    if command is not None and command.max_args is None and len(raw) > command.min_args:
        last = command.min_args - 1
        raw = [*raw[:last], b" ".join(raw[last:])]
    return name, raw


def _argv_bytes(arg: str) -> bytes:
    """The bytes of a command-line argument: Python decodes argv with ``surrogateescape``, and
    ``os.fsencode`` undoes that exactly, so a byte that is not UTF-8 comes back as itself."""
    try:
        return os.fsencode(arg)
    except UnicodeEncodeError:  # a str no OS argv can hold (a lone surrogate), from a caller of main()
        return arg.encode("utf-8", errors="surrogatepass")


def run_command(client: Client, name: str, args: list[bytes]) -> CommandResult:
    command = COMMANDS.get(name)
    if command is None:
        return CommandResult(f"ERROR BAD_REQUEST unknown command '{name}'; try HELP", EXIT_ERROR)
    if len(args) < command.min_args or (command.max_args is not None and len(args) > command.max_args):
        return CommandResult(f"ERROR BAD_REQUEST usage: {command.usage}", EXIT_ERROR)
    try:
        return command.run(client, args)
    except KVError as exc:
        return CommandResult(f"ERROR {exc.code} {exc.message}", EXIT_ERROR)
    except Exception as exc:  # a bug: still one line, and the next command still runs
        return CommandResult(f"ERROR INTERNAL_ERROR kv failed: {type(exc).__name__}: {exc}", EXIT_ERROR)


def run_lines(client: Client, lines: Iterable[bytes], output: Output, *, interactive: bool) -> int:
    """Run commands line by line until EXIT or end of input; print one line per command. Returns 0:
    each command's outcome is its own line, so a failed command does not fail the session."""
    for line in lines:
        try:
            name, args = split_command(line)
        except QuotingError as exc:
            output.result(CommandResult(f"ERROR BAD_REQUEST {exc}", EXIT_ERROR))
            continue
        if not name:
            if not interactive:
                output.result(CommandResult("ERROR BAD_REQUEST empty command", EXIT_ERROR))
            continue
        if name in ("EXIT", "QUIT"):
            break
        if name == "HELP":
            usages = " | ".join(command.usage for command in COMMANDS.values())
            output.text(f"{help_text()}\n\n{QUOTING_HELP.rstrip()}" if interactive else usages)
            continue
        output.result(run_command(client, name, args))
    return EXIT_OK


def input_lines(stream: IO[str]) -> Iterator[bytes]:
    """The lines of a piped stdin as bytes, newline included: read from its binary buffer, so no
    byte has to decode; a text-only stream (a caller's StringIO) is encoded back losslessly."""
    binary: IO[bytes] | None = getattr(stream, "buffer", None)
    if binary is not None:
        yield from binary
        return
    for line in stream:
        yield line.encode("utf-8", errors="surrogateescape")


def _prompt_lines(prompt: str) -> Iterator[bytes]:
    """Lines typed at the prompt, as the bytes the terminal sent."""
    stdin = sys.stdin
    if isinstance(stdin, io.TextIOWrapper):
        stdin.reconfigure(errors="surrogateescape")  # a byte the terminal's encoding rejects survives
    encoding = getattr(stdin, "encoding", None) or "utf-8"
    while True:
        try:
            yield input(prompt).encode(encoding, errors="surrogateescape")
        except EOFError:
            print()
            return
        except KeyboardInterrupt:
            print()  # like a shell: Ctrl-C abandons the line, Ctrl-D leaves


def repl(client: Client, nodes: str, output: Output) -> int:
    try:
        import readline
    except ImportError:
        readline = None  # type: ignore[assignment]
    if readline is not None:
        with contextlib.suppress(OSError):
            readline.read_history_file(HISTORY_FILE)
    output.text(f"kv: cluster at {nodes}. Type HELP for commands and quoting, EXIT to leave.")
    try:
        return run_lines(client, _prompt_lines("kv> "), output, interactive=True)
    finally:
        if readline is not None:
            with contextlib.suppress(OSError):
                readline.write_history_file(HISTORY_FILE)


EPILOG = f"""commands:
{help_text()}

Without a command, kv reads commands from stdin: with a prompt and history on a
terminal, or silently from a pipe, printing exactly one line per command (an
empty line prints ERROR BAD_REQUEST empty command).
Each command prints OK, the value, NOT_FOUND, or ERROR <CODE> <message>.

{QUOTING_HELP}
  On kv's own command line the shell does the quoting: each argument is taken
  as the bytes the shell passes (no escapes), and PUT's words after the key
  are joined by one space:
    kv put "sp key" v1            then, in kv or on a pipe: GET "sp key"
    kv put k ""                   the empty value
    kv put bin $'\\xff\\xfe'        bytes that are not text (bash's $'...')

{OUTPUT_HELP}
exit status: a one-shot command exits 0 done, 1 NOT_FOUND (GET of a missing
key), 2 error. Reading stdin, kv exits 0 once it has run every line (or EXIT),
whatever each command printed, and 2 if it could not write its output.
Ctrl-C at the prompt abandons the line; anywhere else it exits 130.

kv users add NAME ROLE | passwd NAME | remove NAME | list, as an admin
(--user), changes the cluster's users on every node; kv users hash NAME ROLE
prints a users file line. Passwords are never arguments: KV_PASSWORD,
--password-file or a prompt (the new one: KV_NEW_PASSWORD, --new-password-file
or a prompt).

kv cluster status shows every member as nodetool status does: UN, UJ, UL or
DN (up or down, normal, joining or leaving), its address, its share of the
partitions, its keys and bytes, and streaming progress; exit 2 unless all UN.
kv cluster join HOST:PORT (or NODE=HOST:PORT), leave NODE and remove NODE
change the membership, as an admin; see kv cluster --help.

kv bench [options] measures throughput and latency of the cluster (and of
Redis, for comparison); see kv bench --help.

examples:
  kv put greeting hello world
  kv get greeting
  kv --nodes node1:5000,node2:5000 where greeting
  printf 'PUT a 1\\nGET a\\n' | kv
  kv bench --cluster 127.0.0.1:5000 --duration 5
  kv --user admin --tls-ca ca.crt users add alice readwrite
"""


def _positive_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not (seconds > 0 and math.isfinite(seconds)):
        raise argparse.ArgumentTypeError(f"{text} must be a positive number of seconds")
    return seconds


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
    parser.add_argument(
        "--timeout", type=_positive_seconds, default=5.0, help="seconds to wait for a reply (default 5)"
    )
    value_format = parser.add_mutually_exclusive_group()
    value_format.add_argument(
        "--raw",
        dest="value_format",
        action="store_const",
        const=ValueFormat.RAW,
        help="print values as the stored bytes, unquoted (as redis-cli --raw)",
    )
    value_format.add_argument(
        "--no-raw",
        dest="value_format",
        action="store_const",
        const=ValueFormat.QUOTED,
        help="print values quoted and escaped even on a pipe (the default on a terminal)",
    )
    add_security_options(parser)
    parser.add_argument(
        "command",
        nargs="?",
        help="GET, PUT, DELETE, WHERE, STATUS, REPAIR (case-insensitive), users ... or cluster status",
    )
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
    value_format = options.value_format or (ValueFormat.QUOTED if _is_terminal(sys.stdout) else ValueFormat.PLAIN)
    try:
        return _run(options, Output(value_format))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader went away (kv ... | head -1): nothing more to say, to anyone
        _discard_stdout()
        return EXIT_ERROR


def _run(options: argparse.Namespace, output: Output) -> int:
    try:
        client = Client(options.nodes, timeout=options.timeout, client_name="kv-cli")
    except ValueError as exc:
        print(f"ERROR BAD_REQUEST --nodes: {exc}", file=sys.stderr)
        return EXIT_ERROR
    users = options.command is not None and options.command.lower() == "users"
    if not (users and options.args[:1] == ["hash"]):  # hash needs no cluster
        try:
            client.security = security_from(options)
        except SecurityOptionError as exc:
            output.text(str(exc))
            return EXIT_ERROR
    with client:
        if users:
            line, code = users_command(client, options.args)
            output.text(line)
            return code
        if options.command is not None and options.command.lower() == "cluster":
            line, code = cluster_command(client, options.args)
            output.text(line)
            return code
        if options.command is not None:
            result = run_command(client, *one_shot_command(options.command, options.args))
            output.result(result)
            return result.exit_code
        if _is_terminal(sys.stdin):
            return repl(client, options.nodes, output)
        return run_lines(client, input_lines(sys.stdin), output, interactive=False)


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's flush at exit does not report the broken pipe
    again (the recipe in Python's ``signal`` documentation, "Note on SIGPIPE")."""
    with contextlib.suppress(OSError, ValueError, io.UnsupportedOperation):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


if __name__ == "__main__":
    sys.exit(main())
