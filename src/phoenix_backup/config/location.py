"""A repository named by its location alone (`--repo LOCATION`, `PHX_REPOSITORY`): what a new
machine has after a disaster. The location becomes the config's one enabled target, so every
reading command works unchanged, with or without a config file.

Locations:

- a folder: `/media/usb/argent`, `~/backups/argent` (a bare Git repository on disk is a Git remote);
- S3: `s3://BUCKET/PREFIX`; `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL` names an S3-compatible
  service, `AWS_REGION`/`AWS_DEFAULT_REGION` the region;
- Cloudflare R2: `r2://ACCOUNT_ID/BUCKET/PREFIX`;
- Git: any Git URL (`git@host:me/agent-backup.git`, `ssh://…`, `https://….git`, `file://…`), or
  `git+URL`; `#BRANCH` at the end picks a branch other than `main`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path

from phoenix_backup.config.defaults import default_config_dict
from phoenix_backup.config.model import Config, GitTarget, LocalTarget, R2Target, S3Target, Targets
from phoenix_backup.config.parse import git_branch_ok, parse_config
from phoenix_backup.errors import UsageError

_GIT_SCHEMES = ("ssh://", "git://", "http://", "https://", "file://")


def targets_for_location(location: str, env: Mapping[str, str]) -> Targets:
    """The one enabled target that `location` names."""
    text = location.strip()
    if not text:
        raise UsageError("--repo (or PHX_REPOSITORY) is empty; give the repository's folder, s3://, r2:// or Git URL")
    off = Targets(LocalTarget(False), GitTarget(False), S3Target(False), R2Target(False))
    if text.startswith("s3://"):
        bucket, prefix = _bucket_and_prefix(text.removeprefix("s3://"), "s3://BUCKET/PREFIX")
        endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
        region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None
        return dataclasses.replace(
            off, s3=S3Target(True, bucket=bucket, prefix=prefix, endpoint=endpoint, region=region)
        )
    if text.startswith("r2://"):
        account, _, rest = text.removeprefix("r2://").partition("/")
        if not account:
            raise UsageError(f"{location!r} names no account; write r2://ACCOUNT_ID/BUCKET/PREFIX")
        bucket, prefix = _bucket_and_prefix(rest, "r2://ACCOUNT_ID/BUCKET/PREFIX")
        return dataclasses.replace(off, r2=R2Target(True, account_id=account, bucket=bucket, prefix=prefix))
    if text.startswith("git+") or text.startswith(_GIT_SCHEMES) or _scp_like(text):
        url, _, branch = text.removeprefix("git+").partition("#")
        if branch and not git_branch_ok(branch):
            # As targets.git.branch: else git's "Refusing to set HEAD to invalid ref", naming nothing.
            raise UsageError(
                f"--repo (or PHX_REPOSITORY) names the branch {branch!r} after #, which is not a Git branch name "
                '(no spaces, control characters, ~ ^ : ? * [ \\, ".." or "@{", no leading "-", "/" or "."); '
                "fix the name after #, or leave #BRANCH out for main"
            )
        return dataclasses.replace(off, git=GitTarget(True, repo=url, branch=branch or "main", auto_commit=False))
    home = env.get("HOME") or os.path.expanduser("~")
    folder = Path(home + text[1:]) if text == "~" or text.startswith("~/") else Path(os.path.expanduser(text))
    if str(folder).startswith("~"):
        # `~name` with no such user (expanduser leaves it): it was a folder named so in the working
        # directory, as a config's path was before it was refused the same way.
        user = str(folder)[1:].partition("/")[0]
        raise UsageError(
            f'--repo (or PHX_REPOSITORY) starts with ~{user}, but there is no user "{user}" on this machine; '
            "fix the name or write the full path"
        )
    if _bare_git(folder):
        return dataclasses.replace(off, git=GitTarget(True, repo=str(folder.absolute()), auto_commit=False))
    # A bare repository's folder with `#BRANCH` (as for a Git URL), unless a folder has that very name.
    bare, hash_, branch = str(folder).rpartition("#")
    if hash_ and branch and not folder.exists() and _bare_git(Path(bare)):
        git = GitTarget(True, repo=str(Path(bare).absolute()), branch=branch, auto_commit=False)
        return dataclasses.replace(off, git=git)
    return dataclasses.replace(off, local=LocalTarget(True, folder.absolute()))


def config_for_location(location: str, env: Mapping[str, str], base: Config | None) -> Config:
    """`base` (the config file, when there is one) reading from `location` alone; without a config
    file, the ArgentOS defaults with the repository's passphrase (or the age identity in
    `PHX_IDENTITY_FILE`) as the key. Such a config restores below `--to DIR` only: it does not know
    where the workspace is."""
    targets = targets_for_location(location, env)
    if base is None:
        data = default_config_dict(encryption="passphrase")
        if env.get("PHX_IDENTITY_FILE"):
            data["encryption"] = {"enabled": True, "method": "passphrase", "identityFile": env["PHX_IDENTITY_FILE"]}
        base = parse_config(data, None, env)
    first = targets.enabled_names()[0]
    return dataclasses.replace(
        base,
        targets=targets,
        backup_dir=targets.local.path if targets.local.path is not None else base.backup_dir,
        location=f"{location} ({first})",
    )


def _bucket_and_prefix(rest: str, form: str) -> tuple[str, str]:
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise UsageError(f"the repository location names no bucket; write {form}")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


def _scp_like(text: str) -> bool:
    """`user@host:path`, Git's scp-like syntax (a `:` before any `/`)."""
    head, colon, _ = text.partition(":")
    return bool(colon) and "@" in head and "/" not in head


def _bare_git(folder: Path) -> bool:
    return (folder / "HEAD").is_file() and (folder / "objects").is_dir() and (folder / "refs").is_dir()
