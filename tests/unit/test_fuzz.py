"""The short fuzz pass that CI runs (the long one is ``tests/fuzz/run.sh``), and the inputs it found.

Each atheris target (``tests/fuzz/codec.py``) runs for a few seconds in its own process, from its
seed corpus; the live fuzz (``tests/fuzz/live.py``) sends 10,000 mutated frames to a node and 5,000
to a cluster of three, each a ``python -m service`` subprocess. The checks in ``fuzz.properties``
also run here under hypothesis, on every seed, and on each input the fuzzers found a bug with.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from fuzz import live, properties, seeds
from hypothesis import given, settings
from hypothesis import strategies as st

from client.protocol import MAX_ERROR_MESSAGE_BYTES

TESTS = Path(__file__).resolve().parents[1]
CODEC_SECONDS = 3


def _undecodable_error_message() -> bytes:
    # An error reply whose message is 0xff bytes: within the length cap on the wire, but each one
    # decodes to U+FFFD, three bytes, so encoding it again cut it and appended "...", which the
    # check took for a changed message.
    raw = b"\xff" * (MAX_ERROR_MESSAGE_BYTES // 2)
    return bytes([properties.REPLY_NAMES.index("error")]) + len(raw).to_bytes(2, "big") + raw


FOUND = {
    # A complete frame, then a header whose length (0xffffffff) is over the limit, chunked as
    # 1, 2, 3 and 4 bytes: fed whole, the decoder lost the frame along with the error.
    "frames": bytes.fromhex(
        "03000102030000001f0000000b00000000010003666f6f01a2b3c4d5e60000056e" + "ff" * 111 + "916f6465310b0000"
    ),
    "replies": _undecodable_error_message(),
}
"""Inputs the fuzzers crashed on, by target, each fixed since; they must pass their check forever."""


@pytest.mark.parametrize("target", sorted(FOUND))
def test_each_input_the_fuzzers_found_a_bug_with_now_passes(target: str) -> None:
    properties.CHECKS[target](FOUND[target])


@pytest.mark.parametrize("target", sorted(properties.CHECKS))
def test_every_seed_passes_its_check(target: str) -> None:
    inputs = seeds.corpus(target)
    assert inputs
    for seed in inputs:
        properties.CHECKS[target](seed)


def test_the_seeds_cover_every_request_type_and_every_reply_decoder() -> None:
    request_codes = {seed[0] for seed in seeds.corpus("requests")}
    assert request_codes >= set(properties.protocol.REQUEST_TYPES)
    reply_decoders = {properties.REPLY_NAMES[seed[0]] for seed in seeds.corpus("replies")}
    assert reply_decoders == set(properties.REPLY_DECODERS)


@settings(max_examples=300)
@given(st.sampled_from(sorted(properties.CHECKS)), st.binary(max_size=300))
def test_the_checks_hold_for_random_bytes(target: str, data: bytes) -> None:
    properties.CHECKS[target](data)


@pytest.fixture(scope="module")
def atheris_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, str, Path]]:
    """Every atheris target run for ``CODEC_SECONDS``, all at once (each is one process on one core):
    target -> (exit status, output, its scratch directory)."""
    environ = {**os.environ, "PYTHONPATH": str(TESTS)}
    started = {}
    for target in properties.CHECKS:
        scratch = tmp_path_factory.mktemp(f"atheris-{target}")
        command = [
            sys.executable,
            "-m",
            "fuzz.codec",
            target,
            f"-max_total_time={CODEC_SECONDS}",
            "-seed=1",
            f"-artifact_prefix={scratch}/",
            str(scratch / "corpus"),
        ]
        process = subprocess.Popen(command, env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        started[target] = (process, scratch)
    results = {}
    for target, (process, scratch) in started.items():
        try:
            output, _ = process.communicate(timeout=CODEC_SECONDS + 60)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
        results[target] = (process.returncode, output, scratch)
    return results


@pytest.mark.parametrize("target", sorted(properties.CHECKS))
def test_atheris_finds_no_crash_in_a_few_seconds(target: str, atheris_runs: dict[str, tuple[int, str, Path]]) -> None:
    returncode, output, scratch = atheris_runs[target]
    assert returncode == 0, output[-3000:]
    assert "Done " in output, output[-3000:]
    assert not list(scratch.glob("crash-*"))


@pytest.mark.parametrize(("nodes", "frames"), [(1, 10_000), (3, 5_000)])
def test_live_nodes_survive_mutated_frames_keep_serving_and_stay_bounded(
    nodes: int, frames: int, tmp_path: Path
) -> None:
    # The health check overwrites and deletes keys too: fuzzed timestamps (a PUT whose ``after`` is
    # 2^64-1) once dragged the nodes' clocks to the top and lost acknowledged overwrites.
    settings = live.LiveSettings(frames=frames, seconds=20, nodes=nodes)
    report = live.run(settings, tmp_path)
    assert report.problems() == [], report.summary()
    assert report.frames_sent >= frames or report.seconds >= 20, report.summary()
    # The frames reached every layer: decoders refused some, framing errors closed connections,
    # valid requests were answered, and a normal client was served throughout.
    assert report.replies["OK"] and report.replies["BAD_REQUEST"] and report.replies["FRAME_TOO_LARGE"]
    assert report.closed_by_node > 0
    assert report.health_ok >= 2
    assert not report.node_exits
