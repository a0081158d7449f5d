"""The long fuzz pass, one command: every atheris target for a while, then the live fuzz of one node
and of three.

    tests/fuzz/run.sh [--codec-seconds 300] [--frames 100000] [--live-seconds 600] [--seed 1] [--no-overwrites]

Each codec target (``fuzz.codec``) runs as its own process for ``--codec-seconds``, keeping its
corpus in ``.fuzz/corpus/TARGET`` so that later passes start where this one stopped, and any crash
input in ``.fuzz/crashes/``. Then ``fuzz.live`` sends ``--frames`` frames to one node and as many to
a cluster of three, each run bounded by ``--live-seconds``. Prints each part's figures and exits 1 if
any target crashed or any live run found a problem.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from fuzz import live, properties, seeds

ROOT = Path(__file__).resolve().parents[2]
STATUS_LINE = re.compile(r"^#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)/\S+.*?exec/s: (\d+)", re.M)


@dataclass(frozen=True)
class CodecRun:
    target: str
    returncode: int
    executions: int
    coverage: int  # libFuzzer's "cov": code edges reached
    features: int  # libFuzzer's "ft": distinct coverage features
    corpus: int
    per_second: int
    crash: str  # the exception and the saved input, when it crashed

    def summary(self) -> str:
        outcome = f"CRASHED: {self.crash}" if self.returncode else "no crash"
        return (
            f"{self.target:<9} {self.executions} runs, {self.per_second}/s, cov {self.coverage}, "
            f"ft {self.features}, corpus {self.corpus}: {outcome}"
        )


def run_codec_target(target: str, seconds: int, seed: int) -> CodecRun:
    """One atheris target for ``seconds`` s in its own process; libFuzzer's last status line, parsed."""
    corpus = seeds.DEFAULT_CORPUS / target
    crashes = seeds.DEFAULT_CORPUS.parent / "crashes"
    crashes.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "fuzz.codec",
        target,
        f"-max_total_time={seconds}",
        f"-seed={seed}",
        f"-artifact_prefix={crashes}/{target}-",
        "-print_final_stats=1",
        str(corpus),
    ]
    environ = {**os.environ, "PYTHONPATH": str(ROOT / "tests")}
    result = subprocess.run(command, env=environ, capture_output=True, text=True, timeout=seconds + 120, check=False)
    output = result.stdout + result.stderr
    runs = [match.groups() for match in STATUS_LINE.finditer(output)]
    executions, coverage, features, size, per_second = (int(value) for value in runs[-1]) if runs else (0,) * 5
    crash = ""
    if result.returncode:
        reasons = [line for line in output.splitlines() if "Error" in line or "Test unit written" in line]
        crash = " | ".join(reasons[-3:]) or output[-500:]
    return CodecRun(target, result.returncode, executions, coverage, features, size, per_second, crash)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="tests/fuzz/run.sh", description=__doc__.split("\n\n")[0])
    parser.add_argument("--codec-seconds", type=int, default=300, help="atheris time per target (0: skip)")
    parser.add_argument("--frames", type=int, default=100_000, help="frames per live run (0: skip)")
    parser.add_argument("--live-seconds", type=float, default=600.0, help="time limit of each live run")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--overwrites",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the live health check also overwrites and deletes its key (LiveSettings.overwrites)",
    )
    args = parser.parse_args(argv)

    failed = False
    if args.codec_seconds:
        for target in properties.CHECKS:
            result = run_codec_target(target, args.codec_seconds, args.seed)
            print(result.summary(), flush=True)
            failed |= result.returncode != 0
    if args.frames:
        for nodes in (1, 3):
            settings = live.LiveSettings(
                frames=args.frames, seconds=args.live_seconds, nodes=nodes, seed=args.seed, overwrites=args.overwrites
            )
            with tempfile.TemporaryDirectory(prefix="fuzz-live-") as directory:
                report = live.run(settings, Path(directory))
            print(f"\nlive fuzz of {nodes} node{'s' if nodes > 1 else ''}\n{report.summary()}", flush=True)
            failed |= bool(report.problems())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
