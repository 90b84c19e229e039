"""Alternated A/B of a full backup and a cold restore between copies of Phoenix's source.

    .venv/bin/python bench/digest_ab.py --sample /tmp/X/sample --rounds 6 --chrt \\
        int=/tmp/int/src b3=/tmp/b3/src

`--sample` is a workspace as `bench/run.py` generates it (`workspace` and `home`;
`phoenix_backup.sample.generate_workspace`). Each round, in an order reversed every round, each
copy (`PYTHONPATH` to its `src`): `phx init` of a new repository (untimed), `phx backup` (full),
the repository evicted from the page cache (`bench/run.py`'s `evict_from_page_cache`),
`phx restore --latest --to DIR`, then `phx list` (the start-up: imports and the key slot, no
data). `--others restic,tar|zstd` adds those tools of `bench/run.py` to the rotation (a full
backup into a new repository, a cold restore). Each step's wall time, user and system
CPU-seconds (`os.wait4` of the process, its children included) and the 1-minute load average
before it; `--chrt` runs the timed steps under `chrt -r 1`. One JSON line per step, then the
medians per copy. Each Phoenix restore is checked: every file's digest as the snapshot records it
(`phx ls latest --json`) equals what `sha256sum` (or `--check LABEL=b3sum` for a BLAKE3 copy)
prints for the restored file.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from run import EXCLUDES, PASSPHRASE, evict_from_page_cache, make_tool

PHX = "import sys; sys.argv[0] = 'phx'; from phoenix_backup.cli.main import main; main()"


def timed(cmd: list[str], env: dict[str, str], chrt: bool) -> dict[str, float]:
    load = os.getloadavg()[0]
    full = ["chrt", "-r", "1", *cmd] if chrt else cmd
    t = time.perf_counter()
    proc = subprocess.Popen(full, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _pid, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    out = proc.stdout.read() if proc.stdout else b""
    err = proc.stderr.read() if proc.stderr else b""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err.decode(errors='replace')[-2000:]}")
    _ = out
    cpu = ru.ru_utime + ru.ru_stime
    return {"wall": wall, "user": ru.ru_utime, "sys": ru.ru_stime, "cpu": cpu, "rss": ru.ru_maxrss / 1024, "load": load}


def check_restore(phx: list[str], env: dict[str, str], config: Path, dest: Path, check_cmd: str) -> int:
    """The restored files' digests, by `check_cmd`, against the snapshot's; the count checked."""
    listing = subprocess.run(
        [*phx, "ls", "latest", "--json", "--config", str(config)], env=env, capture_output=True, check=True
    ).stdout
    doc = json.loads(listing)
    nodes = doc["entries"]
    wanted = {n["path"]: n["sha256"] for n in nodes if n.get("sha256") and n.get("type") in ("file", "sqlite")}
    checked = 0
    for logical, digest in wanted.items():
        path = dest / logical.lstrip("/")
        if not path.is_file():
            continue
        got = subprocess.run([check_cmd, str(path)], capture_output=True, text=True, check=True).stdout.split()[0]
        if got.lstrip("\\") != digest:
            raise SystemExit(f"{logical}: {check_cmd} says {got}, the snapshot records {digest}")
        checked += 1
    if not checked:
        raise SystemExit("no restored file was checked")
    return checked


def new_repository(phx: list[str], env: dict[str, str], sample: Path, work: Path) -> None:
    """`phx init` of WORK/repo for the sample's workspace, and WORK/phoenix.json to back it up with
    (the sample's three databases, compression, the passphrase); nothing backed up yet."""
    repo = work / "repo"
    databases = ["~/.argentos/observations.db", "~/.argentos/memory.db", "~/.argentos/data/dashboard.db"]
    doc = {
        "workspace": str(sample / "workspace"),
        "backupDir": str(repo),
        "targets": {"local": {"enabled": True, "path": str(repo)}},
        "include": [],
        "exclude": list(EXCLUDES),
        "compression": True,
        "encryption": {"enabled": True, "method": "passphrase"},
        "databases": {"sqlite": databases},
        "retention": {"last": -1},
    }
    (work / "phoenix.json").write_text(json.dumps(doc))
    init = ["init", "--config", str(work / "init.json"), "--workspace", str(sample / "workspace")]
    subprocess.run(
        [*phx, *init, "--repo", str(repo), "--encryption", "passphrase"], env=env, check=True, capture_output=True
    )


def other_tool(name: str, sample: Path, base: dict[str, str], work: Path, chrt: bool) -> dict[str, dict[str, float]]:
    """A full backup into a new repository and a cold restore by another tool of bench/run.py."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    tool = make_tool(name, sample, work, base, [])
    tool.init()
    step = {"backup": timed(tool.backup_cmd("full"), tool.env, chrt)}
    evict_from_page_cache(tool.repo)
    dest = work / "restored"
    dest.mkdir()
    cmd, cwd = tool.restore_cmd(dest)
    assert cwd is None
    step["restore"] = timed(cmd, tool.env, chrt)
    return step


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sample", required=True, type=Path)
    parser.add_argument("--work", default="/tmp/digest-ab", type=Path)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--chrt", action="store_true")
    parser.add_argument("--check", action="append", default=[], help="LABEL=CMD: the digest tool for a copy")
    parser.add_argument("--others", default="", help="also these tools of bench/run.py: restic,tar|zstd")
    parser.add_argument("copies", nargs="+", help="LABEL=SRC")
    args = parser.parse_args()
    copies = [tuple(c.split("=", 1)) for c in args.copies]
    copies += [(name, "") for name in args.others.split(",") if name]
    checks = dict(c.split("=", 1) for c in args.check)
    sample: Path = args.sample.resolve()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PHX_", "RESTIC_", "BORG_"))}
    base.update(LC_ALL="C.UTF-8", HOME=str(sample / "home"), PHX_PASSPHRASE=PASSPHRASE)
    phx = [sys.executable, "-c", PHX]
    results: dict[str, list[dict[str, dict[str, float]]]] = {label: [] for label, _ in copies}
    for r in range(args.rounds):
        order = copies if r % 2 == 0 else list(reversed(copies))
        for label, src in order:
            if not src:
                results[label].append(other_tool(label, sample, base, args.work, args.chrt))
                print(json.dumps({"round": r, "copy": label, **results[label][-1]}), flush=True)
                continue
            env = dict(base, PYTHONPATH=src, PHX_CACHE_DIR=str(args.work / "cache"))
            shutil.rmtree(args.work, ignore_errors=True)
            args.work.mkdir(parents=True)
            repo, config, dest = args.work / "repo", args.work / "phoenix.json", args.work / "restored"
            new_repository(phx, env, sample, args.work)
            step: dict[str, dict[str, float]] = {}
            step["backup"] = timed([*phx, "backup", "--config", str(config), "--json"], env, args.chrt)
            evict_from_page_cache(repo)
            restore = [*phx, "restore", "--latest", "--to", str(dest), "--yes", "--config", str(config)]
            step["restore"] = timed(restore, env, args.chrt)
            step["startup"] = timed([*phx, "list", "--config", str(config), "--json"], env, args.chrt)
            step["restore"]["checked"] = check_restore(phx, env, config, dest, checks.get(label, "sha256sum"))
            results[label].append(step)
            print(json.dumps({"round": r, "copy": label, **step}), flush=True)
    shutil.rmtree(args.work, ignore_errors=True)
    print("| copy | step | wall | CPU-s (user + sys) | load |")
    print("|---|---|---|---|---|")
    for label, runs in results.items():
        for name in ("backup", "restore", "startup"):
            if name not in runs[0]:
                continue
            m = {k: statistics.median(run[name][k] for run in runs) for k in ("wall", "user", "sys", "cpu", "load")}
            loads = [run[name]["load"] for run in runs]
            print(
                f"| {label} | {name} | {m['wall']:.2f} s | {m['cpu']:.2f} ({m['user']:.2f} + {m['sys']:.2f}) "
                f"| {min(loads):.1f}–{max(loads):.1f} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
