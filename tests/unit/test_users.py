"""The one user name Phoenix records (snapshots, locks, key slots): the process's own uid, never
what $USER or $LOGNAME claim, and the uid as text when the uid has no passwd entry."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys

import pytest

from phoenix_backup.users import username

PRINT = "from phoenix_backup.users import username; print(username())"


def test_the_name_is_the_uids_not_the_environments() -> None:
    env = {**os.environ, "USER": "mallory", "LOGNAME": "mallory", "LNAME": "mallory", "USERNAME": "mallory"}
    out = subprocess.run([sys.executable, "-c", PRINT], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == pwd.getpwuid(os.getuid()).pw_name == username()


def test_a_uid_without_a_passwd_entry_is_named_by_its_number() -> None:
    setpriv = shutil.which("setpriv")
    if setpriv is None or os.geteuid() != 0:
        pytest.skip("needs root and setpriv (util-linux) to run as a uid without a passwd entry")
    uid = 54321
    while True:
        try:
            pwd.getpwuid(uid)
        except KeyError:
            break
        uid += 1
    run = [setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", sys.executable, "-c", PRINT]
    out = subprocess.run(run, env={**os.environ, "USER": "root"}, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(uid)


def test_a_key_slot_records_the_uids_name_whatever_user_says(monkeypatch: pytest.MonkeyPatch) -> None:
    from phoenix_backup.repo import keys

    monkeypatch.setenv("USER", "mallory")
    monkeypatch.setenv("LOGNAME", "mallory")
    secrets = keys.MasterSecrets.generate()
    slot = keys.wrap_none(secrets).with_info(secrets)
    assert slot.username == pwd.getpwuid(os.getuid()).pw_name
