"""Issue 16.7: disaster recovery from nothing but the repository. On a new machine (an empty HOME,
no config file, no cache, no Git clone), with only the repository's location and its passphrase,
`phx list --repo LOCATION` and `phx restore --repo LOCATION --latest --to DIR` work for a folder,
an S3 bucket (`s3://BUCKET/PREFIX` on the moto server, its endpoint from AWS_ENDPOINT_URL) and a
Git remote (a bare repository); the restore gives back the agent and the Phoenix config it was
backed up with, which then works as the new machine's config. PHX_REPOSITORY does what --repo does.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import e2e_support
import pytest
from e2e_support import PASSPHRASE, Sandbox, assert_error, assert_restored, run_phx
from moto_support import ACCESS_KEY_ID, SECRET_ACCESS_KEY, MotoServer
from test_targets import Targets

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def new_machine(tmp_path: Path, moto: MotoServer) -> dict[str, str]:
    """The environment of a machine that has never run Phoenix: the passphrase and the cloud
    credentials, nothing else."""
    return e2e_support.new_machine(
        tmp_path,
        PHX_PASSPHRASE=PASSPHRASE,
        AWS_ACCESS_KEY_ID=ACCESS_KEY_ID,
        AWS_SECRET_ACCESS_KEY=SECRET_ACCESS_KEY,
        AWS_ENDPOINT_URL=moto.endpoint,
        AWS_EC2_METADATA_DISABLED="true",
    )


def test_restore_from_nothing_but_the_repository(sandbox: Sandbox, moto: MotoServer, tmp_path: Path) -> None:
    t = Targets(sandbox, moto)
    del t.targets["r2"]
    t.write()
    sb = t.sb
    state = sb.state()
    snap = sb.backup()
    assert all(outcome["ok"] for outcome in snap["targets"].values()), snap["targets"]
    config_bytes = sb.config_path.read_bytes()
    env = new_machine(tmp_path, moto)
    locations = {
        "folder": str(sb.repo),
        "s3": f"s3://{t.s3_bucket}/argent",
        "git": str(t.remote),
        "git-url": f"file://{t.remote}",
    }
    fingerprint = sb.phx("key", "list", "--json").json()[0]["fingerprint"]
    for kind, location in locations.items():
        res = run_phx(["list", "--repo", location, "--json"], env)
        listed = res.json()
        assert [s["id"] for s in listed] == [snap["id"]], (kind, listed)
        if kind == "folder":  # the new machine trusts the repository's key on first use, and says so
            assert "first use" in res.err and fingerprint in res.err, res
        dest = tmp_path / f"restored-{kind}"
        doc = run_phx(["restore", "--repo", location, "--latest", "--to", dest, "--json"], env).json()
        assert doc["snapshot"] == snap["id"] and doc["errors"] == [], (kind, doc)
        assert_restored(state, dest, f"restore --repo {kind}")
        # The Phoenix config the backup ran with comes back, byte for byte, and the output says where.
        assert doc["phoenixConfig"] == str(dest / "home" / ".argentos" / "backup.json"), doc["phoenixConfig"]
        assert Path(doc["phoenixConfig"]).read_bytes() == config_bytes
    assert not (Path(env["HOME"]) / ".argentos").exists(), "a read wrote into the new machine's ~/.argentos"
    pins = json.loads((Path(env["XDG_DATA_HOME"]) / "phoenix" / "pins.json").read_text())
    assert [p["fingerprint"] for p in pins["repositories"].values()] == [fingerprint], pins

    # PHX_REPOSITORY instead of --repo; in place needs a config file (the workspace's place).
    with_env = {**env, "PHX_REPOSITORY": locations["s3"]}
    assert [s["id"] for s in run_phx(["list", "--json"], with_env).json()] == [snap["id"]]
    res = run_phx(["restore", "--latest", "--yes"], with_env, check=None)
    assert_error(res, 2, "config file", "--to DIR")
    text = run_phx(["restore", "--latest", "--to", tmp_path / "again"], with_env).out
    assert (
        f"the Phoenix config this backup ran with: {tmp_path / 'again' / 'home' / '.argentos' / 'backup.json'}" in text
    )

    # The config that came back works on the new machine as its own.
    own = Path(env["HOME"]) / ".argentos" / "backup.json"
    own.parent.mkdir(parents=True)
    shutil.copy(tmp_path / "restored-s3" / "home" / ".argentos" / "backup.json", own)
    own.chmod(0o600)
    listed = run_phx(["list", "--json"], env).json()
    assert [s["id"] for s in listed] == [snap["id"]] and set(listed[0]["targets"]) == {"local", "git", "s3"}
    assert run_phx(["verify", "--target", "s3", "--json"], env).json()["ok"] is True

    # A location that holds no repository is one clear error.
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_error(run_phx(["list", "--repo", empty], env, check=None), 1, str(empty), "phx init")
    assert_error(run_phx(["list", "--repo", "s3://"], env, check=None), 2, "bucket")
    doc = json.loads(run_phx(["list", "--repo", locations["folder"], "--json"], env).out)
    assert doc[0]["targets"] == ["local"]
