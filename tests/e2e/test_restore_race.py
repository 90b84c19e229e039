"""Issue 14, point 5: an in-place SQLite restore into a folder another user can write must never
write anywhere else, whatever that user swaps in while it runs.

The restore writes the checked copy into the live database through SQLite's backup API, and SQLite
opens files by name: it resolves every symlink in the path itself (even /proc/self/fd/N, which it
reads back as the folder's path). A root restore into a user's folder, with that user flipping the
database between the real file and a symlink to another database, overwrote the other database
(1 run in 25). The test runs the restore's database writer against such a flipper and checks that
the outside database never changes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from phoenix_backup.errors import PhoenixError
from phoenix_backup.repo import keys
from phoenix_backup.repo.crypto import BlobType
from phoenix_backup.repo.repository import Repository
from phoenix_backup.repo.tree import Extent, Node
from phoenix_backup.sinks import sqlite as sqlite_sink
from phoenix_backup.sinks.files import FileWriter
from phoenix_backup.sources.layout import Layout
from phoenix_backup.storage.local import LocalBackend

HEAVY = os.environ.get("PHX_TEST_HEAVY") == "1"
ATTEMPTS = 1500 if HEAVY else 30  # the code before the fix lost within 3 to 10 attempts
ATTACKER = 65534  # nobody: owns the folder the restore writes into
LOGICAL = "home/.argentos/memory.db"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the attack needs a root restore into another user's folder")

# open_tree(2) of a folder, as the confined SQLite step makes its root.
CAN_CONFINE = """
import ctypes, os, tempfile
fd = os.open(tempfile.mkdtemp(), os.O_RDONLY | os.O_DIRECTORY)
if ctypes.CDLL(None, use_errno=True).syscall(428, fd, b"", 1 | 0x1000 | os.O_CLOEXEC) < 0:
    raise SystemExit(f"open_tree: {os.strerror(ctypes.get_errno())}")
"""


@pytest.fixture(scope="module")
def confinable() -> None:
    """The confined SQLite step needs open_tree (Linux 5.2, CAP_SYS_ADMIN): without it, it refuses."""
    proc = subprocess.run([sys.executable, "-c", CAN_CONFINE], capture_output=True, text=True)
    if proc.returncode != 0:
        reason = (proc.stderr.strip().splitlines() or ["?"])[-1]
        print(f"cannot confine here: {reason}")
        pytest.skip(f"this machine cannot confine SQLite to a folder: {reason}")


# The attacker's loop: the live database becomes a symlink to the victim and back, as fast as it can.
FLIPPER = """
import os, sys, time
db, victim = sys.argv[1], sys.argv[2]
spare, link = db + ".spare", db + ".link"
while True:
    try:
        os.link(db, spare)
        os.symlink(victim, link)
        os.rename(link, db)
        time.sleep(0.0003)
        os.rename(spare, db)
        time.sleep(0.0003)
    except OSError:
        for leftover in (spare, link):
            try:
                os.unlink(leftover)
            except OSError:
                pass
"""


def make_db(path: Path, table: str, rows: int) -> None:
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute(f"CREATE TABLE {table}(id INTEGER PRIMARY KEY, body TEXT)")
    con.executemany(f"INSERT INTO {table}(body) VALUES (?)", [(f"{table} {i}",) for i in range(rows)])
    con.commit()
    con.close()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[dict[str, object]]:
    tmp_path.chmod(0o755)
    home = tmp_path / "home"
    folder = home / ".argentos"
    folder.mkdir(parents=True)
    os.chown(folder, ATTACKER, ATTACKER)  # the user's own folder: they may rename and link in it
    secret = tmp_path / "root-only"
    secret.mkdir(mode=0o700)
    victim = secret / "victim.db"
    make_db(victim, "secrets", 3)
    before = hashlib.sha256(victim.read_bytes()).hexdigest()

    # The snapshot's copy of memory.db, stored in a repository.
    source = tmp_path / "snapshot.db"
    make_db(source, "memories", 50)
    sqlite3.connect(source).execute("PRAGMA journal_mode=DELETE").close()
    data = source.read_bytes()
    repo = Repository.init(LocalBackend(tmp_path / "repo"), keys.wrap_none, False)
    blob, _ = repo.save_blob(BlobType.DATA, data)
    repo.flush()
    node = Node(
        name="memory.db",
        type="sqlite",
        mode=0o600,
        size=len(data),
        content=[Extent(blob, 0, len(data))],
        sha256=hashlib.sha256(data).hexdigest(),
    )
    live = folder / "memory.db"
    make_db(live, "memories", 5)
    yield {"repo": repo, "node": node, "layout": Layout(tmp_path / "workspace", home), "live": live, "victim": victim}
    assert hashlib.sha256(victim.read_bytes()).hexdigest() == before, "the restore wrote into the victim"


def test_a_root_restore_never_writes_through_a_swapped_in_link(world: dict[str, object]) -> None:
    live, victim = world["live"], world["victim"]
    assert isinstance(live, Path) and isinstance(victim, Path)
    writer = FileWriter(world["repo"], world["layout"], None)  # type: ignore[arg-type]
    node = world["node"]
    assert isinstance(node, Node)
    flipper = subprocess.Popen([sys.executable, "-c", FLIPPER, str(live), str(victim)])
    outcomes: dict[str, int] = {}
    try:
        time.sleep(0.2)
        for _ in range(ATTEMPTS):
            try:
                copy = sqlite_sink.write_copy(writer, LOGICAL, node)
                info = sqlite_sink.restore_database(writer, LOGICAL, node, in_place=True, copy=copy)
                outcomes[info["method"]] = outcomes.get(info["method"], 0) + 1
            except (PhoenixError, OSError) as exc:
                outcomes[str(exc)[:150]] = outcomes.get(str(exc)[:150], 0) + 1
            victim_tables = [r[0] for r in sqlite3.connect(f"file:{victim}?mode=ro", uri=True).execute(
                "SELECT name FROM sqlite_master WHERE type='table'"
            )]  # fmt: skip
            assert victim_tables == ["secrets"], f"the victim was overwritten ({outcomes})"
    finally:
        flipper.kill()
        flipper.wait()
        writer.close()
    # The race was real: the restore both wrote the folder and met the link.
    assert sum(outcomes.values()) == ATTEMPTS
    print(outcomes)


# Run as `nobody`: a restore by a user who is not root cannot confine SQLite, so a folder someone
# else can change is refused before SQLite is given a name in it.
AS_USER = """
import os, sys
from phoenix_backup.errors import RestoreError
from phoenix_backup.sinks import sqlite_folder
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
try:
    print(sqlite_folder.run(fd, "integrity", ["memory.db"]))
except RestoreError as exc:
    print("refused:", exc)
"""


@pytest.mark.parametrize(("mode", "owner", "verdict"), [(0o755, ATTACKER, "ok"), (0o777, ATTACKER, "refused")])
def test_a_user_is_refused_a_folder_others_can_change(public_tmp: Path, mode: int, owner: int, verdict: str) -> None:
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is not installed")
    folder = public_tmp / "shared"
    folder.mkdir()
    make_db(folder / "memory.db", "memories", 3)
    os.chown(folder / "memory.db", owner, owner)
    os.chown(folder, owner, owner)
    folder.chmod(mode)  # 0777: any user may rename and link in it
    run = [setpriv, f"--reuid={ATTACKER}", f"--regid={ATTACKER}", "--clear-groups", sys.executable, "-c", AS_USER]
    proc = subprocess.run([*run, str(folder)], capture_output=True, text=True)
    out = proc.stdout
    assert proc.returncode == 0 and out.startswith(verdict), proc
    if verdict == "refused":
        assert "can be changed by another user" in out and "chmod go-w" in out


def test_the_confined_step_runs_no_code_from_the_working_folder(
    world: dict[str, object], monkeypatch: pytest.MonkeyPatch, confinable: None
) -> None:
    """`sudo phx restore` keeps the user's working folder: the root child that runs SQLite must not
    import a module the user left there (`python -m` puts the working folder first on sys.path)."""
    live = world["live"]
    assert isinstance(live, Path)
    folder = live.parent  # the attacker's own folder, and the folder root runs phx from
    marker = Path(str(world["victim"])).with_name("ran-as-root")
    for module in ("json.py", "grp.py", "dataclasses.py"):
        (folder / module).write_text(f"open({str(marker)!r}, 'w').write('owned')\nraise SystemExit(0)\n")
        os.chown(folder / module, ATTACKER, ATTACKER)
    monkeypatch.chdir(folder)
    writer = FileWriter(world["repo"], world["layout"], None)  # type: ignore[arg-type]
    node = world["node"]
    assert isinstance(node, Node)
    try:
        info = sqlite_sink.restore_database(writer, LOGICAL, node, in_place=True)
    finally:
        writer.close()
    assert not marker.exists(), "the confined SQLite step ran the attacker's module as root"
    assert info["method"] == "backup-api" and info["integrity"] == "ok"
    rows = sqlite3.connect(f"file:{live}?mode=ro", uri=True).execute("SELECT count(*) FROM memories").fetchone()
    assert rows == (50,)


# The owner of the folder moves a deep folder out of it while the confined child resolves a link
# through it: in a plain chroot the ".." that climb back out of the moved folder are never checked
# against the new root, and lead anywhere (0.6% of opens through a 500-level folder).
MOVER = """
import os, sys
inside, outside = sys.argv[1], sys.argv[2]
while True:
    for a, b in ((inside, outside), (outside, inside)):
        try:
            os.rename(a, b)
        except OSError:
            pass
"""
OPENER = """
import os, sys, time
from phoenix_backup.sinks import sqlite_folder
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
sqlite_folder.confine(fd)  # what the SQLite child does first
tries = escaped = 0
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    tries += 1
    try:
        with open("/link", "rb") as f:
            escaped += f.read(6) == b"VICTIM"
    except OSError:
        pass
print(tries, escaped)
"""


def test_the_confined_child_cannot_be_walked_out_of_its_folder(public_tmp: Path, confinable: None) -> None:
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is not installed")
    tmp_path = public_tmp  # the attacker must reach their folders
    victim = tmp_path / "root-only" / "victim.db"
    victim.parent.mkdir(mode=0o700)
    victim.write_bytes(b"VICTIM, root's own")
    jail, elsewhere = tmp_path / "home" / "jail", tmp_path / "home" / "elsewhere"
    deep = jail / "d" / "/".join(["a"] * 500)
    deep.mkdir(parents=True)
    elsewhere.mkdir()
    for dirpath, _dirs, _files in os.walk(tmp_path / "home"):
        os.chown(dirpath, ATTACKER, ATTACKER)  # the user's own folders
    up = "../" * (501 + len(jail.parts))
    (jail / "link").symlink_to("d/" + "a/" * 500 + up + str(victim).lstrip("/"))
    as_attacker = [setpriv, f"--reuid={ATTACKER}", f"--regid={ATTACKER}", "--clear-groups", sys.executable, "-c"]
    mover = subprocess.Popen([*as_attacker, MOVER, str(jail / "d"), str(elsewhere / "d")])
    try:
        time.sleep(0.3)
        proc = subprocess.run(
            [sys.executable, "-c", OPENER, str(jail), "3" if not HEAVY else "60"], capture_output=True, text=True
        )
    finally:
        mover.kill()
        mover.wait()
    assert proc.returncode == 0, proc.stderr
    tries, escaped = map(int, proc.stdout.split())
    print(f"{escaped} of {tries} opens escaped")
    assert tries > 1000 and escaped == 0, f"{escaped} of {tries} opens reached the victim"
