"""`dirs.write_private`: the atomic, owner-only, durable replace every small state file uses."""

from __future__ import annotations

import errno
import os
import stat
import threading
from pathlib import Path

import pytest

from phoenix_backup import dirs


def test_a_replaced_file_is_owner_only_and_whole(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.write_text("old")
    target.chmod(0o644)
    dirs.write_private(target, b"new contents")
    assert target.read_bytes() == b"new contents"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_full_disk_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "report.json"
    target.write_bytes(b"the previous report")
    real_write = os.write
    calls = 0

    def short_then_full(fd: int, data: bytes | memoryview) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            return real_write(fd, bytes(data[:3]))  # a partial write, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", short_then_full)
    with pytest.raises(OSError) as caught:
        dirs.write_private(target, b"a new report that does not fit")
    monkeypatch.undo()
    assert caught.value.errno == errno.ENOSPC
    assert target.read_bytes() == b"the previous report"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_a_symlink_planted_at_the_temp_name_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "keys.json"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(b"untouched")
    planted = tmp_path / f".keys.json.{os.getpid()}.tmp"  # the temp name write_private once used
    planted.symlink_to(elsewhere)
    dirs.write_private(target, b"secret")  # its temp is created exclusively, under a new name
    assert elsewhere.read_bytes() == b"untouched"
    assert target.read_bytes() == b"secret" and not target.is_symlink()
    assert planted.is_symlink() and sorted(p.name for p in tmp_path.iterdir()) == [
        planted.name,
        "elsewhere",
        "keys.json",
    ]


def test_a_fifo_planted_at_the_temp_name_does_not_hang_the_write(tmp_path: Path) -> None:
    """The temp name was predictable (`.NAME.PID.tmp`) and opened without O_EXCL: a FIFO there made
    the open wait for a reader for ever (a stuck `phx watch`, a drill that never reports)."""
    target = tmp_path / "report.json"
    os.mkfifo(tmp_path / f".report.json.{os.getpid()}.tmp")
    outcome: list[BaseException | None] = []

    def write() -> None:
        try:
            dirs.write_private(target, b"the report")
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    writer.join(10)
    if writer.is_alive():  # let the old code's open go, so that the thread ends
        os.close(os.open(tmp_path / f".report.json.{os.getpid()}.tmp", os.O_RDONLY | os.O_NONBLOCK))
        writer.join(10)
        pytest.fail("write_private waited on a FIFO planted at its temp name")
    assert outcome == [None] and target.read_bytes() == b"the report"


def test_threads_writing_one_file_leave_one_whole_version(tmp_path: Path) -> None:
    """Threads of one process shared the temp name: one truncated the other's temp, renamed it
    away or removed it (a torn file in place, or FileNotFoundError)."""
    target = tmp_path / "sightings.json"
    payloads = [bytes([65 + i]) * (1000 * (i + 1)) for i in range(6)]
    errors: list[BaseException] = []
    start = threading.Barrier(len(payloads))

    def write(data: bytes) -> None:
        start.wait()
        try:
            for _ in range(200):
                dirs.write_private(target, data)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(data,)) for data in payloads]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert target.read_bytes() in payloads
    assert [p.name for p in tmp_path.iterdir()] == ["sightings.json"]


def test_kernel_file_systems_hold_the_kernels_state_and_not_memory_or_user_file_systems() -> None:
    """The kernel's own file systems (/proc/filesystems' nodev ones that hold its state: NFS server
    and RPC state, resource and cpuset control, huge pages) are refused as destinations; tmpfs,
    ramfs, overlay and fuse hold real files and are not."""
    from phoenix_backup.dirs import KERNEL_FILE_SYSTEMS

    for kind in ("nfsd", "rpc_pipefs", "resctrl", "cpuset", "hugetlbfs", "sockfs", "pipefs", "proc", "sysfs"):
        assert kind in KERNEL_FILE_SYSTEMS, kind
    for kind in ("tmpfs", "ramfs", "overlay", "fuse", "ext4", "nfs", "nfs4"):
        assert kind not in KERNEL_FILE_SYSTEMS, kind


def test_kernel_file_systems_are_every_pseudo_file_system_of_linux() -> None:
    """Those esc4 was asked about (all there before), the ones added (binder, smackfs, xenfs,
    s390_hypfs, openpromfs, ocfs2_dlmfs, ipathfs, spufs, gadgetfs, functionfs, ibmasmfs and the
    kernel's internal ones), and every `nodev` file system this machine's kernel has but the four
    that hold real files."""
    from phoenix_backup.dirs import KERNEL_FILE_SYSTEMS

    asked = "nfsd rpc_pipefs resctrl cpuset hugetlbfs binfmt_misc configfs efivarfs fusectl pstore bpf tracefs"
    added = "binder smackfs xenfs s390_hypfs openpromfs ocfs2_dlmfs ipathfs spufs gadgetfs functionfs ibmasmfs"
    internal = "anon_inodefs pidfs dmabuf bdev secretmem aio dax nsfs sockfs pipefs"
    for kind in f"{asked} debugfs securityfs mqueue {added} {internal}".split():
        assert kind in KERNEL_FILE_SYSTEMS, kind
    with open("/proc/filesystems", encoding="ascii") as f:
        here = {line.split()[1] for line in f if line.startswith("nodev")}
    assert (
        here
        - {
            "tmpfs",
            "ramfs",
            "overlay",
            "fuse",
            "rootfs",
            "nfs",
            "nfs4",
            "cifs",
            "smb3",
            "9p",
            "virtiofs",
            "ceph",
            "afs",
            "ecryptfs",
        }
        <= KERNEL_FILE_SYSTEMS
    ), here - KERNEL_FILE_SYSTEMS
