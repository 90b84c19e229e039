"""Hold a real `phx` still at one chosen I/O call, so that a second process can act at exactly that
moment (fault injection, as a debugger's breakpoint would: nothing is replaced, the run only waits).

Run as a script, it is `phx` itself with one extra rule, read from PHX_TEST_PAUSE:

    PHX_TEST_PAUSE=<before|after>:<write|delete>:<object name prefix>:<folder>

At the first local-store write (or delete) of an object whose name starts with the prefix, before
or after the call, it creates `<folder>/paused` (holding its pid as it sees it) and waits until
`<folder>/resume` exists. `Paused` below starts such a run, optionally in a new PID namespace
(`unshare --pid --fork --mount-proc`, as a container would be), and drives it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()


def can_unshare_pid() -> str | None:
    """None when a new PID namespace can be made here, else why not."""
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    try:
        proc = subprocess.run(
            ["unshare", "--pid", "--fork", "--mount-proc", "sh", "-c", "echo $$"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unshare failed: {exc}"
    if proc.returncode != 0 or proc.stdout.strip() != "1":
        why = proc.stderr.strip() or f"exit {proc.returncode}"
        return f"unshare --pid --fork --mount-proc does not work here (it needs root or user namespaces): {why}"
    return None


class Paused:
    """One `phx` run that stops at the chosen call: `wait_paused()`, act, `resume()`, `finish()`."""

    def __init__(
        self,
        args: Sequence[str],
        env: Mapping[str, str],
        folder: Path,
        *,
        at: str,
        namespace: bool = False,
    ) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("paused", "resume"):
            (folder / name).unlink(missing_ok=True)
        cmd = [sys.executable, str(HERE), *args]
        if namespace:
            # --kill-child: the run is its namespace's init, which ignores SIGTERM; it must not
            # outlive `unshare` when a test fails.
            cmd = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", *cmd]
        self.proc = subprocess.Popen(
            cmd,
            env={**env, "PHX_TEST_PAUSE": f"{at}:{folder}"},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.out = ""
        self.err = ""

    def wait_paused(self, timeout: float = 120) -> int:
        """Wait until the run holds at its call; return its pid as it sees it (1 or 2 in a new
        PID namespace)."""
        deadline = time.monotonic() + timeout
        marker = self.folder / "paused"
        while not marker.exists():
            if self.proc.poll() is not None:
                out, err = self.proc.communicate()
                raise AssertionError(f"the run ended (exit {self.proc.returncode}) before its pause:\n{out}\n{err}")
            if time.monotonic() > deadline:
                raise AssertionError("the run never reached its pause")
            time.sleep(0.02)
        return int(marker.read_text() or 0)

    def resume(self) -> None:
        (self.folder / "resume").write_text("go")

    def finish(self, timeout: float = 180) -> int:
        self.resume()
        self.out, self.err = self.proc.communicate(timeout=timeout)
        assert "Traceback" not in self.out + self.err, f"traceback in the output:\n{self.err}"
        return self.proc.returncode

    def __enter__(self) -> Paused:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:  # a failed test: let the run go on, then make sure it ends
            self.resume()
            try:
                self.proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.communicate()


def _install(spec: str) -> None:
    when, call, prefix, folder = spec.split(":", 3)
    from phoenix_backup.storage.local import LocalBackend

    original: Callable[..., Any] = getattr(LocalBackend, call)
    fired = threading.Event()
    guard = threading.Lock()

    def pause() -> None:
        Path(folder, "paused").write_text(str(os.getpid()))
        while not Path(folder, "resume").exists():
            time.sleep(0.02)

    def wrapped(self: LocalBackend, name: str, *args: Any, **kwargs: Any) -> Any:
        with guard:
            hit = not fired.is_set() and name.startswith(prefix)
            if hit:
                fired.set()
        if hit and when == "before":
            pause()
        result = original(self, name, *args, **kwargs)
        if hit and when == "after":
            pause()
        return result

    setattr(LocalBackend, call, wrapped)


if __name__ == "__main__":
    _install(os.environ["PHX_TEST_PAUSE"])
    from phoenix_backup.cli.main import main

    sys.argv[0] = "phx"
    main()
