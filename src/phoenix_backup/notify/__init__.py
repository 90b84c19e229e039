"""Notifications after a backup: Apprise URLs (Slack, Discord, Telegram, e-mail, ntfy, webhooks...).

`notifications.onFailure: alert` sends a message for any failure: a backup that raised (even
before the repository could be opened), a target that failed, files or databases that could not
be saved, or retention that failed afterwards. `onSuccess: notify` sends one for a complete
success. A message names the snapshot, its size, the bytes added, the duration, the failed
targets and the errors, and never a secret (`redact`). A message that cannot be sent is a
warning: it never fails the backup.
"""

from __future__ import annotations

from phoenix_backup.notify.message import BackupEvent, compose, env_secrets, secrets_of
from phoenix_backup.notify.send import NotifyOutcome, notify_event, send
from phoenix_backup.redaction import redact

__all__ = ["BackupEvent", "NotifyOutcome", "compose", "env_secrets", "notify_event", "redact", "secrets_of", "send"]
