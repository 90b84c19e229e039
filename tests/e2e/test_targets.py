"""Targets end to end, through the `phx` command: one backup reaching local disk, a Git remote (a
bare repository on disk), S3 and R2 (both a real moto S3 server on loopback); a restore from each
target alone; a target that is down failing alone with exit 3 and `phx sync` catching it up; the
storage class on data packs only; credentials never printed. Backups, failures and kills are real
`phx` processes; the lists, verifies, syncs and restores that read what the targets hold run in the
test's process (`phx_here`)."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from e2e_support import Sandbox, assert_error, assert_restored, scan_for

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from moto_support import (
    ACCESS_KEY_ID,
    SECRET_ACCESS_KEY,
    MotoServer,
    bare_repo,
    closed_port,
    git,
)

from phoenix_backup.config import load_config
from phoenix_backup.ops.context import Environment, open_repository
from phoenix_backup.repo.crypto import BlobType
from phoenix_backup.repo.pack import pack_name

pytestmark = pytest.mark.skipif(
    shutil.which("git") is None, reason="git is not installed (scripts/test.sh installs it)"
)


class Targets:
    """A sandbox whose config enables local, git, s3 and r2 (the last two on the moto server)."""

    def __init__(self, sb: Sandbox, moto: MotoServer, *, storage_class: str = "STANDARD") -> None:
        self.sb = sb
        self.moto = moto
        self.s3_bucket = moto.make_bucket("s3")
        self.r2_bucket = moto.make_bucket("r2")
        self.remote = bare_repo(sb.root / "remote.git")
        self.data_dir = sb.root / "data"
        sb.env.update(PHX_DATA_DIR=str(self.data_dir), AWS_EC2_METADATA_DISABLED="true")
        self.targets: dict[str, Any] = {
            "local": {"enabled": True},
            "git": {"enabled": True, "repo": str(self.remote), "branch": "main", "autoCommit": True},
            "s3": {
                "enabled": True,
                "bucket": self.s3_bucket,
                "prefix": "argent/",
                "storageClass": storage_class,
                "endpoint": moto.endpoint,
                "accessKeyId": ACCESS_KEY_ID,
                "secretAccessKey": SECRET_ACCESS_KEY,
            },
            "r2": {
                "enabled": True,
                "accountId": "0123456789abcdef0123456789abcdef",
                "bucket": self.r2_bucket,
                "prefix": "argent/",
                "endpoint": moto.endpoint,  # replaces https://<accountId>.r2.cloudflarestorage.com
                "accessKeyId": ACCESS_KEY_ID,
                "secretAccessKey": SECRET_ACCESS_KEY,
            },
        }
        self.write()

    def write(self) -> None:
        self.sb.write_config(targets=self.targets)
        self.sb.config_path.chmod(0o600)  # it holds secrets

    def objects(self, target: str) -> set[str]:
        """The object names a target holds (locks aside), as the format names them."""
        if target == "local":
            base = self.sb.repo
            return {
                p.relative_to(base).as_posix()
                for p in base.rglob("*")
                if p.is_file() and not p.relative_to(base).as_posix().startswith("locks/")
            }
        if target == "git":
            names = git("ls-tree", "-r", "--name-only", "main", cwd=self.remote).split()
            return {n for n in names if not n.startswith(".git")}
        bucket = self.s3_bucket if target == "s3" else self.r2_bucket
        keys = self.moto.keys(bucket, "argent/")
        return {k.removeprefix("argent/") for k in keys if not k.startswith("argent/locks/")}


@pytest.fixture
def targets(sandbox: Sandbox, moto: MotoServer) -> Targets:
    return Targets(sandbox, moto)


def _outcomes(doc: dict[str, Any]) -> dict[str, bool]:
    return {name: t["ok"] for name, t in doc["targets"].items()}


def test_one_backup_reaches_all_four_targets_and_each_restores_alone(targets: Targets, tmp_path: Path) -> None:
    sb = targets.sb
    state = sb.state()
    res = sb.phx("backup", "--json")
    doc = res.json()
    assert _outcomes(doc) == {"local": True, "git": True, "s3": True, "r2": True}, res
    assert all(t["error"] is None for t in doc["targets"].values())
    for name in ("git", "s3", "r2"):
        assert f"initialised target {name}" in res.err

    # The same objects under the same names everywhere.
    local = targets.objects("local")
    assert any(n.startswith("snapshots/") for n in local)
    for name in ("git", "s3", "r2"):
        assert targets.objects(name) == local, name

    # One commit naming the snapshot, pushed; packs marked -delta.
    log = git("log", "--format=%s", "main", cwd=targets.remote)
    assert f"phoenix snapshot {doc['name']} ({doc['id'][:8]})" in log
    assert "data/** binary -delta" in git("show", "main:.gitattributes", cwd=targets.remote)

    listed = sb.phx_here("list", "--json").json()
    assert [s["targets"] for s in listed] == [["local", "git", "s3", "r2"]]
    state_file = json.loads((sb.home / ".argentos" / "backup" / ".last-backup").read_text())
    assert {k: v["ok"] for k, v in state_file["targets"].items()} == {
        "local": True,
        "git": True,
        "s3": True,
        "r2": True,
    }

    # With the local repository and the Git clone gone, every remote target restores on its own.
    shutil.rmtree(sb.repo)
    shutil.rmtree(targets.data_dir)
    shutil.rmtree(sb.cache)
    sb.cache.mkdir()
    for name in ("s3", "r2", "git"):
        dest = tmp_path / f"from-{name}"
        sb.phx_here("restore", "--target", name, "--backup", doc["id"], "--to", dest, "--json")
        assert_restored(state, dest, f"restore --target {name}")
        verified = sb.phx_here("verify", "--target", name, "--read-data", "--json").json()
        assert verified["ok"] and verified["errors"] == [], name
    assert [s["id"] for s in sb.phx_here("list", "--target", "r2", "--json").json()] == [doc["id"]]
    # The first target has no repository any more, and says how to get one.
    assert_error(sb.phx("list", "--target", "local", check=None), 1, "no repository")


def test_a_target_that_is_down_fails_alone_and_sync_catches_it_up(targets: Targets) -> None:
    sb = targets.sb
    good_endpoint = targets.targets["s3"]["endpoint"]
    targets.targets["s3"]["endpoint"] = f"http://127.0.0.1:{closed_port()}"
    targets.write()

    started = time.monotonic()
    res = sb.phx("backup", "--json", check=3)
    took = time.monotonic() - started
    doc = res.json()
    assert _outcomes(doc) == {"local": True, "git": True, "s3": False, "r2": True}, res
    assert "cannot connect" in doc["targets"]["s3"]["error"]
    assert "FAILED" not in res.out  # JSON only on stdout
    assert took < 30, f"the backup took {took:.1f} s with one target down"
    state_file = json.loads((sb.home / ".argentos" / "backup" / ".last-backup").read_text())
    assert state_file["targets"]["s3"]["ok"] is False and state_file["targets"]["r2"]["ok"] is True
    text = sb.phx("backup", check=3)
    assert "target s3: FAILED: cannot connect" in text.out

    assert [s["targets"] for s in sb.phx_here("list", "--json").json()] == [["local", "git", "r2"]] * 2
    sync_down = sb.phx_here("sync", "--target", "s3", "--json", code=1).json()
    assert sync_down["targets"]["s3"]["ok"] is False

    # The endpoint is back: sync copies what s3 lacks, and s3 alone verifies every byte.
    targets.targets["s3"]["endpoint"] = good_endpoint
    targets.write()
    res = sb.phx_here("sync", "--json")
    synced = res.json()
    # Progress: one phase for every replica, counting the packs and index objects copied.
    uploads = [json.loads(line) for line in res.err.splitlines() if '"uploading to git, s3, r2"' in line]
    last = uploads[-1]
    assert last["done"] == last["total"] > 0 and last["bytesDone"] == last["bytesTotal"] > 0, uploads
    assert last["unit"] == "objects" and last["total"] < synced["targets"]["s3"]["objects"], (last, synced)
    assert synced["ok"] and synced["targets"]["s3"]["snapshots"] == 2 and synced["targets"]["s3"]["initialised"]
    assert synced["targets"]["r2"]["objects"] == 0, "r2 already had everything"
    verified = sb.phx_here("verify", "--target", "s3", "--read-data", "--json").json()
    assert verified["ok"] and verified["checked"]["snapshots"] == 2
    assert targets.objects("s3") == targets.objects("local")
    assert [s["targets"] for s in sb.phx_here("list", "--json").json()] == [["local", "git", "s3", "r2"]] * 2
    assert sb.phx_here("sync").out.count("already up to date") == 3


def test_storage_class_applies_to_data_packs_only(sandbox: Sandbox, moto: MotoServer, tmp_path: Path) -> None:
    t = Targets(sandbox, moto, storage_class="GLACIER")
    sb = t.sb
    state = sb.state()
    doc = sb.phx("backup", "--json").json()
    assert _outcomes(doc)["s3"], doc

    env = Environment(env=sb.env)
    repo = open_repository(load_config(sb.config_path, sb.env), env)
    repo.load_index()
    kinds: dict[str, set[BlobType]] = {}
    for _blob, loc in repo.index.blobs():
        kinds.setdefault(pack_name(loc.pack_id), set()).add(loc.type)
    repo.close()
    classes = {k.removeprefix("argent/"): v["storageClass"] for k, v in moto.keys(t.s3_bucket, "argent/").items()}
    data_packs = {n for n, k in kinds.items() if k == {BlobType.DATA}}
    tree_packs = {n for n, k in kinds.items() if k == {BlobType.TREE}}
    assert data_packs and tree_packs
    for name, cls in classes.items():
        expected = "GLACIER" if name in data_packs else "STANDARD"
        assert cls == expected, f"{name}: {cls}"
    r2_classes = {v["storageClass"] for v in moto.keys(t.r2_bucket, "argent/").values()}
    assert r2_classes == {"STANDARD"}, "storageClass is an s3 setting"

    # Listing, browsing and a structural verify never touch a cold pack ...
    assert len(sb.phx_here("list", "--target", "s3", "--json").json()) == 1
    assert sb.phx_here("verify", "--target", "s3", "--json").json()["ok"]
    # ... and reading data requests a thaw and waits, saying so (moto thaws at once).
    dest = tmp_path / "thawed"
    res = sb.phx_here("restore", "--target", "s3", "--latest", "--to", dest, "--thaw-timeout", "60", "--json")
    assert "cold storage class" in res.err and "--thaw-timeout" in res.err
    assert_restored(state, dest, "restore --target s3 from GLACIER")


def test_credentials_are_never_printed_or_stored(sandbox: Sandbox, moto: MotoServer) -> None:
    t = Targets(sandbox, moto)
    sb = t.sb
    # r2 is down: its error message must not carry the keys either.
    t.targets["r2"]["endpoint"] = f"http://127.0.0.1:{closed_port()}"
    t.write()
    outputs = []
    for args in (("backup", "--verbose"), ("sync", "--json", "--verbose")):
        res = sb.phx(*args, check=None)
        assert res.code == 3, res
        outputs.append(res.out + res.err)
    res = sb.phx("verify", "--target", "s3", "--read-data", "--verbose")
    outputs.append(res.out + res.err)
    # A wrong key: the error names the field to fix, not the key.
    t.targets["s3"]["endpoint"] = f"http://127.0.0.1:{closed_port()}"
    t.write()
    res = sb.phx("list", "--target", "s3", check=None)
    outputs.append(res.out + res.err)
    for text in outputs:
        assert SECRET_ACCESS_KEY not in text
        assert ACCESS_KEY_ID not in text
    needles = [SECRET_ACCESS_KEY.encode(), ACCESS_KEY_ID.encode()]
    stored = [sb.home / ".argentos" / "backup", sb.repo, sb.cache, t.data_dir]
    for root in stored:
        assert scan_for(root, needles) == [], root
    for bucket in (t.s3_bucket,):
        for key in moto.keys(bucket):
            body = moto.client().get_object(Bucket=bucket, Key=key)["Body"].read()
            assert SECRET_ACCESS_KEY.encode() not in body


def test_credentials_from_the_environment_and_the_aws_chain(sandbox: Sandbox, moto: MotoServer) -> None:
    t = Targets(sandbox, moto)
    sb = t.sb
    for name in ("s3", "r2"):
        del t.targets[name]["accessKeyId"]
        del t.targets[name]["secretAccessKey"]
    t.write()
    # s3 through the AWS chain's shared credentials file, r2 through R2_* variables.
    aws = sb.home / ".aws"
    aws.mkdir()
    (aws / "credentials").write_text(
        f"[default]\naws_access_key_id = {ACCESS_KEY_ID}\naws_secret_access_key = {SECRET_ACCESS_KEY}\n"
    )
    sb.env.update(R2_ACCESS_KEY_ID=ACCESS_KEY_ID, R2_SECRET_ACCESS_KEY=SECRET_ACCESS_KEY)
    doc = sb.phx("backup", "--json").json()
    assert _outcomes(doc) == {"local": True, "git": True, "s3": True, "r2": True}, doc


def test_target_option_is_checked(targets: Targets) -> None:
    sb = targets.sb
    assert_error(sb.phx("list", "--target", "ftp", check=None), 2, "unknown target", "local, git, s3, r2")
    targets.targets["r2"]["enabled"] = False
    targets.write()
    assert_error(sb.phx("verify", "--target", "r2", check=None), 2, "not enabled", "targets.r2.enabled")
    assert_error(sb.phx("sync", "--target", "local", check=None), 2, "first enabled target")
    sb.write_config(targets={"local": {"enabled": True}})
    assert_error(sb.phx("sync", check=None), 2, "nothing to sync")


def test_a_remote_first_target_is_written_directly(sandbox: Sandbox, moto: MotoServer, tmp_path: Path) -> None:
    """With local disabled, s3 is the first target: the backup writes it, Git is its replica."""
    t = Targets(sandbox, moto)
    sb = t.sb
    t.targets["local"]["enabled"] = False
    del t.targets["r2"]
    t.write()
    shutil.rmtree(sb.repo)  # the sandbox made the local one; this config's first target is s3
    sb.phx("init")  # the existing config's first target: s3
    state = sb.state()
    doc = sb.phx("backup", "--json").json()
    assert _outcomes(doc) == {"git": True, "s3": True}, doc
    assert not sb.repo.exists()
    assert t.objects("git") == t.objects("s3")
    sb.phx_here("restore", "--latest", "--to", tmp_path / "r", "--json")  # from s3, the first target
    assert_restored(state, tmp_path / "r", "restore from s3 as the first target")


def test_a_new_local_repository_continues_the_replicas(targets: Targets) -> None:
    """The local disk is lost: a backup refuses to start a new repository there (the disk may just
    not be mounted); `phx init` adopts the repository the replicas hold instead of starting
    another one that they would refuse, and backups carry on."""
    sb = targets.sb
    first = sb.phx("backup", "--json").json()
    shutil.rmtree(sb.repo)
    assert_error(sb.phx("backup", check=1), 1, "mounted", "phx init")
    assert not sb.repo.exists()
    res = sb.phx("init", "--json")
    assert "already holds this repository" in res.err
    assert res.json()["repositoryCreated"] is True
    res = sb.phx("backup", "--json")
    second = res.json()
    assert _outcomes(second) == {"local": True, "git": True, "s3": True, "r2": True}, res
    ids = [s["id"] for s in sb.phx_here("list", "--target", "s3", "--json").json()]
    assert ids == [first["id"], second["id"]]
    assert sb.phx_here("verify", "--target", "git", "--read-data", "--json").json()["ok"]


def test_killed_backup_leaves_no_target_with_a_snapshot_missing_data(targets: Targets) -> None:
    """SIGKILL while packs are being uploaded: no target may hold a snapshot whose data is missing,
    and the next sync completes every target."""
    import signal
    import subprocess

    from e2e_support import PHX

    sb = targets.sb
    # Incompressible bulk, so replication takes long enough to be interrupted mid-way.
    (sb.workspace / "bulk").mkdir()
    for i in range(4):
        (sb.workspace / "bulk" / f"blob{i}.bin").write_bytes(os.urandom(12 * 1024 * 1024))
    proc = subprocess.Popen(
        [PHX, "backup", "--json"],
        env=sb.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    killed_mid_upload = False
    deadline = time.monotonic() + 120
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            objects = targets.objects("s3") | targets.objects("r2")
            if any(n.startswith("data/") for n in objects):
                killed_mid_upload = not any(n.startswith("snapshots/") for n in objects)
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    if not killed_mid_upload:
        pytest.skip("the upload finished before it could be interrupted on this machine")

    for name in ("git", "s3", "r2"):
        res = sb.phx("verify", "--target", name, "--json", check=None)
        if res.code == 1 and "no repository" in res.err:
            continue  # killed before the target was initialised
        doc = res.json()
        assert doc["ok"], f"{name} holds a snapshot whose data is missing: {doc}"
    synced = sb.phx_here("sync", "--json").json()
    assert synced["ok"], synced
    for name in ("git", "s3", "r2"):
        doc = sb.phx_here("verify", "--target", name, "--read-data", "--json").json()
        assert doc["ok"] and doc["checked"]["snapshots"] == 1, (name, doc)
