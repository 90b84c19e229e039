"""An attacker with write access to the repository's storage but not the passphrase (red team,
DESIGN §5): huge objects planted where Phoenix reads objects whole.

Before the fix, a sparse 64 GiB file under `snapshots/`, `index/` or `keys/` (it costs the
attacker no disk) stopped `phx list`, `backup` and `restore` with "unexpected internal error
(MemoryError): a bug in Phoenix", and a 2 GB one made every `phx list` take 2 GB of memory.
"""

from __future__ import annotations

import os
from pathlib import Path

from e2e_support import Sandbox, assert_error, assert_restored, new_sandbox, run_phx

GiB = 1 << 30
# Address space for each `phx` run: far above what these commands need, far below 64 GiB.
LIMITED = ["prlimit", f"--as={4 * GiB}", "--"]


def plant_sparse(path: Path, size: int = 64 * GiB) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)


def limited(sb: Sandbox, *args: str | Path, check: bool | int | None = True) -> str:
    res = run_phx([str(a) for a in args], sb.env, check=check, prefix=LIMITED, timeout=120)
    return res.out + res.err


def test_huge_planted_objects_are_refused_unread_and_lose_nothing(tmp_path: Path) -> None:
    sb = new_sandbox(tmp_path)
    sid = sb.backup()["id"]
    state = sb.state()
    planted = ["snapshots/" + "ab" * 32, "index/" + "cd" * 32, "keys/" + "ef" * 8]
    for name in planted:
        plant_sparse(sb.repo / name)

    assert sid[:8] in limited(sb, "list")
    limited(sb, "restore", "--latest", "--to", tmp_path / "out", "--yes")
    assert_restored(state, tmp_path / "out", "restore beside the planted objects")
    limited(sb, "backup")
    report = limited(sb, "verify", check=1)
    for name in planted:
        assert f"{name} in {sb.repo} is 68,719,476,736 bytes, more than any object of its kind" in report, report
    assert "MemoryError" not in report

    # A planted config is the repository's only config: one clear error, nothing read.
    os.unlink(sb.repo / "config")
    plant_sparse(sb.repo / "config")
    res = run_phx(["list"], sb.env, check=1, prefix=LIMITED)
    assert_error(res, 1, "config in", "more than any object of its kind", "phx repair objects --from")
