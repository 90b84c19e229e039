"""What a backup of a scope reads: the workspace's files and the configured databases that exist
(ops/backup.py). Apart from the backup's code, so that `phx watch`, which lists the same sources,
does not load it (docs/continuous.md)."""

from __future__ import annotations

from pathlib import Path

from phoenix_backup.config import Config
from phoenix_backup.dirs import data_dir
from phoenix_backup.errors import SourceError
from phoenix_backup.ops import db_backup
from phoenix_backup.ops.context import Environment, require_workspace
from phoenix_backup.repo.cache import cache_root
from phoenix_backup.sources.files import Selection, select
from phoenix_backup.sources.layout import Layout
from phoenix_backup.sources.scope import Scope, source_plan


def select_sources(cfg: Config, scope: Scope, envx: Environment) -> tuple[Layout, Selection]:
    require_workspace(cfg)
    layout = Layout(cfg.workspace, envx.home)
    plan = source_plan(cfg, scope)
    # Never the repository into itself, nor the cache (its temporary database copies).
    own = [Path(envx.env.get("PHX_CACHE_DIR") or cache_root()), data_dir(envx.env)]
    if cfg.targets.local.enabled:
        own.append(cfg.repository_path)
    if plan.walk_files:
        sel = select(
            layout, plan.includes, cfg.exclude, plan.databases, optional=plan.optional, keep=plan.optional, skip=own
        )
    else:
        sel = select(layout, [], cfg.exclude, plan.databases)
        # Databases only: drop the workspace walk that an empty include list implies.
        sel.entries = {
            k: v
            for k, v in sel.entries.items()
            if v.kind == "sqlite"
            or any(e.logical.startswith(k + "/") and e.kind == "sqlite" for e in sel.entries.values())
        }
    empty = not sel.errors and not any(e.kind != "dir" for e in sel.entries.values())
    if scope != "full" and empty and not db_backup.database_jobs(cfg, scope):
        # An empty snapshot would become `latest` of its scope and prove nothing.
        looked = plan.includes or tuple(str(d) for d in plan.databases) or ("no database is configured",)
        where = "" if scope == "databases" else f" in the workspace {cfg.workspace}"
        fix = "`databases`" if scope == "databases" else f"`components.{scope}` or `workspace`"
        raise SourceError(
            f"a --{scope}-only backup found nothing to save{where} ({', '.join(looked)}): nothing was saved; "
            f"fix {fix} in {cfg.source or 'the config'}, or run a full backup"
        )
    return layout, sel
