"""The same daily backup run by two versions of Phoenix on the same repository (docs/benchmarks.md,
"The parent's extents in memory").

    .venv/bin/python bench/extents_ab.py --workdir /tmp/daily-peak --old /tmp/old/src --new src

`--workdir` is a folder bench/daily_peak.py left (its workspace, repository and cache). One more
day is simulated and the repository, cache and machine state are copied aside (run again, the
script reuses that copy: the same day, compared again); then each round runs `phx backup` once
with each version (alternating which goes first), each from that copy, under `/usr/bin/time -v`.
Prints one JSON line a run: maximum RSS, CPU seconds, the new snapshot's root tree id and a
SHA-256 of its file and database nodes as stored (their extents); then the medians.
"""

from __future__ import annotations

import argparse
import hashlib
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


def newest_nodes(repo_path: Path) -> tuple[str, dict[str, dict[str, object]]]:
    """The newest snapshot's root tree id, and each of its nodes' JSON (as stored) by path."""
    repo = Repository.open(LocalBackend(repo_path), keys.Credentials(passphrase=PASSPHRASE))
    repo.load_index()
    root = repo.list_snapshots()[-1].tree
    nodes: dict[str, dict[str, object]] = {}
    stack = [(root, "")]
    while stack:
        tree, path = stack.pop()
        for node in repo.load_tree(tree):
            nodes[f"{path}/{node.name}"] = node.to_json()
            if node.subtree is not None:
                stack.append((node.subtree, f"{path}/{node.name}"))
    return root.hex(), nodes


def bench_phoenix(work: Path) -> Phoenix:
    """bench/run.py's Phoenix on `work` (its sample, repository and cache), run by this Python with
    no PYTHONPATH of its own: each run names the `src` folder of the version it runs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PHX_", "RESTIC_", "BORG_", "PYTHONPATH"))}
    env["LC_ALL"] = "C.UTF-8"
    phx = [sys.executable, "-c", "import sys; sys.argv[0] = 'phx'; from phoenix_backup.cli.main import main; main()"]
    return Phoenix(work / "sample", work, env, phx)


def digest(nodes: dict[str, dict[str, object]]) -> str:
    return hashlib.sha256(json.dumps(nodes, sort_keys=True).encode()).hexdigest()


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
    tool = bench_phoenix(work)
    aside = work / "ab-aside"
    if not aside.exists():  # a second run of this script compares again from the same state
        simulate_day(layout_for(work / "sample"), args.day, seed=args.seed)
        (work / "ab-aside.partial").mkdir()
        for i, name in enumerate(STATE):
            subprocess.run(["cp", "-a", str(work / name), str(work / "ab-aside.partial" / str(i))], check=True)
        (work / "ab-aside.partial").rename(aside)
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
            tree, nodes = newest_nodes(tool.repo)
            (work / "logs" / f"ab-{which}-{r}.nodes.json").write_text(json.dumps(nodes, sort_keys=True, indent=1))
            # Folders' times change as the state is put back between runs; the files' and
            # databases' nodes (their extents) must not.
            contents = {path: node for path, node in nodes.items() if node["type"] != "dir"}
            row = {"run": which, "round": r, **m.to_json(), "tree": tree, "contents": digest(contents)}
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
                    "contents": sorted({str(x["contents"]) for x in rows}),
                }
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
