"""A backup leaves no run folder (`cache/<id>/tmp/run-PID-START`) behind, failed or not: before,
the first backup that failed left an empty one, which stayed until a later run cleared it."""

from __future__ import annotations

import pytest
from e2e_support import Sandbox
from test_lock_confirm_all import _in_process

from phoenix_backup.errors import StorageError
from phoenix_backup.storage.local import LocalBackend


def _run_folders(sb: Sandbox) -> list[str]:
    return sorted(str(p.relative_to(sb.cache)) for p in sb.cache.glob("*/tmp/run-*"))


def test_a_first_backup_that_fails_leaves_no_run_folder(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    sb = sandbox
    (sb.workspace / "note.md").write_text("kept\n")
    real = LocalBackend.write

    def refuse_packs(self: LocalBackend, name: str, *args: object, **kwargs: object) -> None:
        if name.startswith("data/"):
            raise StorageError(f"cannot write {name} (test: the disk refused it)")
        real(self, name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(LocalBackend, "write", refuse_packs)
    run = _in_process(sb, "backup")
    assert run.exit_code not in (0, None), (run.exit_code, run.stdout, run.stderr)
    assert "the disk refused it" in run.stdout + run.stderr, (run.stdout, run.stderr)
    assert sb.phx_here("list", "--json").json() == [], "the failed backup committed a snapshot"
    assert _run_folders(sb) == []
    monkeypatch.undo()
    sb.phx_here("backup")
    assert _run_folders(sb) == []
