"""`phx verify [--backup ID] [--read-data [--subset PCT]]`: the repository checker (repo/checker.py)
run under a shared lock, with the `--subset` cursor kept in the cache."""

from __future__ import annotations

from phoenix_backup.config import Config
from phoenix_backup.errors import IdentityRequired
from phoenix_backup.ops.context import Environment, agent_latest, cache_for, captures_cache, open_repository
from phoenix_backup.repo.checker import SUBSET_CURSOR, VerifyError, VerifyResult, verify_repository
from phoenix_backup.repo.writer import WriterRepository


def verify(
    cfg: Config,
    envx: Environment,
    *,
    ref: str | None = None,
    read_data: bool = False,
    subset: float | None = None,
) -> VerifyResult:
    """`subset` (a percentage, 0 < PCT <= 100) reads only that share of the packs, continuing where
    the previous subset run stopped (see `choose_subset`); it implies `read_data`."""
    repo = open_repository(cfg, envx)
    if isinstance(repo, WriterRepository):
        # A write-only repository, without its identity: what can be checked without reading data.
        if read_data or subset is not None:
            raise IdentityRequired(repo.backend.location, "every blob it checks (--read-data)")
        with repo.lock(exclusive=False, command="verify"):
            report = repo.check_structure()
        errors = [VerifyError(obj, snap, None, message) for obj, snap, message in report.errors]
        return VerifyResult(checked=report.checked, errors=errors, notices=report.notices)
    with repo.lock(exclusive=False, command="verify"):
        cursor = cache_for(repo, envx).dir / SUBSET_CURSOR if subset is not None else None
        return verify_repository(
            repo,
            ref=ref,
            read_data=read_data or subset is not None,
            subset=subset,
            cursor=cursor,
            latest=agent_latest(cfg, envx),
            report=envx.progress,
            segments_cache=captures_cache(repo, envx),
        )
