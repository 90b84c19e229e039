"""The same daily backup run by two versions of Phoenix on the same repository (docs/benchmarks.md,
"The parent's extents in memory").

    .venv/bin/python bench/extents_ab.py --workdir /tmp/daily-peak --old /tmp/old/src --new src

`--workdir` is a folder bench/daily_peak.py left (its workspace, repository and cache). One more
day is simulated, the repository and cache are copied aside, then each round runs `phx backup`
once with each version (alternating which goes first), each from the same copy, under
`/usr/bin/time -v`. Prints one JSON line a run: maximum RSS, CPU seconds and the new snapshot's
root tree id (keyed by content: equal ids are byte-identical trees), then the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from run import PASSPHRASE, Phoenix, measure

from phoenix_backup.repo import keys
from phoenix_backup.repo.repository import Repository
from phoenix_backup.sample import simulate_day
from phoenix_backup.sample.workspace import layout_for
from phoenix_backup.storage.local import LocalBackend

# What a backup changes besides the workspace's own files: the repository, the cache, the pins of
# the snapshots this machine saw (rollback detection) and the last backup's record.
STATE = ("phoenix-repo", "phoenix-cache", "sample/home/.local/share/phoenix", "sample/home/.argentos/backup")


def newest_tree(repo_path: Path) -> str:
    repo = Repository.open(LocalBackend(repo_path), keys.Credentials(passphrase=PASSPHRASE))
    return repo.list_snapshots()[-1].tree.hex()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="a folder bench/daily_peak.py left")
    parser.add_argument("--old", required=True, help="the src folder of the version to compare with")
    parser.add_argument("--new", required=True, help="the src folder of this version")
    parser.add_argument("--day", type=int, default=30, help="the day to simulate (daily_peak's --days)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    work = Path(args.workdir).absolute()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PHX_", "RESTIC_", "BORG_", "PYTHONPATH"))}
    env["LC_ALL"] = "C.UTF-8"
    phx = [sys.executable, "-c", "import sys; sys.argv[0] = 'phx'; from phoenix_backup.cli.main import main; main()"]
    tool = Phoenix(work / "sample", work, env, phx)
    simulate_day(layout_for(work / "sample"), args.day, seed=args.seed)
    aside = work / "ab-aside"
    shutil.rmtree(aside, ignore_errors=True)
    aside.mkdir()
    for i, name in enumerate(STATE):
        subprocess.run(["cp", "-a", str(work / name), str(aside / str(i))], check=True)
    runs: dict[str, list[dict[str, object]]] = {"old": [], "new": []}
    for r in range(args.rounds):
        order = ["old", "new"] if r % 2 == 0 else ["new", "old"]
        for which in order:
            for i, name in enumerate(STATE):
                shutil.rmtree(work / name)
                subprocess.run(["cp", "-a", str(aside / str(i)), str(work / name)], check=True)
            src = str(Path(args.old if which == "old" else args.new).absolute())
            run_env = {**tool.env, "PYTHONPATH": src}
            m = measure(tool.backup_cmd(which), env=run_env, cwd=None, log=work / "logs" / f"ab-{which}-{r}.log")
            row = {"run": which, "round": r, **m.to_json(), "tree": newest_tree(tool.repo)}
            runs[which].append(row)
            print(json.dumps(row), flush=True)
            if m.rc != 0:
                return 1
    for which, rows in runs.items():
        print(
            json.dumps(
                {
                    "version": which,
                    "medianMaxRssKb": statistics.median(int(str(x["maxRssKb"])) for x in rows),
                    "medianCpu": statistics.median(float(str(x["cpu"])) for x in rows),
                    "trees": sorted({str(x["tree"]) for x in rows}),
                }
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
