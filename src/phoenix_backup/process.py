"""The settings a `phx` process makes for itself at its start: no core dump and no memory that
another process of the user may read, glibc's malloc arenas and thresholds, and the C heap's free
pages returned. A module of its own, importing nothing of Phoenix: every `phx` (even `phx
--version`) calls them first, and the repository's key code that lived around them is not needed
for that (its import was a sixth of a start's CPU)."""

from __future__ import annotations

import ctypes
import functools
import sys
from collections.abc import Callable
from typing import cast

_PR_SET_DUMPABLE = 4


def hide_process_memory() -> None:
    """For a process that holds the passphrase or the master secrets (every `phx` process; `phx
    watch` and its snapshot child for weeks): no core dump of it, and no other process of the
    same user may read its memory (/proc/PID/mem, /proc/PID/environ, ptrace) without
    CAP_SYS_PTRACE: prctl(PR_SET_DUMPABLE, 0). An exec resets it, so each such process sets it
    itself (`set_process_option`).

    Not dumpable alone still leaves a core where `fs.suid_dumpable` is 1 (owned by the user, in
    the working folder) or 2 (a root-owned core, or the core pattern's handler), and elsewhere
    than Linux: the core size limit is set to 0 too (the hard limit is kept, so a hook may raise
    its own again)."""
    set_process_option(_PR_SET_DUMPABLE, 0)
    try:
        import resource
    except ImportError:  # not on this platform: nothing to lower
        return
    _soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
    resource.setrlimit(resource.RLIMIT_CORE, (0, hard))


def set_process_option(option: int, value: int) -> None:
    """prctl(option, value) for this process; Linux only, silently nothing elsewhere or where the
    C library has no `prctl`."""
    if not sys.platform.startswith("linux"):
        return
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl(option, value, 0, 0, 0)


# glibc's mallopt parameters: the number of malloc arenas, and the size from which a buffer gets
# its own mapping (returned to the system when it is freed).
_M_ARENA_MAX = -8
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1024 * 1024


def limit_malloc_arenas(arenas: int = 2) -> None:
    """glibc gives threads that allocate at once their own malloc arenas (up to eight per core),
    and a freed buffer stays in the arena that allocated it. A backup's reader, sealer and checker
    threads each pass megabytes of blob buffers through, so with one arena per thread the process
    keeps tens of MB it no longer uses. Two arenas measured 10-20 MB less peak memory on a 600 MB
    backup at the same speed.

    glibc also raises the size from which a buffer is mapped on its own to the largest one freed
    (up to 32 MB): after the first 8 MB pack, every pack and file chunk came from the arenas, whose
    holes kept the process's memory growing with the workspace (170 MB for a 3 GB one, against
    100 MB with the threshold fixed at 1 MiB; 256 KiB database regions stay in the arenas, where
    they are reused). Done before any thread starts, by every process that takes snapshots (`phx`
    itself and the snapshot child of `phx watch`, which an exec started afresh); a C library
    without `mallopt` (not glibc) is left as it is."""
    set_malloc_options((_M_ARENA_MAX, arenas), (_M_MMAP_THRESHOLD, MMAP_THRESHOLD))


def set_malloc_options(*settings: tuple[int, int]) -> None:
    """Set glibc malloc parameters; a C library without `mallopt` (not glibc) is left as it is."""
    if not sys.platform.startswith("linux"):
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    for param, value in settings:
        mallopt(param, value)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's `malloc_trim`, looked up once: each `ctypes.CDLL` makes a class of its own, which
    stays in memory until the next garbage collection (a process that opens its repository again
    and again, or `phx watch` trimming every second, would pile them up)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return cast(Callable[[int], int], ctypes.CDLL(None).malloc_trim)
    except (OSError, AttributeError):
        return None


def trim_heap() -> None:
    """Return the C heap's free pages to the system (glibc's `malloc_trim`; elsewhere nothing)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
