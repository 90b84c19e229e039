"""Where a cold restore's threads spend the data phase, and alternated cold restores of copies.

    .venv/bin/python bench/restore_threads.py --sample /tmp/X/sample --work /tmp/X/work timeline --runs 3
    .venv/bin/python bench/restore_threads.py --sample /tmp/X/sample --work /tmp/X/work \\
        ab --rounds 10 main=/tmp/main/src 'shm=/tmp/main/src,DEST=/dev/shm/X-restored'
    .venv/bin/python bench/restore_threads.py --sample /tmp/X/sample --work /tmp/X/work floor --rounds 10

`--sample` is a workspace as `bench/run.py` generates it (`workspace` and `home`). The first call
makes a repository in `--work` (`phx init`, one full backup, kept: later calls restore it again).
Every restore is `phx restore --latest` into an empty folder after `evict_from_page_cache` of the
repository, under `chrt -r 1` (a real-time priority, which stands in for a quiet machine).

`timeline`: one copy (`--src`, default this checkout's) restored `--runs` times while every
thread's on-CPU nanoseconds (`/proc/PID/task/TID/schedstat`) and state (`stat`: R running, S
sleeping, D waiting for the disk) are sampled every 5 ms; threads are named by a `sitecustomize`
put first on `PYTHONPATH` (Python does not give its threads' names to the kernel). Prints the
start-up (until the first decoding thread), the data phase's CPU-seconds per thread and the
cores it kept busy on average, and each thread's share of samples per state.

`floor`: the kept repository restored cold (`--src`) alternated with the `tar | zstd` floor of
`bench/run.py` and with that floor followed by an fsync of every file and folder it wrote
(`sync FILE...`), each from a cold page cache and after an untimed `sync`; the medians and
Phoenix's wall time against each floor, round by round.

`ab`: copies `LABEL=SRC[,VAR=VALUE...]` (each `VAR` set in that copy's environment; `DEST` is its
restore folder instead of `WORK/restored`) restored one after the other each round, the order
reversed every round. Each restore's wall time, user + system CPU-seconds and peak RSS (`os.wait4`)
and the 1-minute load average (`digest_ab.py`'s `timed`); then the medians, and each copy against
the first: the median of the paired differences and how many pairs it was faster in.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from digest_ab import PHX, new_repository, timed
from run import PASSPHRASE, evict_from_page_cache

NAMES = """import os, threading
_boot = threading.Thread._bootstrap_inner
def _named(self):
    with open(os.path.join({out!r}, f"names.{{os.getpid()}}"), "a") as f:
        f.write(f"{{threading.get_native_id()}} {{self.name}}\\n")
    _boot(self)
threading.Thread._bootstrap_inner = _named
"""


def environment(sample: Path, work: Path, src: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PHX_")}
    env.update(
        LC_ALL="C.UTF-8",
        HOME=str(sample / "home"),
        PHX_PASSPHRASE=PASSPHRASE,
        PHX_CACHE_DIR=str(work / "cache"),
        PYTHONPATH=src,
    )
    return env


def prepare(sample: Path, work: Path, src: str) -> tuple[Path, Path]:
    """The kept repository and its configuration, made (init, one full backup) if missing."""
    repo, config = work / "repo", work / "phoenix.json"
    if repo.exists():
        return repo, config
    work.mkdir(parents=True, exist_ok=True)
    env = environment(sample, work, src)
    phx = [sys.executable, "-c", PHX]
    new_repository(phx, env, sample, work)
    subprocess.run([*phx, "backup", "--config", str(config), "--json"], env=env, check=True, capture_output=True)
    return repo, config


def restore_cmd(config: Path, dest: Path) -> list[str]:
    return [sys.executable, "-c", PHX, "restore", "--latest", "--to", str(dest), "--yes", "--config", str(config)]


def fresh(dest: Path, repo: Path) -> None:
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    evict_from_page_cache(repo)


def sample_threads(pid: int) -> dict[str, tuple[float, str]]:
    """Each thread's on-CPU seconds and state now."""
    out: dict[str, tuple[float, str]] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
            ns = int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
        except (OSError, ValueError):
            continue
        out[tid] = (ns / 1e9, stat[stat.rindex(")") + 2])
    return out


def timeline(args: argparse.Namespace) -> None:
    repo, config = prepare(args.sample, args.work, args.src)
    dest = args.work / "restored"
    names_dir = Path(tempfile.mkdtemp(prefix="restore-threads-"))
    (names_dir / "sitecustomize.py").write_text(NAMES.format(out=str(names_dir)))
    env = environment(args.sample, args.work, f"{names_dir}:{args.src}")
    for run in range(args.runs):
        fresh(dest, repo)
        start = time.perf_counter()
        proc = subprocess.Popen(["chrt", "-r", "1", *restore_cmd(config, dest)], env=env, stdout=subprocess.DEVNULL)
        samples: list[tuple[float, dict[str, tuple[float, str]]]] = []
        while proc.poll() is None:
            samples.append((time.perf_counter() - start, sample_threads(proc.pid)))
            time.sleep(0.005)
        wall = time.perf_counter() - start
        if proc.returncode:
            raise SystemExit(f"the restore failed (exit {proc.returncode})")
        names = {str(proc.pid): "main"}
        names_file = names_dir / f"names.{proc.pid}"
        for line in names_file.read_text().splitlines():
            tid, name = line.split(" ", 1)
            names[tid] = name
        names_file.unlink()
        # phx-sync_0..7 are counted together, and so are the hashing threads of the databases.
        label = {tid: name.split("_")[0] if name.startswith("phx-sync") else name for tid, name in names.items()}
        decoding = [t for t, snap in samples if any(label.get(tid, "").startswith("phx-decode") for tid in snap)]
        first = decoding[0] if decoding else wall
        before: dict[str, float] = {}
        last: dict[str, float] = {}
        states: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        for t, snap in samples:
            for tid, (cpu, state) in snap.items():
                if t <= first:
                    before[tid] = cpu
                else:
                    states[label.get(tid, tid)][state] += 1
                last[tid] = cpu
        per: collections.Counter[str] = collections.Counter()
        for tid, cpu in last.items():
            per[label.get(tid, tid)] += cpu - before.get(tid, 0.0)
        busy = sum(per.values())
        print(f"run {run}: wall {wall:.2f} s, start-up {first:.2f} s (to the first decoding thread)")
        print(
            f"  data phase {wall - first:.2f} s: {busy:.2f} CPU-s sampled, {busy / (wall - first):.2f} cores on average"
        )
        for name, cpu in sorted(per.items()):
            seen = sum(states[name].values()) or 1
            shares = " ".join(f"{s} {n / seen:.0%}" for s, n in sorted(states[name].items()))
            print(f"  {name:16} {cpu:5.2f} CPU-s  {shares}")
    shutil.rmtree(names_dir, ignore_errors=True)


def ab(args: argparse.Namespace) -> None:
    repo, config = prepare(args.sample, args.work, args.copies[0].split("=", 1)[1].split(",")[0])
    copies: list[tuple[str, str, dict[str, str]]] = []
    for spec in args.copies:
        label, rest = spec.split("=", 1)
        src, *extra = rest.split(",")
        copies.append((label, src, dict(e.split("=", 1) for e in extra)))
    runs: dict[str, list[dict[str, float]]] = {label: [] for label, _, _ in copies}
    for r in range(args.rounds):
        for label, src, extra in copies if r % 2 == 0 else copies[::-1]:
            dest = Path(extra.get("DEST", str(args.work / "restored")))
            fresh(dest, repo)
            env = dict(environment(args.sample, args.work, src), **{k: v for k, v in extra.items() if k != "DEST"})
            run = timed(restore_cmd(config, dest), env, chrt=True)  # exits naming the command if it fails
            runs[label].append(run)
            print(json.dumps({"round": r, "copy": label, **{k: round(v, 3) for k, v in run.items()}}), flush=True)
            if dest != args.work / "restored":
                shutil.rmtree(dest, ignore_errors=True)
    first = copies[0][0]
    print("| copy | wall | CPU-s | peak RSS | load | against the first: wall, CPU-s (paired medians) |")
    print("|---|---|---|---|---|---|")
    for label, got in runs.items():
        wall = statistics.median(x["wall"] for x in got)
        cpu = statistics.median(x["cpu"] for x in got)
        loads = [x["load"] for x in got]
        paired = ""
        if label != first:
            pairs = list(zip(got, runs[first], strict=True))
            dw = statistics.median(a["wall"] - b["wall"] for a, b in pairs)
            dc = statistics.median(a["cpu"] - b["cpu"] for a, b in pairs)
            faster = sum(a["wall"] < b["wall"] for a, b in pairs)
            paired = f"{dw:+.3f} s ({faster} of {len(pairs)} faster), {dc:+.3f}"
        print(
            f"| {label} | {wall:.2f} s | {cpu:.2f} | {max(x['rss'] for x in got):.1f} MB "
            f"| {min(loads):.1f}–{max(loads):.1f} | {paired} |"
        )


def floor(args: argparse.Namespace) -> None:
    """Cold restores of the kept repository alternated with `tar | zstd` (bench/run.py's floor) and
    with the same floor followed by an fsync of every file and folder it wrote (`sync FILE...`: the
    floor made as durable as a Phoenix restore). A `sync` (not timed) before each step, so that no
    step inherits the dirty pages of the one before it (`tar` fsyncs nothing)."""
    repo, config = prepare(args.sample, args.work, args.src)
    archive_dir = args.work / "floor"
    archive = archive_dir / "sample.tar.zst"
    if not archive.exists():
        archive_dir.mkdir(parents=True, exist_ok=True)
        pack = f"tar cf - -C '{args.sample}' workspace home | zstd -T2 -3 -q -c > '{archive}'"
        subprocess.run(["sh", "-c", pack], check=True)
    dest = args.work / "restored"
    unpack = f"zstd -dc -q '{archive}' | tar xf - -C '{dest}'"
    steps: dict[str, tuple[list[str], Path, dict[str, str]]] = {
        "phoenix": (restore_cmd(config, dest), repo, environment(args.sample, args.work, args.src)),
        "tar|zstd": (["sh", "-c", unpack], archive_dir, dict(os.environ)),
        "tar|zstd, fsynced": (
            ["sh", "-c", f"{unpack} && find '{dest}' -print0 | xargs -0 sync"],
            archive_dir,
            dict(os.environ),
        ),
    }
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in steps}
    for r in range(args.rounds):
        for name in list(steps) if r % 2 == 0 else list(steps)[::-1]:
            cmd, source, env = steps[name]
            fresh(dest, source)
            subprocess.run(["sync"], check=True)
            run = timed(cmd, env, chrt=True)
            runs[name].append(run)
            print(json.dumps({"round": r, "step": name, **{k: round(v, 3) for k, v in run.items()}}), flush=True)
    shutil.rmtree(dest, ignore_errors=True)
    print("| step | wall | CPU-s (user + sys) | load | Phoenix against it, per round: median (range) |")
    print("|---|---|---|---|---|")
    for name, got in runs.items():
        ratios = [p["wall"] / x["wall"] for p, x in zip(runs["phoenix"], got, strict=True)]
        against = "" if name == "phoenix" else f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}–{max(ratios):.2f})"
        loads = [x["load"] for x in got]
        print(
            f"| {name} | {statistics.median(x['wall'] for x in got):.2f} s "
            f"| {statistics.median(x['cpu'] for x in got):.2f} ({statistics.median(x['user'] for x in got):.2f} + "
            f"{statistics.median(x['sys'] for x in got):.2f}) | {min(loads):.1f}–{max(loads):.1f} | {against} |"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sample", required=True, type=Path)
    parser.add_argument("--work", required=True, type=Path)
    sub = parser.add_subparsers(dest="what", required=True)
    tl = sub.add_parser("timeline")
    tl.add_argument("--runs", type=int, default=3)
    tl.add_argument("--src", default=str(Path(__file__).resolve().parent.parent / "src"))
    tl.set_defaults(func=timeline)
    alt = sub.add_parser("ab")
    alt.add_argument("--rounds", type=int, default=10)
    alt.add_argument("copies", nargs="+", help="LABEL=SRC[,VAR=VALUE...]")
    alt.set_defaults(func=ab)
    fl = sub.add_parser("floor")
    fl.add_argument("--rounds", type=int, default=10)
    fl.add_argument("--src", default=str(Path(__file__).resolve().parent.parent / "src"))
    fl.set_defaults(func=floor)
    args = parser.parse_args()
    args.sample, args.work = args.sample.resolve(), args.work.resolve()
    args.func(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
