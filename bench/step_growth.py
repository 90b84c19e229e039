"""Each step's peak memory at a size, two versions of Phoenix alternated (docs/benchmarks.md,
"What each step's memory grows with").

    .venv/bin/python bench/step_growth.py --size large --workdir /tmp/sg-large --old /tmp/old/src --new src

Generates the sample once (bench's generator, seed 42) and `phx init`s a repository, kept aside
in `--workdir`. Then, each round running the two versions in alternating order, each from the
same state put back (every round of a step before the next step): the full backup (from the
empty repository), the restore of that backup (`--latest`, into an empty folder that is deleted
after), and one simulated day's backup (day 0) from the full backup's state. Every command runs
under `/usr/bin/time -f "%M %U %S %e"`; one JSON line a run (peak RSS in kB, user and system
CPU-s, wall, load average), then per step and version the median and range of the peak, and
whether the stored file and database nodes of every run of a step are the same (SHA-256 of
their JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
from pathlib import Path

from extents_ab import STATE, bench_phoenix, digest, newest_nodes

from phoenix_backup.sample import generate_workspace, simulate_day
from phoenix_backup.sample.workspace import layout_for

STEPS = ("full", "restore", "daily")


def put_back(work: Path, aside: Path) -> None:
    for i, name in enumerate(STATE):
        shutil.rmtree(work / name, ignore_errors=True)
        if (aside / str(i)).exists():
            subprocess.run(["cp", "-a", str(aside / str(i)), str(work / name)], check=True)


def keep_aside(work: Path, aside: Path) -> None:
    partial = aside.with_suffix(".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    for i, name in enumerate(STATE):
        if (work / name).exists():
            subprocess.run(["cp", "-a", str(work / name), str(partial / str(i))], check=True)
    partial.rename(aside)


def timed(cmd: list[str], env: dict[str, str]) -> dict[str, object]:
    os.sync()
    proc = subprocess.run(
        ["/usr/bin/time", "-f", "%M %U %S %e", *cmd], env=env, capture_output=True, text=True, check=False
    )
    last = proc.stderr.strip().splitlines()[-1].split()
    rss, user, sys_, wall = int(last[0]), float(last[1]), float(last[2]), float(last[3])
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return {"maxRssKb": rss, "user": user, "sys": sys_, "wall": wall, "load": round(os.getloadavg()[0], 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--old", required=True, help="the src folder of the version to compare with")
    parser.add_argument("--new", required=True, help="the src folder of this version")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", default=",".join(STEPS))
    args = parser.parse_args()
    work = Path(args.workdir).absolute()
    tool = bench_phoenix(work)
    srcs = {"old": str(Path(args.old).absolute()), "new": str(Path(args.new).absolute())}
    if not (work / "aside-init").exists():
        work.mkdir(parents=True, exist_ok=True)
        generate_workspace(work / "sample", size=args.size, seed=42)
        tool.env["PYTHONPATH"] = srcs["old"]
        tool.init()
        keep_aside(work, work / "aside-init")
    dest = work / "restored"
    steps = args.steps.split(",")
    runs: dict[tuple[str, str], list[dict[str, object]]] = {}
    for step in [s for s in STEPS if s in steps]:  # every round of a step before the day is simulated
        for r in range(args.rounds):
            order = ["old", "new"] if r % 2 == 0 else ["new", "old"]
            for which in order:
                run_env = {**tool.env, "PYTHONPATH": srcs[which]}
                if step == "full":
                    put_back(work, work / "aside-init")
                    row = timed(tool.backup_cmd(step), run_env)
                    if not (work / "aside-full").exists():
                        keep_aside(work, work / "aside-full")
                elif step == "restore":
                    put_back(work, work / "aside-full")
                    shutil.rmtree(dest, ignore_errors=True)
                    cmd, _ = tool.restore_cmd(dest)
                    row = timed(cmd, run_env)
                    shutil.rmtree(dest, ignore_errors=True)
                else:
                    if not (work / "aside-day").exists():
                        put_back(work, work / "aside-full")
                        simulate_day(layout_for(work / "sample"), 0, seed=42)
                        keep_aside(work, work / "aside-day")
                    put_back(work, work / "aside-day")
                    row = timed(tool.backup_cmd(step), run_env)
                if step != "restore":
                    _, nodes = newest_nodes(tool.repo)
                    row["contents"] = digest({p: n for p, n in nodes.items() if n["type"] != "dir"})
                row.update(step=step, run=which, round=r)
                runs.setdefault((step, which), []).append(row)
                print(json.dumps(row), flush=True)
    for (step, which), rows in runs.items():
        peaks = [int(str(x["maxRssKb"])) for x in rows]
        cpu = [float(str(x["user"])) + float(str(x["sys"])) for x in rows]
        summary = {
            "step": step,
            "version": which,
            "medianMaxRssKb": statistics.median(peaks),
            "range": [min(peaks), max(peaks)],
            "medianCpu": round(statistics.median(cpu), 2),
            "contents": sorted({str(x.get("contents", "")) for x in rows}),
        }
        print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
