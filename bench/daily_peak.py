"""Peak RSS of the daily `phx backup` over a long history (docs/benchmarks.md, "The daily backup's
peak memory over a long history").

    .venv/bin/python bench/daily_peak.py --size medium --days 30 --workdir /tmp/daily-peak

Generates the workspace, backs it up, then simulates each day (`phoenix_backup.sample
.simulate_day`, as bench/run.py does) and runs `phx backup` under `/usr/bin/time -v`
(bench/run.py `measure`); prints one JSON line a step (maximum RSS, CPU seconds), then the
extents the last snapshot's SQLite databases are made of.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from run import PASSPHRASE, Phoenix, measure

from phoenix_backup.repo import keys
from phoenix_backup.repo.repository import Repository
from phoenix_backup.sample import generate_workspace, simulate_day
from phoenix_backup.storage.local import LocalBackend


def database_extents(repo_path: Path) -> dict[str, int]:
    """The extents of each SQLite database in the newest snapshot."""
    repo = Repository.open(LocalBackend(repo_path), keys.Credentials(passphrase=PASSPHRASE))
    repo.load_index()
    out: dict[str, int] = {}

    def walk(tree: bytes, path: str) -> None:
        for node in repo.load_tree(tree):
            if node.subtree is not None:
                walk(node.subtree, f"{path}/{node.name}")
            elif node.name.endswith(".db"):
                out[f"{path}/{node.name}"] = len(node.content)

    walk(repo.list_snapshots()[-1].tree, "")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="medium")
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--workdir", required=True, help="scratch folder; emptied first")
    args = parser.parse_args()
    work = Path(args.workdir).absolute()
    if work.exists():
        shutil.rmtree(work)
    (work / "logs").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PHX_", "RESTIC_", "BORG_"))}
    env["LC_ALL"] = "C.UTF-8"
    phx = [sys.executable, "-c", "import sys; sys.argv[0] = 'phx'; from phoenix_backup.cli.main import main; main()"]
    layout = generate_workspace(work / "sample", size=args.size, seed=args.seed)
    tool = Phoenix(work / "sample", work, env, phx)
    tool.init()
    for day in range(args.days + 1):
        step = f"day{day}" if day else "full"
        if day:
            simulate_day(layout, day - 1, seed=args.seed)
        m = measure(tool.backup_cmd(step), env=tool.env, cwd=None, log=work / "logs" / f"{step}.log")
        print(json.dumps({"step": step, **m.to_json()}), flush=True)
        if m.rc != 0:
            return 1
    print(json.dumps({"extents": database_extents(tool.repo)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
