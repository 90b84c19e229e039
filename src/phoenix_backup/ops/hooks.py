"""`hooks.preBackup` and `hooks.postBackup`: the user's commands around a backup (to quiesce the
agent and let it go on, say), run as the gateway commands are (`shell.run_shell`).

- `preBackup` runs first. When it fails (a non-zero exit, a timeout, a command that cannot be
  run), nothing is backed up and the backup fails, naming the hook.
- `postBackup` runs after every backup that was attempted, whatever its outcome, the failure of
  `preBackup` included: it is where what `preBackup` did (perhaps half of it) is undone. Its
  environment says how the backup went. When it fails, the snapshot stays, and the backup ends as
  partly failed (exit 3) saying so.
- Neither runs for `backup --dry-run`, nor for a backup started by a hook (its environment has
  `PHX_HOOK`): a hook that runs `phx backup` would otherwise start itself again, without end.
"""

from __future__ import annotations

from collections.abc import Mapping

from phoenix_backup.config import Config
from phoenix_backup.config.model import Hooks
from phoenix_backup.errors import HookFailed
from phoenix_backup.shell import ShellStep, run_shell


class BackupHooks:
    def __init__(self, cfg: Config, env: Mapping[str, str], scope: str) -> None:
        # A backup a hook started runs no hooks (each would start the next backup, without end).
        self.hooks = cfg.hooks if "PHX_HOOK" not in env else Hooks()
        self.source = cfg.source or "the config"
        self.env = {**env, "PHX_BACKUP_SCOPE": scope}

    def before(self) -> ShellStep | None:
        """Run `preBackup`; raises HookFailed when it fails."""
        if not self.hooks.pre_backup:
            return None
        step = run_shell("hooks.preBackup", self.hooks.pre_backup, self.hooks.timeout_seconds, self._env("preBackup"))
        if not step.ok:
            raise HookFailed(
                f"{step.describe()}, so no backup was taken; fix the command in {self.source} (run it by hand to "
                "see why) or remove it"
            )
        return step

    def after(self, status: str, snapshot_id: str | None) -> ShellStep | None:
        """Run `postBackup` (never raises): `status` is ok, partial or failed."""
        if not self.hooks.post_backup:
            return None
        env = self._env("postBackup", PHX_BACKUP_STATUS=status, PHX_SNAPSHOT_ID=snapshot_id or "")
        return run_shell("hooks.postBackup", self.hooks.post_backup, self.hooks.timeout_seconds, env)

    def _env(self, hook: str, **more: str) -> dict[str, str]:
        return {**self.env, "PHX_HOOK": hook, **more}
