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
