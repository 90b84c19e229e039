"""`--repo LOCATION` (config/location.py): each form of location names the one target it should,
and a location that names nothing usable is one clear error."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from phoenix_backup.config.location import config_for_location, targets_for_location
from phoenix_backup.errors import UsageError

ENV = {"HOME": "/home/agent"}


def only(location: str, env: dict[str, str] | None = None) -> tuple[str, object]:
    targets = targets_for_location(location, env or ENV)
    names = targets.enabled_names()
    assert len(names) == 1, names
    return names[0], getattr(targets, names[0])


def test_s3_with_endpoint_and_region_from_the_environment() -> None:
    env = {**ENV, "AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_REGION": "eu-west-1"}
    name, s3 = only("s3://my-agent-backups/argent", env)
    assert name == "s3"
    assert (s3.bucket, s3.prefix, s3.endpoint, s3.region) == (
        "my-agent-backups",
        "argent/",
        "http://127.0.0.1:9000",
        "eu-west-1",
    )  # type: ignore[attr-defined]
    assert only("s3://bucket")[1].prefix == ""  # type: ignore[attr-defined]
    env = {**ENV, "AWS_ENDPOINT_URL": "http://a", "AWS_ENDPOINT_URL_S3": "http://b"}
    assert only("s3://bucket/p/", env)[1].endpoint == "http://b"  # type: ignore[attr-defined]


def test_r2_account_bucket_and_prefix() -> None:
    name, r2 = only("r2://0123456789abcdef0123456789abcdef/agent-backups/argent/")
    assert name == "r2"
    assert (r2.account_id, r2.bucket, r2.prefix) == ("0123456789abcdef0123456789abcdef", "agent-backups", "argent/")  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("location", "url", "branch"),
    [
        ("git@github.com:me/agent-backup.git", "git@github.com:me/agent-backup.git", "main"),
        ("ssh://git@host/srv/agent.git", "ssh://git@host/srv/agent.git", "main"),
        ("https://example.com/me/agent.git#backups", "https://example.com/me/agent.git", "backups"),
        ("git+/srv/agent.git", "/srv/agent.git", "main"),
    ],
)
def test_git_urls(location: str, url: str, branch: str) -> None:
    name, git = only(location)
    assert name == "git" and (git.repo, git.branch) == (url, branch)  # type: ignore[attr-defined]
    assert git.auto_commit is False  # type: ignore[attr-defined]


def test_folders_and_bare_git_repositories_on_disk(tmp_path: Path) -> None:
    assert only("~/backups/argent")[1].path == Path("/home/agent/backups/argent")  # type: ignore[attr-defined]
    assert only(str(tmp_path))[1].path == tmp_path  # type: ignore[attr-defined]
    bare = tmp_path / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", str(bare)], check=True)
    name, git = only(str(bare))
    assert name == "git" and git.repo == str(bare)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("location", "needle"), [("", "empty"), ("s3://", "bucket"), ("r2://acct", "bucket"), ("r2:///b", "account")]
)
def test_locations_that_name_nothing(location: str, needle: str) -> None:
    with pytest.raises(UsageError, match=needle):
        targets_for_location(location, ENV)


@pytest.mark.parametrize("branch", ["a:b", "main.lock", "-x", "a..b", "x y", "\u001b[31m", "--upload-pack=/tmp/x"])
def test_a_git_branch_after_hash_is_checked_as_the_configs_is(branch: str) -> None:
    """`--repo git+URL#a:b`: taken, then git's "Refusing to set HEAD to invalid ref" naming no option
    (targets.git.branch in the config is checked at load since red36; #BRANCH was not)."""
    with pytest.raises(UsageError, match="not a Git branch name"):
        targets_for_location(f"git+/srv/agent.git#{branch}", ENV)
    for good in ("feature/x", "v1.0", "a@b", "日本"):
        assert only(f"git+/srv/agent.git#{good}")[1].branch == good  # type: ignore[attr-defined]


def test_a_tilde_user_location_is_that_users_folder_or_refused() -> None:
    """`--repo ~root/backups` (PHX_REPOSITORY in a unit file, which no shell expands) was a folder
    named "~root" in the working directory; it is that user's folder, and a user that does not
    exist is refused, as a config's path is."""
    assert only("~root/backups")[1].path == Path(os.path.expanduser("~root")) / "backups"  # type: ignore[attr-defined]
    with pytest.raises(UsageError, match='there is no user "no-such-user-phx"'):
        targets_for_location("~no-such-user-phx/backups", ENV)


def test_without_a_config_file_the_defaults_read_the_location() -> None:
    cfg = config_for_location("s3://b/p", ENV, None)
    assert cfg.source is None and cfg.location == "s3://b/p (s3)"
    assert cfg.targets.enabled_names() == ["s3"] and cfg.encryption.enabled
