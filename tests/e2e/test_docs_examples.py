"""The examples of the README and docs/ run (issue 18, point 12): every shell block marked
`<!-- runnable -->` is run with `bash -e`, in order with the other runnable blocks of its page, in
a throwaway home holding a sample agent laid out as ArgentOS lays it out (workspace `~/argent`,
stores in `~/.argentos`) and `PHX_PASSPHRASE` set. Unless the page's first runnable block runs
`phx init`, the home starts with a repository made by `phx init`, a snapshot named
`2026-03-10-02-00` (a Tuesday) and a newer one. See docs/development.md, "Documentation"."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from e2e_support import PASSPHRASE, PHX, TEST_KDF

from phoenix_backup import init
from phoenix_backup.ops.context import Environment
from phoenix_backup.sample import generate_workspace

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
MARK = "<!-- runnable -->"


def runnable_blocks(page: Path) -> list[tuple[int, str]]:
    """(line number, script) of each shell block right after the marker."""
    lines = page.read_text().splitlines()
    blocks = []
    for i, line in enumerate(lines):
        if line.strip() != MARK:
            continue
        fence = lines[i + 1].strip() if i + 1 < len(lines) else ""
        assert fence in ("```sh", "```bash"), f"{page.name}:{i + 1}: {MARK} must stand right above a ```sh block"
        end = next(j for j in range(i + 2, len(lines)) if lines[j].strip() == "```")
        blocks.append((i + 2, "\n".join(lines[i + 2 : end])))
    return blocks


PAGES_WITH_EXAMPLES = [p for p in PAGES if runnable_blocks(p)]


def _env(root: Path) -> dict[str, str]:
    """The environment of a throwaway home below `root`, with this checkout's `phx` first on PATH."""
    venv_bin = os.path.dirname(PHX)
    return {
        "PATH": f"{venv_bin}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": str(root / "home"),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PHX_PASSPHRASE": PASSPHRASE,
        "PHX_CACHE_DIR": str(root / "cache"),
        "XDG_CACHE_HOME": str(root / "xdg-cache"),
        "XDG_CONFIG_HOME": str(root / "xdg-config"),
        "XDG_DATA_HOME": str(root / "xdg-data"),
        "TMPDIR": str(root / "tmp"),
    }


@pytest.fixture(scope="session")
def _fresh_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sample agent as ArgentOS lays it out: workspace in ~/argent, stores in ~/.argentos."""
    root = tmp_path_factory.mktemp("docs-fresh")
    layout = generate_workspace(root / "sample", size="tiny", seed=3)
    (root / "home").mkdir()
    shutil.move(layout.workspace, root / "home" / "argent")
    shutil.move(layout.argentos, root / "home" / ".argentos")
    shutil.rmtree(root / "sample")
    (root / "tmp").mkdir()
    return root


@pytest.fixture(scope="session")
def _initialised_home(_fresh_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same agent after `phx init` (its config says `~/argent` and `~/backups/argent`, so a copy
    works anywhere), a snapshot named 2026-03-10-02-00 (a Tuesday) and a newer one. The passphrase
    slot has the tests' cheap scrypt parameters; `phx init` in a page's own examples has the real ones."""
    root = tmp_path_factory.mktemp("docs-initialised") / "root"
    shutil.copytree(_fresh_home, root, symlinks=True)
    env = _env(root)
    init(Environment(env=env), kdf_params=TEST_KDF)
    _run("phx backup --time 2026-03-10T02:00:00+01:00 && phx backup", env, "setup")
    return root


def _run(script: str, env: dict[str, str], where: str) -> None:
    run = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", script],
        env=env,
        cwd=env["HOME"],
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert run.returncode == 0, (
        f"{where} exited {run.returncode}:\n{script}\n--- stdout ---\n{run.stdout}\n--- stderr ---\n{run.stderr}"
    )
    assert "Traceback" not in run.stdout + run.stderr, f"{where} printed a traceback:\n{run.stderr}"


@pytest.mark.parametrize("page", PAGES_WITH_EXAMPLES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_the_runnable_examples_of_a_page_run(
    page: Path, tmp_path: Path, _fresh_home: Path, _initialised_home: Path
) -> None:
    blocks = runnable_blocks(page)
    starts_fresh = re.search(r"^phx init\b", blocks[0][1], flags=re.M) is not None
    root = tmp_path / "root"
    shutil.copytree(_fresh_home if starts_fresh else _initialised_home, root, symlinks=True)
    env = _env(root)
    for line, script in blocks:
        _run(script, env, f"{page.relative_to(ROOT)}:{line}")


def test_the_pages_that_should_have_runnable_examples_have_them() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in PAGES_WITH_EXAMPLES}
    assert {"README.md", "docs/getting-started.md", "docs/recipes.md", "docs/cli.md"} <= names, names
    assert sum(len(runnable_blocks(p)) for p in PAGES_WITH_EXAMPLES) >= 8


if __name__ == "__main__":  # pragma: no cover - list what would run
    for p in PAGES_WITH_EXAMPLES:
        for n, s in runnable_blocks(p):
            print(f"{p}:{n}\n{s}\n", file=sys.stderr)
