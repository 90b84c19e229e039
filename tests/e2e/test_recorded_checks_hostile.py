"""Integrity check records (repo/checks.py) against someone who is not the repository's owner: the
user whose folder a root restore writes into, and a writer to the storage without the keys. A
"passed" record must only ever say what a check of those very bytes said."""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from e2e_support import PASSPHRASE, Sandbox
from test_integrity_cadence import change_a_row, damage_index, make_database
from test_recorded_checks import cadenced, open_repo, recorded  # noqa: F401 - a fixture
from test_restore_race import ATTACKER, LOGICAL, confinable  # noqa: F401 - a fixture
from test_unreadable_file import unprivileged

from phoenix_backup.errors import RestoreError
from phoenix_backup.repo import checks, keys
from phoenix_backup.repo.crypto import BlobType
from phoenix_backup.repo.repository import Repository
from phoenix_backup.repo.tree import Extent, Node
from phoenix_backup.sinks import sqlite as sqlite_sink
from phoenix_backup.sinks.files import FileWriter
from phoenix_backup.sources.layout import Layout
from phoenix_backup.storage.local import LocalBackend

SNAP = "cd" * 32

# The folder's owner: every restore temporary that appears in their folder is replaced at once by
# a copy of a sound database of their own (they may rename in their folder, and root gave them the
# file anyway), before root's integrity_check opens it by name.
SWAPPER = """
import os, sys, time
folder, good = sys.argv[1], open(sys.argv[2], "rb").read()
seen = set()
end = time.monotonic() + 60
while time.monotonic() < end:
    for entry in os.scandir(folder):
        name = entry.name
        if name.startswith(".phx-tmp-") and name not in seen and not name.endswith(("-wal", "-shm", "-journal")):
            seen.add(name)
            spare = os.path.join(folder, ".spare")
            try:
                with open(spare, "wb") as f:
                    f.write(good)
                os.rename(spare, os.path.join(folder, name))
            except OSError:
                pass
"""


def test_a_root_restore_into_a_users_folder_records_no_verdict_of_bytes_the_user_could_swap(
    public_tmp: Path,
    tmp_path: Path,
    confinable: None,  # noqa: F811
) -> None:
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is not installed")
    if os.geteuid() != 0:
        pytest.skip("the attack needs a root restore into another user's folder")
    # The snapshot's copy: damaged where only a full integrity_check sees it.
    source = tmp_path / "damaged.db"
    make_database(source)
    damage_index(source)
    data = source.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    repo = Repository.init(
        LocalBackend(tmp_path / "repo"),
        lambda m: keys.wrap_passphrase(m, "pw", kdf_params={"n": 2**10, "r": 8, "p": 1}),
        True,
    )
    blob, _ = repo.save_blob(BlobType.DATA, data)
    repo.flush()
    node = Node(
        name="memory.db", type="sqlite", mode=0o600, size=len(data), content=[Extent(blob, 0, len(data))], sha256=sha
    )
    good = public_tmp / "good.db"
    make_database(good)
    good.chmod(0o644)
    home = public_tmp / "home"
    folder = home / ".argentos"
    folder.mkdir(parents=True)
    home.chmod(0o755)
    os.chown(folder, ATTACKER, ATTACKER)
    run = [setpriv, f"--reuid={ATTACKER}", f"--regid={ATTACKER}", "--clear-groups", sys.executable, "-c", SWAPPER]
    swapper = subprocess.Popen([*run, str(folder), str(good)])
    outcomes: dict[str, int] = {}
    try:
        time.sleep(0.3)
        for _ in range(8):
            writer = FileWriter(repo, Layout(public_tmp / "workspace", home), None)
            recorded = sqlite_sink.RecordedChecks(checks.CheckBook(repo), SNAP)
            try:
                copy = sqlite_sink.write_copy(writer, LOGICAL, node, recorded=recorded)
                sqlite_sink.discard_copy(writer, LOGICAL, copy)
                outcomes["check passed"] = outcomes.get("check passed", 0) + 1
            except RestoreError as exc:
                outcomes[str(exc)[:60]] = outcomes.get(str(exc)[:60], 0) + 1
            finally:
                writer.close()
    finally:
        swapper.kill()
        swapper.wait()
    assert checks.CheckBook(repo).passed(sha, len(data)) is None, (
        f"a root restore recorded that damaged bytes passed integrity_check, from a check of the user's swapped-in "
        f"file ({outcomes})"
    )
    # And so a later restore of those bytes, into a folder no one else can change, checks them itself.
    private = tmp_path / "private"
    private.mkdir()
    writer = FileWriter(repo, Layout(private / "workspace", private / "home"), None)
    try:
        with pytest.raises(RestoreError, match="fails integrity_check"):
            sqlite_sink.write_copy(
                writer, LOGICAL, node, recorded=sqlite_sink.RecordedChecks(checks.CheckBook(repo), SNAP)
            )
    finally:
        writer.close()


def test_a_drill_in_scratch_space_another_user_can_change_records_nothing(
    cadenced: Sandbox,  # noqa: F811
    public_tmp: Path,
    tmp_path: Path,
) -> None:
    """`sudo phx drill --scratch ~alice/tmp`: alice may rename the drill's folder away and put her own
    in its place, and the drill opens its databases by path. Its checks are its report's, but no
    verdict of the snapshot's bytes goes into the repository."""
    if os.geteuid() != 0:
        pytest.skip("the scratch folder must belong to another user than the one drilling")
    sb = cadenced
    sb.backup()
    change_a_row(sb)
    sb.backup()
    scratch = public_tmp / "alice"
    scratch.mkdir()
    os.chown(scratch, ATTACKER, ATTACKER)
    doc = sb.phx("drill", "--json", "--scratch", scratch, check=0).json()
    assert doc["ok"], doc
    assert recorded(sb) == [], "a drill in another user's folder recorded its verdict in the repository"
    sb.phx("drill", "--json", "--scratch", tmp_path, check=0)
    assert [r.by for r in recorded(sb)] == ["drill"]  # in scratch space of its own, it does


def test_prune_is_not_failed_by_an_object_under_checks_it_cannot_delete(
    cadenced: Sandbox,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Whoever can write to the storage leaves something under `checks/` that cannot be deleted (a
    folder here; a locked object elsewhere): prune deletes the rest, says so, and succeeds."""
    sb = cadenced
    sb.backup()
    change_a_row(sb)
    daily = sb.backup()
    sb.restore_to(daily["id"], tmp_path / "r")
    (sb.repo / "checks" / ("ab" * 32)).mkdir()
    sb.phx("forget", daily["id"], "--json")
    res = sb.phx("prune", "--json", check=None)
    assert res.code == 0, res
    doc = res.json()
    [target] = doc["targets"].values()
    assert target["checkRecords"] >= 1, doc  # the forgotten snapshot's records went
    # Said once: skipped by the listing (it is no file), or not deleted.
    planted = "checks/" + "ab" * 32
    told = [n for n in target["notices"] if planted in n] + [ln for ln in res.err.splitlines() if planted in ln]
    assert len(told) == 1, (told, res.err)
    # Left: the planted folder, and the records of the first backup's own checks (its snapshot is kept).
    left = [p.name for p in (sb.repo / "checks").iterdir()]
    assert "ab" * 32 in left, left
    kept = [r.snapshot for rs in checks.CheckBook(open_repo(sb.repo)).load().values() for r in rs]
    assert daily["id"] not in kept and len(kept) == len(left) - 1, (kept, left)


READ_ONLY_DB = "home/.argentos/reference.db"


LOCKED_DB = "home/.argentos/locked/archive.db"


def fts5_database(path: Path) -> None:
    con = sqlite3.connect(path)
    con.executescript("CREATE VIRTUAL TABLE notes USING fts5(body); INSERT INTO notes VALUES ('kept for reference');")
    con.commit()
    con.close()


def test_a_drill_of_sound_read_only_databases_passes(make_sandbox: Callable[..., Sandbox], public_tmp: Path) -> None:
    """A user's sound databases that they cannot write: a 0444 file, and one in a 0500 folder.
    The drill restores them so in its scratch space; its FTS5 `integrity-check` (an INSERT) must
    still run there, on the drill's own copies, and pass: the drill passes and records the pass.
    (Refused, "attempt to write a readonly database" said nothing of the bytes, and the failure
    recorded from it outvoted every later pass of those bytes for as long as the snapshot lived.)"""
    sb = make_sandbox(root=public_tmp / "sb")
    read_only, locked = sb.db_path(READ_ONLY_DB), sb.db_path(LOCKED_DB)
    locked.parent.mkdir(parents=True, exist_ok=True)
    fts5_database(read_only)
    fts5_database(locked)
    read_only.chmod(0o444)
    locked.parent.chmod(0o500)
    sb.write_config(databases={"sqlite": [str(read_only), str(locked)]})
    scratch = public_tmp / "scratch"
    scratch.mkdir(mode=0o700)
    prefix, who = unprivileged(public_tmp)  # file modes apply to phx
    print(f"running phx as {who}")
    sb.prefix = prefix
    try:
        sb.backup()
        res = sb.phx("drill", "--json", "--scratch", scratch, check=None)
    finally:
        sb.prefix = ()
        locked.parent.chmod(0o700)
    doc = res.json()
    assert res.code == 0, doc
    reports = {d["path"]: d for d in doc["databases"]}
    for logical in (READ_ONLY_DB, LOCKED_DB):
        assert reports[logical]["integrity"] == "ok", reports
        assert reports[logical]["fts5"] == {"notes": "ok"}, reports
    assert doc["unchecked"] == [], doc
    book = checks.CheckBook(Repository.open(LocalBackend(sb.repo), keys.Credentials(passphrase=PASSPHRASE)))
    verdicts = {r.path: r.result for rs in book.load().values() for r in rs if r.path in (READ_ONLY_DB, LOCKED_DB)}
    assert verdicts == {READ_ONLY_DB: "ok", LOCKED_DB: "ok"}, verdicts
    assert list(scratch.iterdir()) == []
