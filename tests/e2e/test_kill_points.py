"""Issue 15, suite 1: crash consistency. Every command that changes a repository or the workspace
is killed with SIGKILL at a seeded random I/O call (tests/e2e/killpoint.py: a write, fsync,
rename, link, unlink of a file, an object written to or deleted from a store, or inside SQLite's
backup API), and afterwards:

- `phx verify --read-data` passes on every target the command wrote;
- every snapshot there restores exactly the state it was taken of (files with their modes and
  times, every database row); the one the killed command may have committed too;
- the next run of the command succeeds and does its job;
- nothing of the killed run is left in the user's folders once the next command ran (issue 15,
  failure 9: temporary database copies of a killed in-place restore);
- no sequence of key commands leaves the repository without a slot that opens it.

Each command is a `Scenario` in `SCENARIOS`; adding a command (say `key rotate`) is one entry.
The kill points are drawn, with a fixed seed and without repeats, from the calls an uninterrupted
run of the same command makes on the same data (every call in turn, when there are fewer).
The default run does TRIALS_DEFAULT trial per command; PHX_TEST_HEAVY=1 does TRIALS_HEAVY and
prints the figures docs/reliability.md quotes (PHX_KILL_FIGURES=FILE also writes them as JSON).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from e2e_support import PASSPHRASE, Result, Sandbox, assert_restored, retention_only
from killpoint import SCRIPT, read_report
from moto_support import ACCESS_KEY_ID, SECRET_ACCESS_KEY, MotoServer
from safe_restore_support import assert_state

from phoenix_backup.sample import generate_workspace, layout_for, simulate_day

# The sandboxes' helpers (the backups that set a test up, the checks after) run phx in this process;
# the commands under test stay real `phx` processes (tests/e2e/conftest.py).
pytestmark = pytest.mark.phx_in_process

HEAVY = os.environ.get("PHX_TEST_HEAVY") == "1"
TRIALS_DEFAULT = 1
TRIALS_HEAVY = 20
TRIALS = TRIALS_HEAVY if HEAVY else TRIALS_DEFAULT
SEED = 20261205
NEW_PASSPHRASE = "a new passphrase for the kill suite"
TMP_MARK = ".phx-tmp-"


# -- the world each trial starts from ------------------------------------------------------------


@dataclass
class World:
    """A copy of the template: a tiny encrypted sample, snapshots A and B of two states of it, and
    the workspace changed once more since (state C, not backed up)."""

    sb: Sandbox
    states: dict[str, dict[str, Any]]  # snapshot id -> the state it was taken of
    ids: list[str]  # A, B
    current: dict[str, Any]  # state C: what a backup now would save
    extra: dict[str, Any] = field(default_factory=dict)  # per scenario (a bucket, a slot id, ...)
    restored: set[tuple[str, str]] = field(default_factory=set)  # (target, snapshot) proven this trial

    def phx(self, *args: str, check: bool | int | None = True, env: dict[str, str] | None = None) -> Result:
        return self.sb.phx(*args, check=check, env=env)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    return make_template(tmp_path_factory)


def make_template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """The kill suite's world: two days backed up, a third day's state left in the workspace."""
    root = tmp_path_factory.mktemp("kill-template") / "world"
    layout = generate_workspace(root / "sample", size="tiny", seed=SEED % 1000)
    sb = Sandbox(root, layout)
    sb.write_config(retention={"prune": False})  # retention and prune run only where a test says
    states: dict[str, Any] = {}
    ids = []
    for day in (0, 1):
        state = sb.state()
        doc = sb.backup()
        states[doc["id"]] = state
        ids.append(doc["id"])
        simulate_day(layout, day, seed=SEED % 1000)
    meta = {"states": states, "ids": ids, "current": sb.state()}
    shutil.rmtree(sb.cache)
    return root, meta


def world_from(template: tuple[Path, dict[str, Any]], root: Path) -> World:
    src, meta = template
    shutil.copytree(src, root, symlinks=True)
    sb = Sandbox(root, layout_for(root / "sample"))
    sb.write_config(retention={"prune": False})
    return World(sb, dict(meta["states"]), list(meta["ids"]), meta["current"])


# -- running a command under the hook ------------------------------------------------------------


def run_hooked(
    w: World, args: list[str], *, kill_at: int = 0, env: dict[str, str] | None = None
) -> tuple[str, int, str]:
    """Run `phx ARGS` under the hook; ("killed", N, the call) or ("calls", total, "")."""
    report = w.sb.root / f"kill-report-{time.monotonic_ns()}"
    run_env = dict(env or w.sb.env)
    run_env.update(PHX_KILL_AT=str(kill_at), PHX_KILL_REPORT=str(report), PHX_KILL_SEED=str(w.sb.root))
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        env=run_env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=180,
    )
    outcome = read_report(report)
    if outcome[0] != "killed":
        # Not killed: the command must have done its job like `phx` itself.
        assert proc.returncode == 0, f"phx {' '.join(args)} under the hook exited {proc.returncode}:\n{proc.stderr!r}"
    report.unlink(missing_ok=True)
    return outcome


# -- the checks after a kill ---------------------------------------------------------------------


def snapshot_ids(w: World, target: str = "local") -> list[str]:
    """The snapshot objects a target holds (their names are their ids)."""
    if target == "local":
        return sorted(p.name for p in (w.sb.repo / "snapshots").iterdir() if not p.name.startswith("."))
    moto: MotoServer = w.extra["moto"]
    keys = moto.keys(w.extra["bucket"], "argent/snapshots/")
    return sorted(k.rsplit("/", 1)[-1] for k in keys)


def check_repository(
    w: World,
    what: str,
    *,
    target: str = "local",
    expect: dict[str, dict[str, Any]],
    restore: bool = True,
    again: bool = False,
) -> list[str]:
    """verify --read-data passes on `target`, and every snapshot there whose state is known
    restores exactly; snapshots of unknown state (a safety snapshot) must restore without error.
    A snapshot already restored in this trial is restored again only with `again` (its data was
    rewritten, by prune) or in the heavy run; `restore=False` checks the structure and bytes only
    (a target the command only read)."""
    # The verify and the restores in this process (`phx_here`): the point is what the killed command
    # left in the repository, not the process boundary (the command and its kill are real `phx`).
    args = ["verify", "--read-data", "--json"] + (["--target", target] if target != "local" else [])
    res = w.sb.phx_here(*args)
    assert res.code == 0 and res.json()["ok"] is True, f"{what}: verify failed on {target}:\n{res}"
    ids = snapshot_ids(w, target)
    for sid in ids if restore or HEAVY else ():
        if (target, sid) in w.restored and not (again or HEAVY):
            continue
        w.restored.add((target, sid))
        dest = w.sb.root / f"check-{sid[:12]}"
        args = ["restore", "--backup", sid, "--to", str(dest), "--json"]
        args += ["--target", target] if target != "local" else []
        res = w.sb.phx_here(*args)
        assert res.code == 0 and res.json()["errors"] == [], f"{what}: snapshot {sid[:8]} does not restore:\n{res}"
        if sid in expect:
            assert_restored(expect[sid], dest, f"{what}: snapshot {sid[:8]}")
        shutil.rmtree(dest)
    return ids


def no_leftovers(w: World, what: str) -> None:
    found = [str(p) for base in (w.sb.workspace, w.sb.home) for p in base.rglob(f"{TMP_MARK}*")]
    assert found == [], f"{what}: temporary files of the killed run are still there: {found}"


# -- the scenarios -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    args: Callable[[World], list[str]]
    check: Callable[[World, str], None]  # after the kill: the repository, then the next run
    setup: Callable[[World], None] = lambda w: None
    env: Callable[[World], dict[str, str]] = lambda w: w.sb.env


def _backup_check(w: World, what: str) -> None:
    before = set(w.ids)
    ids = check_repository(w, what, expect={**w.states, **{s: w.current for s in snapshot_ids(w) if s not in before}})
    assert before <= set(ids), f"{what}: a snapshot taken before the crash is gone"
    doc = w.sb.backup()  # the next backup
    w.states[doc["id"]] = w.current
    check_repository(w, f"{what}, then the next backup", expect=w.states)


def _prune_setup(w: World) -> None:
    w.sb.write_config(retention=retention_only(last=1, prune=False))
    w.phx("forget")  # A goes: prune has its data to delete


def _prune_check(w: World, what: str) -> None:
    ids = check_repository(w, what, expect=w.states)
    assert ids == [w.ids[1]], f"{what}: snapshots {ids}"
    w.phx("prune")
    check_repository(w, f"{what}, then the next prune", expect=w.states, again=True)


def _forget_setup(w: World) -> None:
    w.sb.write_config(retention=retention_only(last=1, prune=False))


def _forget_check(w: World, what: str) -> None:
    ids = check_repository(w, what, expect=w.states)
    assert w.ids[1] in ids, f"{what}: forget removed the newest snapshot"
    w.phx("forget")
    assert snapshot_ids(w) == [w.ids[1]]
    check_repository(w, f"{what}, then the next forget", expect=w.states)


def _sync_setup(w: World) -> None:
    moto: MotoServer = w.extra["moto"]
    w.extra["bucket"] = bucket = moto.make_bucket("kill")
    targets = {
        "local": {"enabled": True},
        "s3": {
            "enabled": True,
            "bucket": bucket,
            "prefix": "argent/",
            "endpoint": moto.endpoint,
            "accessKeyId": ACCESS_KEY_ID,
            "secretAccessKey": SECRET_ACCESS_KEY,
        },
    }
    w.sb.env["AWS_EC2_METADATA_DISABLED"] = "true"
    w.sb.write_config(targets=targets)
    w.sb.config_path.chmod(0o600)


def _sync_check(w: World, what: str) -> None:
    check_repository(w, what, expect=w.states, restore=False)  # sync only reads the first target
    if w.extra["moto"].keys(w.extra["bucket"], "argent/config"):
        check_repository(w, f"{what} (s3)", target="s3", expect=w.states)
    w.phx("sync")
    assert snapshot_ids(w, "s3") == sorted(w.ids)
    check_repository(w, f"{what}, then the next sync (s3)", target="s3", expect=w.states)


def _restore_args(w: World) -> list[str]:
    return ["restore", "--backup", w.ids[0], "--yes", "--delete"]


def _restore_check(w: World, what: str) -> None:
    check_repository(w, what, expect=w.states)  # the first command after the kill
    no_leftovers(w, what)
    w.phx(*_restore_args(w))
    assert_state(w.states[w.ids[0]], w.sb.state(), f"{what}, then the next restore")
    no_leftovers(w, f"{what}, then the next restore")


def _slots(w: World, passphrase: str) -> list[dict[str, Any]] | None:
    res = w.phx("key", "list", "--json", check=None, env=w.sb.env_with(PHX_PASSPHRASE=passphrase))
    return res.json() if res.code == 0 else None


def _key_env(w: World) -> dict[str, str]:
    return w.sb.env_with(PHX_NEW_PASSPHRASE=NEW_PASSPHRASE)


def _key_add_check(w: World, what: str) -> None:
    assert _slots(w, PASSPHRASE) is not None, f"{what}: the old passphrase no longer opens the repository"
    check_repository(w, what, expect=w.states)
    w.phx("key", "add", "--method", "passphrase", env=_key_env(w))
    assert _slots(w, NEW_PASSPHRASE) is not None


def _key_remove_setup(w: World) -> None:
    w.phx("key", "add", "--method", "passphrase", env=_key_env(w))
    slots = _slots(w, NEW_PASSPHRASE)
    assert slots is not None
    w.extra["victim"] = next(s["id"] for s in slots if s["current"])  # the new passphrase's slot


def _key_remove_check(w: World, what: str) -> None:
    slots = _slots(w, PASSPHRASE)
    assert slots is not None, f"{what}: the passphrase that was not removed no longer opens"
    check_repository(w, what, expect=w.states)
    if any(s["id"] == w.extra["victim"] for s in slots):
        w.phx("key", "remove", w.extra["victim"])
    assert _slots(w, NEW_PASSPHRASE) is None and _slots(w, PASSPHRASE) is not None


def _key_passwd_check(w: World, what: str) -> None:
    old, new = _slots(w, PASSPHRASE), _slots(w, NEW_PASSPHRASE)
    assert old is not None or new is not None, f"{what}: neither the old nor the new passphrase opens"
    working = PASSPHRASE if old is not None else NEW_PASSPHRASE
    env = w.sb.env_with(PHX_PASSPHRASE=working)
    res = w.phx("verify", "--read-data", "--json", env=env)
    assert res.json()["ok"] is True, f"{what}: {res}"
    w.sb.env["PHX_PASSPHRASE"] = working
    check_repository(w, what, expect=w.states)
    w.phx("key", "passwd", env=w.sb.env_with(PHX_NEW_PASSPHRASE="third passphrase"))
    assert _slots(w, "third passphrase") is not None and _slots(w, working) is None


def _rotate_setup(w: World) -> None:
    # A rotation re-seals every snapshot under a new key, which gives it a new id; its name stays.
    w.extra["by_name"] = {d["name"]: w.states[d["id"]] for d in w.phx("list", "--json").json()}


def _rotate_check(w: World, what: str) -> None:
    # Killed at any point, every snapshot still restores exactly with the owner's passphrase...
    for name, state in w.extra["by_name"].items():
        dest = w.sb.root / f"rotate-{name}"
        res = w.phx("restore", "--backup", name, "--to", str(dest), "--json", check=None)
        assert res.code == 0 and res.json()["errors"] == [], f"{what}: snapshot {name} does not restore:\n{res}"
        assert_restored(state, dest, f"{what}: snapshot {name}")
        shutil.rmtree(dest)
    # ...and the next rotation finishes the job: one slot, every byte verified.
    w.phx("key", "rotate")
    docs = w.phx("list", "--json").json()
    assert sorted(d["name"] for d in docs) == sorted(w.extra["by_name"]), f"{what}: snapshots {docs}"
    expect = {d["id"]: w.extra["by_name"][d["name"]] for d in docs}
    check_repository(w, f"{what}, then the next rotation", expect=expect, again=True)
    slots = _slots(w, PASSPHRASE)
    assert slots is not None and len(slots) == 1, f"{what}: key slots after the next rotation: {slots}"


def _init_args(w: World) -> list[str]:
    where = {"--config": w.sb.root / "init.json", "--workspace": w.sb.workspace, "--repo": w.sb.root / "new-repo"}
    return ["init", *(f"{k}={v}" for k, v in where.items()), "--encryption=passphrase"]


def _init_check(w: World, what: str) -> None:
    config, repo = w.sb.root / "init.json", w.sb.root / "new-repo"
    if config.exists():  # written last: the repository must be complete
        assert (repo / "config").is_file(), f"{what}: a config file names a repository that was never completed"
    w.phx(*_init_args(w), "--force")  # the next init completes it, or keeps the complete one
    env = w.sb.env_with(PHX_CONFIG=str(config))
    data = json.loads(config.read_text())
    data.update(include=[], exclude=[], databases=w.sb.config.get("databases", {}))
    config.write_text(json.dumps(data))
    doc = w.phx("backup", "--json", env=env).json()
    res = w.phx("verify", "--read-data", "--json", env=env)
    assert res.json()["ok"] is True, f"{what}: {res}"
    dest = w.sb.root / "init-restored"
    w.phx("restore", "--backup", doc["id"], "--to", str(dest), env=env)
    assert_restored(w.current, dest, f"{what}: the first backup after init")


SCENARIOS: dict[str, Scenario] = {
    "init": Scenario(args=_init_args, check=_init_check),
    "backup": Scenario(args=lambda w: ["backup"], check=_backup_check),
    "prune": Scenario(args=lambda w: ["prune"], check=_prune_check, setup=_prune_setup),
    "forget": Scenario(args=lambda w: ["forget"], check=_forget_check, setup=_forget_setup),
    "sync": Scenario(args=lambda w: ["sync"], check=_sync_check, setup=_sync_setup),
    "restore": Scenario(args=_restore_args, check=_restore_check),
    "key add": Scenario(args=lambda w: ["key", "add", "--method", "passphrase"], check=_key_add_check, env=_key_env),
    "key remove": Scenario(
        args=lambda w: ["key", "remove", w.extra["victim"]], check=_key_remove_check, setup=_key_remove_setup
    ),
    "key passwd": Scenario(args=lambda w: ["key", "passwd"], check=_key_passwd_check, env=_key_env),
    "key rotate": Scenario(args=lambda w: ["key", "rotate"], check=_rotate_check, setup=_rotate_setup),
}

# Figures for docs/reliability.md, printed at the end of the module.
TALLY: dict[str, dict[str, int]] = {}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_killed_at_a_random_io_call(
    name: str, template: tuple[Path, dict[str, Any]], tmp_path: Path, moto: MotoServer
) -> None:
    scenario = SCENARIOS[name]
    rng = random.Random(f"{SEED}-{name}")

    def fresh(label: str) -> World:
        w = world_from(template, tmp_path / label)
        w.extra["moto"] = moto
        scenario.setup(w)
        return w

    calibration = fresh("calibration")
    kind, total, _ = run_hooked(calibration, scenario.args(calibration), env=scenario.env(calibration))
    assert kind == "calls" and total > 0, f"{name}: the uninterrupted run counted {kind} {total}"
    shutil.rmtree(calibration.sb.root)

    tally = TALLY.setdefault(name, {"trials": 0, "killed": 0, "completed": 0, "calls": total})
    # Distinct calls drawn with the seed; every call, in turn, when there are fewer than trials.
    if total < TRIALS:
        points = [1 + i % total for i in range(TRIALS)]
    else:
        points = sorted(rng.sample(range(1, total + 1), TRIALS))
    for trial, at in enumerate(points):
        w = fresh(f"trial-{trial}")
        kind, _n, call = run_hooked(w, scenario.args(w), kill_at=at, env=scenario.env(w))
        what = f"{name}, trial {trial}: killed at I/O call {at} of {total}, {call}"
        if kind != "killed":
            what = f"{name}, trial {trial}: ran to the end (kill point {at} not reached)"
        scenario.check(w, what)
        tally["trials"] += 1
        tally["killed" if kind == "killed" else "completed"] += 1
        shutil.rmtree(w.sb.root)


def teardown_module() -> None:
    if TALLY:
        path = os.environ.get("PHX_KILL_FIGURES")
        text = json.dumps(TALLY, indent=2, sort_keys=True)
        print(f"\nkill suite ({'heavy' if HEAVY else 'default'}): {text}")
        if path:
            Path(path).write_text(text + "\n")
