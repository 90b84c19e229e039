"""One redaction for every URL Phoenix shows (issue 14, point 6): user names, passwords, queries and
fragments never, the host only where it names a machine (for many Apprise services the host part is
the token), the path only where asked (a Git remote's path names the repository)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from phoenix_backup.redaction import redact, redact_url

SECRET = "CANARY"


@pytest.mark.parametrize(
    ("url", "shown", "with_path"),
    [
        # Apprise services whose host part is the token
        ("prowl://CANARYapikey0000000000000000000000000001", "prowl://***", "prowl://***"),
        ("pbul://o.CANARYaccesstoken", "pbul://***", "pbul://***"),
        ("pover://CANARYuser@CANARYtoken", "pover://***", "pover://***"),
        ("join://CANARYapikey/device", "join://***", "join://***"),
        ("ntfy://CANARYtopic", "ntfy://***", "ntfy://***"),
        ("ntfys://ntfy.sh/CANARYtopic", "ntfys://***", "ntfys://***"),
        ("tgram://123456:CANARYbot/987654", "tgram://***", "tgram://***"),
        ("discord://1234/CANARYwebhook", "discord://***", "discord://***"),
        ("slack://CANARYa/CANARYb/CANARYc", "slack://***", "slack://***"),
        # Hosts that name a machine: shown, without credentials, query or (unless asked) path
        ("json://127.0.0.1:8080/hook?token=CANARY", "json://127.0.0.1", "json://127.0.0.1:8080/hook"),
        ("mailtos://me:CANARYpass@mail.example.com", "mailtos://mail.example.com", "mailtos://mail.example.com"),
        (
            "https://hooks.slack.com/services/T0/B0/CANARY",
            "https://hooks.slack.com",
            "https://hooks.slack.com/services/T0/B0/CANARY",
        ),
        ("https://me:CANARY@github.com/me/agent.git", "https://github.com", "https://github.com/me/agent.git"),
        ("https://CANARYtoken@github.com/me/agent.git", "https://github.com", "https://github.com/me/agent.git"),
        ("https://x-access-token:CANARY@[::1]:8443/a.git", "https://[::1]", "https://[::1]:8443/a.git"),
        ("redis://:CANARY@localhost:6380/0", "redis://localhost", "redis://localhost:6380/0"),
        ("postgresql://agent:CANARY@db:5433/argentos", "postgresql://db", "postgresql://db:5433/argentos"),
        ("git@github.com:me/agent.git", "github.com", "github.com:me/agent.git"),
        ("git:CANARY@github.com:me/agent.git", "github.com", "github.com:me/agent.git"),
        ("https://me:12/CANARY@github.com/a.git", "https://***", "https://***"),
        ("/srv/git/agent.git", "/srv/git/agent.git", "/srv/git/agent.git"),
        ("me:CANARY@host/x", "me://***", "me://***"),
        ("CANARY@host/x", "***", "***"),
        ("tgram://CANARY:notaport", "tgram://***", "tgram://***"),
        ("http://[CANARY", "http://***", "http://***"),
    ],
)
def test_redact_url(url: str, shown: str, with_path: str) -> None:
    assert redact_url(url) == shown
    assert redact_url(url, path=True) == with_path


def test_redact_text_hides_known_secrets_and_every_url_form() -> None:
    text = (
        "push to https://me:CANARY1@github.com/me/a.git failed; ntfy://CANARY2topic unreachable; "
        "json://127.0.0.1:9/x?token=CANARY3 refused; the passphrase CANARY4-long leaked; apikey=CANARY5"
    )
    out = redact(text, ["CANARY4-long"])
    assert SECRET not in out, out
    assert "https://github.com/me/a.git" in out and "ntfy://***" in out and "json://127.0.0.1:9/x" in out


def test_a_passphrase_given_with_a_line_break_is_redacted_as_phoenix_uses_it() -> None:
    """PHX_PASSPHRASE ending in CR/LF is used without them (ops/context.py `as_passphrase`): a
    message that shows the passphrase shows it without them, and that is redacted too."""
    from phoenix_backup.notify.message import env_secrets

    secrets = env_secrets({"PHX_PASSPHRASE": "CANARY-pass\r\n", "PHX_NEW_PASSPHRASE": "CANARY-new\n"})
    shown = redact("opened with CANARY-pass; the new one is CANARY-new.", secrets)
    assert "CANARY" not in shown, shown


def test_every_passphrase_source_is_redacted_as_given_and_as_phoenix_uses_it(tmp_path: Path) -> None:
    """Each source's passphrase is used without a leading byte-order mark and trailing CR/LF
    (ops/context.py `as_passphrase`): PHX_PASSPHRASE_FILE with a BOM, encryption.passphraseEnv
    ending in a line feed, and PHX_PASSPHRASE starting with a BOM. Before, only the form as given
    (with the file's line break left out) was hidden, so a message showing the passphrase as used
    showed it."""
    from phoenix_backup.config import load_config
    from phoenix_backup.notify.message import env_secrets, secrets_of

    file = tmp_path / "passphrase.txt"
    file.write_bytes("\ufeffCANARY-file\r\n".encode())
    secrets = env_secrets({"PHX_PASSPHRASE": "\ufeffCANARY-env", "PHX_PASSPHRASE_FILE": str(file)})
    shown = redact("opened with CANARY-file; and with CANARY-env.", secrets)
    assert "CANARY" not in shown, shown

    config = tmp_path / "config.json"
    doc = {
        "workspace": str(tmp_path),
        "backupDir": str(tmp_path / "repo"),
        "encryption": {"enabled": True, "passphraseEnv": "MY_SECRET"},
    }
    config.write_text(json.dumps(doc))
    env = {"HOME": str(tmp_path), "MY_SECRET": "CANARY-store\n"}
    secrets = secrets_of(load_config(config, env), env)
    shown = redact("opened with CANARY-store.", secrets)
    assert "CANARY" not in shown, shown


def test_a_file_name_forges_no_line_of_a_notification_nor_reaches_its_reader_raw() -> None:
    """A backup's alert lists what was not saved by name: a file named with a newline wrote a line
    of its own ("Targets OK: ...") into the alert, and its escape sequence or RIGHT-TO-LEFT
    OVERRIDE reached whatever shows it. Each line of the alert is one line of text, its controls
    escaped, and secrets are still redacted."""
    from phoenix_backup.notify.message import BackupEvent, compose

    error = "not saved: workspace/x\nTargets OK: all, nothing failed\x1b]0;owned\x07\u202egpj.exe: denied s3cret-key"
    event = BackupEvent(ok=False, host="h\x1b[2J", snapshot_id="a" * 64, snapshot_name="n", errors=(error,))
    title, body = compose(event, ["s3cret-key"])
    assert body.splitlines() == [
        "Snapshot: n (aaaaaaaa), scope full",
        "Errors:",
        "  not saved: workspace/x\\nTargets OK: all, nothing failed\\x1b]0;owned\\x07\\u202egpj.exe: denied ***",
    ], body
    assert title == "Phoenix backup INCOMPLETE on h\\x1b[2J"


def test_a_password_of_a_configured_url_is_a_secret_alone_too(tmp_path: Path) -> None:
    """A Git remote's token, a DSN's or a Redis URL's password quoted alone (a hook's output, a
    library's message: `authentication failed for TOKEN`) was shown: only the whole URL was a
    known secret (the Git URL not even that). Each URL's password is one, as written and decoded."""
    from phoenix_backup.config import load_config
    from phoenix_backup.notify.message import secrets_of

    config = tmp_path / "config.json"
    doc = {
        "workspace": str(tmp_path),
        "backupDir": str(tmp_path / "repo"),
        "targets": {"git": {"enabled": True, "repo": "https://me:GITTOKEN-canary@git.example/r.git"}},
        "databases": {
            "postgres": [{"name": "pg", "dsn": "postgresql://u:PG%40PASS-canary@db.example/x"}],
            "redis": [{"name": "rd", "url": "redis://:REDISPASS-canary@cache.example:6379/0"}],
        },
    }
    config.write_text(json.dumps(doc))
    env = {"HOME": str(tmp_path)}
    secrets = secrets_of(load_config(config, env), env)
    from phoenix_backup.redaction import without_secrets

    shown = without_secrets("token GITTOKEN-canary, PG@PASS-canary and REDISPASS-canary refused", secrets)
    assert "canary" not in shown, shown


def test_a_secret_is_taken_where_it_stands_alone_not_inside_a_word(monkeypatch: pytest.MonkeyPatch) -> None:
    """The usual password of a PostgreSQL container, `postgres`, turned every `postgresql` of a
    `--json` document (a database's engine) into `***ql`; it is taken where it stands alone only."""
    from phoenix_backup.cli.app import said_json

    monkeypatch.setenv("PHX_PASSPHRASE", "postgres")
    doc = json.loads(said_json({"engine": "postgresql", "error": "password 'postgres' refused (:postgres@db)"}))
    assert doc == {"engine": "postgresql", "error": "password '***' refused (:***@db)"}, doc
    # A secret that is not a word is taken wherever it is: after an escape's letter too.
    from phoenix_backup.redaction import without_secrets

    assert without_secrets('next=a%3Dhunter2000%26b {"log": "x\\nhunter2000"}', ["hunter2000"]) == (
        'next=a%3D***%26b {"log": "x\\n***"}'
    )


def test_a_urls_password_is_known_as_a_library_encodes_it_again(tmp_path: Path) -> None:
    """A DSN's password written `p%2fss` is quoted back by a library as `p%2Fss` (upper-case hex),
    and one written `p@ss` (the user info ends at the last `@`) as `p%40ss`, and a password given
    in the query (`?password=`, which libpq and redis-py read) was not known alone at all."""
    from phoenix_backup.config import load_config
    from phoenix_backup.notify.message import secrets_of
    from phoenix_backup.redaction import without_secrets

    config = tmp_path / "config.json"
    doc = {
        "workspace": str(tmp_path),
        "backupDir": str(tmp_path / "repo"),
        "targets": {"git": {"enabled": True, "repo": "https://me:GIT@TOKEN-canary@git.example/r.git"}},
        "databases": {
            "postgres": [
                {"name": "pg", "dsn": "postgresql://u:PG%2fPASS-canary@db.example/x"},
                {"name": "pq", "dsn": "postgresql://u@db.example/y?password=PGQUERY-canary&sslmode=require"},
            ],
        },
    }
    config.write_text(json.dumps(doc))
    env = {"HOME": str(tmp_path)}
    secrets = secrets_of(load_config(config, env), env)
    text = "server said: PG%2FPASS-canary; git said: GIT%40TOKEN-canary; a hook said: PGQUERY-canary"
    shown = without_secrets(text, secrets)
    assert "canary" not in shown, shown


def test_a_notice_said_by_a_commands_thread_is_without_the_configs_secrets(tmp_path: Path) -> None:
    """A command's threads (a replica's copy in `phx sync`, `phx watch`'s writer) say notices too,
    but the config's secrets were looked up in click's context, which is the main thread's alone:
    such a notice knew the environment's secrets only, and quoted a DSN's password as it was."""
    import threading

    import click
    from click.testing import CliRunner

    from phoenix_backup.cli.app import Out, common, load_config
    from phoenix_backup.ops.context import Environment

    config = tmp_path / "config.json"
    dsn = "postgresql://u:PGPASS-thread-canary@db.example/x"
    doc = {
        "workspace": str(tmp_path),
        "backupDir": str(tmp_path / "repo"),
        "databases": {"postgres": [{"name": "pg", "dsn": dsn}]},
    }
    config.write_text(json.dumps(doc))
    config.chmod(0o600)

    @click.command()
    @common
    def probe(out: Out, envx: Environment, config_path: str | None) -> int:
        load_config(out, envx, config_path)
        out.notice("main thread: driver said PGPASS-thread-canary")
        thread = threading.Thread(target=out.notice, args=("worker thread: driver said PGPASS-thread-canary",))
        thread.start()
        thread.join()
        return 0

    res = CliRunner().invoke(probe, ["--config", str(config)], env={"HOME": str(tmp_path)})
    assert "main thread: driver said ***" in res.stderr and "worker thread: driver said" in res.stderr, res.stderr
    assert "canary" not in res.stderr, res.stderr


def test_a_commands_lines_read_the_passphrase_file_once_and_again_when_it_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each line a command printed (`said`) opened and read PHX_PASSPHRASE_FILE again (≈27 µs a
    line of CPU, most of `said`'s cost). The secrets are now kept for the command's life: the file
    is read once, and read again only when it changed on disk (a hook rotating it mid-command:
    its new passphrase is kept out of the lines after it too)."""
    import builtins

    import click

    from phoenix_backup.cli.app import said

    secret = tmp_path / "passphrase"
    secret.write_text("first-passphrase-canary\n")
    monkeypatch.setenv("PHX_PASSPHRASE_FILE", str(secret))
    opened: list[str] = []
    real_open = builtins.open

    def counting(file: Any, *args: Any, **kwargs: Any) -> Any:
        if str(file) == str(secret):
            opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting)
    monkeypatch.setattr("phoenix_backup.dirs.SETTLED_NS", 0)  # a file just written is trusted at once here
    with click.Context(click.Command("status")):
        for _ in range(50):
            assert said("a hook said first-passphrase-canary") == "a hook said ***"
        assert len(opened) == 1, opened
        secret.write_text("second-passphrase-canary-rotated\n")
        assert said("a hook said second-passphrase-canary-rotated") == "a hook said ***"
        assert len(opened) == 2, opened


def test_a_passphrase_file_rewritten_in_place_within_one_clock_tick_is_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The secrets kept for a command's life were made again when the passphrase file's inode,
    size or times changed: a hook rewriting it in place with a passphrase of the same length, its
    mtime put back, within the tick of the kernel's coarse clock that dates a file (ctime the same
    too), left the old list, and the new passphrase was printed as it is. A file changed this
    recently is read again until its times can tell a change."""
    import click

    from phoenix_backup.cli.app import said

    real_stat = os.stat

    def coarse(*args: Any, **kwargs: Any) -> os.stat_result:
        """A file system dated by a clock of 10 ms ticks (Linux before 6.13 gave a file a time
        of its coarse clock; this one gives a stat a fine time once it was asked)."""
        st = real_stat(*args, **kwargs)
        ticks = {f"st_{t}time_ns": getattr(st, f"st_{t}time_ns") // 10**7 * 10**7 for t in "amc"}
        return os.stat_result(tuple(st), ticks)

    secret = tmp_path / "passphrase"
    secret.write_text("canary-passphrase-00\n")
    monkeypatch.setenv("PHX_PASSPHRASE_FILE", str(secret))
    monkeypatch.setattr(os, "stat", coarse)
    with click.Context(click.Command("status")):
        for n in range(1, 6):  # each rotation done at once, within a tick of the clock most of the time
            st = secret.stat()
            assert said(f"a hook said canary-passphrase-{n - 1:02}") == "a hook said ***"
            with open(secret, "r+b") as f:
                f.write(f"canary-passphrase-{n:02}\n".encode())
            os.utime(secret, ns=(st.st_atime_ns, st.st_mtime_ns))
            assert said(f"a hook said canary-passphrase-{n:02}") == "a hook said ***"


def test_a_passphrase_file_phoenix_read_itself_is_read_again_once_rotated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A command that opened the repository read PHX_PASSPHRASE_FILE itself (ops/context.py); the
    secrets then always held those bytes, whatever the file held since: a hook rotating it
    mid-command had its new passphrase printed as it was, though the list was made again. Both are
    kept out now: the passphrase the command used, and the file as it is."""
    import click

    from phoenix_backup.cli.app import said
    from phoenix_backup.dirs import read_secret_file

    secret = tmp_path / "passphrase"
    secret.write_text("first-passphrase-canary\n")
    monkeypatch.setenv("PHX_PASSPHRASE_FILE", str(secret))
    with click.Context(click.Command("backup")):
        read_secret_file(secret, "PHX_PASSPHRASE_FILE", "fix it")  # as the command opening the repository does
        assert said("a hook said first-passphrase-canary") == "a hook said ***"
        secret.write_text("second-passphrase-canary-rotated\n")
        assert said("a hook said second-passphrase-canary-rotated") == "a hook said ***"
        assert said("the old one was first-passphrase-canary") == "the old one was ***"
