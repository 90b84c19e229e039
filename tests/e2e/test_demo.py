"""`phx demo`: the README's first command (scripts/demo.sh runs it) builds a sample agent workspace,
backs it up, lists, verifies, restores it below a scratch folder and compares every file and table."""

from __future__ import annotations

from pathlib import Path

from e2e_support import assert_error, run_phx_here


def test_the_demo_passes_and_a_second_one_into_the_same_folder_is_refused(tmp_path: Path) -> None:
    """A second `phx demo --dir D` into the folder the first one filled ended in "unexpected internal
    error (FileExistsError ...): a bug in Phoenix"; it is one usage error naming the folder, and the
    first demo's repository and restore are left as they were."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path / "home"), "PHX_CACHE_DIR": str(tmp_path / "cache")}
    folder = tmp_path / "demo"
    res = run_phx_here(["demo", "--size", "small", "--dir", str(folder)], env)
    assert "files byte-equal and tables row-equal" in res.out and "demo passed" in res.out, res.out
    assert (folder / "restored" / "workspace" / "SOUL.md").read_bytes() == (
        folder / "sample" / "workspace" / "SOUL.md"
    ).read_bytes()
    before = sorted(p.relative_to(folder) for p in folder.rglob("*"))

    again = run_phx_here(["demo", "--size", "small", "--dir", str(folder)], env, code=2)
    assert_error(again, 2, f"--dir {folder} is not empty")
    assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == before


def test_a_demo_dir_below_a_file_is_said_as_such_not_as_not_empty(tmp_path: Path) -> None:
    """`phx demo --dir NOTES/demo`, NOTES a file: "--dir NOTES/demo is not empty; give a new or empty
    folder" for a folder that does not exist (and a folder it cannot read: an internal error). The
    file on the way is named; nothing is made."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path / "home"), "PHX_CACHE_DIR": str(tmp_path / "cache")}
    notes = tmp_path / "notes"
    notes.write_text("mine\n")
    res = run_phx_here(["demo", "--dir", str(notes / "demo")], env, code=1)
    assert_error(res, 1, f"{notes} is a file, not a folder")
    assert "not empty" not in res.err, res.err
    assert notes.read_text() == "mine\n" and sorted(tmp_path.iterdir()) == [notes]
