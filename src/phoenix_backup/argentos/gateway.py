"""The agent's gateway around an in-place restore: `gateway.stop` before anything is written,
`gateway.start` afterwards (also after a failure), each run as `shell.run_shell` runs a configured
command, with `PHX_GATEWAY_ACTION` set to `stop` or `start`."""

from __future__ import annotations

from collections.abc import Mapping

from phoenix_backup.shell import ShellStep, run_shell


def run_gateway(action: str, command: str, timeout: float, env: Mapping[str, str]) -> ShellStep:
    """Run `gateway.stop` or `gateway.start`; never raises."""
    return run_shell(f"gateway.{action}", command, timeout, {**env, "PHX_GATEWAY_ACTION": action})
