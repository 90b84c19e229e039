"""A chaos soak of Phoenix: every command at once, for a while, against one repository with a Git
and an S3 replica, then every snapshot proved.

    .venv/bin/python bench/soak.py --workdir /tmp/soak-run --minutes 15 --parallel 3

Set-up (in --workdir, emptied first): the tiny sample workspace, two SQLite stores an agent thread
keeps writing to (a WAL store and a rollback-journal store: inserts, updates, deletes, each
transaction numbered in a `log` table and in the agent's own log file), notes it creates, rewrites,
renames and deletes, a local first target, a Git replica (a bare repository on disk) and an S3
replica (a moto server on loopback). Then --parallel loops run random `phx` commands (backup,
forget, sync, verify, watch, restore --to, list, ls, key rotate once or twice), now and then one is
SIGKILLed at a random moment. Every command, its exit code and its first error line go to
`commands.jsonl`; an exit other than 0 must be a documented sentence, never a traceback or
"unexpected internal error".

Afterwards: `phx sync`, `phx verify --read-data` on every target, every snapshot restored from
each target alone and compared with `phx ls --json` (each file's SHA-256) and with the agent's log
(each store: `integrity_check` ok, its `log` a prefix 1..N of the transactions committed, its rows
exactly the state after transaction N, its row counts those its backup reported; each note a
version the agent wrote under that name), and `phx restore --at` at times `phx list --timeline`
says the watches covered (and once in a gap). The findings go to `report.json`; the exit code is 1
when anything was wrong. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from phoenix_backup.sample import generate_workspace

PASSPHRASE = "soak passphrase, not a secret"
KDF = {"n": 2**12, "r": 8, "p": 1}
STORES = {"wal": "agent/wal.db", "journal": "agent/journal.db"}  # below the workspace
NOTES = "agent-notes"
KEEP_LAST = 4
# A line on stderr that says what failed: an error, or a part of the run that failed (exit 3).
SAID = re.compile(r'^phx: (error|target \S+ failed|not saved|damaged):|"type": "error"|"level": "problem"')
PHX = str(Path(sys.executable).with_name("phx"))


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# The world
# --------------------------------------------------------------------------------------------


class World:
    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.sample = workdir / "sample"
        self.home = self.sample / "home"
        self.workspace = self.sample / "workspace"
        self.config = self.home / ".argentos" / "backup.json"
        self.repo = workdir / "repo"
        self.git_remote = workdir / "git-remote.git"
        self.scratch = workdir / "scratch"
        self.agent_log = workdir / "agent-log.jsonl"
        self.commands_log = workdir / "commands.jsonl"
        self.moto: subprocess.Popen[bytes] | None = None
        self.endpoint = ""
        self.bucket = "soak"
        self.env: dict[str, str] = {}

    def start_moto(self) -> None:
        log = (self.dir / "moto.log").open("wb")
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        self.moto = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "0"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            found = re.search(rb"Running on http://127\.0\.0\.1:(\d+)", (self.dir / "moto.log").read_bytes())
            if found:
                self.endpoint = f"http://127.0.0.1:{int(found.group(1))}"
                break
            time.sleep(0.2)
        else:
            raise RuntimeError("moto did not start")
        import boto3

        boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="AKIASOAK",
            aws_secret_access_key="soak",
            region_name="us-east-1",
        ).create_bucket(Bucket=self.bucket)

    def setup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        self.scratch.mkdir()
        generate_workspace(self.sample, size="tiny", seed=31)
        subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(self.git_remote)], check=True)
        self.start_moto()
        (self.workspace / "agent").mkdir()
        (self.workspace / NOTES).mkdir()
        for name, rel in STORES.items():
            con = sqlite3.connect(self.workspace / rel)
            con.execute(f"PRAGMA journal_mode={'wal' if name == 'wal' else 'delete'}")
            con.executescript(
                "CREATE TABLE log(seq INTEGER PRIMARY KEY, at TEXT NOT NULL);"
                "CREATE TABLE items(id INTEGER PRIMARY KEY, val TEXT NOT NULL, seq INTEGER NOT NULL);"
            )
            con.commit()
            con.close()
        cache = self.dir / "cache"
        cache.mkdir()
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "HOME": str(self.home),
            "PHX_CONFIG": str(self.config),
            "PHX_PASSPHRASE": PASSPHRASE,
            "PHX_CACHE_DIR": str(cache),
            "XDG_CACHE_HOME": str(self.dir / "xdg-cache"),
            "XDG_CONFIG_HOME": str(self.dir / "xdg-config"),
            "XDG_DATA_HOME": str(self.dir / "xdg-data"),
            "GIT_AUTHOR_NAME": "soak",
            "GIT_AUTHOR_EMAIL": "soak@example.invalid",
            "GIT_COMMITTER_NAME": "soak",
            "GIT_COMMITTER_EMAIL": "soak@example.invalid",
        }
        config = {
            "workspace": str(self.workspace),
            "include": [],
            "exclude": [],
            "encryption": {"enabled": True, "method": "passphrase"},
            "databases": {
                "sqlite": [
                    "~/.argentos/memory.db",
                    "~/.argentos/observations.db",
                    "~/.argentos/data/dashboard.db",
                    *(str(self.workspace / rel) for rel in STORES.values()),
                ],
                "integrityCheckEvery": "0h",
            },
            "targets": {
                "local": {"enabled": True, "path": str(self.repo)},
                "git": {"enabled": True, "repo": str(self.git_remote), "branch": "main", "autoCommit": True},
                "s3": {
                    "enabled": True,
                    "bucket": self.bucket,
                    "prefix": "argent/",
                    "endpoint": self.endpoint,
                    "accessKeyId": "AKIASOAK",
                    "secretAccessKey": "soak-secret-key",
                },
            },
            "retention": {
                "within": "0h",
                "last": KEEP_LAST,
                "hourly": 0,
                "daily": 0,
                "weekly": 0,
                "monthly": 0,
                "yearly": 0,
                "prune": True,
            },
        }
        self.config.write_text(json.dumps(config, indent=2) + "\n")
        self.config.chmod(0o600)
        from phoenix_backup.config import load_config
        from phoenix_backup.ops.context import Environment, open_repository

        cfg = load_config(self.config, self.env)
        open_repository(cfg, Environment(env=self.env), create=True, kdf_params=KDF).close()


# --------------------------------------------------------------------------------------------
# The agent: numbered transactions, logged once committed
# --------------------------------------------------------------------------------------------


class Agent(threading.Thread):
    def __init__(self, world: World, state: int) -> None:
        super().__init__(daemon=True)
        self.world = world
        self.rng = random.Random(state)
        self.stop = threading.Event()
        self.seq = dict.fromkeys(STORES, 0)
        self.errors: collections.Counter[str] = collections.Counter()
        self.commits = 0
        self.note_ops = 0
        self.next_id = 0
        self.notes: list[str] = []
        self.note_version = 0

    def log(self, entry: dict[str, Any]) -> None:
        with self.world.agent_log.open("a") as f:
            f.write(json.dumps(entry) + "\n")

    def transaction(self, store: str) -> None:
        path = self.world.workspace / STORES[store]
        con = sqlite3.connect(path, timeout=30, isolation_level=None)
        try:
            con.execute("BEGIN IMMEDIATE")
            seq = self.seq[store] + 1
            began = now()
            ops: list[list[Any]] = []
            ids = [r[0] for r in con.execute("SELECT id FROM items")]
            for _ in range(self.rng.randint(1, 4)):
                kind = self.rng.random()
                if kind < 0.5 or not ids:
                    self.next_id += 1
                    val = f"{store}-{seq}-{self.next_id}-" + "x" * self.rng.randint(10, 3000)
                    con.execute("INSERT INTO items VALUES (?, ?, ?)", (self.next_id, val, seq))
                    ops.append(["ins", self.next_id, val])
                    ids.append(self.next_id)
                elif kind < 0.8:
                    i = self.rng.choice(ids)
                    val = f"{store}-{seq}-upd-{i}-" + "y" * self.rng.randint(10, 500)
                    con.execute("UPDATE items SET val = ?, seq = ? WHERE id = ?", (val, seq, i))
                    ops.append(["upd", i, val])
                else:
                    i = self.rng.choice(ids)
                    con.execute("DELETE FROM items WHERE id = ?", (i,))
                    ops.append(["del", i, None])
                    ids.remove(i)
            con.execute("INSERT INTO log VALUES (?, ?)", (seq, began))
            if self.rng.random() < 0.03:
                time.sleep(self.rng.uniform(0.2, 1.0))  # a long write transaction now and then
            con.execute("COMMIT")
            self.seq[store] = seq
            self.commits += 1
            self.log({"store": store, "seq": seq, "began": began, "ended": now(), "ops": ops})
        except sqlite3.Error as exc:
            self.errors[f"{store}: {exc}"] += 1
            with contextlib.suppress(sqlite3.Error):
                con.execute("ROLLBACK")
        finally:
            con.close()

    def note(self) -> None:
        folder = self.world.workspace / NOTES
        self.note_version += 1
        v = self.note_version
        kind = self.rng.random()
        if kind < 0.4 or len(self.notes) < 3:
            name = f"note-{v}.md"
            content = f"# {name} v{v}\n" + "n" * self.rng.randint(10, 20000)
            tmp = folder / f".{name}.tmp"
            tmp.write_text(content)
            os.replace(tmp, folder / name)
            self.notes.append(name)
            self.log({"note": name, "sha256": hashlib.sha256(content.encode()).hexdigest(), "at": now()})
        elif kind < 0.65:
            name = self.rng.choice(self.notes)
            content = f"# {name} v{v}\n" + "m" * self.rng.randint(10, 20000)
            (folder / name).write_text(content)  # in place, not atomic: a torn note is possible
            self.log(
                {"note": name, "sha256": hashlib.sha256(content.encode()).hexdigest(), "at": now(), "inplace": True}
            )
        elif kind < 0.85:
            old = self.rng.choice(self.notes)
            new = f"renamed-{v}.md"
            data = (folder / old).read_bytes()
            os.rename(folder / old, folder / new)
            self.notes.remove(old)
            self.notes.append(new)
            self.log({"note": new, "sha256": hashlib.sha256(data).hexdigest(), "at": now(), "from": old})
        else:
            name = self.rng.choice(self.notes)
            (folder / name).unlink()
            self.notes.remove(name)
            self.log({"note": name, "deleted": True, "at": now()})
        self.note_ops += 1

    def run(self) -> None:
        while not self.stop.is_set():
            self.transaction(self.rng.choice(list(STORES)))
            if self.rng.random() < 0.08:
                self.note()
            time.sleep(self.rng.uniform(0.05, 0.3))


# --------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------


class Runner:
    def __init__(self, world: World, state: int) -> None:
        self.world = world
        self.rng = random.Random(state)
        self.lock = threading.Lock()
        self.running: dict[int, tuple[subprocess.Popen[str], str]] = {}
        self.records: list[dict[str, Any]] = []
        self.rotations = 0
        self.max_rotations = 2
        self.kills = 0
        self.counter = 0

    def run(self, name: str, args: list[str], *, timeout: float = 900) -> dict[str, Any]:
        with self.lock:
            self.counter += 1
            n = self.counter
        started = now()
        t0 = time.monotonic()
        proc = subprocess.Popen(
            [PHX, *args],
            env=self.world.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        with self.lock:
            self.running[proc.pid] = (proc, name)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            err += "\nSOAK: timed out\n"
        finally:
            with self.lock:
                self.running.pop(proc.pid, None)
        rc = proc.returncode
        error_lines = [ln for ln in err.splitlines() if SAID.search(ln)]
        rec = {
            "n": n,
            "name": name,
            "args": args,
            "rc": rc,
            "started": started,
            "ended": now(),
            "seconds": round(time.monotonic() - t0, 2),
            "error": error_lines[0][:400] if error_lines else "",
            "traceback": "Traceback" in out + err,
            "internal": "unexpected internal error" in out + err,
            "stdout": out if (args and "--json" in args and rc in (0, 3)) else "",
            "stderr_tail": err[-3000:] if rc != 0 or "Traceback" in err else "",
            "stdout_tail": out[-2000:] if rc != 0 else "",
        }
        with self.lock:
            self.records.append(rec)
            with self.world.commands_log.open("a") as f:
                f.write(json.dumps(rec) + "\n")
        return rec

    def snapshot_ids(self) -> list[str]:
        rec = self.run("list", ["list", "--json"])
        if rec["rc"] != 0:
            return []
        try:
            return [s["id"] for s in json.loads(rec["stdout"])]
        except (ValueError, KeyError):
            return []

    def one(self) -> None:
        r = self.rng.random()
        w = self.world
        if r < 0.22:
            args = ["backup"] + (["--json"] if self.rng.random() < 0.6 else [])
            self.run("backup", args)
        elif r < 0.32:
            self.run("forget", ["forget", "--json"])
        elif r < 0.38:
            self.run("prune", ["prune"])
        elif r < 0.48:
            self.run("sync", ["sync", "--json"] if self.rng.random() < 0.5 else ["sync"])
        elif r < 0.58:
            roll = self.rng.random()
            if roll < 0.3:
                args = ["verify", "--read-data", "--subset", str(self.rng.choice([5, 10, 25]))]
            elif roll < 0.4:
                args = ["verify", "--target", self.rng.choice(["git", "s3"])]
            else:
                args = ["verify"]
            self.run("verify", args)
        elif r < 0.68:
            args = ["watch", "--duration", str(self.rng.randint(20, 90))]
            self.run("watch", args + (["--no-files"] if self.rng.random() < 0.5 else []))
        elif r < 0.80:
            ids = self.snapshot_ids()
            if ids:
                sid = self.rng.choice(ids)
                dest = w.scratch / f"r{self.counter}-{sid[:8]}"
                self.run("restore", ["restore", "--backup", sid, "--to", str(dest), "--yes", "--json"])
                shutil.rmtree(dest, ignore_errors=True)
        elif r < 0.88:
            self.run("list", ["list"] + (["--json"] if self.rng.random() < 0.5 else []))
        elif r < 0.93:
            self.run("ls", ["ls", "latest", "--json"])
        elif r < 0.96 and self.rotations < self.max_rotations:
            with self.lock:
                self.rotations += 1
            self.run("key rotate", ["key", "rotate"])
        else:
            self.run("status", ["status"])

    def loop(self, until: float) -> None:
        while time.monotonic() < until:
            self.one()
            time.sleep(self.rng.uniform(0.0, 2.0))

    def killer(self, until: float, rng: random.Random) -> None:
        while time.monotonic() < until:
            time.sleep(rng.uniform(20, 60))
            with self.lock:
                victims = [(p, n) for p, n in self.running.values() if p.poll() is None]
            if victims:
                proc, name = rng.choice(victims)
                time.sleep(rng.uniform(0, 3))
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                    self.kills += 1
                    with self.world.commands_log.open("a") as f:
                        f.write(json.dumps({"kill": name, "pid": proc.pid, "at": now()}) + "\n")


# --------------------------------------------------------------------------------------------
# Proofs
# --------------------------------------------------------------------------------------------


def load_agent_log(path: Path) -> tuple[dict[str, list[dict[str, Any]]], dict[str, set[str]]]:
    txs: dict[str, list[dict[str, Any]]] = {s: [] for s in STORES}
    notes: dict[str, set[str]] = collections.defaultdict(set)
    for line in path.read_text().splitlines():
        e = json.loads(line)
        if "store" in e:
            txs[e["store"]].append(e)
        elif "sha256" in e:
            notes[e["note"]].add(e["sha256"])
    for s in STORES:
        assert [t["seq"] for t in txs[s]] == list(range(1, len(txs[s]) + 1))
    return txs, notes


def expected_rows(txs: list[dict[str, Any]], upto: int) -> dict[int, tuple[str, int]]:
    rows: dict[int, tuple[str, int]] = {}
    for t in txs[:upto]:
        for op, i, val in t["ops"]:
            if op == "del":
                rows.pop(i, None)
            else:
                rows[i] = (val, t["seq"])
    return rows


def prove_store(db: Path, txs: list[dict[str, Any]]) -> tuple[int, list[str]]:
    """(N, problems): the store must pass integrity_check, hold log 1..N and the rows after N."""
    problems: list[str] = []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        ic = con.execute("PRAGMA integrity_check").fetchall()
        if ic != [("ok",)]:
            problems.append(f"integrity_check: {ic[:3]}")
        seqs = [r[0] for r in con.execute("SELECT seq FROM log ORDER BY seq")]
        n = len(seqs)
        if seqs != list(range(1, n + 1)):
            gap = next((want for got, want in zip(seqs, range(1, n + 1), strict=True) if got != want), None)
            problems.append(f"log is not a prefix 1..N: {n} rows, the first missing is {gap}")
        if n > len(txs):
            problems.append(f"log holds {n} transactions, the agent committed {len(txs)}")
        rows = {r[0]: (r[1], r[2]) for r in con.execute("SELECT id, val, seq FROM items")}
        want = expected_rows(txs, n)
        if rows != want:
            extra = set(rows) - set(want)
            missing = set(want) - set(rows)
            changed = [i for i in set(rows) & set(want) if rows[i] != want[i]]
            problems.append(
                f"rows differ from the state after transaction {n}: "
                f"{len(extra)} extra, {len(missing)} missing, {len(changed)} changed"
            )
        return n, problems
    finally:
        con.close()


def restored_files(root: Path) -> dict[str, str]:
    out = {}
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            out[p.relative_to(root).as_posix()] = sha256_file(p)
    return out


def prove_snapshot(
    world: World,
    run: Any,
    sid: str,
    target: str,
    want: dict[str, str | None],
    said: dict[str, Any],
    txs: dict[str, list[dict[str, Any]]],
    notes: dict[str, set[str]],
    problems: list[str],
) -> dict[str, Any]:
    """Restore snapshot `sid` from `target` alone and prove it: each file's SHA-256 as `phx ls`
    gives it, the agent stores (a prefix of the log, exactly its rows, the counts the backup said),
    the notes (a version the agent wrote under that name), the sample's stores (integrity_check)."""
    tag = f"{sid[:12]} from {target}"
    dest = world.dir / "prove" / f"{sid[:12]}-{target}"
    shutil.rmtree(dest, ignore_errors=True)
    rs = run("prove restore", ["restore", "--backup", sid, "--target", target, "--to", str(dest), "--yes", "--json"])
    proof: dict[str, Any] = {"restore_rc": rs["rc"]}
    if rs["rc"] != 0:
        problems.append(f"{tag}: restore exit {rs['rc']} ({rs['error']})")
        return proof
    got = restored_files(dest)
    bad = [p for p, h in want.items() if h and got.get(p) != h]
    proof["files_bad"] = bad[:5]
    if bad:
        problems.append(f"{tag}: {len(bad)} files differ from ls's SHA-256, e.g. {bad[:3]}")
    for store, rel in STORES.items():
        db = next((dest / p for p in got if p.endswith(rel)), None)
        if db is None:
            proof[store] = "absent"
            continue
        n, probs = prove_store(db, txs[store])
        proof[store] = n
        problems.extend(f"{tag} {store}: {p}" for p in probs)
        tables = said.get("tables", {}).get(f"workspace/{rel}")
        if tables is not None:
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
            counts = {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("log", "items")}
            con.close()
            if {t: tables.get(t) for t in counts} != counts:
                problems.append(f"{tag} {store}: rows {counts} but the backup said {tables}")
    unknown = [
        p.rsplit("/", 1)[1]
        for p, h in got.items()
        if f"{NOTES}/" in p and h not in notes.get(p.rsplit("/", 1)[1], set())
    ]
    if unknown:
        proof["notes_unknown"] = unknown
        problems.append(f"{tag}: notes whose content the agent never wrote under that name: {unknown[:3]}")
    for other in ("memory.db", "observations.db", "dashboard.db"):
        db = next((dest / p for p in got if p.endswith(other)), None)
        if db is not None:
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
            ic = con.execute("PRAGMA integrity_check").fetchall()
            con.close()
            if ic != [("ok",)]:
                problems.append(f"{tag} {other}: integrity_check {ic[:2]}")
    shutil.rmtree(dest, ignore_errors=True)
    return proof


def prove(world: World, runner: Runner, agent: Agent, backups: list[dict[str, Any]]) -> dict[str, Any]:
    report: dict[str, Any] = {"problems": []}
    problems: list[str] = report["problems"]
    run = runner.run
    txs, notes = load_agent_log(world.agent_log)

    for name in ("sync", "verify-local", "verify-git", "verify-s3"):
        if name == "sync":
            rec = run("final sync", ["sync", "--json"])
        else:
            rec = run("final verify", ["verify", "--read-data", "--json", "--target", name.split("-")[1]])
        report[name] = {"rc": rec["rc"], "error": rec["error"]}
        if rec["rc"] != 0:
            problems.append(f"final {name}: exit {rec['rc']}: {rec['error']}")

    rec = run("final list", ["list", "--json"])
    snaps = json.loads(rec["stdout"]) if rec["rc"] == 0 else []
    report["snapshots"] = len(snaps)
    listed = {s["id"]: s for s in snaps}

    # Every snapshot a backup reported must be listed, unless a retention run (a forget's or a
    # backup's) reported it removed.
    forgotten: set[str] = set()
    for r in runner.records:
        if r["rc"] in (0, 3) and r["stdout"]:
            with contextlib.suppress(ValueError, AttributeError, TypeError):
                doc = json.loads(r["stdout"])
                if r["name"] == "forget":
                    forgotten |= set(doc["targets"]["local"]["removed"])
                elif r["name"] == "backup":
                    forgotten |= {x["id"] for x in (doc.get("retention") or {}).get("removed", {}).get("local", [])}
    reported = [b for b in backups if b.get("snapshot")]
    said = {b["snapshot"]: b for b in reported}
    gone = [b for b in reported if b["snapshot"] not in listed]
    # What no JSON report named (a backup without --json, a killed forget) must still be what the
    # policy removes: older than the `last` newest snapshots listed.
    newest = sorted((s.get("time", "") for s in listed.values()), reverse=True)[:KEEP_LAST]
    unnamed = [b for b in gone if b["snapshot"] not in forgotten]
    lost = [b["snapshot"] for b in unnamed if len(newest) < KEEP_LAST or b["time"] > newest[-1]]
    report["backups"] = {
        "reported": len(reported),
        "listed_at_the_end": sum(1 for b in reported if b["snapshot"] in listed),
        "removed_as_reported": sum(1 for b in gone if b["snapshot"] in forgotten),
        "removed_unreported_but_older_than_the_kept": len(unnamed) - len(lost),
        "lost": lost,
    }
    if lost:
        problems.append(f"snapshots a backup reported that are gone though the policy keeps them: {lost}")

    proofs = []
    for sid, snap in sorted(listed.items(), key=lambda kv: kv[1].get("time", "")):
        proof: dict[str, Any] = {"id": sid, "scope": snap.get("scope"), "time": snap.get("time")}
        ls = run("prove ls", ["ls", sid, "--json"])
        if ls["rc"] != 0:
            problems.append(f"{sid[:12]}: ls exit {ls['rc']} ({ls['error']})")
            proofs.append(proof)
            continue
        entries = json.loads(ls["stdout"])["entries"]
        want = {e["path"]: e.get("sha256") for e in entries if e.get("type") in ("file", "sqlite")}
        proof["files"] = len(want)
        for target in ("local", "git", "s3"):  # every snapshot from each target alone
            proof[target] = prove_snapshot(world, run, sid, target, want, said.get(sid, {}), txs, notes, problems)
        proofs.append(proof)
    report["proofs"] = proofs

    # restore --at at times the timeline says the watches covered (both stores), and one in a gap
    at_proofs = []
    rng = random.Random(7)
    tl = run("prove timeline", ["list", "--timeline", "--json"])
    spans: list[tuple[datetime, datetime]] = []
    gaps: list[tuple[datetime, datetime]] = []
    if tl["rc"] == 0:
        timeline = json.loads(tl["stdout"]).get("databases", {})
        for span in timeline.get(f"workspace/{STORES['wal']}", []):
            a, b = datetime.fromisoformat(span["from"]), datetime.fromisoformat(span["to"])
            if (b - a).total_seconds() > 2:
                (spans if span["kind"] == "covered" else gaps).append((a, b))
    else:
        problems.append(f"list --timeline: exit {tl['rc']}: {tl['error']}")
    picks = [(rng.choice(spans), True) for _ in range(min(8, len(spans)))] + [(g, False) for g in gaps[:1]]
    for (a, b), covered in picks:
        at = a + timedelta(seconds=rng.uniform(0.5, (b - a).total_seconds() - 0.5))
        dest = world.dir / "prove" / "at"
        shutil.rmtree(dest, ignore_errors=True)
        rs = run("prove restore --at", ["restore", "--at", at.isoformat(), "--to", str(dest), "--yes", "--json"])
        entry: dict[str, Any] = {"at": at.isoformat(), "covered": covered, "rc": rs["rc"], "error": rs["error"]}
        if not covered:
            if rs["rc"] != 2 or "no capture covers" not in rs["error"]:
                problems.append(f"--at {at.isoformat()} in a gap: exit {rs['rc']} ({rs['error'][:200]})")
        elif rs["rc"] != 0:
            problems.append(f"--at {at.isoformat()}: exit {rs['rc']}: {rs['error'][:300]}")
        else:
            for store, rel in STORES.items():
                db = next(iter(dest.rglob(Path(rel).name)), None)
                if db is None:
                    problems.append(f"--at {at.isoformat()}: {store} not restored")
                    continue
                n, probs = prove_store(db, txs[store])
                problems.extend(f"--at {at.isoformat()} {store}: {p}" for p in probs)
                if n and txs[store][n - 1]["began"] > at.isoformat():
                    problems.append(f"--at {at.isoformat()} {store}: holds transaction {n}, begun after that time")
                entry[store] = n
                if n < len(txs[store]):  # how long before `at` the first transaction it lacks ended
                    lag = (at - datetime.fromisoformat(txs[store][n]["ended"])).total_seconds()
                    entry[f"{store}_recovery_point_s"] = round(lag, 2)
        at_proofs.append(entry)
        shutil.rmtree(dest, ignore_errors=True)
    report["restore_at"] = at_proofs
    return report


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--minutes", type=float, default=15)
    ap.add_argument("--parallel", type=int, default=3)
    ap.add_argument("--kills", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--random-state", type=int, default=31, help="the random choices (default 31)")
    args = ap.parse_args()
    world = World(args.workdir)
    world.setup()
    agent = Agent(world, args.random_state)
    runner = Runner(world, args.random_state)
    try:
        agent.start()
        first = runner.run("backup", ["backup", "--json"])
        print("first backup:", first["rc"], first["error"], flush=True)
        until = time.monotonic() + args.minutes * 60
        loops = [threading.Thread(target=Runner.loop, args=(runner, until)) for _ in range(args.parallel)]
        for t in loops:
            t.start()
        if args.kills:
            killer = threading.Thread(
                target=runner.killer, args=(until, random.Random(args.random_state + 99)), daemon=True
            )
            killer.start()
        while any(t.is_alive() for t in loops):
            time.sleep(10)
            print(f"{now()} commands {len(runner.records)} commits {agent.commits} kills {runner.kills}", flush=True)
        agent.stop.set()
        agent.join()
        # one last backup with the agent stopped
        runner.run("backup", ["backup", "--json"])
        backups = []
        for r in runner.records:
            if r["name"] == "backup" and r["stdout"]:
                with contextlib.suppress(ValueError):
                    doc = json.loads(r["stdout"])
                    backups.append(
                        {
                            "snapshot": doc.get("id"),
                            "time": doc.get("time", ""),
                            "tables": {d["path"]: d.get("tables", {}) for d in doc.get("databases", [])},
                        }
                    )
        report = prove(world, runner, agent, backups)
        report["agent"] = {
            "commits": agent.commits,
            "note_ops": agent.note_ops,
            "errors": dict(agent.errors),
            "seq": agent.seq,
        }
        report["kills"] = runner.kills
        report["rotations"] = runner.rotations
        hist: collections.Counter[str] = collections.Counter()
        counts: collections.Counter[str] = collections.Counter()
        errors: collections.Counter[str] = collections.Counter()
        for r in runner.records:
            counts[r["name"]] += 1
            hist[f"{r['name']} {r['rc']}"] += 1
            if r["error"]:
                errors[re.sub(r"[0-9a-f]{8,}|\d+", "N", r["error"])[:200]] += 1
            if r["traceback"] or r["internal"]:
                report["problems"].append(f"command {r['n']} ({' '.join(r['args'])}): traceback/internal error")
            if r["rc"] not in (0, -9) and not r["error"]:
                report["problems"].append(
                    f"command {r['n']} ({' '.join(r['args'])}): exit {r['rc']} with no error line"
                )
        report["counts"] = dict(counts)
        report["exit_codes"] = dict(sorted(hist.items()))
        report["errors"] = dict(errors.most_common())
        (world.dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps({k: v for k, v in report.items() if k != "proofs"}, indent=2))
        return 1 if report["problems"] else 0
    finally:
        agent.stop.set()
        with runner.lock:
            for proc, _ in runner.running.values():
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        if world.moto is not None:
            world.moto.terminate()
            world.moto.wait()


if __name__ == "__main__":
    sys.exit(main())
