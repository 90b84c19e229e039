"""Append-only targets (docs/write-only.md): Phoenix never deletes or overwrites an object there,
forget and prune say they must run elsewhere, S3 Object Lock keeps every object's first version
whatever the writer's credentials do, and a Git remote refuses force pushes.

Written as the attacker who controls the backing-up machine: it holds the target's credentials
and tries to destroy the history with them."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyrage
import pytest
from botocore.exceptions import ClientError
from e2e_support import Sandbox, assert_error, assert_restored, retention_only

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from moto_support import ACCESS_KEY_ID, SECRET_ACCESS_KEY, MotoServer, bare_repo, git, git_env

from phoenix_backup.config import load_config
from phoenix_backup.errors import AppendOnlyRefused, ObjectExists
from phoenix_backup.ops.context import Environment, target_backend
from phoenix_backup.storage.git import clone_dir

# The repositories the commands leave are the point, not the process: the sandboxes' helpers run phx
# in this process (tests/e2e/conftest.py).
pytestmark = pytest.mark.phx_in_process

PREFIX = "argent/"


def _names(sb: Sandbox) -> dict[str, bytes]:
    """Every object of the local repository (locks aside) with its bytes."""
    return {
        p.relative_to(sb.repo).as_posix(): p.read_bytes()
        for p in sb.repo.rglob("*")
        if p.is_file() and not p.relative_to(sb.repo).as_posix().startswith("locks/")
    }


def test_an_append_only_local_target_keeps_every_object(sandbox: Sandbox) -> None:
    sb = sandbox
    sb.write_config(
        targets={"local": {"enabled": True, "appendOnly": True}}, retention=retention_only(last=1, prune=True)
    )
    first = sb.backup()
    second = sb.backup()
    # Retention after each backup would forget the first snapshot: on an append-only target it
    # runs elsewhere, and says so.
    assert "local" in second["retention"]["elsewhere"], second["retention"]
    assert {s["id"] for s in sb.snapshots()} == {first["id"], second["id"]}
    before = _names(sb)

    res = sb.phx("forget", check=False)
    assert_error(res, 2, "append-only", "`phx forget`", "another machine")
    res = sb.phx("prune", check=False)
    assert_error(res, 2, "append-only", "`phx prune`", "another machine")
    res = sb.phx("forget", first["id"], check=False)
    assert_error(res, 2, "append-only")
    sb.phx_here("forget", "--dry-run")  # a dry run deletes nothing: allowed
    assert _names(sb) == before

    # Through the library, as a careless caller would: no delete, no overwrite, same bytes again ok.
    cfg = load_config(sb.config_path, sb.env)
    backend = target_backend(cfg, Environment(env=sb.env), "local")
    snap = f"snapshots/{first['id']}"
    with pytest.raises(AppendOnlyRefused, match="append-only"):
        backend.delete(snap)
    with pytest.raises(AppendOnlyRefused, match="append-only"):
        backend.write(snap, b"garbage")
    with pytest.raises(AppendOnlyRefused, match="append-only"):
        backend.write("config", before["config"] + b" ")
    with pytest.raises(ObjectExists):
        backend.write("config", before["config"], exclusive=True)
    backend.write(snap, before[snap])  # the same bytes: an upload retried after a lost answer
    assert _names(sb) == before
    # Locks still come and go: no lock object is left behind by the runs above.
    assert not list((sb.repo / "locks").iterdir())


def test_no_command_deletes_or_replaces_on_an_append_only_target(sandbox: Sandbox, tmp_path: Path) -> None:
    """Every other command that deletes or replaces objects, run by a careless user or by an agent
    handed commands, on the machine whose config marks the target append-only: each refuses at
    once with one error (exit 2). Another config for the same storage (handed over, or written by
    `phx init --force`) and `--repo` naming it meet the same refusal. What only adds objects, or
    only touches locks, leaves every object as it was."""
    sb = sandbox
    sb.write_config(targets={"local": {"enabled": True, "appendOnly": True}}, retention=retention_only(last=1))
    first = sb.backup()
    sb.backup()
    before = _names(sb)
    slot = json.loads(sb.phx_here("key", "list", "--json").out)[0]["id"]
    deleting = [
        ("key", "remove", slot),
        ("key", "passwd"),
        ("key", "rotate"),
        ("repair", "index"),
        ("repair", "snapshots", "--forget"),
    ]
    env = sb.env_with(PHX_NEW_PASSPHRASE="another passphrase")
    for args in deleting:
        res = sb.phx(*args, env=env, check=False)
        assert_error(res, 2, "append-only", "another machine")
        # The command named once, as typed (it read "`phx `phx key rotate` (...)`").
        assert f"so `phx {' '.join(args[:2])}" in res.err and "`phx `phx" not in res.err, res.err
    # --repo naming the same storage: only the commands that read take it.
    for args in (("forget", first["id"]), ("prune",), ("key", "remove", slot)):
        assert_error(sb.phx("--repo", sb.repo, *args, check=False), 2, "does not take --repo")
    # Another config for the same storage, which does not mark it append-only.
    other = dict(sb.config, targets={"local": {"enabled": True}})
    other_path = tmp_path / "handed-over.json"
    other_path.write_text(json.dumps(other))
    for args in (("forget", first["id"]), ("prune",), ("repair", "index")):
        assert_error(sb.phx("--config", other_path, *args, check=False), 2, "append-only", "append-only.json")
    # What only adds, or only touches locks.
    sb.phx("key", "add", "--method", "passphrase", env=env)
    sb.phx_here("unlock", "--all", "--config", other_path)
    # `init --force` writes a new config (the ArgentOS defaults, without appendOnly) and leaves the
    # repository as it is; the storage stays append-only for this machine.
    sb.phx_here("init", "--force", "--workspace", sb.workspace, "--repo", sb.repo)
    assert "appendOnly" not in sb.config_path.read_text()
    assert_error(sb.phx("forget", first["id"], check=False), 2, "append-only")
    after = _names(sb)
    assert {k: after.get(k) for k in before} == before, "an object was deleted or replaced"
    assert [k for k in after if k not in before and not k.startswith("keys/")] == [], sorted(set(after) - set(before))


@pytest.mark.parametrize("damage", ["half-written", "not a mapping", "a folder"])
def test_a_damaged_append_only_record_keeps_every_target_append_only(
    sandbox: Sandbox, tmp_path: Path, damage: str
) -> None:
    """A careless edit of append-only.json (or a folder where it should be) must not make this
    machine forget the storage it keeps append-only: a handed-over config without appendOnly
    still cannot forget or prune there, backups go on, and the file is left for its owner to fix."""
    sb = sandbox
    sb.write_config(targets={"local": {"enabled": True, "appendOnly": True}}, retention=retention_only(last=1))
    first = sb.backup()
    marks = Path(sb.env["XDG_DATA_HOME"]) / "phoenix" / "append-only.json"
    assert str(sb.repo.resolve()) in marks.read_text()
    if damage == "a folder":
        marks.unlink()
        marks.mkdir()
    else:
        marks.write_text(marks.read_text()[:20] if damage == "half-written" else '{"storage": []}\n')
    kept = marks.read_text() if marks.is_file() else None
    before = _names(sb)
    other_path = tmp_path / "handed-over.json"
    other_path.write_text(json.dumps(dict(sb.config, targets={"local": {"enabled": True}})))
    for args in (("forget", first["id"]), ("prune",)):
        assert_error(sb.phx("--config", other_path, *args, check=False), 2, "append-only", "append-only.json")
    sb.phx_here("--config", other_path, "backup")
    after = _names(sb)
    assert {k: after.get(k) for k in before} == before, "an object was deleted or replaced"
    assert (marks.read_text() if marks.is_file() else None) == kept


def _locked_bucket(moto: MotoServer) -> str:
    name = moto.make_bucket("lock")
    moto.client().delete_bucket(Bucket=name)
    moto.client().create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    return name


def _bucket_target(moto: MotoServer, bucket: str) -> dict[str, Any]:
    """An enabled S3 or R2 target section for `bucket` on the test's S3 API server."""
    return {
        "enabled": True,
        "bucket": bucket,
        "prefix": PREFIX,
        "endpoint": moto.endpoint,
        "accessKeyId": ACCESS_KEY_ID,
        "secretAccessKey": SECRET_ACCESS_KEY,
    }


def _s3_only(sb: Sandbox, moto: MotoServer, bucket: str, object_lock: dict[str, Any] | None) -> None:
    s3 = _bucket_target(moto, bucket)
    if object_lock is not None:
        s3["objectLock"] = object_lock
    sb.env.update(PHX_DATA_DIR=str(sb.root / "data"), AWS_EC2_METADATA_DISABLED="true")
    sb.write_config(targets={"local": {"enabled": False}, "s3": s3}, retention=retention_only(last=1, prune=True))
    sb.config_path.chmod(0o600)
    shutil.rmtree(sb.repo)


def test_object_lock_keeps_every_object_from_the_writers_credentials(
    sandbox: Sandbox, moto: MotoServer, tmp_path: Path
) -> None:
    """A write-only repository on a bucket with Object Lock: the machine that backs up holds the
    bucket's credentials and no identity. An attacker there can neither read nor destroy."""
    sb = sandbox
    bucket = _locked_bucket(moto)
    _s3_only(sb, moto, bucket, {"mode": "compliance", "days": 1})
    identity = pyrage.x25519.Identity.generate()
    sb.env.pop("PHX_PASSPHRASE")
    recipient = str(identity.to_public())
    sb.write_config(encryption={"enabled": True, "method": "age", "recipients": [recipient], "writeOnly": True})
    sb.phx_here("init")
    state = sb.state()
    sb.backup()
    sb.backup()
    s3 = moto.client()  # the writer's own credentials
    originals: dict[str, tuple[str, bytes]] = {}
    assert not moto.keys(bucket, PREFIX + "locks/"), "a lock object was left behind"
    for version in s3.list_object_versions(Bucket=bucket, Prefix=PREFIX).get("Versions", []):
        key = version["Key"]
        head = s3.head_object(Bucket=bucket, Key=key, VersionId=version["VersionId"])
        if key.startswith(PREFIX + "locks/"):
            assert "ObjectLockMode" not in head, f"a lock is retained, it could never go: {head}"
            continue
        assert head.get("ObjectLockMode") == "COMPLIANCE", f"{key} is not retained: {head}"
        body = s3.get_object(Bucket=bucket, Key=key, VersionId=version["VersionId"])["Body"].read()
        originals[key] = (version["VersionId"], body)
    assert any(k.startswith(PREFIX + "snapshots/") for k in originals)
    assert any(k.startswith(PREFIX + "data/") for k in originals)

    # The attacker: delete every version, even asking to bypass governance; overwrite everything;
    # hide everything behind delete markers.
    for key, (vid, _body) in originals.items():
        for bypass in (False, True):
            with pytest.raises(ClientError, match="AccessDenied"):
                s3.delete_object(Bucket=bucket, Key=key, VersionId=vid, BypassGovernanceRetention=bypass)
        s3.put_object(Bucket=bucket, Key=key, Body=b"garbage")
        s3.delete_object(Bucket=bucket, Key=key)
    assert not sb.verify(check=1)["ok"]  # the repository looks gone (what verify says)...

    # ...but every first version is intact, byte for byte.
    for key, (vid, body) in originals.items():
        assert s3.get_object(Bucket=bucket, Key=key, VersionId=vid)["Body"].read() == body, key
    # The owner's way back (docs/write-only.md): delete every version newer than the retained one.
    for entry in ("Versions", "DeleteMarkers"):
        for version in s3.list_object_versions(Bucket=bucket, Prefix=PREFIX).get(entry, []):
            key, vid = version["Key"], version["VersionId"]
            if key in originals and vid != originals[key][0]:
                s3.delete_object(Bucket=bucket, Key=key, VersionId=vid)
    sb.verify()
    # The machine that reads: the bucket's location and the identity, nothing else.
    identity_file = tmp_path / "identity.txt"
    identity_file.write_text(str(identity) + "\n")
    reader = {
        "PATH": sb.env["PATH"],
        "HOME": str(tmp_path / "reader"),
        "XDG_DATA_HOME": str(tmp_path / "reader-data"),
        "PHX_CACHE_DIR": str(tmp_path / "reader-cache"),
        "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
        "AWS_ENDPOINT_URL": moto.endpoint,
        "AWS_EC2_METADATA_DISABLED": "true",
        "PHX_IDENTITY_FILE": str(identity_file),
    }
    where = f"s3://{bucket}/{PREFIX}"
    sb.phx("verify", "--read-data", "--repo", where, env=reader)
    sb.phx("restore", "--latest", "--host", socket.gethostname(), "--to", tmp_path / "r", "--repo", where, env=reader)
    assert_restored(state, tmp_path / "r", "restore after the attack was undone")

    # forget and prune against the locked target say where they must run.
    assert_error(sb.phx("prune", check=False), 2, "append-only", "another machine")
    doc = sb.phx("doctor", "--json", check=False).json()
    checks = {c["name"]: c for c in doc["checks"]}
    assert checks.get("target s3 append-only", {}).get("status") == "ok", json.dumps(doc, indent=1)
    assert "Object Lock on" in checks["target s3 append-only"]["message"]


def test_the_same_bucket_as_r2_or_as_s3_stays_append_only(sandbox: Sandbox, moto: MotoServer, tmp_path: Path) -> None:
    """An R2 bucket is also reachable through the generic `s3` target (R2's endpoint, the same
    bucket and prefix). A handed-over config that names it so, without appendOnly, must meet the
    same refusal as the `r2` config that made it append-only on this machine."""
    sb = sandbox
    bucket = moto.make_bucket("r2")
    where = _bucket_target(moto, bucket)
    sb.env.update(AWS_EC2_METADATA_DISABLED="true")
    sb.write_config(targets={"local": {"enabled": False}, "r2": {**where, "appendOnly": True}})
    sb.config_path.chmod(0o600)
    sb.phx_here("init")
    first = sb.backup()
    before = moto.keys(bucket, PREFIX)
    other_path = tmp_path / "handed-over.json"
    other_path.write_text(json.dumps(dict(sb.config, targets={"local": {"enabled": False}, "s3": where})))
    other_path.chmod(0o600)
    assert_error(sb.phx("--config", other_path, "forget", first["id"], check=False), 2, "append-only")
    assert moto.keys(bucket, PREFIX) == before


def test_object_lock_needs_a_bucket_with_object_lock(sandbox: Sandbox, moto: MotoServer) -> None:
    sb = sandbox
    _s3_only(sb, moto, moto.make_bucket("plain"), {"mode": "governance", "days": 7})
    res = sb.phx("init", check=False)
    assert_error(res, 1, "Object Lock", "enable it on the bucket")


def test_governance_retention_and_doctor_on_a_bucket_phoenix_does_not_lock(sandbox: Sandbox, moto: MotoServer) -> None:
    sb = sandbox
    bucket = _locked_bucket(moto)
    _s3_only(sb, moto, bucket, {"mode": "governance", "days": 2})
    sb.phx_here("init")
    s3 = moto.client()
    snapshot = [k for k in moto.keys(bucket, PREFIX) if "/keys/" in k or k.endswith("/config")]
    for key in snapshot:
        head = s3.head_object(Bucket=bucket, Key=key)
        assert head["ObjectLockMode"] == "GOVERNANCE", head
        with pytest.raises(ClientError, match="AccessDenied"):
            s3.delete_object(Bucket=bucket, Key=key, VersionId=head["VersionId"])
    # appendOnly without objectLock: Phoenix keeps from deleting, the bucket does not.
    cfg = json.loads(sb.config_path.read_text())
    del cfg["targets"]["s3"]["objectLock"]
    cfg["targets"]["s3"]["appendOnly"] = True
    sb.write_config(**cfg)
    checks = {c["name"]: c for c in sb.phx("doctor", "--json", check=False).json()["checks"]}
    assert checks["target s3 append-only"]["status"] == "fail", checks
    assert "sets no retention" in checks["target s3 append-only"]["message"]


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed (scripts/test.sh installs it)")
def test_an_append_only_git_target_refuses_force_pushes(sandbox: Sandbox, tmp_path: Path) -> None:
    sb = sandbox
    remote = bare_repo(sb.root / "remote.git")
    sb.env.update(PHX_DATA_DIR=str(sb.root / "data"))
    git_target = {"enabled": True, "repo": str(remote), "branch": "main", "autoCommit": True, "appendOnly": True}
    sb.write_config(targets={"local": {"enabled": True}, "git": git_target})
    sb.backup()
    sb.backup()
    assert git("config", "--get", "receive.denyNonFastForwards", cwd=remote).strip() == "true"
    history = git("rev-list", "main", cwd=remote).split()
    assert len(history) >= 2

    # The attacker, with the machine's access to the remote: rewrite or delete the branch.
    clone = tmp_path / "attacker"
    git("clone", "-q", str(remote), str(clone))
    git("reset", "-q", "--hard", history[-1], cwd=clone)
    for args in (["push", "-q", "--force", "origin", "HEAD:main"], ["push", "-q", "origin", ":main"]):
        proc = subprocess.run(["git", *args], cwd=clone, env=git_env(), capture_output=True, text=True)
        assert proc.returncode != 0, f"the remote accepted git {' '.join(args)}"
    assert git("rev-list", "main", cwd=remote).split() == history

    checks = {c["name"]: c for c in sb.phx("doctor", "--json", check=False).json()["checks"]}
    assert checks["target git append-only"]["status"] == "ok", checks

    # An attacker who turns the guard off and replaces the history (an older commit, then one that
    # deletes the snapshots) is not merged over.
    git("rm", "-q", "-r", "snapshots", cwd=clone)
    git("commit", "-q", "-m", "wipe", cwd=clone)
    git("config", "receive.denyNonFastForwards", "false", cwd=remote)
    git("push", "-q", "--force", "origin", "HEAD:main", cwd=clone)
    doc = sb.backup(check=3)
    assert not doc["targets"]["git"]["ok"]
    assert "history was rewritten" in doc["targets"]["git"]["error"], doc["targets"]["git"]


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed (scripts/test.sh installs it)")
def test_an_append_only_git_repository_moved_or_reached_by_another_spelling_still_refuses(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """The agent moves the append-only Git repository (a fresh one in its place) and hands Phoenix
    a config naming it at its new place, or through /proc/self/cwd from the clone: forget and
    prune refuse as under the config that made it append-only."""
    sb = sandbox
    remote = bare_repo(sb.root / "remote.git")
    git_target = {"enabled": True, "repo": str(remote), "branch": "main", "autoCommit": True, "appendOnly": True}
    sb.reinit(targets={"local": {"enabled": False}, "git": git_target}, retention=retention_only(last=1))
    first = sb.backup()
    sb.backup()
    history = git("rev-list", "main", cwd=remote).split()
    moved = remote.rename(sb.root / "elsewhere.git")
    bare_repo(sb.root / "remote.git")  # the decoy
    from_clone = os.path.relpath(moved, clone_dir(sb.env, "any", "main"))  # where git runs
    for repo in (str(moved), f"/proc/self/cwd/{from_clone}"):
        other = dict(
            sb.config, targets={"local": {"enabled": False}, "git": {**git_target, "repo": repo, "appendOnly": False}}
        )
        other_path = tmp_path / "handed-over.json"
        other_path.write_text(json.dumps(other))
        for args in (("forget", first["id"]), ("prune",)):
            assert_error(sb.phx("--config", other_path, *args, check=False), 2, "append-only", "append-only.json")
    assert git("rev-list", "main", cwd=moved).split() == history
