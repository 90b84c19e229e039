"""An in-place restore while the agent keeps writing (no gateway stops it): what the agent writes
after the safety snapshot was taken is never overwritten or deleted by the restore, so the undo
(restoring the safety snapshot) never lacks it. Before, a file the agent changed, or created,
between the safety snapshot and the restore's rename was replaced: the agent's bytes were in no
snapshot at all."""

from __future__ import annotations

from typing import Any

import pytest
from e2e_support import Sandbox

from phoenix_backup.ops import safety


def test_what_the_agent_writes_after_the_safety_snapshot_is_never_replaced(
    backed_up: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    sb = backed_up
    soul = sb.workspace / "SOUL.md"
    snapshot_soul = soul.read_bytes()
    soul.write_bytes(b"changed before the restore\n")
    note = next(p for p in sorted((sb.workspace / "memory").iterdir()) if p.is_file())
    note.unlink()  # the restore would create it; the agent writes it first
    real_take = safety.take

    def take_then_agent_writes(*args: Any, **kwargs: Any) -> Any:
        taken = real_take(*args, **kwargs)
        soul.write_bytes(b"the agent's work, written after the safety snapshot\n")
        note.write_bytes(b"a note the agent wrote after the safety snapshot\n")
        return taken

    monkeypatch.setattr(safety, "take", take_then_agent_writes)
    res = sb.phx_here("restore", "--latest", "--yes", "--json", code=3)
    doc = res.json()
    assert soul.read_bytes() == b"the agent's work, written after the safety snapshot\n", res
    assert note.read_bytes() == b"a note the agent wrote after the safety snapshot\n"
    assert sorted(e["path"] for e in doc["errors"]) == ["workspace/SOUL.md", f"workspace/memory/{note.name}"], doc
    assert all("changed since the safety snapshot" in e["error"] for e in doc["errors"])
    monkeypatch.undo()
    # Run again, the restore takes its own safety snapshot of the agent's work and restores.
    again = sb.phx_here("restore", "--latest", "--yes", "--json").json()
    assert soul.read_bytes() == snapshot_soul
    sb.phx_here("restore", "--backup", again["safetySnapshot"]["id"], "--yes")
    assert soul.read_bytes() == b"the agent's work, written after the safety snapshot\n"
    assert note.read_bytes() == b"a note the agent wrote after the safety snapshot\n"
