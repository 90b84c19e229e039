"""Wall time, CPU seconds and peak RSS of Phoenix and restic on a workspace of many small files.

A `node_modules` or a Python venv in an agent workspace is 100,000-200,000 files of a few dozen
bytes: what each step holds per file shows there, not in the benchmark's 287 files. Generates the
workspace (one folder, or `tree`: folders of ten files like a `node_modules`), then runs a first
backup, a no-change backup, a backup with one file changed, `ls` and a restore (its repository
evicted from the page cache first) with each tool, under `/usr/bin/time -f "%e %U %S %M"`.

    .venv/bin/python bench/many_files.py --files 100000 --shape flat --work /tmp/many
    .venv/bin/python bench/many_files.py --files 100000 --tools phoenix --src /tmp/old/src --work /tmp/many-old

`--src` runs the `phx` of another copy of `src/` (PYTHONPATH), for A/B runs alternated by hand.
Prints one line a step: tool, step, wall s, user s, system s, peak RSS KiB.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path


def generate(workspace: Path, files: int, shape: str) -> None:
    rnd = random.Random(1)
    for i in range(files):
        folder = (
            workspace / "many"
            if shape == "flat"
            else workspace / "node_modules" / f"pkg{i // 200}" / f"d{i // 10 % 20}"
        )
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"file{i:07d}.js").write_text(f"module.exports = {i}; // {rnd.random()}\n")


def evict(folder: Path) -> None:
    """Drop `folder`'s files from the page cache: the restore reads its repository from disk."""
    for path in folder.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def timed(tool: str, step: str, cmd: list[str], env: dict[str, str], work: Path) -> None:
    out = work / "time.txt"
    proc = subprocess.run(
        ["/usr/bin/time", "-o", str(out), "-f", "%e %U %S %M", *cmd], env=env, capture_output=True, check=False
    )
    if proc.returncode != 0:
        sys.exit(f"{tool} {step} failed ({proc.returncode}): {proc.stderr.decode(errors='replace')[-2000:]}")
    print(tool, step, out.read_text().strip(), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--shape", choices=("flat", "tree"), default="flat")
    parser.add_argument("--work", type=Path, required=True, help="an empty folder (removed first)")
    parser.add_argument("--tools", default="phoenix,restic")
    parser.add_argument("--src", type=Path, help="the src/ folder whose phx runs (default: the installed one)")
    args = parser.parse_args()
    work: Path = args.work
    shutil.rmtree(work, ignore_errors=True)
    workspace, home = work / "workspace", work / "home"
    home.mkdir(parents=True)
    generate(workspace, args.files, args.shape)
    changed = next(p for p in sorted((workspace).rglob("*.js")))
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PHX_", "RESTIC_"))}
    for tool in args.tools.split(","):
        if tool == "phoenix":
            env = {**base, "HOME": str(home), "PHX_PASSPHRASE": "pw", "PHX_CACHE_DIR": str(work / "phx-cache")}
            if args.src:
                env["PYTHONPATH"] = str(args.src)
            phx = [sys.executable, "-m", "phoenix_backup.cli.main"]
            repo, config = work / "phx-repo", work / "phx.json"
            init = [*phx, "init", "--config", str(work / "init.json"), "--workspace", str(workspace)]
            subprocess.run(
                [*init, "--repo", str(repo), "--encryption", "passphrase"], env=env, check=True, capture_output=True
            )
            doc = {
                "workspace": str(workspace),
                "backupDir": str(repo),
                "include": [],
                "exclude": [],
                "retention": {"last": -1},
            }
            config.write_text(json.dumps(doc))
            backup = [*phx, "backup", "--config", str(config), "--json"]
            ls = [*phx, "ls", "latest", "--config", str(config)]
            restore = [*phx, "restore", "--latest", "--to", str(work / "restored"), "--yes", "--config", str(config)]
        else:
            repo = work / "restic-repo"
            env = {
                **base,
                "RESTIC_PASSWORD": "pw",
                "RESTIC_REPOSITORY": str(repo),
                "RESTIC_CACHE_DIR": str(work / "restic-cache"),
            }
            subprocess.run(["restic", "init", "--repository-version", "2"], env=env, check=True, capture_output=True)
            backup = ["restic", "backup", "--quiet", "--compression", "auto", "--host", "bench", str(workspace)]
            ls = ["restic", "ls", "latest"]
            restore = ["restic", "restore", "--quiet", "latest", "--target", str(work / "restored")]
        timed(tool, "backup-first", backup, env, work)
        timed(tool, "backup-nochange", backup, env, work)
        changed.write_text(changed.read_text() + f"// changed for {tool}\n")
        timed(tool, "backup-one-changed", backup, env, work)
        timed(tool, "ls", ls, env, work)
        evict(repo)
        timed(tool, "restore", restore, env, work)
        shutil.rmtree(work / "restored")


if __name__ == "__main__":
    main()
