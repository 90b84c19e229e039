"""CPU, peak memory and decryptions of `phx verify --read-data` on three repositories, two versions
of Phoenix alternated (docs/proving.md, "What verify proves").

    .venv/bin/python bench/verify_data.py --workdir /tmp/verify-data --old /tmp/old/src --rounds 3

The repositories are made once (kept in `--workdir` and reused): the medium sample (bench/run.py's
generator, seed 42) backed up once, one 1 GB file of random bytes, and 100,000 files of 1 KiB of
random bytes in 100 folders; with `--only days`, also the medium sample backed up again after each
of 7 simulated days (bench/run.py's `simulate_day`). Each round runs `phx verify --read-data` under `/usr/bin/time -v`
(bench/run.py `measure`) with each version, in alternating order (A B, then B A); the medians of
user+system CPU seconds, wall seconds and maximum RSS are printed as one JSON line per repository
and version. `--old` is the `src` folder of the other version (e.g. `git archive main src`); the
version installed in the virtualenv is the new one. Then, once per version, in a process of its
own: how many times the data blobs were opened (decrypted and decompressed) against how many
copies the index lists, `checked.files`, and what the pack pass held (peakHeldBytes; with the
sealed holding also reopened, reread, refused; before it givenUp).

With `--run-workdir DIR` the repositories are those `bench/run.py --keep --workdir DIR` left (the
medium sample and its simulated days, Phoenix's and restic's) instead, and restic's
`check --read-data` runs beside the two versions in each round:

    .venv/bin/python bench/run.py --size medium --days 7 --tools phoenix,restic --keep --no-readme \
        --workdir /tmp/vmem-work
    .venv/bin/python bench/verify_data.py --run-workdir /tmp/vmem-work --old /tmp/old/src --rounds 3
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

from run import PASSPHRASE, Phoenix, Restic, measure

from phoenix_backup.sample import generate_workspace, simulate_day

# Counted in a process of its own, so that `--old` is the version imported.
COUNT = """
import json, sys
sys.path.insert(0, sys.argv[1]) if sys.argv[1] else None
from collections import Counter
from phoenix_backup.repo import keys
from phoenix_backup.repo.checker import verify_repository
from phoenix_backup.repo.crypto import BlobType
from phoenix_backup.repo.repository import Repository
from phoenix_backup.storage.local import LocalBackend
repo = Repository.open(LocalBackend(sys.argv[2]), keys.Credentials(passphrase=sys.argv[3]))
repo.load_index()
opened = Counter()
real = repo.open_blob
def counting(kind, blob, *args, **kwargs):
    if kind == BlobType.DATA:
        opened[blob] += 1
    return real(kind, blob, *args, **kwargs)
repo.open_blob = counting
held = {}
try:
    from phoenix_backup.repo import prover
    class Watched(prover.NodeProver):
        def close(self):
            held.update(peakHeldBytes=self.peak_held)
            for name in ("given_up", "reopened", "reread", "refused"):
                if hasattr(self, name):
                    held[name] = getattr(self, name)
            super().close()
    import phoenix_backup.repo.checker as checker
    checker.NodeProver = Watched
except ImportError:
    pass
result = verify_repository(repo, read_data=True)
copies = sum(1 for _b, loc in repo.index.blobs() if loc.type == BlobType.DATA)
print(json.dumps({"ok": result.ok, "files": result.checked["files"], "dataBlobCopies": copies,
                  "opened": sum(opened.values()), **held}))
"""


def make(work: Path, name: str, env: dict[str, str], phx: list[str]) -> Phoenix:
    """The repository `name` below `work`, made and backed up once (kept for later runs)."""
    root = work / name / "sample"
    tool = Phoenix(root, work / name, env, phx)
    if (work / name / "done").exists():
        return tool
    if (work / name).exists():
        shutil.rmtree(work / name)
    (work / name).mkdir(parents=True)
    if name in ("medium", "days"):
        layout = generate_workspace(root, size="medium", seed=42)
    else:
        (root / "home").mkdir(parents=True)
        ws = root / "workspace"
        ws.mkdir()
        if name == "1gb":
            with open(ws / "random.bin", "wb") as f:
                for _ in range(16):
                    f.write(os.urandom(64 << 20))
        else:
            for d in range(100):
                (ws / f"d{d:02}").mkdir()
                for i in range(1000):
                    (ws / f"d{d:02}" / f"f{i:03}.bin").write_bytes(os.urandom(1024))
    tool.init()
    subprocess.run(tool.backup_cmd("full"), env=tool.env, check=True, capture_output=True)
    for day in range(7 if name == "days" else 0):  # a history: each database in 8 versions
        simulate_day(layout, day, seed=42)
        subprocess.run(tool.backup_cmd(f"day{day}"), env=tool.env, check=True, capture_output=True)
    (work / name / "done").write_text("")
    return tool


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="where the repositories are made and kept")
    parser.add_argument("--old", required=True, help="the src folder of the version to compare with")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", nargs="*", default=["medium", "1gb", "small"])
    parser.add_argument("--run-workdir", help="measure the repositories bench/run.py --keep left here, restic's too")
    args = parser.parse_args()
    work = Path(args.workdir).absolute()
    (work / "logs").mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PHX_", "RESTIC_", "BORG_"))}
    env["LC_ALL"] = "C.UTF-8"
    versions = {"old": str(Path(args.old).absolute()), "new": ""}
    main_of = "import sys; sys.argv[0] = 'phx'; from phoenix_backup.cli.main import main; main()"
    phx_of = {
        v: [sys.executable, "-c", f"import sys; sys.path.insert(0, {src!r}) if {src!r} else None; {main_of}"]
        for v, src in versions.items()
    }
    run_work = Path(args.run_workdir).absolute() if args.run_workdir else None
    restic = Restic(run_work / "sample", run_work, env) if run_work else None
    for name in ["run"] if run_work else args.only:
        if run_work is not None:
            tool = Phoenix(run_work / "sample", run_work, env, phx_of["new"])
        else:
            tool = make(work, name, env, phx_of["new"])
        figures: dict[str, list[tuple[float, float, int]]] = {v: [] for v in [*versions, *(["restic"] * bool(restic))]}
        for r in range(args.rounds):
            for v in list(figures) if r % 2 == 0 else list(reversed(figures)):
                if v == "restic" and restic is not None:
                    cmd, run_env = ["restic", "check", "--read-data"], restic.env
                else:
                    cmd = [*phx_of[v], "verify", "--read-data", "--json", "--config", str(tool.config)]
                    run_env = tool.env
                m = measure(cmd, env=run_env, cwd=None, log=work / "logs" / f"{name}-{v}-{r}.log")
                if m.rc != 0:
                    print(f"{name} {v}: exit {m.rc}; see {work / 'logs'}", file=sys.stderr)
                    return 1
                figures[v].append((m.cpu, m.wall, m.rss_kb))
        for v, runs in figures.items():
            counted = subprocess.run(
                [sys.executable, "-c", "print('{}')"]
                if v == "restic"
                else [sys.executable, "-c", COUNT, versions[v], str(tool.repo), PASSPHRASE],
                env=tool.env,
                capture_output=True,
                text=True,
                check=True,
            )
            doc = {
                "repository": name,
                "version": v,
                "cpuSeconds": round(statistics.median(c for c, _w, _r in runs), 2),
                "wallSeconds": round(statistics.median(w for _c, w, _r in runs), 2),
                "maxRssMB": round(statistics.median(r for _c, _w, r in runs) / 1024, 1),
                "runs": [[round(c, 2), round(w, 2), r] for c, w, r in runs],
                **json.loads(counted.stdout),
            }
            print(json.dumps(doc), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
