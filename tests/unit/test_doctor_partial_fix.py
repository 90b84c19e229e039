"""The fix doctor gives for a partial last backup (ops/doctor.py `_partial_fix`)."""

from __future__ import annotations

from phoenix_backup.ops.doctor import _partial_fix

UNSET = (
    "PostgreSQL database `main` takes its password from $PGPASS_MAIN, which is not set; "
    "export PGPASS_MAIN before running phx"
)
GENERAL = "make those paths readable (or exclude them), or repair the damaged database, then run `phx backup`"


def test_only_a_postgres_part_s_error_names_a_variable_to_set() -> None:
    """A file's part whose error quotes the sentence (a link target or file name anyone can choose)
    made doctor say "set EVIL in the environment ..."; only a postgres/ part's error counts."""
    sentence = "takes its password from $EVIL, which is not set; x"
    state = {"failedParts": [{"path": "workspace/memory.db", "error": f"behind a link to /tmp/{sentence}"}]}
    assert _partial_fix(state) == GENERAL
    state["failedParts"] += [{"path": "postgres/main", "error": UNSET}, {"path": "postgres/main", "error": UNSET}]
    assert _partial_fix(state) == (
        "set PGPASS_MAIN in the environment the backup runs in (the scheduler's too); for the other parts, "
        "make those paths readable (or exclude them), or repair the damaged database, then run `phx backup`"
    )
