"""What a backup of a scope reads: the workspace's files and the configured databases that exist
(ops/backup.py). Apart from the backup's code, so that `phx watch`, which lists the same sources,
does not load it (docs/continuous.md)."""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path

from phoenix_backup.config import Config
from phoenix_backup.dirs import data_dir, env_path
from phoenix_backup.errors import SourceError
from phoenix_backup.ops import db_backup
from phoenix_backup.ops.context import Environment, require_workspace
from phoenix_backup.repo.cache import cache_root
from phoenix_backup.sources.files import Selection, excluded, select
from phoenix_backup.sources.layout import Layout
from phoenix_backup.sources.scope import Scope, source_plan
from phoenix_backup.storage.local import real_path


def select_sources(cfg: Config, scope: Scope, envx: Environment) -> tuple[Layout, Selection]:
    require_workspace(cfg)
    layout = Layout(cfg.workspace, envx.home)
    plan = source_plan(cfg, scope)
    # Never the repository into itself, nor the cache (its temporary database copies): each as
    # it really is, as the walk of the workspace spells it (a workspace reached through a
    # symlink), and as configured only when that spelling, read without following links (the
    # walk's), is the same folder: `ws/link/../backups` with `link` a symlink is elsewhere, and
    # the user's own `ws/backups` was left out of every backup, unsaid.
    holder = workspace_in_own_folder(cfg, envx.env)
    if holder is not None:
        raise SourceError(holder)
    keys = key_files_in_workspace(cfg, envx.env)
    own = never_saved(cfg, [*(p for p, _what, _fix in _own_folders(cfg, envx.env)), *(p for p, _warning in keys)])
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
    sel.left_out += [warning for _p, warning in keys]
    sel.left_out += drop_key_links(sel, [p for p, _warning in keys])
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


def drop_key_links(sel: Selection, keys: list[Path]) -> list[str]:
    """Take out of `sel` every other name (a hard link) of a key file that is left out: one warning
    each. The walk leaves the key out by its path; the same file under another name is the key."""
    files: dict[tuple[int, int], Path] = {}
    for path in keys:
        try:
            st = os.stat(path)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
            files[(st.st_dev, st.st_ino)] = path
    if not files:
        return []
    out = []
    for logical, entry in list(sel.entries.items()):
        key = files.get((entry.st.st_dev, entry.st.st_ino)) if entry.kind == "file" else None
        if key is not None:
            del sel.entries[logical]
            out.append(
                f"{entry.path} is another name (a hard link) of the key file {key}: it is left out of every backup "
                f"too; remove it (`rm {entry.path}`)"
            )
    return out


def never_saved(cfg: Config, paths: list[Path]) -> list[Path]:
    """`paths` (Phoenix's own folders, key files) spelled every way a walk of the workspace may meet
    them, for `select`'s `skip`."""
    return [
        *(p for p in paths if real_path(Path(os.path.abspath(p.expanduser()))) == real_path(p)),
        *(real_path(p) for p in paths),
        *(spelled for p in paths if (spelled := in_workspace(cfg.workspace, p)) is not None),
    ]


def in_workspace(workspace: Path, path: Path) -> Path | None:
    """`path` as the walk of `workspace` meets it (below the workspace as configured, whatever
    symlinks either goes through), or None when it does not lie inside the workspace."""
    real, root = real_path(path), real_path(workspace)
    if real == root or root in real.parents:
        return workspace / real.relative_to(root)
    return None


def repository_in_workspace(cfg: Config, home: Path) -> str | None:
    """The warning `phx backup` (its dry run too) and `phx doctor` give when the local target's
    repository lies inside the workspace and no `exclude` pattern leaves it out: backups leave it
    out by themselves (`select_sources`: a backup never saves itself), but the workspace's loss
    takes the backups with it. None otherwise. The fix follows the last "; "."""
    if not cfg.targets.local.enabled:
        return None
    repo = cfg.repository_path
    below = in_workspace(cfg.workspace, repo)
    if below is None or excluded(Layout(cfg.workspace, home), cfg.exclude, below):
        return None
    where = cfg.source or "the config"
    rel = below.relative_to(cfg.workspace).as_posix()
    keep = f', or add "{rel}/" to `exclude` in {where} to keep it there knowingly' if rel != "." else ""
    return (
        f"the local target's repository {repo} is inside the workspace {cfg.workspace}, which backups save: "
        "each backup leaves the repository out (a backup never saves itself), but a loss of the workspace's "
        f"folder or disk takes the backups with it; move the repository outside the workspace "
        f"(targets.local.path in {where}){keep}"
    )


def _own_folders(cfg: Config, env: Mapping[str, str]) -> list[tuple[Path, str, str]]:
    """The folders a backup never saves (Phoenix's own), each with what it is and how to move it."""
    where = cfg.source or "the config"
    out = [
        (Path(env.get("PHX_CACHE_DIR") or cache_root()), "Phoenix's cache", "or set PHX_CACHE_DIR to another folder"),
        (data_dir(env), "Phoenix's data folder", "or set PHX_DATA_DIR to another folder"),
    ]
    if cfg.targets.local.enabled:
        out.append(
            (
                cfg.repository_path,
                "the local target's repository",
                f"or move the repository (targets.local.path in {where})",
            )
        )
    return out


def key_files_in_workspace(cfg: Config, env: Mapping[str, str]) -> list[tuple[Path, str]]:
    """The files and folders that open the repository (PHX_PASSPHRASE_FILE, PHX_IDENTITY_FILE,
    `encryption.identityFile`, GNUPGHOME) that lie inside the workspace, each with the warning a
    backup gives of it. A backup never saves them: a snapshot would hand the key to every
    snapshot to whoever is given one snapshot's files (`phx archive`, `restore
    --to`), and it opens nothing a restore needs, being sealed under itself."""
    named = [
        (env_path(env, "PHX_PASSPHRASE_FILE"), "the passphrase file (PHX_PASSPHRASE_FILE)"),
        (env_path(env, "PHX_IDENTITY_FILE"), "the age identity file (PHX_IDENTITY_FILE)"),
        (cfg.encryption.identity_file, "the age identity file (encryption.identityFile)"),
        (env_path(env, "GNUPGHOME"), "the GnuPG home (GNUPGHOME)"),
    ]
    out: list[tuple[Path, str]] = []
    for given, what in named:
        if not given:
            continue
        # Made absolute with its `..` kept: `ws/link/../key` is where the link leads, then up, as
        # the file is opened (abspath would cut `..` first and name the workspace's `ws/key`).
        path = given.absolute()
        inside = in_workspace(cfg.workspace, path)
        # Only what lies below the workspace: GNUPGHOME set to the workspace itself must not leave
        # the whole workspace out of every backup (doctor's and the backup's other checks say it).
        if inside is None or inside == cfg.workspace:
            continue
        out.append(
            (
                path,
                f"{what} {path} is inside the workspace {cfg.workspace}, where the agent can read it: it is left "
                "out of every backup (a snapshot must not carry the key to every snapshot); move it outside "
                "the workspace",
            )
        )
    return out


def workspace_in_own_folder(cfg: Config, env: Mapping[str, str]) -> str | None:
    """The error a backup (its dry run too) and `phx doctor` give when the workspace is, or lies
    inside, a folder a backup never saves (the local repository, the cache, the data folder):
    the walk would leave out every file of the workspace and the backup save none of them. None
    otherwise."""
    root = real_path(cfg.workspace)
    for folder, what, fix in _own_folders(cfg, env):
        real = real_path(folder)
        if root == real or real in root.parents:
            return (
                f"the workspace {cfg.workspace} {'is' if root == real else 'is inside'} {what} {folder}, which a "
                "backup never saves: it would "
                f"save none of the workspace's files; move the workspace out of it (`workspace` in "
                f"{cfg.source or 'the config'}), {fix}"
            )
    return None
