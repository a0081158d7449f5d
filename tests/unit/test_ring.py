"""Key placement: balance, minimal movement, preference lists, and determinism across processes."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client.ring import DEFAULT_PARTITIONS, Ring

REPO = Path(__file__).resolve().parents[2]
THREE = ["node1", "node2", "node3"]
KEY_COUNT = 100_000


def random_keys(seed: int, count: int) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(rng.randint(1, 32)) for _ in range(count)]


@pytest.fixture(scope="module")
def keys() -> list[bytes]:
    return random_keys(20240611, KEY_COUNT)


@pytest.fixture(scope="module")
def ring3() -> Ring:
    return Ring(THREE)


def primaries(ring: Ring, keys: list[bytes]) -> list[str]:
    return [ring.primary(key) for key in keys]


# --- balance and movement --------------------------------------------------------------------------


def test_three_nodes_share_primaries_evenly(ring3: Ring, keys: list[bytes]) -> None:
    counts = Counter(primaries(ring3, keys))
    assert set(counts) == set(THREE)
    mean = KEY_COUNT / len(THREE)
    for node_id, count in counts.items():
        assert abs(count - mean) <= 0.10 * mean, f"{node_id} holds {count} of {KEY_COUNT} keys (mean {mean:.0f})"


def test_adding_a_node_moves_about_a_quarter_of_keys_and_only_to_it(ring3: Ring, keys: list[bytes]) -> None:
    ring4 = Ring([*THREE, "node4"])
    before = primaries(ring3, keys)
    after = primaries(ring4, keys)
    moved = [(old, new) for old, new in zip(before, after, strict=True) if old != new]
    assert 0.20 * KEY_COUNT <= len(moved) <= 0.30 * KEY_COUNT
    assert {new for _, new in moved} == {"node4"}
    assert after.count("node4") == len(moved)


def test_removing_a_node_moves_only_its_keys(ring3: Ring, keys: list[bytes]) -> None:
    ring2 = Ring(["node1", "node3"])
    for key in keys[:5000]:
        old = ring3.primary(key)
        if old != "node2":
            assert ring2.primary(key) == old


# --- preference lists ------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3])
def test_preference_list_is_n_distinct_nodes_primary_first(ring3: Ring, keys: list[bytes], n: int) -> None:
    for key in keys[:2000]:
        nodes = ring3.preference_list(key, n)
        assert len(nodes) == n
        assert len(set(nodes)) == n
        assert set(nodes) <= set(THREE)
        assert nodes[0] == ring3.primary(key)


@pytest.mark.parametrize("n", [4, 5, 100])
def test_preference_list_longer_than_the_ring_returns_every_node(ring3: Ring, n: int) -> None:
    nodes = ring3.preference_list(b"some key", n)
    assert sorted(nodes) == THREE
    assert nodes[0] == ring3.primary(b"some key")


def test_ring_ignores_input_order_and_duplicates(keys: list[bytes]) -> None:
    shuffled = Ring(["node3", "node1", "node2", "node1"])
    reference = Ring(THREE)
    assert shuffled.node_ids == tuple(THREE)
    assert len(shuffled) == 3
    for key in keys[:2000]:
        assert shuffled.preference_list(key, 3) == reference.preference_list(key, 3)


def test_rings_of_the_same_nodes_share_their_rankings() -> None:
    # Built again and again (clean-up every 10 s), a ring of the same nodes must not be ranked again.
    first, again = Ring(THREE), Ring(list(reversed(THREE)))
    assert all(first.partition_owners(p) is again.partition_owners(p) for p in range(DEFAULT_PARTITIONS))
    other_nodes, other_partitions = Ring([*THREE, "node4"]), Ring(THREE, partitions=64)
    assert first.partition_owners(0) is not other_nodes.partition_owners(0)
    assert len(other_nodes.partition_owners(0)) == 4
    assert other_partitions.partitions == 64
    assert all(sorted(other_partitions.partition_owners(p)) == THREE for p in range(64))


def test_partitions_split_the_hash_space(ring3: Ring, keys: list[bytes]) -> None:
    seen = {ring3.partition(key) for key in keys}
    assert min(seen) >= 0
    assert max(seen) < DEFAULT_PARTITIONS
    assert len(seen) > 0.99 * DEFAULT_PARTITIONS  # 100,000 keys hit nearly all 4096 partitions
    for partition in range(0, DEFAULT_PARTITIONS, 512):
        assert sorted(ring3.partition_owners(partition)) == THREE


def test_empty_ring_and_zero_partitions_are_rejected() -> None:
    with pytest.raises(ValueError, match="at least one node"):
        Ring([])
    with pytest.raises(ValueError, match="at least one partition"):
        Ring(THREE, partitions=0)


def test_pinned_placement() -> None:
    """If this fails, placement changed: every existing cluster would lose track of its keys."""
    ring = Ring(THREE)
    assert ring.partition(b"hello") == 2683
    assert ring.preference_list(b"hello", 3) == ["node3", "node1", "node2"]
    assert ring.preference_list(b"user:42", 3) == ["node2", "node1", "node3"]
    assert ring.preference_list(b"", 3) == ["node2", "node1", "node3"]
    assert Ring([*THREE, "node4"]).preference_list(b"hello", 4) == ["node3", "node1", "node4", "node2"]


# --- determinism across processes ------------------------------------------------------------------

_CHILD = """
import json, sys
from client.ring import Ring
ring = Ring(["node1", "node2", "node3", "node4"])
keys = [f"key-{i}".encode() for i in range(500)]
print(json.dumps([ring.preference_list(key, 3) for key in keys]))
"""


def preference_lists_in_subprocess(hash_seed: str) -> list[list[str]]:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", _CHILD], env=env, cwd=REPO, capture_output=True, text=True, check=True, timeout=60
    )
    return json.loads(result.stdout)


def test_placement_is_identical_in_processes_with_different_hash_seeds() -> None:
    ring = Ring(["node1", "node2", "node3", "node4"])
    here = [ring.preference_list(f"key-{i}".encode(), 3) for i in range(500)]
    assert preference_lists_in_subprocess("1") == here
    assert preference_lists_in_subprocess("987654") == here


# --- properties over any membership ----------------------------------------------------------------

node_sets = st.sets(st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=12), min_size=1, max_size=10)
partition_counts = st.integers(1, 512)  # the default 4096 is covered by the fixed-ring tests above


@settings(max_examples=60, deadline=None)
@given(node_sets, st.binary(max_size=64), st.integers(0, 12), partition_counts)
def test_preference_list_properties(node_ids: set[str], key: bytes, n: int, partitions: int) -> None:
    ring = Ring(node_ids, partitions)
    nodes = ring.preference_list(key, n)
    assert len(nodes) == min(n, len(node_ids))
    assert len(set(nodes)) == len(nodes)
    assert set(nodes) <= node_ids
    if n:
        assert nodes[0] == ring.primary(key)
    longer = ring.preference_list(key, n + 1)
    assert longer[: len(nodes)] == nodes
    assert ring.preference_list(key, 2) == ring.preference_list(key, 3)[:2]
    # owners() is the key's partition's ranking, with or without the one-node shortcut
    assert ring.owners(key) == ring.partition_owners(ring.partition(key))


@settings(max_examples=40, deadline=None)
@given(node_sets.filter(lambda ids: len(ids) >= 2), st.binary(max_size=64), st.integers(1, 256), st.data())
def test_removing_a_node_only_drops_it_from_preference_lists(
    node_ids: set[str], key: bytes, partitions: int, data: st.DataObject
) -> None:
    gone = data.draw(st.sampled_from(sorted(node_ids)), label="removed node")
    full = Ring(node_ids, partitions).preference_list(key, len(node_ids))
    smaller = Ring(node_ids - {gone}, partitions).preference_list(key, len(node_ids))
    assert smaller == [node_id for node_id in full if node_id != gone]
