"""Fixtures for the end-to-end tests: a sandbox per test with a generated sample workspace, a fake
HOME holding the sample's databases, a config file, a repository folder and a cache folder, and a
`phx` runner that uses exactly that environment (subprocess, stdin closed, no mocks)."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import e2e_support
import pytest
from e2e_support import Receiver, Sandbox, new_sandbox, tmpfs_at

from phoenix_backup.sample import layout_for

# The S3 API server (moto), one per session, shared with the integration tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from moto_support import moto  # noqa: F401


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "phx_in_process: the sandboxes' helpers (backup, restore_to, verify, snapshots) run phx in this process",
    )
    config.addinivalue_line(
        "markers",
        "real_extent_lists: format 6's extent lists at their real sizes (not made small by _small_extent_lists)",
    )


@pytest.fixture(autouse=True, scope="session")
def _sample_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """`new_sandbox` copies the tiny samples it generated once in this session (e2e_support.SAMPLE_CACHE)."""
    e2e_support.SAMPLE_CACHE = tmp_path_factory.mktemp("samples")
    try:
        yield
    finally:
        e2e_support.SAMPLE_CACHE = None


@pytest.fixture(autouse=True)
def _helpers_in_process(request: pytest.FixtureRequest) -> Iterator[None]:
    """`e2e_support.HELPERS_IN_PROCESS` for the test: set for a test (file) marked `phx_in_process`."""
    e2e_support.HELPERS_IN_PROCESS = request.node.get_closest_marker("phx_in_process") is not None
    try:
        yield
    finally:
        e2e_support.HELPERS_IN_PROCESS = False


@pytest.fixture(autouse=True)
def _small_extent_lists(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    """Format 6's extent lists made small for every test (repo/tree.py's module constants): a
    database node of more than 2 extents keeps them in list blobs of at most 64 extents, cut every
    256 KiB, so the suite's attacks, prunes, syncs and restores run on listed databases in this
    process, a few lists a database (a `phx` subprocess writes lists only past the real sizes).
    Lists of 4 extents cut every 16 KiB made a tiny memory.db hundreds of list blobs and the
    suite some 200 s slower; tests/e2e/test_format6.py's `small_lists` uses those. A test marked
    `real_extent_lists` keeps the real sizes (one measuring a tree's bytes: a tiny database's
    node names hundreds of small lists)."""
    if request.node.get_closest_marker("real_extent_lists") is not None:
        return
    from phoenix_backup.repo import tree

    monkeypatch.setattr(tree, "INLINE_EXTENTS", 2, raising=False)  # raising: the suite runs on older code too
    monkeypatch.setattr(tree, "LIST_SPAN", 262144, raising=False)
    monkeypatch.setattr(tree, "MAX_LIST_EXTENTS", 64, raising=False)


@pytest.fixture
def make_sandbox(tmp_path: Path) -> Callable[..., Sandbox]:
    """`make_sandbox(size="tiny", seed=7, encryption=True, root=None)`: a fresh sandbox."""
    count = 0

    def make(size: str | int = "tiny", seed: int = 7, encryption: bool = True, root: Path | None = None) -> Sandbox:
        nonlocal count
        count += 1
        base = root if root is not None else tmp_path / f"sb{count}"
        base.mkdir(parents=True, exist_ok=True)
        return new_sandbox(base, size, seed, encryption)

    return make


@pytest.fixture
def sandbox(make_sandbox: Callable[..., Sandbox]) -> Sandbox:
    """A tiny encrypted sample with a config and its repository (made as `phx init` does); no snapshot."""
    return make_sandbox()


@pytest.fixture(scope="session")
def _backed_up_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny sample with one snapshot, made once and copied by `backed_up`."""
    root = tmp_path_factory.mktemp("template")
    sb = new_sandbox(root, "tiny", 7, True)
    sb.backup()
    shutil.rmtree(sb.cache)
    return root


@pytest.fixture
def backed_up(_backed_up_template: Path, tmp_path: Path) -> Sandbox:
    """A tiny encrypted sample whose repository holds one snapshot (a copy of a shared template)."""
    root = tmp_path / "backed-up"
    shutil.copytree(_backed_up_template, root, symlinks=True)
    return Sandbox(root, layout_for(root / "sample"))


@pytest.fixture
def public_tmp() -> Iterator[Path]:
    """A folder below /tmp that other users can enter (pytest's tmp_path parents are 0700)."""
    path = Path(tempfile.mkdtemp(prefix="phx-e2e-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        for dirpath, dirnames, filenames in os.walk(path):
            for name in dirnames + filenames:
                p = Path(dirpath) / name
                if not p.is_symlink():
                    with contextlib.suppress(OSError):
                        p.chmod(0o700 if p.is_dir() else 0o600)
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """`tmpfs("8m")`: a size-limited tmpfs for this test, unmounted afterwards (the test is skipped,
    with the reason, where mounting is not allowed)."""
    with contextlib.ExitStack() as stack:
        yield lambda size: stack.enter_context(tmpfs_at(tmp_path / f"tmpfs-{size}", size))


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        r.stop()
