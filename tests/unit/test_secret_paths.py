"""The key files named in the environment (PHX_PASSPHRASE_FILE, PHX_IDENTITY_FILE) are read from
the path the backup's selection leaves out of the workspace: one reading (`dirs.env_path`), a
leading `~` the HOME of the run's environment."""

from __future__ import annotations

from pathlib import Path

from phoenix_backup.config.parse import parse_config
from phoenix_backup.ops.context import Environment, given_passphrase
from phoenix_backup.ops.selection import key_files_in_workspace


def test_a_literal_tilde_passphrase_file_is_read_from_the_path_the_backup_leaves_out(tmp_path: Path) -> None:
    """`PHX_PASSPHRASE_FILE="~/ws/pass"` (quoted, so no shell expanded it), its HOME not the
    process's: the selection names HOME/ws/pass as the key file inside the workspace, and the
    passphrase is read from that same file. Before, the selection expanded `~` with the process's
    HOME (leaving this file in the backup) and the reader did not expand it at all ("cannot read
    PHX_PASSPHRASE_FILE ~/ws/pass")."""
    home = tmp_path / "home"
    workspace = home / "ws"
    workspace.mkdir(parents=True)
    (workspace / "pass").write_text("correct horse\n")
    env = {"HOME": str(home), "PHX_PASSPHRASE_FILE": "~/ws/pass", "PATH": "/usr/bin:/bin"}
    cfg = parse_config({"workspace": str(workspace), "backupDir": str(tmp_path / "backup")}, env=env)

    left_out = [path for path, _warning in key_files_in_workspace(cfg, env)]
    assert left_out == [workspace / "pass"]

    given = given_passphrase(cfg, Environment(env=env))
    assert given is not None and given.secret == "correct horse"


def test_a_path_that_only_starts_with_a_tilde_is_kept_as_written(tmp_path: Path) -> None:
    """`~user` forms are the system's (the password database), not HOME's; a name like `~x`
    relative to the working folder stays what it says. Held by both, through the one helper."""
    env = {"HOME": str(tmp_path), "PHX_PASSPHRASE_FILE": str(tmp_path / "~x")}
    (tmp_path / "~x").write_text("s\n")
    given = given_passphrase(None, Environment(env=env))
    assert given is not None and given.secret == "s"


def test_a_literal_tilde_gnupghome_is_the_home_the_backup_leaves_out(tmp_path: Path) -> None:
    """`GNUPGHOME="~/gnupg"` (quoted), the run's HOME not the process's: the selection leaves
    HOME/gnupg out of the workspace, and gpg is handed that same folder (`--homedir`). Before, the
    readers passed `~/gnupg` as written and gpg expanded it with its own (the process's) HOME: a
    GnuPG home other than the one the selection left out."""
    from phoenix_backup.ops.context import credentials

    home = tmp_path / "home"
    workspace = home / "ws"
    (workspace / "gnupg").mkdir(parents=True)
    env = {"HOME": str(home), "GNUPGHOME": "~/ws/gnupg", "PATH": "/usr/bin:/bin"}
    cfg = parse_config(
        {
            "workspace": str(workspace),
            "backupDir": str(tmp_path / "backup"),
            "encryption": {"method": "gpg", "keyId": "ABCDEF0123456789"},
        },
        env=env,
    )
    left_out = [path for path, _warning in key_files_in_workspace(cfg, env)]
    assert left_out == [workspace / "gnupg"]
    assert credentials(cfg, Environment(env=env)).gpg_homedir == workspace / "gnupg"
