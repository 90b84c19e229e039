"""What `shell.run_shell` keeps of a configured command's output (hooks, gateway commands)."""

from __future__ import annotations

import os
import tracemalloc

from phoenix_backup.shell import OUTPUT_TAIL, run_shell


def test_a_command_with_huge_output_costs_only_the_tail_kept() -> None:
    # 200 MB of output (a hook that dumps a database to stdout, say): only the last characters are
    # kept, and only they are read back into memory.
    tracemalloc.start()
    try:
        step = run_shell(
            "hooks.preBackup", "head -c 200000000 /dev/zero | tr '\\0' x; printf 'the end\\377'", 60, os.environ
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert step.ok
    assert step.output.endswith("xthe end\ufffd") and len(step.output) == OUTPUT_TAIL
    assert peak < 20_000_000, f"{peak} bytes of memory at the peak"


def test_a_command_killed_by_a_signal_is_described_by_the_signal_name() -> None:
    # `kill -9 $$`: the shell ends by SIGKILL (Popen's -9), which is worded as the signal, not as
    # an exit code no command returns.
    step = run_shell("gateway.stop", "echo stopping; kill -9 $$", 60, os.environ)
    assert not step.ok and step.exit_code == -9
    assert step.describe() == "gateway.stop was killed by SIGKILL (stopping)"
    step = run_shell("hooks.preBackup", "exit 3", 60, os.environ)
    assert step.describe() == "hooks.preBackup exited with 3"
