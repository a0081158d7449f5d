"""This node's membership as kept in its data directory, and the start-up check against its configuration.

The file ``<KV_DATA_DIR>/membership.json`` holds the node's id, its identity (16 random bytes in
hex, minted on the node's first start and never changed) and the newest cluster record it knows
(``service.membership``). It is a file of its own, not an entry in the LMDB store, because:

* it is checked before the store is opened: a node started with another ``KV_PARTITIONS`` must be
  refused before anything reads its data with the wrong partition map;
* it changes rarely (a new epoch, an identity learnt) and is small, so writing it whole is cheap:
  a temporary file is written, fsynced and renamed over the old one, and the directory fsynced, so
  a crash leaves the old record or the new one, never a torn one;
* an operator can read it (``cat /data/membership.json``) when a node refuses to start.

``open_membership`` loads it, or on a first start forms the record from ``KV_PEERS`` (a data
directory that already holds data but no record, from before this file existed, adopts the record
formed from its configuration the same way), and refuses, with ``ConfigError`` saying what differs
and how to fix it, a data directory that belongs to another node, another cluster, or a cluster
with another partition count.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from service import membership
from service.config import Config, ConfigError
from service.membership import ClusterRecord, MembershipError

FILE_NAME = "membership.json"
STORE_FILES = ("data.mdb",)
"""Files whose presence means the directory already holds a store (an upgrade, not a first start)."""


@dataclass(frozen=True)
class LocalMembership:
    """What the data directory says about this node: who it is and the cluster it belongs to."""

    node_id: str
    identity: str
    record: ClusterRecord


@dataclass(frozen=True)
class Opened:
    """``open_membership``'s result: the membership, and how it came about (for the start-up log)."""

    local: LocalMembership
    formed: bool  # no record was there: formed from the configuration now
    upgraded: bool  # formed in a directory that already held a store
    joined: bool = False  # no record was there: a seed admitted this node (KV_AUTO_JOIN)


def new_identity() -> str:
    return secrets.token_hex(16)


def path_in(data_dir: str) -> Path:
    return Path(data_dir) / FILE_NAME


def open_membership(config: Config, join: Callable[[str], ClusterRecord] | None = None) -> Opened:
    """This node's membership from ``config.data_dir``, formed and saved on a first start.
    ``ConfigError`` when the directory disagrees with ``config`` or the file cannot be read.

    ``join``: on a first start, instead of forming a cluster, get the record that admits this node
    (called with its new identity; ``KV_AUTO_JOIN``, see ``joining``), which raises ``ConfigError``
    if no seed admits it."""
    path = path_in(config.data_dir)
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        text = None
    except OSError as exc:
        raise ConfigError(
            [f"cannot read {path}: {exc}; check that KV_DATA_DIR is a directory this node can read and write"]
        ) from None
    if text is None and join is not None:
        identity = new_identity()
        record = join(identity)
        if record.partitions != config.partitions:
            raise ConfigError(
                [
                    f"KV_PARTITIONS={config.partitions}, but the cluster this node joins has {record.partitions}: "
                    f"set KV_PARTITIONS={record.partitions}"
                ]
            )
        local = LocalMembership(config.node_id, identity, membership.with_identity(record, config.node_id, identity))
        try:
            save(config.data_dir, local)
        except OSError as exc:
            raise ConfigError([f"cannot write {path}: {exc}; check that KV_DATA_DIR exists and is writable"]) from None
        return Opened(local, formed=False, upgraded=False, joined=True)
    if text is None:
        identity = new_identity()
        nodes = [(node.node_id, node.host, node.port) for node in config.cluster]
        record = membership.form(config.cluster_name, nodes, config.partitions, config.node_id, identity)
        local = LocalMembership(config.node_id, identity, record)
        upgraded = any((Path(config.data_dir) / name).exists() for name in STORE_FILES)
        try:
            save(config.data_dir, local)
        except OSError as exc:
            raise ConfigError([f"cannot write {path}: {exc}; check that KV_DATA_DIR exists and is writable"]) from None
        return Opened(local, formed=True, upgraded=upgraded)
    try:
        local = decode_local(text)
    except MembershipError as exc:
        raise ConfigError(
            [f"{path} is damaged ({exc}); restore it from a backup, or move the data directory aside"]
        ) from None
    problems = mismatches(local, config)
    if problems:
        raise ConfigError(problems)
    return Opened(local, formed=False, upgraded=False)


def mismatches(local: LocalMembership, config: Config) -> list[str]:
    """What differs between the data directory's membership and ``config``, each with its fix; ``[]``
    if they agree. ``KV_PEERS`` is checked only as far as it formed the cluster: its ids, with
    ``KV_CLUSTER_NAME`` and ``KV_PARTITIONS``, must give the stored cluster id. Addresses and later
    members come from the record and the peers, not from it."""
    record = local.record
    where = f"KV_DATA_DIR={config.data_dir}"
    problems = []
    if local.node_id != config.node_id:
        problems.append(
            f"{where} holds node {local.node_id}'s data (identity {local.identity}), but KV_NODE_ID={config.node_id}: "
            f"start it as KV_NODE_ID={local.node_id}, or give {config.node_id} a data directory of its own"
        )
    if record.partitions != config.partitions:
        problems.append(
            f"KV_PARTITIONS={config.partitions}, but cluster {record.cluster_id} was created with {record.partitions} "
            f"partitions, which never change (every key's place depends on it): set KV_PARTITIONS={record.partitions}"
        )
    ids = [node.node_id for node in config.cluster]
    derived = membership.derive_cluster_id(config.cluster_name, ids, record.partitions)
    # A node that joined later is no founder: its KV_PEERS names only itself, and says nothing of the id.
    if local.node_id in record.founders and derived != record.cluster_id:
        problems.append(
            f"{where} belongs to cluster {record.cluster_id} "
            f"({membership.describe_founding(record.name, record.founders, record.partitions)}), "
            f"but KV_CLUSTER_NAME and KV_PEERS here describe cluster {derived} "
            f"({membership.describe_founding(config.cluster_name, ids, record.partitions)})"
            f"{_peers_hint(record, config.cluster_name, ids)}: give this node the configuration its cluster "
            "was formed with, or an empty data directory to form a new cluster"
        )
    return problems


def _peers_hint(record: ClusterRecord, name: str, ids: list[str]) -> str:
    missing = sorted(set(record.founders) - set(ids))
    extra = sorted(set(ids) - set(record.founders))
    hints = []
    if name != record.name:
        hints.append(f"KV_CLUSTER_NAME is {name!r}, not {record.name!r}")
    if missing:
        hints.append(f"KV_PEERS lacks {', '.join(missing)}")
    if extra:
        hints.append(f"KV_PEERS adds {', '.join(extra)}")
    return "; " + "; ".join(hints) if hints else ""


def encode_local(local: LocalMembership) -> bytes:
    obj = {"node_id": local.node_id, "identity": local.identity, "record": membership.to_json(local.record)}
    return json.dumps(obj, sort_keys=True, indent=1).encode() + b"\n"


def decode_local(data: bytes) -> LocalMembership:
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MembershipError(f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise MembershipError("not a JSON object")
    node_id, identity = obj.get("node_id"), obj.get("identity")
    if not isinstance(node_id, str) or not isinstance(identity, str):
        raise MembershipError("node_id and identity must be text")
    if not membership.IDENTITY_PATTERN.match(identity):
        raise MembershipError(f"identity {identity!r} is not 32 hex digits")
    record = membership.from_json(obj.get("record"))
    if record.member(node_id) is None:
        raise MembershipError(f"the record does not list this node, {node_id}")
    return LocalMembership(node_id, identity, record)


def save(data_dir: str, local: LocalMembership) -> None:
    """Write ``local`` atomically and durably: temporary file, fsync, rename, fsync the directory."""
    directory = Path(data_dir)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / FILE_NAME
    # One temporary file per process: a node's workers may save at once, and must not write into
    # one file that the first to finish renames while the other is still writing it.
    temporary = directory / f"{FILE_NAME}.{os.getpid()}.tmp"
    data = encode_local(local)
    with open(temporary, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, target)
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):  # some file systems cannot fsync a directory
            os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
