"""The coverage-guided codec fuzzer: atheris (libFuzzer for Python) on the checks in ``properties``.

    PYTHONPATH=tests .venv/bin/python -m fuzz.codec TARGET [libFuzzer flags] [CORPUS_DIR ...]

TARGET is ``frames``, ``requests`` or ``replies`` (``properties.CHECKS``). The flags are libFuzzer's
(``-max_total_time=60``, ``-atheris_runs=100000``, ``-print_final_stats=1``, ...). The first corpus
directory is where new inputs are kept; the seeds (``seeds``, laid out as the target reads its input)
are written into it first, and with no directory it is ``.fuzz/corpus/TARGET``. Unless given, the flags
add ``-timeout=10`` (an input slower than that is a hang, reported as a crash) and
``-rss_limit_mb=2048``. A check that fails, or any exception but ``ProtocolError``, stops the run:
libFuzzer prints the traceback and saves the input as ``crash-<sha1>`` (``-artifact_prefix``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["client", "fuzz"]):
    from fuzz import properties, seeds

DEFAULT_FLAGS = {"-timeout": "10", "-rss_limit_mb": "2048"}


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in properties.CHECKS:
        sys.exit(f"usage: python -m fuzz.codec {{{','.join(properties.CHECKS)}}} [libFuzzer flags] [CORPUS_DIR ...]")
    target, rest = argv[0], argv[1:]
    flags = [arg for arg in rest if arg.startswith("-")]
    directories = [arg for arg in rest if not arg.startswith("-")]
    if not directories:
        directories = [str(seeds.DEFAULT_CORPUS / target)]
    seeds.write_corpus(target, Path(directories[0]))
    given = {flag.split("=", 1)[0] for flag in flags}
    flags += [f"{name}={value}" for name, value in DEFAULT_FLAGS.items() if name not in given]
    atheris.Setup([f"fuzz.codec:{target}", *flags, *directories], properties.CHECKS[target])
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv[1:])
