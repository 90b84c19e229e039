"""An adversary's review of repository format 2 and `phx key rotate` (issue 14, points 1-4, 11):
someone who can write the storage (and perhaps holds a key the owner has since rotated away from)
against the owner's next commands; and a careless user. Each test is one attack, run with
Phoenix's own code against a real repository; the owner's side runs as `phx`."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import killpoint
import pyrage
import pytest
from attack_support import age_sandbox, assert_rotation_recovers, restored
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from e2e_support import Sandbox, assert_error, run_phx
from test_key_rotate_history import _repo

from phoenix_backup.config import load_config
from phoenix_backup.errors import RepositoryError
from phoenix_backup.ops.context import Environment, open_repository
from phoenix_backup.ops.prune import _replica
from phoenix_backup.repo import checks, keys

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from moto_support import ACCESS_KEY_ID, SECRET_ACCESS_KEY, MotoServer, closed_port

# The sandboxes' helpers (the backups that set a test up, the checks after) run phx in this process;
# the commands under test stay real `phx` processes (tests/e2e/conftest.py).
pytestmark = pytest.mark.phx_in_process

HEAVY = os.environ.get("PHX_TEST_HEAVY") == "1"
LEAKED = "the old passphrase that leaked"


def _phx_killed_at(sb: Sandbox, point: int, *args: str, report: Path) -> subprocess.CompletedProcess[str]:
    """`phx ARGS` SIGKILLed just before its `point`th change (tests/e2e/killpoint.py)."""
    env = sb.env_with(PHX_KILL_AT=str(point), PHX_KILL_ONLY="changes", PHX_KILL_REPORT=str(report))
    argv = [sys.executable, str(killpoint.SCRIPT), *args]
    return subprocess.run(argv, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)


class _Store:
    """Where the repository lives, as its thief sees it: the slots and config to keep, and to put
    back later (a rollback)."""

    def __init__(self, sb: Sandbox, moto: MotoServer | None) -> None:
        self.sb, self.moto, self.bucket = sb, moto, ""
        if moto is not None:
            self.bucket = moto.make_bucket("s3")
            sb.env.update(PHX_DATA_DIR=str(sb.root / "data"), AWS_EC2_METADATA_DISABLED="true")
            s3 = {"enabled": True, "bucket": self.bucket, "prefix": "argent/", "endpoint": moto.endpoint}
            s3 |= {"accessKeyId": ACCESS_KEY_ID, "secretAccessKey": SECRET_ACCESS_KEY}
            sb.write_config(targets={"local": {"enabled": False}, "s3": s3})
            sb.config_path.chmod(0o600)
            sb.init_repository()

    def keys_and_config(self) -> dict[str, bytes]:
        if self.moto is None:
            names = ["config", *(f"keys/{p.name}" for p in (self.sb.repo / "keys").iterdir())]
            return {n: (self.sb.repo / n).read_bytes() for n in names}
        client = self.moto.client()
        names = ["config", *(k.removeprefix("argent/") for k in self.moto.keys(self.bucket, "argent/keys/"))]
        return {n: client.get_object(Bucket=self.bucket, Key=f"argent/{n}")["Body"].read() for n in names}

    def put_back(self, saved: dict[str, bytes]) -> None:
        if self.moto is None:
            shutil.rmtree(self.sb.repo / "keys")
            (self.sb.repo / "keys").mkdir()
            for name, data in saved.items():
                (self.sb.repo / name).write_bytes(data)
            return
        client = self.moto.client()
        for key in self.moto.keys(self.bucket, "argent/keys/"):
            client.delete_object(Bucket=self.bucket, Key=key)
        for name, data in saved.items():
            client.put_object(Bucket=self.bucket, Key=f"argent/{name}", Body=data)


# Every change `phx key rotate` makes, in order, on the tiny sample with two snapshots and two
# passphrase slots (killpoint's changes: renames, links, unlinks, rmdirs and the target's object
# writes and deletes; after its commit point, the state file's rename naming the snapshots' new
# ids), on local disk and on S3, with no integrity check record; each record adds
# its re-sealed copy's write and its old copy's delete (PER_RECORD). The sample's backups record a
# check of each of its 3 databases at least once (RECORDS; the second backup's checks, when they
# are recorded, add 3 more): the heavy kills walk the changes there are then, and
# test_rotation_changes_are_counted keeps the count true for the records it finds.
ROTATE_CHANGES = {"local": 49, "s3": 26}
PER_RECORD = {"local": 4, "s3": 2}
RECORDS = 3
KILLS = [("local", 23)]  # new packs, index and snapshots written, a check record being re-sealed; no config yet
if HEAVY:
    KILLS = [
        (where, point)
        for where, count in ROTATE_CHANGES.items()
        for point in range(1, count + PER_RECORD[where] * RECORDS + 1)
    ]


@pytest.mark.parametrize("where", ["local", "s3"] if HEAVY else ["local"])
def test_rotation_changes_are_counted(make_sandbox, request: pytest.FixtureRequest, tmp_path: Path, where: str) -> None:
    """The kill test below walks every change of a rotation: its count must be the real one."""
    sb: Sandbox = make_sandbox()
    _Store(sb, request.getfixturevalue("moto") if where == "s3" else None)
    sb.backup()
    sb.phx("key", "add", "--method", "passphrase", env=sb.env_with(PHX_NEW_PASSPHRASE=LEAKED))
    (sb.workspace / "MEMORY.md").write_text("# Memory\nsecond\n")
    sb.backup()
    with _repo(sb) as repo:
        records = len(list(repo.backend.list(checks.PREFIX)))
    report = tmp_path / "count"
    res = _phx_killed_at(sb, 0, "key", "rotate", report=report)
    assert res.returncode == 0, res.stderr
    assert killpoint.read_report(report)[:2] == ("calls", ROTATE_CHANGES[where] + PER_RECORD[where] * records)
    assert records >= RECORDS, records  # the heavy kills walk the changes of that many


@pytest.mark.parametrize(("where", "point"), KILLS)
def test_rotation_killed_before_any_change_keeps_every_snapshot_and_revokes_the_old_key(
    make_sandbox, request: pytest.FixtureRequest, tmp_path: Path, where: str, point: int
) -> None:
    sb: Sandbox = make_sandbox()
    store = _Store(sb, request.getfixturevalue("moto") if where == "s3" else None)
    sb.backup()
    sb.phx("key", "add", "--method", "passphrase", env=sb.env_with(PHX_NEW_PASSPHRASE=LEAKED))
    (sb.workspace / "MEMORY.md").write_text("# Memory\nsecond\n")
    sb.backup()
    names = [s["name"] for s in sb.snapshots()]
    expected = {n: restored(sb, n, tmp_path / "expected") for n in names}
    kept = store.keys_and_config()  # what a thief of the old key keeps

    report = tmp_path / "kill-report"
    res = _phx_killed_at(sb, point, "key", "rotate", report=report)
    outcome, n, call = killpoint.read_report(report)
    assert res.returncode == -9 and outcome == "killed", f"the rotation made only {n} changes:\n{res.stderr}"

    assert_rotation_recovers(sb, names, expected, tmp_path, f"before change {point}: {call}")
    (sb.workspace / "MEMORY.md").write_text("# Memory\nwritten after the rotation\n")
    after = sb.backup()["name"]

    # The old key opens nothing written later, even with the old slots and config put back.
    store.put_back(kept)
    thief = sb.env_with(PHX_PASSPHRASE=LEAKED, PHX_DATA_DIR=str(tmp_path / "thief-data"))
    res2 = sb.phx("list", "--json", env=thief, check=None)
    assert after not in res2.out, res2
    assert sb.phx("dump", after, "workspace/MEMORY.md", env=thief, check=None).code != 0


def _forged_slot(attacker: keys.MasterSecrets, recipient: str, slot_id: str) -> bytes:
    """An age slot to the owner's public recipient, holding the attacker's secrets, that claims
    the id `slot_id`; its metadata sealed (as the format says) under the attacker's secrets."""
    doc = json.loads(keys.wrap_age(attacker, [recipient]).to_json())
    nonce = os.urandom(12)
    info = b'{"created":"","host":"","label":"age","username":""}'
    aad = b"phoenix v2 key slot meta" + slot_id.encode()
    meta = nonce + AESGCM(attacker.derive("phoenix v2 key slot metadata key")).encrypt(nonce, info, aad)
    doc.update(id=slot_id, meta=base64.b64encode(meta).decode())
    return json.dumps(doc).encode()


def test_a_slot_stored_under_another_name_removes_no_slot_of_the_owner(make_sandbox, tmp_path: Path) -> None:
    """A slot object whose name is not its id: `keys/0123…` claims to be the owner's slot. A
    rotation (which deletes the slots of other keys first) must not delete the owner's slot
    through it: a rotation that then stops (here: a damaged snapshot, as well a network error
    or a kill) would leave no slot that opens the repository's key."""
    sb, recipient = age_sandbox(make_sandbox, tmp_path)
    (owner_slot,) = [p.name for p in (sb.repo / "keys").iterdir()]
    names = [s["name"] for s in sb.snapshots()]
    attacker = keys.MasterSecrets.generate()
    (sb.repo / "keys" / "0123456789abcdef").write_bytes(_forged_slot(attacker, recipient, owner_slot))
    junk = os.urandom(100)
    (sb.repo / "snapshots" / hashlib.sha256(junk).hexdigest()).write_bytes(junk)

    res = sb.phx("key", "rotate", check=None)
    assert_error(res, 1, "cannot be read")
    assert (sb.repo / "keys" / owner_slot).exists(), "the owner's only key slot was deleted"
    assert [s["name"] for s in sb.snapshots()] == names
    # `key list` and `key remove` speak of slots by the names they have in the storage.
    listing = sb.phx("key", "list", "--json").json()
    assert [s["id"] for s in listing] == [owner_slot], listing


def _without_privileges() -> list[str]:
    """A prefix under which file modes apply to this user (root ignores them)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv to drop the capabilities that ignore file modes")
    return [setpriv, "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"]


def test_a_pin_file_that_cannot_be_written_or_read_is_one_clear_error(backed_up: Sandbox, tmp_path: Path) -> None:
    """A careless setup: the data dir is read-only, its pin file damaged, or relative. Each is one
    error line (never a traceback), and nothing is pinned anywhere else."""
    sb = backed_up
    readonly = tmp_path / "readonly"
    readonly.mkdir(mode=0o500)
    sb.prefix = _without_privileges()
    try:
        res = sb.phx("list", env=sb.env_with(PHX_DATA_DIR=str(readonly)), check=None)
    finally:
        sb.prefix = ()
    assert_error(res, 2, "cannot write the pin file", str(readonly))
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "pins.json").write_text('{"version": 1, "repositories": {"x": {"fingerprint": "x", "format": 1e400}}}')
    assert_error(sb.phx("list", env=sb.env_with(PHX_DATA_DIR=str(damaged)), check=None), 2, "is damaged")
    res = run_phx(["list"], sb.env_with(PHX_DATA_DIR="data"), check=None, cwd=tmp_path)
    assert_error(res, 2, "not an absolute path", "PHX_DATA_DIR")
    assert not (tmp_path / "data").exists()


def test_a_replica_that_missed_the_rotation_or_a_rolled_back_copy_is_not_trusted_again(
    make_sandbox, moto, tmp_path: Path
) -> None:
    """An S3 replica is down while the key is rotated. Reading it afterwards, or the first target
    with its old config and slots put back (a rollback by someone holding the retired key), shows
    the retired key: the error says so, and never tells the owner to trust it again."""
    sb: Sandbox = make_sandbox()
    bucket = moto.make_bucket("s3")
    sb.env.update(PHX_DATA_DIR=str(sb.root / "data"), AWS_EC2_METADATA_DISABLED="true")
    s3 = {"enabled": True, "bucket": bucket, "prefix": "argent/", "endpoint": moto.endpoint}
    s3 |= {"accessKeyId": ACCESS_KEY_ID, "secretAccessKey": SECRET_ACCESS_KEY}

    def s3_at(endpoint: str) -> None:
        sb.write_config(targets={"local": {"enabled": True}, "s3": {**s3, "endpoint": endpoint}})
        sb.config_path.chmod(0o600)

    s3_at(moto.endpoint)
    sb.backup()
    kept = tmp_path / "kept"
    shutil.copytree(sb.repo, kept)
    s3_at(f"http://127.0.0.1:{closed_port()}")
    doc = sb.phx("key", "rotate", "--json", check=3).json()
    old, new = doc["previous"], doc["fingerprint"]
    s3_at(moto.endpoint)

    res = sb.phx("list", "--target", "s3", check=None)
    line = assert_error(res, 1, f"has the key {old}", "retired", "phx sync")
    assert f"trust {old}" not in line, line
    # The first target rolled back: the old config and slots put back.
    shutil.copytree(kept / "keys", sb.repo / "keys", dirs_exist_ok=True)
    shutil.copy(sb.repo / "config", tmp_path / "config-now")
    shutil.copy(kept / "config", sb.repo / "config")
    line = assert_error(sb.phx("backup", check=None), 1, "retired", "put an old copy back")
    assert f"trust {old}" not in line, line
    shutil.copy(tmp_path / "config-now", sb.repo / "config")
    # Once synced, the replica has the new key, and nothing was pinned to the old one.
    sb.phx("sync")
    assert len(sb.phx("list", "--target", "s3", "--json").json()) == 1
    assert sb.phx("key", "list", "--json").json()[0]["fingerprint"] == new


def test_a_planted_object_that_blocks_a_rotation_names_the_way_out(backed_up: Sandbox) -> None:
    """Anyone who can write the storage can plant an object no key opens; a rotation (the remedy
    for a leaked key) then refuses, as it must for a damaged one. The refusal says how to go on."""
    sb = backed_up
    junk = os.urandom(100)
    planted = sb.repo / "snapshots" / hashlib.sha256(junk).hexdigest()
    planted.write_bytes(junk)
    assert_error(sb.phx("key", "rotate", check=None), 1, planted.name, "delete them from the storage")
    planted.unlink()
    sb.phx("key", "rotate")
    assert sb.verify()["ok"]


def test_a_rotation_lists_every_slot_it_does_not_carry_over(make_sandbox, tmp_path: Path) -> None:
    """An age repository from before format 2 with a second age slot (a recovery key). Its
    recipients were in the clear, so the upgrade drops them (they were never authenticated) and a
    rotation cannot wrap the new key for it: it must say that it dropped the slot, not lose it
    silently."""
    sb, _recipient = age_sandbox(make_sandbox, tmp_path)
    recovery = pyrage.x25519.Identity.generate()
    sb.phx("key", "add", "--method", "age", "--recipient", str(recovery.to_public()))
    doc = json.loads((sb.repo / "config").read_text())  # back to format 1, as an older Phoenix wrote it
    doc["version"] = 1
    del doc["mac"]
    (sb.repo / "config").write_text(json.dumps(doc, indent=2))
    recovery_slot = ""
    for path in (sb.repo / "keys").iterdir():
        slot = keys.KeySlot.from_json(path.read_bytes())
        info = keys.SlotInfo("2026-01-01T00:00:00Z", "h", "u", "age", authenticated=False)
        path.write_bytes(keys.KeySlot(slot.id, slot.type, slot.params, slot.data, info=info, version=1).to_json())
        with contextlib.suppress(keys.WrongPassphrase):
            keys.open_any([slot], keys.Credentials(age_identities=(str(recovery),)))
            recovery_slot = slot.id
    assert recovery_slot
    fresh = sb.env_with(XDG_DATA_HOME=str(tmp_path / "data"))  # a machine that saw only format 1
    assert "upgraded the repository" in sb.phx("backup", env=fresh).err
    res = sb.phx("key", "rotate", "--json", env=fresh)
    assert res.json()["dropped"] == [recovery_slot], res


def test_retention_never_uses_a_replica_config_the_first_target_does_not_have(make_sandbox, moto) -> None:
    """Retention after a backup opens each replica with the first target's keys. A replica whose
    `config` someone changed (encryption off, here) after the backup copied it must be refused,
    not opened with that config (its locks would be written in the clear)."""
    sb: Sandbox = make_sandbox()
    bucket = moto.make_bucket("s3")
    sb.env.update(PHX_DATA_DIR=str(sb.root / "data"), AWS_EC2_METADATA_DISABLED="true")
    sb.write_config(targets={"local": {"enabled": True}, "s3": moto.target(bucket)})
    sb.config_path.chmod(0o600)
    sb.backup()
    client = moto.client()
    doc = json.loads(client.get_object(Bucket=bucket, Key="argent/config")["Body"].read())
    doc["encryption"] = "none"
    client.put_object(Bucket=bucket, Key="argent/config", Body=json.dumps(doc).encode())

    envx = Environment(env=sb.env)
    cfg = load_config(sb.config_path, sb.env)
    first = open_repository(cfg, envx)
    try:
        with pytest.raises(RepositoryError, match="differs from the first target's"):
            _replica(cfg, envx, first, "s3")
    finally:
        first.close()


def test_another_repository_of_the_owner_at_a_pinned_location_is_refused(make_sandbox, tmp_path: Path) -> None:
    """Two agents, two repositories, one user (one pin file, one passphrase). Whoever can write
    the second one's storage (and read the first's) puts a copy of the first repository there:
    authentic objects, the owner's key, an id this machine knows. The second agent's
    `restore --latest` would then write the first agent's workspace over its own."""
    data = str(tmp_path / "data")
    first: Sandbox = make_sandbox(seed=1)
    second: Sandbox = make_sandbox(seed=2)
    for sb in (first, second):
        sb.env["PHX_DATA_DIR"] = data
        sb.backup()
    shutil.rmtree(second.repo)
    shutil.copytree(first.repo, second.repo)
    res = second.phx("restore", "--latest", "--yes", check=None)
    assert_error(res, 1, "not the one this machine used before")
    assert second.phx("list", check=None).code == 1


def test_a_planted_slot_of_format_1_is_not_upgraded_into_an_authenticated_one(make_sandbox, tmp_path: Path) -> None:
    """In a format 2 repository every slot is of format 2 (an upgrade writes the slots before the
    config). A format 1 slot planted there (its label, host and user in the clear, the
    attacker's choice) must not be sealed under the owner's key by the next backup's upgrade,
    which would make `key list` show it as the owner's own ("ok")."""
    sb, recipient = age_sandbox(make_sandbox, tmp_path)
    attacker = keys.MasterSecrets.generate()
    slot = keys.wrap_age(attacker, [recipient])
    info = keys.SlotInfo("2026-01-01T00:00:00Z", "owner-laptop", "owner", "age (recovery)", authenticated=False)
    planted = keys.KeySlot(slot.id, "age", {}, slot.data, info=info, version=1)
    (sb.repo / "keys" / slot.id).write_bytes(planted.to_json())
    sb.backup()
    listing = {s["id"]: s["status"] for s in sb.phx("key", "list", "--json").json()}
    assert listing[slot.id] != "ok", listing


def test_key_trust_does_not_accept_a_downgraded_config(backed_up: Sandbox) -> None:
    """The config put back to format 1 (no MAC, so its parameters are anyone's), the owner's key
    and id kept. Every command refuses it; `phx key trust` with the right fingerprint must too,
    rather than report that it trusts the repository."""
    sb = backed_up
    fingerprint = sb.phx("key", "list", "--json").json()[0]["fingerprint"]
    doc = json.loads((sb.repo / "config").read_text())
    doc["version"] = 1
    del doc["mac"]
    (sb.repo / "config").write_text(json.dumps(doc))
    assert_error(sb.phx("list", check=None), 1, "downgraded")
    assert_error(sb.phx("key", "trust", fingerprint, check=None), 1, "downgraded")


@pytest.mark.skipif(shutil.which("gpg") is None, reason="gpg is not installed")
def test_a_rotation_that_cannot_make_its_slots_leaves_no_unfinished_rotation(make_sandbox) -> None:
    """A careless user: a second gpg slot for a colleague whose public key has since left the
    keyring. The rotation cannot wrap the new key for it and stops, changing nothing; later
    commands must not report an unfinished rotation (there is none to finish)."""
    sb: Sandbox = make_sandbox()
    home = Path(subprocess.run(["mktemp", "-d", "/tmp/phxgpgXXXX"], capture_output=True, text=True).stdout.strip())
    gpg = ["gpg", "--homedir", str(home), "--batch", "--yes", "--passphrase", ""]
    try:
        for email in ("owner@example.invalid", "colleague@example.invalid"):
            subprocess.run([*gpg, "--quick-gen-key", email, "default"], check=True, capture_output=True)
        sb.env["GNUPGHOME"] = str(home)
        sb.reinit(encryption={"enabled": True, "method": "gpg", "keyId": "owner@example.invalid"})
        sb.backup()
        sb.phx("key", "add", "--method", "gpg", "--key-id", "colleague@example.invalid")
        listing = subprocess.run(
            [*gpg, "--with-colons", "--list-keys", "colleague@example.invalid"], capture_output=True
        )
        fpr = next(line.split(":")[9] for line in listing.stdout.decode().splitlines() if line.startswith("fpr"))
        subprocess.run([*gpg, "--delete-secret-and-public-key", fpr], check=True, capture_output=True)
        before = sorted(p.name for p in (sb.repo / "keys").iterdir())

        assert_error(sb.phx("key", "rotate", check=None), 2, "colleague@example.invalid")
        assert sorted(p.name for p in (sb.repo / "keys").iterdir()) == before
        res = sb.phx("list")
        assert "did not finish" not in res.err, res
    finally:
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False)
        shutil.rmtree(home, ignore_errors=True)
