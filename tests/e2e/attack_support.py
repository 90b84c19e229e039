"""What an attacker who can write a repository's storage (a leaked bucket key, a Git host account,
another user of a NAS) but knows none of the owner's secrets can do: write objects sealed under
secrets of their own, with Phoenix's own code. Nothing here is mocked: the objects are real.
Also the owner's side of those tests: an age repository, and what a restore gives back."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import shutil
import socket
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyrage
from e2e_support import Sandbox, file_manifest, run_phx_here

from phoenix_backup.repo.crypto import BlobType
from phoenix_backup.repo.keys import MasterSecrets
from phoenix_backup.repo.repository import Repository
from phoenix_backup.repo.snapshot import Snapshot, SnapshotStats
from phoenix_backup.repo.tree import Extent, Node
from phoenix_backup.storage.local import LocalBackend


def plant_snapshot(
    repo_dir: Path, attacker: MasterSecrets, files: dict[str, bytes], *, absent: tuple[str, ...] = ()
) -> str:
    """A full snapshot of this host, newer than any other (so `--latest` picks it), holding
    `files` (logical paths such as `home/.ssh/authorized_keys`) and deleting `absent` when
    restored; its packs, index and snapshot object sealed under `attacker`. Returns its id."""
    backend = LocalBackend(repo_dir)
    evil = Repository(backend, Repository.read_config(backend), attacker)

    def tree(entries: dict[str, object]) -> bytes:
        nodes = []
        for name, value in entries.items():
            if isinstance(value, bytes):
                blob, _ = evil.save_blob(BlobType.DATA, value)
                nodes.append(
                    Node(
                        name,
                        "file",
                        mode=0o644,
                        mtime_ns=1,
                        size=len(value),
                        content=[Extent(blob, 0, len(value))],
                        sha256=hashlib.sha256(value).hexdigest(),
                    )
                )
            else:
                assert isinstance(value, dict)
                nodes.append(Node(name, "dir", mode=0o755, subtree=tree(value)))
        tree_id, _ = evil.save_tree(nodes)
        return tree_id

    nested: dict[str, object] = {}
    for logical, content in files.items():
        *folders, leaf = logical.split("/")
        level = nested
        for folder in folders:
            level = level.setdefault(folder, {})  # type: ignore[assignment]
        level[leaf] = content
    root = tree(nested)
    evil.flush()
    when = datetime.now(UTC) + timedelta(hours=1)
    snap = Snapshot(
        time=when.isoformat(timespec="seconds"),
        name=when.strftime("%Y-%m-%d-%H-%M"),
        host=socket.gethostname(),
        username="attacker",
        scope="full",
        tags=(),
        tree=root,
        parent=None,
        sources={},
        databases=(),
        stats=SnapshotStats(files=len(files)),
        started=when.isoformat(),
        absent=absent,
    )
    return evil.save_snapshot(snap)


def write_slot(repo_dir: Path, document: dict[str, object]) -> Path:
    """A key slot object as the attacker wrote it (any JSON they like)."""
    path = repo_dir / "keys" / str(document["id"])
    path.write_text(json.dumps(document))
    return path


def slot_document(slot_type: str, data: bytes, **params: object) -> dict[str, object]:
    """A key slot in format 1, the format every Phoenix reads."""
    return {
        "version": 1,
        "id": secrets.token_hex(8),
        "type": slot_type,
        "created": "2026-01-01T00:00:00Z",
        "host": "h",
        "username": "u",
        "label": slot_type,
        "params": params,
        "data": base64.b64encode(data).decode(),
    }


def gpg_store_packet(payload: bytes, tmp: Path) -> bytes:
    """`gpg --store`: a literal data packet, "encrypted" to no one; gpg "decrypts" it without a key."""
    home = tmp / "gnupg-attacker"
    home.mkdir(mode=0o700, exist_ok=True)
    out = subprocess.run(
        ["gpg", "--homedir", str(home), "--batch", "--store"],
        input=payload,
        capture_output=True,
        check=True,
        env={**os.environ, "GNUPGHOME": str(home)},
    )
    return out.stdout


def age_sandbox(make_sandbox: Callable[..., Sandbox], tmp_path: Path) -> tuple[Sandbox, str]:
    """A sandbox whose repository is encrypted to a new age identity, with one snapshot; and the
    identity's public recipient (which anyone may know)."""
    sb = make_sandbox()
    identity = pyrage.x25519.Identity.generate()
    identity_file = tmp_path / "age.txt"
    identity_file.write_text(str(identity) + "\n")
    recipient = str(identity.to_public())
    sb.reinit(
        encryption={"enabled": True, "method": "age", "recipients": [recipient], "identityFile": str(identity_file)}
    )
    sb.backup()
    return sb, recipient


def restored(
    sb: Sandbox, name: str, dest: Path, *args: str, env: dict[str, str] | None = None
) -> dict[str, tuple[object, ...]]:
    """Restore snapshot `name` below `dest` (emptied first; `args` are more options); what came back.
    In this process (`run_phx_here`): what comes back is the point, not the process boundary; a
    sandbox run as another user (`prefix`) restores in its own process."""
    shutil.rmtree(dest, ignore_errors=True)
    cmd = ["restore", "--backup", name, "--to", str(dest), "--json", *args]
    if sb.prefix:
        sb.phx(*cmd, env=env)
    else:
        run_phx_here(cmd, sb.env if env is None else env)
    return file_manifest(dest, skip_databases=False)


def assert_rotation_recovers(
    sb: Sandbox, names: list[str], expected: dict[str, dict[str, tuple[object, ...]]], tmp_path: Path, what: str
) -> None:
    """After a `phx key rotate` was killed (`what` says where): the owner's passphrase opens the
    repository on this machine and every snapshot restores exactly; a second run finishes the
    job (every byte reads, one key slot is left) and every snapshot still restores exactly."""
    res = sb.phx("list", "--json")
    assert [s["name"] for s in res.json()] == names, f"killed {what}:\n{res}"
    for name in names:
        assert restored(sb, name, tmp_path / "after-kill") == expected[name], f"killed {what}: {name}"
    sb.phx("key", "rotate")
    doc = sb.verify("--read-data")
    # A write the kill cut short may leave its temporary file (prune removes it); nothing else.
    assert doc["ok"] and [n for n in doc["notices"] if "leftover temporary file" not in n] == [], doc
    listing = sb.phx("key", "list", "--json").json()
    assert [s["status"] for s in listing] == ["ok"], listing
    for name in names:
        assert restored(sb, name, tmp_path / "after-rerun") == expected[name], f"killed {what}: {name}"
