"""Who runs Phoenix: the user name recorded in snapshots, locks and key slots."""

from __future__ import annotations

import os


def username() -> str:
    """The name of this process's user (its uid's passwd entry, not $USER, which `su` and `sudo`
    may leave pointing at someone else); the uid as text when it has none (a container's uid
    without an entry), "unknown" where there are no uids."""
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (KeyError, ImportError):
        return str(os.getuid()) if hasattr(os, "getuid") else "unknown"
