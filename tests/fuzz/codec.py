"""The coverage-guided codec fuzzer: atheris (libFuzzer for Python) on the checks in ``properties``.

    PYTHONPATH=tests .venv/bin/python -m fuzz.codec TARGET [libFuzzer flags] [CORPUS_DIR ...]

TARGET is ``frames``, ``requests`` or ``replies`` (``properties.CHECKS``). The flags are libFuzzer's
(``-max_total_time=60``, ``-atheris_runs=100000``, ``-print_final_stats=1``, ...). The first corpus
directory is where new inputs are kept; the seeds (``seeds``, laid out as the target reads its input)
are written into it first, and with no directory a temporary one is used. Unless given, the flags
add ``-timeout=10`` (an input slower than that is a hang, reported as a crash) and
``-rss_limit_mb=2048``. A check that fails, or any exception but ``ProtocolError``, stops the run:
libFuzzer prints the traceback and saves the input as ``crash-<sha1>`` (``-artifact_prefix``).
"""

from __future__ import annotations

import hashlib
import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["client", "fuzz"]):
    from client import protocol
    from fuzz import properties, seeds

DEFAULT_FLAGS = {"-timeout": "10", "-rss_limit_mb": "2048"}


def corpus(target: str) -> list[bytes]:
    """Valid inputs for ``target``, in the layout its check reads (``properties``' docstring)."""
    if target == "frames":
        streams = seeds.frame_streams()
        # One chunk of 256 bytes; chunks of 1-4 bytes; the 64-byte frame limit in 16-byte chunks.
        return [prefix + stream for stream in streams for prefix in (b"\x00\xff", b"\x03\x00\x01\x02\x03", b"\x80\x0f")]
    if target == "requests":
        return [frame[protocol.CODE_OFFSET :] for frame in seeds.request_frames()]
    if target == "replies":
        return [
            bytes([properties.REPLY_NAMES.index(name)]) + body
            for name, bodies in seeds.reply_bodies().items()
            for body in bodies
        ]
    raise ValueError(f"unknown target {target!r}: choose from {', '.join(properties.CHECKS)}")


def write_corpus(target: str, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for seed in corpus(target):
        (directory / f"seed-{hashlib.sha1(seed).hexdigest()}").write_bytes(seed)


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in properties.CHECKS:
        sys.exit(f"usage: python -m fuzz.codec {{{','.join(properties.CHECKS)}}} [libFuzzer flags] [CORPUS_DIR ...]")
    target, rest = argv[0], argv[1:]
    flags = [arg for arg in rest if arg.startswith("-")]
    directories = [arg for arg in rest if not arg.startswith("-")]
    if not directories:
        directories = [tempfile.mkdtemp(prefix=f"fuzz-{target}-")]
    write_corpus(target, Path(directories[0]))
    given = {flag.split("=", 1)[0] for flag in flags}
    flags += [f"{name}={value}" for name, value in DEFAULT_FLAGS.items() if name not in given]
    atheris.Setup([f"fuzz.codec:{target}", *flags, *directories], properties.CHECKS[target])
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv[1:])
