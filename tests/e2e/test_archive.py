"""`phx archive`: a snapshot as a plain zip or tar.gz, extracted with the real `unzip` and `tar`.

Extraction yields exactly the snapshot's files (logical paths as folders below one top folder),
byte-equal with their modes (and modification times), the databases as intact SQLite files equal
row for row, plus SHA256SUMS (which the real `sha256sum -c` accepts) and phoenix-manifest.json.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from e2e_support import (
    DATABASES,
    HOME_CONFIG_FILES,
    Sandbox,
    assert_error,
    assert_same_db,
    damage_blob,
    db_dump,
    file_manifest,
    integrity,
)


def extract(archive: Path, dest: Path) -> None:
    dest.mkdir()
    if archive.name.endswith(".zip"):
        tool = shutil.which("unzip")
        if tool is None:
            pytest.skip("unzip is not installed (scripts/test.sh installs it)")
        cmd = [tool, "-q", str(archive), "-d", str(dest)]
    else:
        tool = shutil.which("tar")
        if tool is None:
            pytest.skip("tar is not installed")
        cmd = [tool, "-xzf", str(archive), "-C", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{cmd}: {proc.stderr}"


@pytest.mark.parametrize("suffix", [".zip", ".tar.gz"])
def test_archive_extracts_to_exactly_the_snapshots_files(backed_up: Sandbox, tmp_path: Path, suffix: str) -> None:
    sb = backed_up
    snap = sb.snapshots()[0]
    archive = tmp_path / f"agent{suffix}"
    doc = sb.phx("archive", snap["name"], "--output", archive, "--json").json()
    assert doc["output"] == str(archive) and archive.is_file() and doc["archiveSize"] == archive.stat().st_size
    assert archive.stat().st_mode & 0o077 == 0, "the archive holds the agent's secrets: private by default"
    top = f"phoenix-{snap['name']}"
    assert doc["top"] == top

    out = tmp_path / "extracted"
    extract(archive, out)
    assert sorted(p.name for p in out.iterdir()) == [top], "one top folder"
    root = out / top
    assert sorted(p.name for p in root.iterdir()) == ["SHA256SUMS", "home", "phoenix-manifest.json", "workspace"]

    # The workspace: every file byte-equal with its mode; times to the second (zip keeps seconds).
    expected = sb.state()["workspace"]
    actual = file_manifest(root / "workspace")
    assert set(actual) == set(expected), sorted(set(actual) ^ set(expected))
    for rel, want in expected.items():
        got = actual[rel]
        assert got[:2] == want[:2] and got[3:] == want[3:], (rel, want, got)
        assert got[2] // 10**9 == want[2] // 10**9, f"{rel}: mtime {got[2]} vs {want[2]}"

    # The databases: plain SQLite files, intact, row-equal with the live ones; beside them below
    # home/ only the config component's argent.json and Phoenix's own config.
    home_files = sorted(p.relative_to(root).as_posix() for p in (root / "home").rglob("*") if p.is_file())
    assert home_files == sorted(DATABASES + HOME_CONFIG_FILES)
    for logical in DATABASES:
        assert integrity(root / logical) == ["ok"]
        assert_same_db(db_dump(sb.db_path(logical)), db_dump(root / logical), f"{suffix}: {logical}")

    # The manifest files check the rest, with standard tools.
    proc = subprocess.run(["sha256sum", "--strict", "-c", "SHA256SUMS"], cwd=root, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    checked = [line for line in proc.stdout.splitlines() if line.endswith(": OK")]
    assert len(checked) == len([v for v in expected.values() if v[0] == "file"]) + len(DATABASES + HOME_CONFIG_FILES)
    manifest = json.loads((root / "phoenix-manifest.json").read_text())
    assert manifest["snapshot"]["id"] == snap["id"] and manifest["format"] == "phoenix-archive"
    paths = {e["path"] for e in manifest["entries"] if e["type"] in ("file", "sqlite")}
    workspace_files = {f"workspace/{k}" for k, v in expected.items() if v[0] == "file"}
    assert paths == workspace_files | set(DATABASES) | set(HOME_CONFIG_FILES)


def test_archive_refuses_what_it_cannot_do(backed_up: Sandbox, tmp_path: Path) -> None:
    sb = backed_up
    assert_error(sb.phx("archive", "latest", "--output", tmp_path / "agent.rar", check=None), 2, "FILE.zip")
    existing = tmp_path / "taken.zip"
    existing.write_bytes(b"keep me")
    assert_error(sb.phx("archive", "latest", "--output", existing, check=None), 2, "--force")
    assert existing.read_bytes() == b"keep me"
    sb.phx("archive", "latest", "--output", existing, "--force")
    assert existing.read_bytes()[:2] == b"PK"


def test_an_archive_into_the_workspace_or_the_repository_is_refused(backed_up: Sandbox) -> None:
    # An archive is a plain copy of the snapshot (the config file's credentials, every store).
    # Written into the workspace, the next backup saved it, and the next archive held it again;
    # into the repository, it sat among the encrypted objects. `export --output` refused both.
    sb = backed_up
    inside = sb.workspace / "memory" / "snap.zip"
    assert_error(sb.phx("archive", "latest", "--output", inside, check=None), 2, "inside the workspace", "archive")
    assert_error(sb.phx("archive", "latest", "--output", sb.repo / "snap.tar.gz", check=None), 2, "repository")
    assert not inside.exists() and not (sb.repo / "snap.tar.gz").exists()


def test_archive_of_damaged_data_fails_and_leaves_no_archive(backed_up: Sandbox, tmp_path: Path) -> None:
    sb = backed_up
    damage_blob(sb, "workspace/MEMORY.md")
    out = tmp_path / "out"
    out.mkdir()
    res = sb.phx("archive", "latest", "--output", out / "agent.tar.gz", check=None)
    assert_error(res, 1)
    assert list(out.iterdir()) == [], "neither the archive nor a temporary file is left"


def test_a_file_name_that_is_not_utf8_is_archived_as_its_bytes(sandbox: Sandbox, tmp_path: Path) -> None:
    # A name from a Latin-1 system (or a forged tree): tar keeps its bytes, zip cannot hold it.
    sb = sandbox
    name = b"caf\xe9.md"
    (sb.workspace / os.fsdecode(name)).write_bytes(b"latin1 name\n")
    sb.backup()
    archive = tmp_path / "agent.tar.gz"
    sb.phx("archive", "latest", "--output", archive)
    out = tmp_path / "extracted"
    extract(archive, out)
    (root,) = out.iterdir()
    assert (root / "workspace" / os.fsdecode(name)).read_bytes() == b"latin1 name\n"
    check = subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=root, capture_output=True)
    assert check.returncode == 0, check
    manifest = json.loads((root / "phoenix-manifest.json").read_bytes())
    # The manifest is valid Unicode: the name shown with U+FFFD, its exact bytes in pathBytes.
    (entry,) = [e for e in manifest["entries"] if e["path"] == "workspace/caf\ufffd.md"]
    assert base64.b64decode(entry["pathBytes"]) == b"workspace/" + name
    res = sb.phx("archive", "latest", "--output", tmp_path / "agent.zip", check=None)
    assert_error(res, 2, "not UTF-8", ".tar.gz")
    assert not (tmp_path / "agent.zip").exists()


def test_a_name_with_backslashes_is_refused_in_a_zip_and_kept_whole_in_a_tar(sandbox: Sandbox, tmp_path: Path) -> None:
    # A zip's separator is `/` alone, but extractors on Windows may read `\\` as one: the name
    # `..\\..\\evil.md` (a valid name here) went into the zip as it is. tar keeps it as one name.
    sb = sandbox
    name = "..\\..\\evil.md"
    (sb.workspace / name).write_bytes(b"one name\n")
    sb.backup()
    res = sb.phx("archive", "latest", "--output", tmp_path / "agent.zip", check=None)
    assert_error(res, 2, "backslash", ".tar.gz")
    assert not (tmp_path / "agent.zip").exists()
    archive = tmp_path / "agent.tar.gz"
    sb.phx("archive", "latest", "--output", archive)
    out = tmp_path / "extracted"
    extract(archive, out)
    (root,) = out.iterdir()
    assert (root / "workspace" / name).read_bytes() == b"one name\n"
    check = subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=root, capture_output=True)
    assert check.returncode == 0, check
