"""What Phoenix writes outside the encrypted repository holds no secret of the config or the
environment: the scheduled run's log, the state file `phx status` reads, and the alerts (whose
body reaches services that render Markdown or HTML). Each case is an attack: the secret, or the
hostile name, is put where a writer used to take it unredacted (docs/security.md)."""

from __future__ import annotations

import json
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from e2e_support import Sandbox

pytestmark = pytest.mark.phx_in_process

PG_PASSWORD = "PGPASS-red28-xyz"
S3_SECRET = "S3SECRET-red28-xyz"
DSN = f"postgresql://u:{PG_PASSWORD}@127.0.0.1:1/db"
TOKEN = "APPRISETOK-red28-xyz"


def _with_secrets(sb: Sandbox) -> list[str]:
    """The sandbox's config with a PostgreSQL DSN holding a password, S3 keys and an alert URL
    holding a token (none reached: the run fails before any is used); the secrets to look for."""
    sb.write_config(
        databases={**sb.config.get("databases", {}), "postgres": [{"name": "pg", "dsn": DSN}]},
        targets={
            **sb.config.get("targets", {}),
            "s3": {
                "enabled": True,
                "bucket": "red28-bucket",
                "endpoint": "http://127.0.0.1:1",
                "accessKeyId": "S3KEYID-red28-xyz",
                "secretAccessKey": S3_SECRET,
            },
        },
        notifications={"enabled": True, "onFailure": "silent", "urls": [f"json://127.0.0.1:1/h?token={TOKEN}"]},
    )
    return [PG_PASSWORD, S3_SECRET, TOKEN, sb.env["PHX_PASSPHRASE"]]


def test_a_scheduled_runs_log_and_state_file_hold_no_secret_a_failure_quoted(
    make_sandbox: Callable[..., Sandbox], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scheduled run writes its messages to a plain log, and every backup its last error to the
    state file `phx status` shows. A library's error text is never vetted: one quoting the DSN, the
    S3 key and the passphrase (as a driver's or an SDK's may) went into both as it was, where the
    terminal's error line redacted it. Both are now redacted as the terminal's error is."""
    sb = make_sandbox()
    secrets = _with_secrets(sb)

    def failing(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"driver said: cannot use {DSN} with key {S3_SECRET} and {secrets[-1]}")

    monkeypatch.setattr("phoenix_backup.ops.backup.select_sources", failing)
    sb.phx_here("schedule", "run", "--config", sb.config_path, code=1)
    log = (sb.home / ".argentos" / "backup" / "logs" / "backup.log").read_text()
    state = (sb.home / ".argentos" / "backup" / ".last-backup").read_text()
    assert "unexpected RuntimeError" in log and "driver said" in json.loads(state)["error"], (log, state)
    for secret in secrets:
        assert secret not in log, log
        assert secret not in state, state
    res = sb.phx_here("status", "--config", sb.config_path, code=1)
    assert "driver said" in res.out + res.err
    assert not any(secret in res.out + res.err for secret in secrets)


def test_an_alert_is_sent_as_plain_text_that_no_service_renders_as_markdown(monkeypatch: pytest.MonkeyPatch) -> None:
    """An alert's lines quote file names (`not saved: workspace/NAME: ...`). Sent without a
    format, Apprise passed the body as it was to services that render Markdown (Telegram, Discord,
    Slack): a file named `![x](https://evil.example/p.png)` made the receiving app fetch an image
    from the attacker's server and `[click](https://…)` a link. The body is now said to be plain
    text, and Apprise escapes it for such a service."""
    import apprise
    from apprise.decorators import notify

    from phoenix_backup.notify.send import send

    got: list[str] = []

    @notify(on="phxmarkdown", body_format=apprise.NotifyFormat.MARKDOWN)
    def receive(body: str, title: str, notify_type: str, *args: Any, **kwargs: Any) -> bool:
        got.append(body)
        return True

    name = "not saved: workspace/![x](https://evil.example/p.png) [click](https://evil.example).md: gone"
    outcome = send(["phxmarkdown://"], "Phoenix backup INCOMPLETE", name, failure=True)
    assert outcome.sent == 1, outcome
    assert got and "](https://" not in got[0] and "![" not in got[0], got
    assert "\\!\\[x\\]" in got[0], got


def test_the_apprise_phoenix_requires_escapes_plain_text_for_markdown() -> None:
    """The alert is said to be plain text for Apprise to escape, but only Apprise 2.0 and later
    escape plain text for a Markdown service: 1.6 to 1.13, which Phoenix allowed, have no such
    conversion and passed a file name's `![x](https://...)` to Discord or Telegram as it was. The
    floor is 2.0."""
    import tomllib

    from packaging.requirements import Requirement

    deps = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]["dependencies"]
    (apprise,) = [Requirement(d) for d in deps if Requirement(d).name == "apprise"]
    assert "1.13.1" not in apprise.specifier and "2.0.0" in apprise.specifier, apprise


def test_an_archive_says_it_carries_phoenixs_config_with_its_credentials(
    make_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    """A full backup saves Phoenix's own config file (a new machine gets it back from the
    encrypted snapshot with `restore --to`); `phx archive` writes the snapshot as plain files to
    carry, and so carried that file with its alert token, S3 keys and DSN without a word. The
    archive still holds it (the plain copy of the whole snapshot, mode 0600), and says so, naming
    the file."""
    sb = make_sandbox()
    sb.write_config(
        notifications={"enabled": True, "onFailure": "silent", "urls": [f"json://127.0.0.1:1/h?token={TOKEN}"]}
    )
    sb.backup()
    out = tmp_path / "a.tar.gz"
    res = sb.phx_here("archive", "latest", "-o", out, "--config", sb.config_path)
    logical = "home/.argentos/backup.json"
    assert f"holds Phoenix's config file ({logical}) as plain text" in res.err, res.err
    with tarfile.open(out) as tar:
        assert any(name.endswith("/" + logical) for name in tar.getnames())
    assert TOKEN not in res.err + res.out


def test_a_hooks_output_quoting_a_secret_reaches_neither_the_terminal_nor_json(
    make_sandbox: Callable[..., Sandbox],
) -> None:
    """A hook's output is text Phoenix never vetted (a `pg_dump` or `curl` error may quote the
    credentials it was given): `backup --json` printed it whole in `hooks.*.output`, and the
    warning of a failing `postBackup` quoted its last line, secret and all, to the terminal and
    whatever collects it (journald, a CI log). Every line of stdout and stderr is now written
    without the secrets the run knows."""
    sb = make_sandbox()
    secrets = _with_secrets(sb)
    sb.write_config(hooks={"postBackup": f'echo "using {S3_SECRET} and $PHX_PASSPHRASE"; echo "as {DSN}"; exit 1'})
    text = sb.phx_here("backup", "--config", sb.config_path, code=3)
    assert "hooks.postBackup exited with 1 (as ***)" in text.out, text.out
    assert not any(secret in text.out + text.err for secret in secrets), text.out + text.err
    res = sb.phx_here("backup", "--json", "--config", sb.config_path, code=3)
    doc = json.loads(res.out)
    assert doc["hooks"]["hooks.postBackup"]["exitCode"] == 1
    assert "using ***" in doc["hooks"]["hooks.postBackup"]["output"], doc["hooks"]
    for secret in secrets:
        assert secret not in res.out + res.err, (secret, res.out, res.err)


def test_a_secret_spelled_as_a_json_word_leaves_the_json_document_valid(make_sandbox: Callable[..., Sandbox]) -> None:
    """A known secret is taken out of a `--json` document's strings only: a key that reads `true`
    (or a PIN that reads as a number) turned every `true` of the document into `***`, and the
    document into invalid JSON."""
    sb = make_sandbox()
    s3 = {"enabled": False, "bucket": "red28-bucket", "accessKeyId": "true", "secretAccessKey": "S3SECRET-red28"}
    sb.write_config(targets={**sb.config.get("targets", {}), "s3": s3})
    res = sb.phx_here("backup", "--json", "--config", sb.config_path)
    doc = json.loads(res.out)
    assert ": true" in res.out and doc["id"], res.out


def test_a_drills_reports_hold_no_secret_a_database_error_quoted(
    make_sandbox: Callable[..., Sandbox], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A drill writes its report as plain JSON and Markdown files beside the state file, quoting
    each database's error as the engine gave it: a driver's text quoting the DSN, the S3 key and the
    passphrase went into both as it was, while the terminal hid them. Both are now written
    without the secrets the run knows, in the Markdown also as it escapes them (a `[`)."""
    from phoenix_backup.ops import drill

    sb = make_sandbox()
    sb.backup()
    secrets = _with_secrets(sb)
    bracketed = "PG[PASS]-adv28-xyz"  # escaped `\[` in the Markdown
    monkeypatch.setenv("PHX_NEW_PASSPHRASE", bracketed)
    sb.env["PHX_NEW_PASSPHRASE"] = bracketed
    checker = drill.ENGINES["sqlite"]

    class Quoting:
        def check(self, ctx: Any, info: Any, restored: Path) -> Any:
            report = checker.check(ctx, info, restored)
            report.problems.append(("database", f"driver said: cannot use {DSN} with {S3_SECRET}, {secrets[-1]}"))
            report.notes.append(f"driver noted {bracketed}")
            return report

    monkeypatch.setitem(drill.ENGINES, "sqlite", Quoting())
    sb.phx_here("drill", "--scratch", tmp_path, "--config", sb.config_path, code=1)
    reports = list((sb.home / ".argentos" / "backup" / "drills").iterdir())
    assert {p.suffix for p in reports} == {".json", ".md"}, reports
    for report in reports:
        text = report.read_text()
        assert "driver said: cannot use" in text, text
        for secret in [*secrets, bracketed, bracketed.replace("[", "\\[").replace("]", "\\]")]:
            assert secret not in text, (report.name, secret, text)
    json.loads(next(p for p in reports if p.suffix == ".json").read_text())


def test_a_short_password_masks_no_path_a_user_copies(make_sandbox: Callable[..., Sandbox]) -> None:
    """Every line of stdout goes through the run's known secrets, and a password of 4 characters
    was one: a Redis URL's password `data` showed `phx ls` and `list --json` with every
    `home/.argentos/data/` as `home/.argentos/***/`, a path that restores nothing when copied
    into `restore --include`. A secret shorter than 8 characters is not searched for (docs/security.md)."""
    sb = make_sandbox()
    sb.backup()
    sb.write_config(
        databases={**sb.config.get("databases", {}), "redis": [{"name": "r", "url": "redis://:data@127.0.0.1:1/0"}]}
    )
    listing = sb.phx_here("ls", "latest", "--config", sb.config_path).out
    assert "home/.argentos/data/dashboard.db" in listing and "***" not in listing, listing
    snaps = sb.phx_here("list", "--json", "--config", sb.config_path).json()
    assert "home/.argentos/data/dashboard.db" in snaps[0]["databases"], snaps
