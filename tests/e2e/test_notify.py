"""Notifications through Apprise, received by a real HTTP server on loopback through a `json://`
URL: a failed backup alerts (a repository that cannot be opened, or cannot be created), a
partial one too (naming the failed target), a success is silent under `onSuccess: silent` and
reported under `notify`, no message ever holds a secret, and a notification that cannot be sent
only warns. The state file records the failures."""

from __future__ import annotations

import json
import shutil
import socket
from collections.abc import Callable
from typing import Any

import pytest
from e2e_support import NOTIFY_TOKEN, PASSPHRASE, Receiver, Sandbox

CANARY = "pw-CANARY-4711"
TOKEN = NOTIFY_TOKEN


def notifying(sb: Sandbox, receiver: Receiver, **settings: Any) -> None:
    sb.write_config(notifications={"enabled": True, "urls": [receiver.url()], **settings})


def assert_no_secret(message: dict[str, Any]) -> None:
    for secret in (CANARY, PASSPHRASE, TOKEN):
        assert secret not in message["raw"], f"{secret!r} leaked into a notification: {message['raw']}"


def test_failed_backup_alerts_and_is_recorded(make_sandbox: Callable[..., Sandbox], receiver: Receiver) -> None:
    sb = make_sandbox()
    notifying(sb, receiver)  # onFailure defaults to alert
    good = sb.backup()
    assert receiver.received == [], "onSuccess defaults to silent"
    # The repository cannot be opened: the wrong passphrase.
    res = sb.phx("backup", env=sb.env_with(PHX_PASSPHRASE=CANARY), check=1)
    assert "passphrase" in res.err
    assert len(receiver.received) == 1
    message = receiver.received[0]
    body = message["body"]
    assert message["path"].startswith("/hook")
    assert body["type"] == "failure" and "FAILED" in body["title"] and socket.gethostname() in body["title"]
    assert "No snapshot was saved" in body["message"] and "passphrase" in body["message"]
    assert "Duration:" in body["message"]
    assert_no_secret(message)
    state = json.loads((sb.home / ".argentos" / "backup" / ".last-backup").read_text())
    assert state["success"] is False and "passphrase" in state["lastFailure"]["error"]
    assert state["lastSuccess"]["snapshotId"] == good["id"]
    assert CANARY not in json.dumps(state)


def test_a_repository_that_cannot_be_created_alerts(make_sandbox: Callable[..., Sandbox], receiver: Receiver) -> None:
    sb = make_sandbox()
    blocker = sb.root / "not-a-folder"
    blocker.write_text("a file where the repository folder should go\n")
    sb.write_config(backupDir=str(blocker / "repo"))
    notifying(sb, receiver)
    sb.phx("backup", check=1)
    assert len(receiver.received) == 1
    body = receiver.received[0]["body"]
    assert body["type"] == "failure" and str(blocker) in body["message"]
    assert_no_secret(receiver.received[0])


def test_success_is_silent_or_reported_as_configured(make_sandbox: Callable[..., Sandbox], receiver: Receiver) -> None:
    sb = make_sandbox()
    notifying(sb, receiver, onSuccess="silent")
    first = sb.backup()
    assert first["notification"] == {"sent": 0, "skipped": "onSuccess is silent", "problems": []}
    assert receiver.received == []
    notifying(sb, receiver, onSuccess="notify")
    doc = sb.backup()
    assert doc["notification"]["sent"] == 1
    assert len(receiver.received) == 1
    body = receiver.received[0]["body"]
    assert body["type"] == "success" and "OK" in body["title"]
    text = body["message"]
    assert f"Snapshot: {doc['name']} ({doc['id'][:8]})" in text
    assert "Size:" in text and "added:" in text and "Duration:" in text and "Targets OK: local" in text
    assert_no_secret(receiver.received[0])
    # onFailure silent: a failure sends nothing.
    notifying(sb, receiver, onFailure="silent")
    sb.phx("backup", env=sb.env_with(PHX_PASSPHRASE=CANARY), check=1)
    assert len(receiver.received) == 1


def test_a_partial_backup_alerts_naming_the_failed_target(
    make_sandbox: Callable[..., Sandbox], receiver: Receiver
) -> None:
    sb = make_sandbox()
    sb.env["PHX_DATA_DIR"] = str(sb.root / "data")
    missing_remote = sb.root / "no-such-remote.git"
    sb.write_config(
        targets={
            "local": {"enabled": True},
            "git": {"enabled": True, "repo": str(missing_remote), "branch": "main", "autoCommit": True},
        }
    )
    notifying(sb, receiver)
    doc = sb.backup(check=3)
    assert doc["targets"]["local"]["ok"] and not doc["targets"]["git"]["ok"]
    assert doc["retention"]["skipped"].startswith("not every target received the snapshot")
    assert len(receiver.received) == 1
    body = receiver.received[0]["body"]
    assert body["type"] == "failure" and "INCOMPLETE" in body["title"]
    assert "Failed targets:" in body["message"] and "git:" in body["message"]
    assert f"({doc['id'][:8]})" in body["message"]
    assert_no_secret(receiver.received[0])


def test_a_notification_that_cannot_be_sent_only_warns(make_sandbox: Callable[..., Sandbox]) -> None:
    sb = make_sandbox()
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sb.write_config(
        notifications={
            "enabled": True,
            "onSuccess": "notify",
            "urls": [f"json://127.0.0.1:{port}/x?token={TOKEN}", "unknown-scheme://whatever"],
        }
    )
    res = sb.phx("backup", "--json")
    doc = res.json()
    assert doc["id"] and doc["notification"]["sent"] == 0
    problems = doc["notification"]["problems"]
    assert "notifications.urls[0] (json://127.0.0.1) could not be reached" in problems[0]
    assert "notifications.urls[1]" in problems[1] and "not a URL Apprise understands" in problems[1]
    assert any(line.startswith("phx: warning: notification not sent") for line in res.stderr_lines()), res
    assert TOKEN not in res.out + res.err


# Apprise services whose host part is itself the token (issue 14, point 6).
TOKEN_HOSTS = [
    "prowl://CANARYprowl0000000000000000000000000000001",
    "pbul://o.CANARYpushbullet",
    "pover://CANARYuser@CANARYpushover",
    "join://CANARYjoinapikey0000000000000001/device",
    "ntfy://CANARYtopic",
    "ntfys://ntfy.sh/CANARYtopic",
    "tgram://123456789:CANARYbot/987654",
]


def test_no_url_form_shows_its_token(make_sandbox: Callable[..., Sandbox]) -> None:
    sb = make_sandbox()
    sb.write_config(notifications={"enabled": True, "onSuccess": "notify", "urls": TOKEN_HOSTS})
    # Requests go to a closed local port, never to the real services.
    env = sb.env_with(HTTP_PROXY="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9", NO_PROXY=None)
    res = sb.phx("backup", "--json", env=env)
    problems = res.json()["notification"]["problems"]
    assert len(problems) == len(TOKEN_HOSTS), problems
    for i, url in enumerate(TOKEN_HOSTS):
        scheme = url.split("://")[0]
        assert f"notifications.urls[{i}] ({scheme}://***)" in problems[i], problems[i]
    assert "CANARY" not in res.out + res.err


def test_status_says_when_the_last_notification_was_not_sent(
    make_sandbox: Callable[..., Sandbox], receiver: Receiver
) -> None:
    """A channel that is down (the webhook gone) was only a warning in the run's log: `phx status`
    said all was well, and the next failure's alert went nowhere unseen."""
    sb = make_sandbox()
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sb.write_config(
        notifications={"enabled": True, "onSuccess": "notify", "urls": [f"json://127.0.0.1:{port}/x?token={TOKEN}"]}
    )
    sb.phx_here("backup", "--json")
    doc = sb.phx_here("status", "--json").json()
    assert doc["lastNotification"]["sent"] == 0
    assert doc["lastNotification"]["problems"] == [
        "notifications.urls[0] (json://127.0.0.1) could not be reached or refused the message"
    ]
    said = [w for w in doc["warnings"] if w.startswith("the last notification")]
    assert len(said) == 1 and "could not be reached" in said[0] and "fix notifications.urls" in said[0], doc["warnings"]
    assert TOKEN not in json.dumps(doc)
    # The channel works again: the next message sent clears the warning.
    notifying(sb, receiver, onSuccess="notify")
    sb.phx_here("backup", "--json")
    doc = sb.phx_here("status", "--json").json()
    assert doc["lastNotification"]["sent"] == 1 and doc["lastNotification"]["problems"] == []
    assert not [w for w in doc["warnings"] if w.startswith("the last notification")]


def test_an_empty_workspace_where_backups_succeeded_alerts_and_saves_nothing(
    make_sandbox: Callable[..., Sandbox], receiver: Receiver
) -> None:
    """The workspace's disk not mounted at 02:00: its mount point is an empty folder. The backup of
    it saved nothing, said ok (a warning in the run's log) and sent nothing under `onSuccess:
    silent`, night after night, while retention aged the real snapshots out."""
    sb = make_sandbox()
    notifying(sb, receiver)
    first = sb.phx_here("backup", "--json").json()
    shutil.move(sb.workspace, sb.root / "unmounted")
    sb.workspace.mkdir()  # the mount point, with the disk not mounted
    res = sb.phx_here("backup", "--json", code=1)
    assert f"the workspace {sb.workspace} is an empty folder" in res.err and "not mounted" in res.err
    assert len(receiver.received) == 1
    body = receiver.received[0]["body"]
    assert body["type"] == "failure" and "No snapshot was saved" in body["message"]
    assert "empty folder" in body["message"]
    doc = sb.phx_here("status", "--json", code=1).json()
    assert doc["lastBackup"]["success"] is False and "empty folder" in doc["lastBackup"]["error"]
    assert doc["lastSuccess"]["snapshotId"] == first["id"]
    listed = sb.phx_here("list", "--json").json()
    assert [s["id"] for s in listed] == [first["id"]]


def test_turning_notifications_off_ends_the_unsent_warning(make_sandbox: Callable[..., Sandbox]) -> None:
    """The webhook gone, the user turned notifications off (`enabled: false`): no run records a
    notification any more, and `phx status` warned "fix notifications.urls" for ever after."""
    sb = make_sandbox()
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"json://127.0.0.1:{port}/x"
    sb.write_config(notifications={"enabled": True, "onSuccess": "notify", "urls": [url]})
    sb.phx_here("backup", "--json")
    doc = sb.phx_here("status", "--json").json()
    assert [w for w in doc["warnings"] if w.startswith("the last notification")], doc["warnings"]
    sb.write_config(notifications={"enabled": False, "onSuccess": "notify", "urls": [url]})
    sb.phx_here("backup", "--json")
    doc = sb.phx_here("status", "--json").json()
    assert not [w for w in doc["warnings"] if w.startswith("the last notification")], doc["warnings"]


@pytest.mark.parametrize("stray", [".DS_Store", "lost+found", "Thumbs.db"])
def test_a_workspace_holding_only_a_stray_marker_is_empty(
    make_sandbox: Callable[..., Sandbox], receiver: Receiver, stray: str
) -> None:
    """The unmounted mount point (or a fresh empty disk mounted in its place) holds a `.DS_Store`
    Finder left, or an empty disk's `lost+found`: not "an empty folder", so its snapshot of nothing
    said ok again, night after night."""
    sb = make_sandbox()
    notifying(sb, receiver)
    first = sb.phx_here("backup", "--json").json()
    shutil.move(sb.workspace, sb.root / "unmounted")
    sb.workspace.mkdir()
    if stray == "lost+found":
        (sb.workspace / stray).mkdir()
    else:
        (sb.workspace / stray).write_bytes(b"\0\0\0\1Bud1")
    res = sb.phx_here("backup", "--json", code=1)
    assert f"the workspace {sb.workspace} is an empty folder" in res.err, res.err
    assert len(receiver.received) == 1 and receiver.received[0]["body"]["type"] == "failure"
    assert [s["id"] for s in sb.phx_here("list", "--json").json()] == [first["id"]]


def test_a_workspace_empty_from_the_start_is_backed_up_every_night(
    make_sandbox: Callable[..., Sandbox], receiver: Receiver
) -> None:
    """A new agent's workspace, still empty: the first backup (its memory, its config) succeeded,
    and every later one failed, "a backup succeeded here before", with nothing saved, not even
    the databases outside the workspace, and an alert every night. Nothing says it held anything."""
    sb = make_sandbox()
    notifying(sb, receiver)
    shutil.move(sb.workspace, sb.root / "elsewhere")
    sb.workspace.mkdir()
    first = sb.phx_here("backup", "--json").json()
    second = sb.phx_here("backup", "--json").json()
    assert second["id"] != first["id"]
    assert receiver.received == []
    # Once it held something, an empty folder is the disk not mounted again.
    (sb.workspace / "SOUL.md").write_text("me\n")
    sb.phx_here("backup", "--json")
    (sb.workspace / "SOUL.md").unlink()
    res = sb.phx_here("backup", "--json", code=1)
    assert "is an empty folder" in res.err and "touch .keep" in res.err
    (sb.workspace / ".keep").touch()  # emptied on purpose: the way the error names
    sb.phx_here("backup", "--json")
