"""Whoever can write a repository's storage, but holds none of the owner's secrets, can neither
take it over nor downgrade it (issue 14, points 1, 2, 3 and 11). Each test is the attack, run with
Phoenix's own code against a real repository, and the owner's next command, run as `phx`.

- a `none` slot, a `gpg --store` slot or an age slot to the owner's own recipient, planted with a
  snapshot, must not open the repository: the owner's `restore --latest --yes` neither writes a
  file into $HOME nor deletes one outside the workspace;
- an edited `config` (encryption off, a path as id) is refused before anything is read or written;
- a replaced repository (new id or new key at a pinned location) is a hard error until the user
  checks and trusts its fingerprint (`phx key trust`); a new machine trusts on first use;
- key slots and Git commits keep no host, user, recipient or key id in the clear.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from attack_support import age_sandbox, gpg_store_packet, plant_snapshot, slot_document, write_slot
from e2e_support import Sandbox, assert_error, scan_for

from phoenix_backup.repo import keys
from phoenix_backup.repo.repository import Repository
from phoenix_backup.storage.local import LocalBackend

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from moto_support import bare_repo, git

# The repositories the commands leave are the point, not the process: the sandboxes' helpers run phx
# in this process (tests/e2e/conftest.py).
pytestmark = pytest.mark.phx_in_process

PLANTED = b"ssh-ed25519 AAAA attacker@evil\n"


def _victim_files(sb: Sandbox) -> Path:
    """A file outside the workspace that the planted snapshot says to delete."""
    keep = sb.home / "keep-me.txt"
    keep.write_text("the owner's own file\n")
    return keep


def _chain(sb: Sandbox, attacker: keys.MasterSecrets) -> tuple[Path, Path]:
    """Plant the attacker's snapshot: it writes ~/.ssh/authorized_keys and deletes ~/keep-me.txt."""
    keep = _victim_files(sb)
    plant_snapshot(sb.repo, attacker, {"home/.ssh/authorized_keys": PLANTED}, absent=("home/keep-me.txt",))
    return sb.home / ".ssh" / "authorized_keys", keep


def _assert_not_taken_over(sb: Sandbox, planted: Path, keep: Path, owner_latest: str) -> None:
    res = sb.phx("restore", "--latest", "--yes", "--json", check=None)
    assert not planted.exists(), f"the attacker's file was written into $HOME:\n{res}"
    assert keep.read_text() == "the owner's own file\n", f"a file outside the workspace was deleted:\n{res}"
    assert res.code == 0, res
    assert res.json()["snapshot"] == owner_latest, res
    # The attacker's objects are reported by verify, never used.
    doc = sb.verify(check=1)
    assert any(e["object"].startswith(("index/", "snapshots/")) for e in doc["errors"]), doc


def test_a_planted_none_slot_and_snapshot_do_not_take_over(backed_up: Sandbox) -> None:
    sb = backed_up
    owner_latest = sb.snapshots()[-1]["id"]
    attacker = keys.MasterSecrets.generate()
    write_slot(sb.repo, json.loads(keys.wrap_none(attacker).to_json()))
    planted, keep = _chain(sb, attacker)
    _assert_not_taken_over(sb, planted, keep, owner_latest)
    # The owner's next backup is sealed under the owner's key: the attacker's secrets open nothing.
    sb.backup()
    evil = Repository(LocalBackend(sb.repo), Repository.read_config(LocalBackend(sb.repo)), attacker)
    assert [s.username for s in evil.list_snapshots()] == ["attacker"]


@pytest.mark.skipif(shutil.which("gpg") is None, reason="gpg is not installed")
def test_a_gpg_store_slot_does_not_open_even_with_a_wrong_passphrase(backed_up: Sandbox, tmp_path: Path) -> None:
    sb = backed_up
    attacker = keys.MasterSecrets.generate()
    gnupg = tmp_path / "gnupg-owner"
    gnupg.mkdir(mode=0o700)
    write_slot(sb.repo, slot_document("gpg", gpg_store_packet(attacker.to_bytes(), tmp_path), keyId="x"))
    planted, keep = _chain(sb, attacker)
    wrong = sb.env_with(PHX_PASSPHRASE="not the passphrase", GNUPGHOME=str(gnupg))
    res = sb.phx("restore", "--latest", "--yes", env=wrong, check=None)
    assert not planted.exists() and keep.exists(), res
    assert_error(res, 1, "wrong passphrase")
    # Even a config that names gpg does not accept a packet that proves no key.
    sb.write_config(encryption={"enabled": True, "method": "gpg", "keyId": "owner@example.invalid"})
    res = sb.phx("list", env=wrong, check=None)
    assert res.code != 0 and "attacker" not in res.out, res
    assert "not encrypted to a public key" in res.err or "no key slot" in res.err, res


def test_an_age_slot_to_the_owners_recipient_does_not_win(make_sandbox, tmp_path: Path) -> None:
    sb, recipient = age_sandbox(make_sandbox, tmp_path)
    owner_latest = sb.snapshots()[-1]["id"]
    attacker = keys.MasterSecrets.generate()
    # Anyone can encrypt to a public recipient; several copies, so one is surely listed first.
    for _ in range(4):
        write_slot(sb.repo, json.loads(keys.wrap_age(attacker, [recipient]).to_json()))
    planted, keep = _chain(sb, attacker)
    _assert_not_taken_over(sb, planted, keep, owner_latest)
    listing = sb.phx_here("key", "list", "--json").json()
    assert sorted(s["status"] for s in listing) == ["ok"] + ["other key"] * 4, listing


def test_a_replaced_config_is_a_changed_key(make_sandbox, tmp_path: Path) -> None:
    """The attacker replaces config and slots with their own (same id, their key, authenticated
    by it): the owner's pin says the key changed, and nothing is restored."""
    sb, recipient = age_sandbox(make_sandbox, tmp_path)
    attacker = keys.MasterSecrets.generate()
    backend = LocalBackend(sb.repo)
    config = Repository.read_config(backend)
    (sb.repo / "config").write_bytes(config.signed(attacker).to_bytes())
    write_slot(sb.repo, json.loads(keys.wrap_age(attacker, [recipient]).to_json()))
    planted, keep = _chain(sb, attacker)
    res = sb.phx("restore", "--latest", "--yes", check=None)
    assert not planted.exists() and keep.exists(), res
    line = assert_error(res, 1, "key of the repository", "changed", "phx key trust")
    # `key trust` with the fingerprint of the key the owner trusted refuses the attacker's repository.
    pinned = re.search(r"pinned ([0-9a-f:]{39})", line)
    assert pinned is not None, line
    assert_error(sb.phx("key", "trust", pinned.group(1), check=None), 1, "does not have the key")
    doctor = sb.phx("doctor", "--json", check=None).json()
    assert any(c["name"] == "key" and c["status"] == "fail" for c in doctor["checks"]), doctor


def test_a_whole_new_repository_at_a_pinned_location_is_refused(backed_up: Sandbox, tmp_path: Path) -> None:
    sb = backed_up
    old_id = Repository.read_config(LocalBackend(sb.repo)).id
    sb.phx_here("list")  # used here: this location is pinned
    shutil.rmtree(sb.repo)
    # The attacker's own repository, opened by the same passphrase (as if they had guessed it).
    Repository.init(LocalBackend(sb.repo), lambda m: keys.wrap_passphrase(m, sb.env["PHX_PASSPHRASE"]), True)
    res = sb.phx("list", check=None)
    assert_error(res, 1, "not the one this machine used before", old_id[:8], "phx key trust")
    fingerprint = Repository.open(
        LocalBackend(sb.repo), keys.Credentials(passphrase=sb.env["PHX_PASSPHRASE"])
    ).secrets.fingerprint
    res = sb.phx_here("key", "trust", fingerprint.replace(":", "").upper())
    assert fingerprint in res.out
    assert sb.phx_here("list", "--json").json() == []


def test_a_new_machine_trusts_on_first_use_and_can_check_first(backed_up: Sandbox, tmp_path: Path) -> None:
    sb = backed_up
    listing = sb.phx_here("key", "list", "--json").json()
    fingerprint = listing[0]["fingerprint"]
    assert re.fullmatch(r"([0-9a-f]{4}:){7}[0-9a-f]{4}", fingerprint), listing
    # A new machine: nothing but the config and the passphrase (no pin file, no cache).
    fresh = sb.env_with(XDG_DATA_HOME=str(tmp_path / "new-data"), PHX_CACHE_DIR=str(tmp_path / "new-cache"))
    res = sb.phx("list", "--json", env=fresh)
    assert len(res.json()) == 1
    assert "first use" in res.err and fingerprint in res.err, res
    assert "first use" not in sb.phx("list", env=fresh).err  # pinned now
    # Checking before the first use: a wrong fingerprint trusts nothing.
    other = sb.env_with(XDG_DATA_HOME=str(tmp_path / "other-data"))
    assert_error(sb.phx("key", "trust", "0" * 32, env=other, check=None), 1, "does not have the key")
    assert_error(sb.phx("key", "trust", "not-a-fingerprint", env=other, check=None), 2, "not a key fingerprint")
    sb.phx("key", "trust", fingerprint, env=other)
    assert "first use" not in sb.phx("list", env=other).err
    pins = tmp_path / "other-data" / "phoenix" / "pins.json"
    assert pins.stat().st_mode & 0o777 == 0o600
    assert fingerprint in pins.read_text()


def test_encryption_turned_off_in_config_is_refused(backed_up: Sandbox) -> None:
    """Point 2: with `"encryption": "none"` in the plain config, the next backup stored notes and
    snapshot in the clear. Now the config's MAC fails and nothing is written."""
    sb = backed_up
    canary = os.urandom(4096)  # incompressible: stored as it is if ever stored unencrypted
    (sb.workspace / "memory" / "canary.bin").write_bytes(canary)
    config = json.loads((sb.repo / "config").read_text())
    config["encryption"] = "none"
    (sb.repo / "config").write_text(json.dumps(config))
    before = {p: p.stat().st_size for p in sb.repo.rglob("*") if p.is_file()}
    res = sb.phx("backup", check=None)
    assert scan_for(sb.repo, [canary[:64], b'"phoenixVersion"']) == [], res
    assert_error(res, 1, "not authenticated", "restore the config")
    assert {p: p.stat().st_size for p in sb.repo.rglob("*") if p.is_file() and "locks" not in p.parts} == {
        p: s for p, s in before.items() if "locks" not in p.parts
    }


@pytest.mark.parametrize("repo_id", ["/tmp/phx-attacker-{n}", "../../phx-attacker-{n}"])
def test_a_path_as_repository_id_never_reaches_the_file_system(backed_up: Sandbox, repo_id: str) -> None:
    """Point 3: an id naming a folder moved the cache and the temporary database copies there."""
    sb = backed_up
    target = repo_id.format(n=os.getpid())
    config = json.loads((sb.repo / "config").read_text())
    config["id"] = target
    (sb.repo / "config").write_text(json.dumps(config))
    landing = (sb.cache / target).resolve() if not target.startswith("/") else Path(target)
    try:
        res = sb.phx("backup", check=None)
        assert_error(res, 1, "invalid id")
        assert not landing.exists(), f"{landing} was created:\n{res}"
    finally:
        shutil.rmtree(landing, ignore_errors=True)


def test_foreign_names_in_listings_are_ignored(backed_up: Sandbox) -> None:
    """Point 3: names read from listings are checked in shape; files of other shapes below the
    repository are none of its objects, and neither break it nor reach the file system."""
    sb = backed_up
    (sb.repo / "keys" / "not-a-slot").write_text("{}")
    (sb.repo / "snapshots" / "..evil").write_text("x")
    (sb.repo / "index" / "UPPERCASE0123456789").write_text("x")
    (sb.repo / "data" / "zz").mkdir()
    (sb.repo / "data" / "zz" / "x").write_text("x")
    assert len(sb.snapshots()) == 1
    assert sb.verify()["ok"]


def test_key_slots_keep_no_identity_in_the_clear(make_sandbox, tmp_path: Path) -> None:
    """Point 11: a slot shows neither host, user, age recipient nor GPG key id to a storage reader."""
    sb, recipient = age_sandbox(make_sandbox, tmp_path)
    sb.phx("key", "add", "--method", "passphrase", env=sb.env_with(PHX_NEW_PASSPHRASE="second"))
    for slot in (sb.repo / "keys").iterdir():
        doc = json.loads(slot.read_bytes())
        # data and meta are ciphertext; nothing else but the opening parameters is stored.
        assert set(doc) == {"version", "id", "type", "params", "data", "meta"}, doc
        assert set(doc["params"]) <= {"kdf", "n", "r", "p", "salt"}, doc
        assert scan_for(slot.parent, [recipient.encode(), recipient[4:20].encode()]) == []
    # ...while the owner still sees them.
    listing = sb.phx_here("key", "list").out
    assert socket.gethostname() in listing and "age age1" in listing


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_git_commits_do_not_carry_the_host_name(backed_up: Sandbox) -> None:
    sb = backed_up
    remote = bare_repo(sb.root / "remote.git")
    sb.write_config(targets={"local": {"enabled": True}, "git": {"enabled": True, "repo": str(remote)}})
    sb.backup()
    authors = git("log", "--format=%an %ae %cn %ce", "main", cwd=remote)
    assert authors.strip(), "nothing was committed"
    assert socket.gethostname() not in authors, authors


@pytest.mark.skipif(shutil.which("gpg") is None, reason="gpg is not installed")
def test_gpg_slot_names_no_key_and_opens_only_with_the_configured_key(make_sandbox, tmp_path: Path) -> None:
    sb: Sandbox = make_sandbox()
    home = Path(subprocess.run(["mktemp", "-d", "/tmp/phxgpgXXXX"], capture_output=True, text=True).stdout.strip())
    try:
        for email in ("owner@example.invalid", "other@example.invalid"):
            subprocess.run(
                [*("gpg", "--homedir", str(home), "--batch", "--passphrase", ""), "--quick-gen-key", email, "default"],
                check=True,
                capture_output=True,
            )
        sb.env["GNUPGHOME"] = str(home)
        sb.reinit(encryption={"enabled": True, "method": "gpg", "keyId": "owner@example.invalid"})
        sb.backup()
        slot = next((sb.repo / "keys").iterdir())
        data = json.loads(slot.read_text())
        packets = subprocess.run(
            ["gpg", "--homedir", str(home), "--list-packets", "--batch"],
            input=keys._b64decode(data["data"], "data"),
            capture_output=True,
        )
        assert "keyid 0000000000000000" in packets.stdout.decode(), packets  # hidden recipient
        assert b"owner@example.invalid" not in slot.read_bytes()
        assert len(sb.snapshots()) == 1
        # The same repository with another key configured: its slot does not count.
        sb.write_config(encryption={"enabled": True, "method": "gpg", "keyId": "other@example.invalid"})
        assert_error(sb.phx("list", check=None), 1, "wrong passphrase")
    finally:
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False)
        shutil.rmtree(home, ignore_errors=True)


def as_format_1(sb: Sandbox) -> None:
    """The sandbox's repository put back to format 1, as Phoenix wrote it before format 2: config
    without MAC, key slots with host (old-host), user and label in the clear."""
    doc = json.loads((sb.repo / "config").read_text())
    doc["version"] = 1
    del doc["mac"]
    (sb.repo / "config").write_text(json.dumps(doc, indent=2))
    for path in (sb.repo / "keys").iterdir():
        slot = keys.KeySlot.from_json(path.read_bytes())
        info = keys.SlotInfo("2026-01-01T00:00:00Z", "old-host", "old-user", "passphrase", authenticated=False)
        path.write_bytes(keys.KeySlot(slot.id, slot.type, slot.params, slot.data, info=info, version=1).to_json())


def test_a_format_1_repository_is_read_and_upgraded_by_the_next_backup(backed_up: Sandbox, tmp_path: Path) -> None:
    """A repository as Phoenix wrote it before format 2: config without MAC, key slot with host,
    user and label in the clear. It still lists and restores; the next backup upgrades it."""
    sb = backed_up
    as_format_1(sb)
    for path in (sb.repo / "keys").iterdir():
        assert b"old-host" in path.read_bytes()
    fresh = sb.env_with(XDG_DATA_HOME=str(tmp_path / "data"))
    assert len(sb.phx("list", "--json", env=fresh).json()) == 1
    assert sb.phx("key", "list", "--json", env=fresh).json()[0]["status"] == "unverified"
    res = sb.phx("backup", "--json", env=fresh)
    assert "upgraded the repository" in res.err, res
    assert json.loads((sb.repo / "config").read_text())["version"] == 2
    for path in (sb.repo / "keys").iterdir():
        assert b"old-host" not in path.read_bytes()
    listing = sb.phx("key", "list", "--json", env=fresh).json()
    assert [(s["status"], s["host"]) for s in listing] == [("ok", "old-host")], listing
    assert len(sb.phx("list", "--json", env=fresh).json()) == 2
    assert sb.phx("verify", "--json", env=fresh).json()["ok"]
    # The sandbox's own machine made this repository in format 4: a format 1 config of it was
    # written by someone without the key, and the format 2 that a first use made of it is a
    # downgrade there (not a repository an old Phoenix wrote).
    assert_error(sb.phx("list", check=None), 1, "downgraded")
