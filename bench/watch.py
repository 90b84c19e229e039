"""`phx watch` under load (issue 19): CPU and RSS of the watch process, repository growth per
minute, start-up cost and the recovery point, on a generated sample workspace.

    .venv/bin/python bench/watch.py --size medium --seconds 120 --restores 10

It generates the workspace in --workdir (emptied first), initialises an encrypted local
repository, takes one backup, starts `phx watch`, then drives 3 commits every 0.12 s (25 a
second) across the three stores: an observation with a 3 KiB embedding (its row names its
number; each is logged with the times its transaction began and ended), a memory's access count
and a task's time. Afterwards it restores observations.db at random seconds of the covered time
and reports, for each, how long before that second the first commit it misses was made (the
recovery point). Litestream is not run here (see issue 19 for its figures).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from phoenix_backup.sample import generate_workspace

OBSERVATIONS = "home/.argentos/observations.db"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="medium")
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--restores", type=int, default=10)
    ap.add_argument("--workdir", type=Path, default=Path("bench/work/watch"))
    args = ap.parse_args()
    work = args.workdir.absolute()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    layout = generate_workspace(work / "sample", size=args.size, seed=42)
    phx = str(Path(sys.executable).with_name("phx"))
    env = {
        **os.environ,
        "HOME": str(layout.home),
        "PHX_CONFIG": str(layout.home / ".argentos" / "backup.json"),
        "PHX_PASSPHRASE": "bench passphrase",
        "PHX_CACHE_DIR": str(work / "cache"),
        "XDG_DATA_HOME": str(work / "xdg-data"),
        "XDG_CACHE_HOME": str(work / "xdg-cache"),
        "XDG_CONFIG_HOME": str(work / "xdg-config"),
    }
    config = {
        "workspace": str(layout.workspace),
        "backupDir": str(work / "repo"),
        "include": [],
        "exclude": [],
        "encryption": {"enabled": True, "method": "passphrase"},
    }
    Path(env["PHX_CONFIG"]).write_text(json.dumps(config))
    subprocess.run([phx, "init"], env=env, check=True, capture_output=True)
    subprocess.run([phx, "backup"], env=env, check=True, capture_output=True)
    repo = work / "repo"
    size0 = _size(repo)
    started = time.monotonic()
    watch = subprocess.Popen([phx, "watch"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not (repo / "captures").is_dir() or not any((repo / "captures").iterdir()):
        time.sleep(0.1)
    startup = time.monotonic() - started
    time.sleep(2)
    size1, cpu1, t1 = _size(repo), _cpu(watch.pid), time.monotonic()
    log = work / "load.log"
    rss = _load(layout.home / ".argentos", args.seconds, log, watch.pid)
    cpu2, t2 = _cpu(watch.pid), time.monotonic()
    time.sleep(2)
    size2 = _size(repo)
    watch.send_signal(signal.SIGTERM)
    watch.wait(timeout=120)
    lags = _recovery_point(phx, env, log, work, args.restores)
    report = {
        "size": args.size,
        "commitsPerSecond": round(3 / 0.12, 1),
        "startupSeconds": round(startup, 1),
        "startupBytes": size1 - size0,
        "cpuPercentOfOneCore": round(100 * (cpu2 - cpu1) / (t2 - t1), 2),
        "rssMiB": {"max": round(max(rss) / 1024, 1), "median": round(sorted(rss)[len(rss) // 2] / 1024, 1)},
        "growthMiBPerMinute": round((size2 - size1) / (1 << 20) / ((t2 - t1) / 60), 2),
        "recoveryPointSeconds": {"max": round(max(lags), 3), "mean": round(sum(lags) / len(lags), 3)},
        "watchExit": watch.returncode,
    }
    print(json.dumps(report, indent=2))


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _load(stores: Path, seconds: float, log: Path, pid: int) -> list[int]:
    """25 commits a second for `seconds`; the watch's RSS (KiB) once a second."""
    mem = sqlite3.connect(stores / "memory.db", timeout=30, isolation_level=None)
    obs = sqlite3.connect(stores / "observations.db", timeout=30, isolation_level=None)
    dash = sqlite3.connect(stores / "data" / "dashboard.db", timeout=30, isolation_level=None)
    ids = [r[0] for r in mem.execute("SELECT id FROM memory_items LIMIT 5000")]
    tasks = [r[0] for r in dash.execute("SELECT id FROM tasks")]
    rng = random.Random(1)
    rss: list[int] = []
    start = last_sample = time.time()
    k = 0
    with log.open("w") as out:
        while time.time() - start < seconds:
            tick = time.time()
            k += 1
            obs.execute(
                "INSERT INTO observations(session_id, kind, content, created_at, embedding) "
                "VALUES ('bench', 'message', ?, '2026-12-05T00:00:00Z', ?)",
                (f"bench {k} " + "lorem ipsum dolor " * rng.randint(5, 40), os.urandom(3072)),
            )
            out.write(f"{k} {tick} {time.time()}\n")
            out.flush()
            mem.execute("UPDATE memory_items SET access_count = access_count + 1 WHERE id = ?", (rng.choice(ids),))
            dash.execute("UPDATE tasks SET updated_at = ? WHERE id = ?", (str(time.time()), rng.choice(tasks)))
            if time.time() - last_sample >= 1:
                status = Path(f"/proc/{pid}/status").read_text()
                rss.append(int(next(x for x in status.splitlines() if x.startswith("VmRSS")).split()[1]))
                last_sample = time.time()
            time.sleep(max(0.0, 0.12 - (time.time() - tick)))
    for con in (mem, obs, dash):
        con.close()
    return rss


def _recovery_point(phx: str, env: dict[str, str], log: Path, work: Path, restores: int) -> list[float]:
    """For restores at random seconds: how long before each second the first missing commit was made."""
    rows = [tuple(map(float, line.split())) for line in log.read_text().splitlines()]
    began = {int(k): b for k, b, _e in rows}
    ended = {int(k): e for k, _b, e in rows}
    tl = json.loads(subprocess.run([phx, "list", "--timeline", "--json"], env=env, capture_output=True).stdout)
    last = [r for r in tl["databases"][OBSERVATIONS] if r["kind"] == "covered"][-1]
    lo = max(datetime.fromisoformat(last["from"]).timestamp(), rows[0][2] + 1.5)
    hi = min(datetime.fromisoformat(last["to"]).timestamp(), rows[-1][2])
    rng = random.Random(5)
    lags = []
    for i in range(restores):
        at = rng.uniform(lo, hi)
        dest = work / f"restore-{i}"
        when = datetime.fromtimestamp(at, UTC).isoformat()
        cmd = [phx, "restore", "--at", when, "--to", str(dest), "--path", OBSERVATIONS]
        subprocess.run(cmd, env=env, check=True, capture_output=True)
        con = sqlite3.connect(dest / OBSERVATIONS)
        query = "SELECT content FROM observations WHERE session_id = 'bench' ORDER BY id"
        got = [int(c.split()[1]) for (c,) in con.execute(query)]
        con.close()
        k = max(got, default=0)
        assert got == list(range(1, k + 1)) and (k == 0 or began[k] <= at), f"not a committed state at {when}"
        lags.append(at - ended[k + 1] if k + 1 in ended and ended[k + 1] <= at else 0.0)
        shutil.rmtree(dest)
    return lags


if __name__ == "__main__":
    main()
