"""Acceptance 8: `phx init` writes the ArgentOS config and creates the repository without asking;
again without --force it refuses (exit 2) and changes nothing; with --force it replaces the config
only, never the repository (its snapshots are still listed, its objects untouched)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from e2e_support import Sandbox, assert_error


def repository_files(repo: Path) -> dict[str, bytes]:
    return {
        p.relative_to(repo).as_posix(): p.read_bytes()
        for p in repo.rglob("*")
        if p.is_file() and not p.relative_to(repo).as_posix().startswith("locks/")
    }


def test_init_writes_config_and_repository(sandbox: Sandbox, tmp_path: Path) -> None:
    sb = sandbox
    config = tmp_path / "conf" / "backup.json"
    repo = tmp_path / "backups" / "argent"
    env = sb.env_with(PHX_CONFIG=None)

    res = sb.phx(
        "init", "--config", config, "--workspace", sb.workspace, "--repo", repo, "--encryption", "passphrase", "--json",
        env=env,
    )  # fmt: skip
    doc = res.json()
    assert doc["repositoryCreated"] is True and doc["encryption"] == "passphrase", doc
    assert Path(doc["config"]) == config

    written = json.loads(config.read_text())
    assert written["workspace"] == str(sb.workspace)
    assert written["backupDir"] == str(repo)
    assert written["retention"] == {"within": "1d", "last": 10, "daily": 7, "weekly": 4, "monthly": 12}
    assert written["compression"] is True
    assert written["targets"]["local"]["enabled"] is True
    assert written["targets"]["local"]["path"] == str(repo)
    assert written["encryption"]["enabled"] is True and written["encryption"]["method"] == "passphrase"
    assert stat.S_IMODE(config.stat().st_mode) & 0o077 == 0, "the config must not be readable by others"
    repo_config = json.loads((repo / "config").read_text())
    assert repo_config["encryption"] != "none"
    assert (repo / "keys").is_dir() and len(list((repo / "keys").iterdir())) == 1
    assert sb.phx("list", "--config", config, "--json", env=env).json() == []

    # Again without --force: refused, config unchanged (bytes and file).
    before_bytes, before_stat = config.read_bytes(), config.stat()
    res = sb.phx("init", "--config", config, "--workspace", tmp_path / "elsewhere", "--repo", repo, env=env, check=None)
    assert_error(res, 2, "already exists", "--force")
    assert config.read_bytes() == before_bytes
    assert (config.stat().st_ino, config.stat().st_mtime_ns) == (before_stat.st_ino, before_stat.st_mtime_ns)

    # A backup into it, through the written config (the ArgentOS example includes).
    snap = sb.phx("backup", "--config", config, "--json", env=env).json()
    assert snap["files"] > 10 and len(snap["databases"]) == 3, snap
    before_repo = repository_files(repo)

    # --force replaces the config, never the repository.
    other_ws = tmp_path / "other-workspace"
    res = sb.phx(
        "init", "--config", config, "--workspace", other_ws, "--repo", repo, "--encryption", "passphrase", "--force",
        "--json", env=env,
    )  # fmt: skip
    doc = res.json()
    assert doc["repositoryCreated"] is False, doc
    assert json.loads(config.read_text())["workspace"] == str(other_ws)
    assert repository_files(repo) == before_repo, "init --force changed the repository"
    listed = sb.phx("list", "--config", config, "--json", env=env).json()
    assert [s["id"] for s in listed] == [snap["id"]]
    assert sb.phx("verify", "--config", config, "--read-data", "--json", env=env).json()["ok"] is True


def test_init_says_it_created_the_repository_once(sandbox: Sandbox, tmp_path: Path) -> None:
    """The report says "created repository PATH"; there was a notice on stderr as well
    ("phx: created a new repository at PATH"), after the report: said twice."""
    sb = sandbox
    repo = tmp_path / "repo"
    env = sb.env_with(PHX_CONFIG=None)
    res = sb.phx("init", "--config", tmp_path / "backup.json", "--workspace", sb.workspace, "--repo", repo, env=env)
    said = (res.out + res.err).count(str(repo))
    assert f"created repository {repo} (encryption: passphrase)" in res.out, res
    assert "created a new repository" not in res.err, res
    assert said == 1, f"the repository's path is said {said} times:\n{res}"


def test_init_refuses_a_non_empty_folder_that_is_no_repository(sandbox: Sandbox, tmp_path: Path) -> None:
    sb = sandbox
    folder = tmp_path / "not-a-repo"
    folder.mkdir()
    (folder / "precious.txt").write_text("keep me\n")
    config = tmp_path / "c.json"
    res = sb.phx("init", "--config", config, "--workspace", sb.workspace, "--repo", folder, check=None)
    assert res.code in (1, 2), res
    assert_error(res, res.code, str(folder))
    assert sorted(p.name for p in folder.iterdir()) == ["precious.txt"]
    assert (folder / "precious.txt").read_text() == "keep me\n"
    assert not config.exists(), "a failed init left a config pointing at a folder that is no repository"


def test_init_with_age_or_gpg_and_no_key_names_the_option_to_give(sandbox: Sandbox, tmp_path: Path) -> None:
    """`phx init --encryption age` without `--recipient` said `encryption.recipients is required`
    (a key of a config file init had not written); the error names the option now, and nothing
    is written."""
    config, repo = tmp_path / "c.json", tmp_path / "repo"
    for method, option in (("age", "--recipient age1"), ("gpg", "--key-id KEYID")):
        res = sandbox.phx_here("init", "--config", config, "--repo", repo, "--encryption", method, code=2)
        line = res.err.strip()
        assert line.startswith(f"phx: error: --encryption {method} needs {option}"), res
        assert not config.exists() and not repo.exists(), res


def test_init_refuses_a_key_option_of_another_method(sandbox: Sandbox, tmp_path: Path) -> None:
    """`phx init --recipient age1...` without `--encryption age` made a passphrase repository (exit 0)
    and dropped the recipient without a word (so too --key-id, --identity-file, and any of them with
    another --encryption); an empty --recipient was named in the config's words. Each is refused in
    the options' words, nothing written."""
    config, repo = tmp_path / "c.json", tmp_path / "repo"
    recipient = "age1" + "q" * 58
    for given, says in (
        (["--recipient", recipient], "--recipient is for --encryption age"),
        (["--encryption", "none", "--recipient", recipient], "--recipient is for --encryption age"),
        (["--encryption", "gpg", "--key-id", "K", "--recipient", recipient], "--recipient is for --encryption age"),
        (["--key-id", "ABCD"], "--key-id is for --encryption gpg"),
        (["--encryption", "age", "--recipient", recipient, "--key-id", "K"], "--key-id is for --encryption gpg"),
        (["--identity-file", tmp_path / "id.txt"], "--identity-file is for --encryption age"),
        (["--encryption", "age", "--recipient", " "], "--recipient is empty"),
    ):
        res = sandbox.phx_here("init", "--config", config, "--repo", repo, *given, code=2)
        assert res.err.strip().startswith(f"phx: error: {says}"), (given, res)
        assert not config.exists() and not repo.exists(), (given, res)
