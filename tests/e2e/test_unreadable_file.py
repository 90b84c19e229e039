"""Acceptance 5 (part): a file (and a folder) the backup cannot read: exit 3 (partial), the paths
named in the output, every other file and database saved and restorable, the repository intact.

CI runs as root, which ignores file modes, so the backup runs as an unprivileged user (`nobody`
through runuser/setpriv). Where that user cannot even start `phx` (the interpreter lives below a
0700 home, say), it runs as root with every capability dropped (setpriv), which makes the kernel
apply file modes to it like to any other owner. Without either tool the test is skipped."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from pathlib import Path

import pytest
from e2e_support import PHX, Sandbox, assert_restored


def _runs(prefix: list[str]) -> tuple[bool, str]:
    proc = subprocess.run([*prefix, PHX, "--version"], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    return proc.returncode == 0, (proc.stderr or proc.stdout).strip()


def unprivileged(tree: Path) -> tuple[list[str], str]:
    """A command prefix under which file modes apply, and a description; chowns `tree` if needed."""
    if os.geteuid() != 0:
        return [], f"uid {os.geteuid()} (not root: file modes already apply)"
    runuser, setpriv = shutil.which("runuser"), shutil.which("setpriv")
    if not runuser and not setpriv:
        pytest.skip("running as root and neither runuser nor setpriv is installed to drop privileges")
    user = pwd.getpwnam("nobody")
    wrapper = (
        [runuser, "-u", "nobody", "--"]
        if runuser
        else [setpriv, f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups"]
    )
    ok, why = _runs(wrapper)
    if ok:
        for dirpath, dirnames, filenames in os.walk(tree):
            for name in [".", *dirnames, *filenames]:
                os.lchown(os.path.join(dirpath, name), user.pw_uid, user.pw_gid)
        return wrapper, "user nobody"
    if setpriv:
        capless = [setpriv, "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"]
        ok2, why2 = _runs(capless)
        if ok2:
            return capless, f"root without capabilities (nobody cannot run {PHX}: {why})"
        why = f"{why}; capability drop: {why2}"
    pytest.skip(f"cannot run phx without privileges here: {why}")


def test_unreadable_file_is_reported_and_the_rest_saved(make_sandbox, public_tmp: Path, tmp_path: Path) -> None:
    sb: Sandbox = make_sandbox(root=public_tmp / "sb")
    ws = sb.workspace
    locked = ws / "memory" / "locked-note.md"
    locked.write_text("the agent cannot read this one\n")
    sealed = ws / "sealed"
    sealed.mkdir()
    (sealed / "inside.md").write_text("nor this\n")

    state = sb.state()
    # What a restore must give back: everything but the unreadable file and the sealed folder's
    # content. (Whether the empty sealed folder comes back is test_restore_roundtrip's business.)
    del state["workspace"]["memory/locked-note.md"]
    del state["workspace"]["sealed/inside.md"]

    prefix, who = unprivileged(public_tmp)
    print(f"running phx backup as {who}")
    locked.chmod(0o000)
    sealed.chmod(0o000)
    sb.prefix = prefix
    try:
        res = sb.phx("backup", "--json", check=3)
        text = sb.phx("backup", check=3)
    finally:
        sb.prefix = ()
    doc = res.json()
    assert doc["id"], "a partial backup still makes a snapshot"
    incomplete = {item["path"]: item["error"] for item in doc["incomplete"]}
    assert set(incomplete) == {"workspace/memory/locked-note.md", "workspace/sealed"}, doc["incomplete"]
    assert all("permission" in e.lower() for e in incomplete.values()), incomplete
    assert "locked-note.md" in text.out + text.err, f"the plain output does not name the file:\n{text}"
    assert sorted(d["path"] for d in doc["databases"]) == sorted(state["databases"])

    listed = {s["id"]: s for s in sb.phx("list", "--json").json()}
    assert listed[doc["id"]]["incomplete"] == 2

    dest = tmp_path / "restored"
    restored = sb.restore_to(doc["id"], dest)
    assert restored["errors"] == []
    assert_restored(state, dest, "restore of a partial snapshot", ignore={"sealed"})
    assert sb.verify("--read-data")["ok"] is True
