"""Issue 15, failure 8: odd files come back as they were.

- setuid and setgid bits survive a restore as root that restores ownership (Linux clears them on
  every chown, so the owner must be set before the mode);
- hard links come back as links, in place and below --to, and a second backup keeps them;
- a sparse file comes back sparse (64 MiB with 12 KiB of data);
- `--json` output stays valid UTF-8 JSON for file names that are not UTF-8, and carries their
  exact bytes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from e2e_support import PHX, Sandbox, assert_error

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hostile import Forger, dir_node

# The repositories the commands leave are the point, not the process: the sandboxes' helpers run phx
# in this process (tests/e2e/conftest.py).
pytestmark = pytest.mark.phx_in_process

MIB = 1024 * 1024


def inode(path: Path) -> tuple[int, int]:
    st = path.lstat()
    return st.st_dev, st.st_ino


# -- setuid / setgid ---------------------------------------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="restoring ownership (and so the setuid bit) needs root")
def test_setuid_and_setgid_survive_a_restore_as_root(sandbox: Sandbox, tmp_path: Path) -> None:
    sb = sandbox
    tools = sb.workspace / "tools"
    tools.mkdir()
    suid = tools / "helper"
    suid.write_bytes(b"#!/bin/sh\necho helper\n")
    os.chown(suid, 4321, 4321)
    suid.chmod(0o6755)  # setuid and setgid, executable
    shared = sb.workspace / "shared"
    shared.mkdir()
    os.chown(shared, 4321, 4321)
    shared.chmod(0o2775)  # a setgid folder
    (shared / "note.md").write_text("shared\n")
    doc = sb.backup()

    for dest in (tmp_path / "to", None):
        if dest is None:  # in place, after the bits were lost on disk
            suid.chmod(0o755)
            os.chown(suid, 0, 0)
            shared.chmod(0o775)
            sb.phx_here("restore", "--backup", doc["id"], "--yes")
            base = sb.workspace
        else:
            sb.restore_to(doc["id"], dest)
            base = dest / "workspace"
        st = (base / "tools" / "helper").lstat()
        assert (st.st_uid, st.st_gid) == (4321, 4321)
        assert stat.S_IMODE(st.st_mode) == 0o6755, f"{base}: mode {oct(stat.S_IMODE(st.st_mode))}, not 0o6755"
        st = (base / "shared").lstat()
        assert (st.st_uid, st.st_gid) == (4321, 4321)
        assert stat.S_IMODE(st.st_mode) == 0o2775, f"{base}: folder mode {oct(stat.S_IMODE(st.st_mode))}"


def _user_namespace() -> list[str] | None:
    """A wrapper running a command as root in a user namespace that maps no other id (as a rootless
    container does): the kernel refuses a chown to any other owner there (EINVAL)."""
    prefix = ["unshare", "--user", "--map-root-user"]
    if shutil.which("unshare") is None:
        return None
    probe = subprocess.run([*prefix, "true"], capture_output=True, stdin=subprocess.DEVNULL)
    return prefix if probe.returncode == 0 else None


@pytest.mark.skipif(os.geteuid() != 0, reason="restoring ownership needs root")
def test_a_restore_as_root_that_cannot_set_owners_says_which_paths_kept_another(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """Root restoring where the file system keeps no owners or refuses root's chown (vfat, NFS with
    root squashed, a user namespace mapping no other id) had every owner left root's without a word:
    an agent running as its user then cannot write its memory. The restore still succeeds (bytes
    and modes restored) and says which paths kept another owner, and the fix."""
    prefix = _user_namespace()
    if prefix is None:
        pytest.skip("no user namespaces here (unshare --user --map-root-user)")
    sb = sandbox
    notes = sb.workspace / "notes"
    notes.mkdir()
    (notes / "today.md").write_text("remember the plan\n")
    (notes / "link.md").symlink_to("today.md")
    for path in (notes, notes / "today.md"):
        os.chown(path, 4321, 4321)
    os.lchown(notes / "link.md", 4321, 4321)
    doc = sb.backup()

    dest = tmp_path / "restored"
    sb.prefix = prefix
    try:
        res = sb.phx("restore", "--backup", doc["id"], "--to", dest, "--json")
    finally:
        sb.prefix = ()
    report = res.json()
    assert (dest / "workspace" / "notes" / "today.md").read_text() == "remember the plan\n"
    assert os.readlink(dest / "workspace" / "notes" / "link.md") == "today.md"
    warned = [w for w in report["warnings"] if "is not the snapshot's" in w]
    assert len(warned) == 1, report["warnings"]
    for logical in ("workspace/notes:", "workspace/notes/today.md:", "workspace/notes/link.md:"):
        assert logical in warned[0]
    assert "Invalid argument" in warned[0] and "chown -R" in warned[0]
    print(warned[0])


SYSTEM_PYTHON = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")  # not below /root
HOLDER = """
import mmap, os, sys, time
path, ready, go = sys.argv[1:4]
fd = os.open(path, os.O_RDWR)
view = mmap.mmap(fd, os.fstat(fd).st_size)  # a writable mapping outlives any chown and chmod
open(ready, "w").close()
while not os.path.exists(go):
    time.sleep(0.02)
view[:12] = b"#!/bin/sh\\nid"
view.flush()
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="restoring ownership (and so the setuid bit) needs root")
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) runs the attacker's process")
@pytest.mark.skipif(SYSTEM_PYTHON is None, reason="the attacker's process needs a python3 any user can run")
def test_a_setuid_file_is_never_granted_to_a_users_own_inode(
    make_sandbox: Callable[..., Sandbox], public_tmp: Path
) -> None:
    """The workspace holds a root-owned setuid helper in a folder its user (uid 4321) controls. The
    user puts their own file there, with the helper's content (so an in-place restore finds it
    "unchanged") and keeps a writable mapping of it. Root's in-place restore chowned that very
    inode to root and made it 04755; the user then wrote their own program through the mapping
    (writes through a mapping keep the bits): a root shell. A file to get the bits is now
    written anew; the user's inode is left as it was."""
    sb = make_sandbox(root=public_tmp / "sb")  # below folders any user can enter
    tmp_path = public_tmp
    tools = sb.workspace / "tools"
    tools.mkdir()
    helper = tools / "helper"
    content = b"#!/bin/sh\necho the real helper\n" + b"#" * 4096
    helper.write_bytes(content)
    helper.chmod(0o4755)
    os.chown(tools, 4321, 4321)
    doc = sb.backup()

    # The user's move: their own copy in the helper's place, mapped writable by their process.
    planted = tmp_path / "mine"
    planted.write_bytes(content)
    os.chown(planted, 4321, 4321)
    planted.chmod(0o755)
    os.link(planted, tmp_path / "keep")
    os.replace(planted, helper)
    ready, go = tmp_path / "ready", tmp_path / "go"
    tmp_path.chmod(0o777)
    user = ["setpriv", "--reuid=4321", "--regid=4321", "--clear-groups", str(SYSTEM_PYTHON)]
    holder = subprocess.Popen([*user, "-c", HOLDER, str(helper), str(ready), str(go)])
    try:
        for _ in range(500):
            if ready.exists() or holder.poll() is not None:
                break
            time.sleep(0.02)
        assert ready.exists(), "the user's process did not map the file"
        sb.phx_here("restore", "--backup", doc["id"], "--yes")
    finally:
        go.touch()
        holder.wait(timeout=30)
    st = helper.lstat()
    assert helper.read_bytes() == content, "the setuid root program holds the user's bytes"
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o4755)
    assert inode(helper) != inode(tmp_path / "keep"), "the user's own inode was made setuid root"
    kept = (tmp_path / "keep").lstat()
    assert (kept.st_uid, stat.S_IMODE(kept.st_mode)) == (4321, 0o755)


@pytest.mark.skipif(os.geteuid() != 0, reason="restoring ownership (and so the setuid bit) needs root")
def test_a_forged_setuid_root_file_is_not_restored_setuid(make_sandbox: Callable[..., Sandbox], tmp_path: Path) -> None:
    """Whoever can write an unencrypted repository's storage can forge its trees (tests/hostile.py):
    a file of mode 04755 owned by root, restored by root with --to, would be a root shell for any
    local user who can reach it. From an unencrypted repository the setuid and setgid bits of
    files are not restored, with a warning; an encrypted one keeps them (the test above)."""
    sb = make_sandbox(encryption=False)
    sb.backup()
    forger = Forger(sb.repo)
    payload = b"#!/bin/sh\nexec /bin/sh -p\n"
    tools = forger.tree(
        forger.file_node("rootshell", payload, mode=0o4755, uid=0, gid=0),
        forger.file_node("groupshell", payload, mode=0o2755, uid=0, gid=0),
    )
    sid = forger.snapshot(forger.tree(dir_node("workspace", forger.tree(dir_node("tools", tools)))), name="forged")
    doc = sb.restore_to(sid, tmp_path / "out")
    for name in ("rootshell", "groupshell"):
        st = (tmp_path / "out" / "workspace" / "tools" / name).lstat()
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o755), f"{name}: {oct(stat.S_IMODE(st.st_mode))}"
    assert any("setuid/setgid" in w and "unencrypted" in w for w in doc["warnings"]), doc["warnings"]

    # In place, a file that already is what the snapshot says, bits and all, keeps them: leaving
    # it grants nothing. One whose content the restore writes anew gets none.
    helper = sb.workspace / "helper"
    helper.write_bytes(payload)
    os.chown(helper, 4321, 4321)
    helper.chmod(0o4755)
    own = sb.backup()
    doc = sb.phx_here("restore", "--backup", own["id"], "--yes", "--json").json()
    assert stat.S_IMODE(helper.lstat().st_mode) == 0o4755
    assert not any("setuid/setgid" in w for w in doc["warnings"]), doc["warnings"]
    helper.write_bytes(b"changed since\n")
    helper.chmod(0o4755)
    doc = sb.phx_here("restore", "--backup", own["id"], "--yes", "--json").json()
    assert helper.read_bytes() == payload and stat.S_IMODE(helper.lstat().st_mode) == 0o755
    assert any("1 file(s) restored without their setuid/setgid bits" in w for w in doc["warnings"]), doc["warnings"]


# -- hard links --------------------------------------------------------------------------------


def test_hard_links_come_back_as_links(sandbox: Sandbox, tmp_path: Path) -> None:
    sb = sandbox
    ws = sb.workspace
    (ws / "a").mkdir()
    (ws / "b").mkdir()
    first = ws / "a" / "log.md"
    first.write_bytes(os.urandom(300_000))
    os.link(first, ws / "b" / "log-link.md")  # another folder
    os.link(first, ws / "a" / "same-folder.md")  # the same folder
    single = ws / "a" / "copy.md"
    single.write_bytes(first.read_bytes())  # equal content, not a link
    doc = sb.backup()
    assert doc["incomplete"] == []

    dest = tmp_path / "restored"
    sb.restore_to(doc["id"], dest)
    r = dest / "workspace"
    group = [r / "a" / "log.md", r / "b" / "log-link.md", r / "a" / "same-folder.md"]
    assert len({inode(p) for p in group}) == 1, "the hard-link group came back as separate files"
    assert group[0].stat().st_nlink == 3
    assert inode(r / "a" / "copy.md") != inode(group[0])
    assert all(p.read_bytes() == first.read_bytes() for p in [*group, r / "a" / "copy.md"])

    # In place: the links were broken (one replaced by a copy, one deleted); the restore relinks.
    (ws / "b" / "log-link.md").unlink()
    (ws / "b" / "log-link.md").write_bytes(first.read_bytes())
    (ws / "a" / "same-folder.md").unlink()
    sb.phx_here("restore", "--backup", doc["id"], "--yes")
    assert len({inode(ws / "a" / "log.md"), inode(ws / "b" / "log-link.md"), inode(ws / "a" / "same-folder.md")}) == 1
    assert inode(ws / "a" / "copy.md") != inode(ws / "a" / "log.md")

    # A second backup (files unchanged, read from the parent) keeps the group; a link removed on
    # disk is not claimed any more.
    os.unlink(ws / "a" / "same-folder.md")
    doc2 = sb.backup()
    dest2 = tmp_path / "restored2"
    sb.restore_to(doc2["id"], dest2)
    r2 = dest2 / "workspace"
    assert inode(r2 / "a" / "log.md") == inode(r2 / "b" / "log-link.md")
    assert not (r2 / "a" / "same-folder.md").exists()
    assert (r2 / "a" / "log.md").stat().st_nlink == 2


def test_forged_hard_links_get_copies_never_another_files_bytes(
    make_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    """A forged tree's `hardlink` may name itself, a folder, a symlink, another link (a chain), a
    path restored later, a path the snapshot lacks, or a file of other content under a copied
    SHA-256. A link is made only to a file of the very same content; everything else gets its own
    bytes, checked against its own SHA-256. Before, the last case came back as a link to the other
    file: bytes that `phx dump` of the same path does not give."""
    sb = make_sandbox(encryption=False)
    sb.backup()
    forger = Forger(sb.repo)
    a, b = b"first content\n", b"other content\n"
    link = {"name": "l", "type": "symlink", "mode": 0o777, "mtimeNs": 0, "uid": 0, "gid": 0, "linkTarget": "a"}
    nodes = [
        forger.file_node("a", a),
        forger.file_node("self", a, hardlink="workspace/self"),
        forger.file_node("to-dir", a, hardlink="workspace/d"),
        dir_node("d", forger.tree(forger.file_node("x", a))),
        forger.file_node("to-symlink", a, hardlink="workspace/l"),
        link,
        forger.file_node("b", a, hardlink="workspace/a"),
        forger.file_node("chain", a, hardlink="workspace/b"),
        forger.file_node("0-later", a, hardlink="workspace/z"),
        forger.file_node("z", a),
        forger.file_node("outside", a, hardlink="home/.argentos/missing"),
    ]
    sid = forger.snapshot(forger.tree(dir_node("workspace", forger.tree(*nodes))), name="links")
    sb.restore_to(sid, tmp_path / "out")
    w = tmp_path / "out" / "workspace"
    assert inode(w / "b") == inode(w / "a") and inode(w / "0-later") == inode(w / "z")
    for name in ("self", "to-dir", "to-symlink", "chain", "outside"):
        assert (w / name).read_bytes() == a and (w / name).lstat().st_nlink == 1, name
    assert (w / "l").is_symlink() and (w / "d" / "x").lstat().st_nlink == 1

    lie = forger.file_node("b", b, hardlink="workspace/a", sha256=hashlib.sha256(a).hexdigest(), size=len(a))
    sid = forger.snapshot(forger.tree(dir_node("workspace", forger.tree(forger.file_node("a", a), lie))), name="lie")
    res = sb.phx("restore", "--backup", sid, "--to", tmp_path / "lie", check=None)
    assert_error(res, 1, "workspace/b", "SHA-256")
    assert not (tmp_path / "lie" / "workspace" / "b").exists(), "b came back with a's bytes"


def test_a_hard_link_whose_first_name_goes_away_is_still_saved(sandbox: Sandbox, tmp_path: Path) -> None:
    """The first name of a link group (in path order) is the one read. When it is gone between the
    walk and the read (a log rotated away), the other names were lost with it, reported as "a hard
    link of ..., which could not be read", though their bytes were right there. Now the next name
    is read itself, and the rest of the group links to it."""
    from phoenix_backup import Environment, load_config
    from phoenix_backup.ops.backup import snapshot_entries
    from phoenix_backup.ops.context import open_repository
    from phoenix_backup.ops.selection import select_sources

    sb = sandbox
    sb.backup()
    ws = sb.workspace
    data = os.urandom(100_000)
    (ws / "a.log").write_bytes(data)
    for name in ("b.log", "c.log"):
        os.link(ws / "a.log", ws / name)
    cfg = load_config(sb.config_path)
    envx = Environment(env=sb.env)
    _layout, sel = select_sources(cfg, "full", envx)
    (ws / "a.log").unlink()  # after the walk, before the read
    repo = open_repository(cfg, envx)
    try:
        with repo.lock(exclusive=False, command="test"):
            entries = list(sel.entries.values())
            result = snapshot_entries(
                repo, cfg, envx, entries, absent=(), scope="full", tags=(), parent_scopes=("full",)
            )
    finally:
        repo.close()
    lost = [i["path"] for i in result.incomplete]
    assert lost == ["workspace/a.log"], result.incomplete
    sb.restore_to(result.id, tmp_path / "out")
    r = tmp_path / "out" / "workspace"
    assert (r / "b.log").read_bytes() == data and inode(r / "b.log") == inode(r / "c.log")


# -- sparse files ------------------------------------------------------------------------------


def _holes_supported(folder: Path) -> bool:
    probe = folder / "hole-probe"
    with open(probe, "wb") as f:
        f.truncate(8 * MIB)
    try:
        return probe.stat().st_blocks * 512 < MIB
    finally:
        probe.unlink()


def test_a_sparse_file_comes_back_sparse(sandbox: Sandbox, tmp_path: Path) -> None:
    sb = sandbox
    if not _holes_supported(tmp_path) or not _holes_supported(sb.workspace):
        pytest.skip("this file system does not keep holes in files")
    image = sb.workspace / "disk.img"
    data = [os.urandom(4096) for _ in range(3)]
    with open(image, "wb") as f:  # 64 MiB, 12 KiB of data: at the start, the middle and the end
        f.write(data[0])
        f.seek(32 * MIB)
        f.write(data[1])
        f.seek(64 * MIB - 4096)
        f.write(data[2])
    expected = image.read_bytes()
    doc = sb.backup()

    dest = tmp_path / "restored"
    sb.restore_to(doc["id"], dest)
    restored = dest / "workspace" / "disk.img"
    assert restored.read_bytes() == expected
    allocated = restored.stat().st_blocks * 512
    print(f"64 MiB file with 12 KiB of data: {allocated} bytes allocated after the restore")
    assert allocated <= 64 * 1024, f"{allocated} bytes allocated: the holes were written as zeros"

    image.write_bytes(b"changed")  # in place too
    sb.phx_here("restore", "--backup", doc["id"], "--yes")
    assert image.read_bytes() == expected
    assert image.stat().st_blocks * 512 <= 64 * 1024


# -- non-UTF-8 names in JSON -----------------------------------------------------------------------


def _json_of(sb: Sandbox, *args: str) -> dict:
    """Run phx with --json; stdout must be valid UTF-8 and one JSON document."""
    proc = subprocess.run([PHX, *args, "--json"], env=sb.env, capture_output=True, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    text = proc.stdout.decode("utf-8")  # strict: raw non-UTF-8 bytes fail here
    return json.loads(text)


def test_non_utf8_names_in_json_are_valid_and_lossless(sandbox: Sandbox, tmp_path: Path) -> None:
    sb = sandbox
    raw_name = b"caf\xe9-\xff.md"  # Latin-1 and a byte that is never UTF-8
    ws = os.fsencode(sb.workspace)
    with open(ws + b"/" + raw_name, "wb") as f:
        f.write(b"latin-1 name\n")
    os.symlink(raw_name, ws + b"/link-" + raw_name)

    backup = _json_of(sb, "backup")
    listing = _json_of(sb, "ls", backup["id"])
    entry = next(e for e in listing["entries"] if e.get("pathBytes"))
    assert base64.b64decode(entry["pathBytes"]) == b"workspace/" + raw_name
    assert entry["path"] == "workspace/caf\ufffd-\ufffd.md"  # readable, and valid Unicode
    link = next(e for e in listing["entries"] if e["name"].startswith("link-"))
    assert base64.b64decode(link["linkTargetBytes"]) == raw_name

    dest = tmp_path / "restored"
    doc = _json_of(sb, "restore", "--backup", backup["id"], "--to", str(dest))
    item = next(i for i in doc["items"] if "pathBytes" in i)
    assert base64.b64decode(item["pathBytes"]) == b"workspace/" + raw_name
    assert base64.b64decode(item["targetBytes"]) == os.fsencode(dest) + b"/workspace/" + raw_name
    # The name itself comes back byte for byte.
    assert raw_name in os.listdir(os.fsencode(dest / "workspace"))


# Names a file system allows and JSON cannot hold as they are: Latin-1 bytes and a byte never in
# UTF-8 (both shown as caf\ufffd.md), a real name holding U+FFFD itself, a UTF-8-encoded lone
# surrogate, and a name equal to the sibling key jsontext adds.
ODD = (b"caf\xe9.md", b"caf\xff.md", "caf\ufffd.md".encode(), b"\xed\xa0\x80lone.md", b"pathBytes")


def _names(entries: list[dict]) -> set[bytes]:
    """The exact name of every entry with a `path`: its `pathBytes`, else its text."""
    return {base64.b64decode(e["pathBytes"]) if "pathBytes" in e else e["path"].encode() for e in entries}


def _strict_json(data: bytes) -> dict:
    return json.loads(data.decode("utf-8"))  # strict: raw non-UTF-8 bytes fail here


def test_odd_names_survive_every_output(sandbox: Sandbox, tmp_path: Path) -> None:
    """Every JSON a command prints or writes is valid UTF-8 and names each odd file apart from the
    others, and the files come back byte for byte: ls, diff, restore (also --dry-run), list,
    verify, the drill report, an archive's manifest and SHA256SUMS, and an export that `phx
    import` then accepts. Before, `archive` and `export` ended in a UnicodeEncodeError traceback."""
    sb = sandbox
    first = _json_of(sb, "backup")
    notes = os.fsencode(sb.workspace) + b"/memory/"
    for name in ODD:
        with open(notes + name, "wb") as f:
            f.write(b"content of " + name + b"\n")
    expect = {b"workspace/memory/" + n for n in ODD}
    doc = _json_of(sb, "backup")

    assert expect <= _names(_json_of(sb, "ls", doc["id"])["entries"])
    assert expect <= _names(_json_of(sb, "diff", first["id"], doc["id"])["files"]["added"])
    dry = _json_of(sb, "restore", "--backup", doc["id"], "--to", tmp_path / "dry", "--dry-run")
    assert expect <= _names(dry["items"])
    dest = tmp_path / "restored"
    assert expect <= _names(_json_of(sb, "restore", "--backup", doc["id"], "--to", dest)["items"])
    for name in ODD:
        with open(os.fsencode(dest) + b"/workspace/memory/" + name, "rb") as f:
            assert f.read() == b"content of " + name + b"\n"
    _json_of(sb, "list")
    _json_of(sb, "verify", "--read-data")
    (tmp_path / "scratch").mkdir()
    drill = _json_of(sb, "drill", "--scratch", tmp_path / "scratch")
    _strict_json(Path(drill["report"]["json"]).read_bytes())

    # An archive: a tar.gz keeps the names' bytes; a zip cannot, and says so.
    tar = tmp_path / "a.tar.gz"
    sb.phx_here("archive", doc["id"], "--output", tar)
    top = f"phoenix-{doc['name']}".encode()
    with tarfile.open(tar, encoding="utf-8", errors="surrogateescape") as t:
        members = {os.fsencode(m.name) for m in t.getmembers()}
        manifest = _strict_json(t.extractfile(f"{top.decode()}/phoenix-manifest.json").read())  # type: ignore[union-attr]
        sums = t.extractfile(f"{top.decode()}/SHA256SUMS").read()  # type: ignore[union-attr]
    assert {top + b"/" + n for n in expect} <= members
    assert expect <= _names(manifest["entries"])
    assert all(b"  " + n + b"\n" in sums for n in expect)
    res = sb.phx("archive", doc["id"], "--output", tmp_path / "a.zip", check=None)
    assert_error(res, 2, "not UTF-8", "tar.gz")
    assert not (tmp_path / "a.zip").exists()

    # An export: its metadata.json and checksums.json are valid UTF-8 and read back exactly.
    export = tmp_path / "export"
    sb.phx_here("export", "--format", "json", "--output", export)
    _strict_json((export / "metadata.json").read_bytes())
    files = _strict_json((export / "checksums.json").read_bytes())["files"]
    assert {b"files/" + n for n in expect} <= {os.fsencode(k) for k in files}
    sb.phx_here("import", export, "--dry-run", "--force")


def test_pipes_sockets_and_devices_are_said_as_not_saved(sandbox: Sandbox, tmp_path: Path) -> None:
    """A named pipe, a socket and a device node in the workspace hold no data to back up: each is
    named "not saved" with why, as other unsaved paths are, and the run is not partial (exit 0;
    nothing was lost). Before, they were skipped without a word (docs/what-a-backup-saves.md)."""
    import socket

    sb = sandbox
    os.mkfifo(sb.workspace / "agent.pipe")
    sock = socket.socket(socket.AF_UNIX)
    short = tmp_path / "s"  # a socket's path is at most 108 bytes: made short, then moved in
    sock.bind(str(short))
    sock.close()
    os.rename(short, sb.workspace / "agent.sock")
    expected = {"agent.pipe": "named pipe", "agent.sock": "socket"}
    if os.geteuid() == 0:
        os.mknod(sb.workspace / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
        expected["null"] = "device"
    res = sb.phx_here("backup", code=0)
    doc = sb.backup()
    for name, kind in expected.items():
        line = f"not saved: workspace/{name} (a {kind} holds no data to back up)"
        assert line in res.out + res.err, f"{line!r} not said:\n{res}"
        assert line in doc["warnings"], doc["warnings"]
    assert doc["incomplete"] == []
    listing = sb.phx_here("ls", doc["id"], "--json").json()
    assert not any(name in json.dumps(listing) for name in expected)
