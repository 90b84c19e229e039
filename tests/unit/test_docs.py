"""The documentation cannot drift from Phoenix (issue 18, point 12): the command reference and the
manual page are what the CLI's own help says, every `phx` command line in the README and docs/
names a real command with real options, every config key is documented, every error message the
troubleshooting page quotes is one Phoenix still prints, and the README's links lead somewhere.
The examples themselves run in tests/e2e/test_docs_examples.py."""

from __future__ import annotations

import ast
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from markdown.extensions.toc import slugify

from phoenix_backup.cli import reference
from phoenix_backup.cli.app import cli
from phoenix_backup.config import parse_config
from phoenix_backup.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
GENERATED = DOCS / "reference" / "commands.md"
PAGES = [ROOT / "README.md", *sorted(p for p in DOCS.rglob("*.md") if p != GENERATED)]


# -- the command reference and the manual page -----------------------------------------------------


def test_the_reference_and_the_manual_page_are_what_the_help_says() -> None:
    for rel, text in reference.outputs().items():
        assert (ROOT / rel).read_text() == text, (
            f"{rel} differs from the commands' help; run `python -m phoenix_backup.cli.reference`"
        )


def test_no_help_text_breaks_a_path_or_a_word_at_its_hyphen() -> None:
    """The reference wraps help at a fixed width; a line that ends inside a hyphenated word or a
    path (`docs/write-` / `only.md`) cannot be searched for or copied."""
    broken = [line for line in GENERATED.read_text().splitlines() if re.search(r"[\w/]\w*-$", line.rstrip())]
    assert not broken, broken


def _sections(text: str) -> dict[str, str]:
    """`phx …` heading -> the text below it, in the generated reference."""
    parts = re.split(r"^#{2,3} `(phx[^`]*)`$", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_every_command_and_option_is_in_the_reference_and_the_manual() -> None:
    sections = _sections(GENERATED.read_text())
    manual = (ROOT / reference.MANPAGE).read_text().replace("\\-", "-")
    entries = reference.commands()
    assert len(entries) > 30
    for entry in entries:
        assert entry.path in sections, f"`{entry.path}` has no section in {GENERATED.name}"
        if entry.path != "phx":
            assert f'.SS "{entry.path}"' in manual, f"`{entry.path}` is not in the manual page"
        for option in reference.options(entry):
            assert option in sections[entry.path], f"{entry.path} {option} is missing from the reference"
            assert option in manual, f"{entry.path} {option} is missing from the manual page"
    # And nothing is documented that the CLI no longer has.
    assert set(sections) == {e.path for e in entries}


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed: the manual page is not rendered")
def test_the_manual_page_renders_without_warnings() -> None:
    page = ROOT / reference.MANPAGE
    run = subprocess.run(
        ["groff", "-man", "-Tutf8", "-ww", str(page)], capture_output=True, text=True, timeout=60, check=True
    )
    assert run.stderr == "", run.stderr
    text = re.sub(r".\x08", "", run.stdout)  # bold and underline as overstrikes
    assert "phx backup" in text and "EXIT STATUS" in text and "--dry-run" in text.replace("‐", "-")


# -- every phx command line in the README and docs/ ---------------------------------------------------

_GLOBAL = {"--config", "--json", "--verbose", "-v", "--quiet", "-q", "--repo", "--version", "--help", "-h"}
_SEPARATORS = {"&&", "||", ";", "|", ">", ">>", "<", "(", ")", "2>", "&"}


def _phx_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of every shell line and inline code span that runs `phx`."""
    fence: str | None = None
    for number, line in enumerate(path.read_text().splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("```"):
            fence = None if fence is not None else (stripped[3:].strip() or "text")
            continue
        if fence is not None:
            if fence in ("sh", "bash", "shell", "console") and re.search(r"(^|[\s/(])phx\b", stripped):
                yield number, stripped
            continue
        for span in re.findall(r"`([^`]+)`", line):
            if span.startswith("phx "):
                yield number, span.replace("\\|", " ")


def _invocations(line: str) -> Iterator[list[str]]:
    """The arguments of each `phx` the line runs (placeholders such as `<its id>` kept as words)."""
    lexer = shlex.shlex(line.replace("$(", " ( "), posix=True, punctuation_chars=True)
    lexer.commenters = "#"
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError:  # an unbalanced quote in prose: take the words as they are
        tokens = line.split()
    for i, token in enumerate(tokens):
        if token == "phx" or token.endswith("/phx"):
            args: list[str] = []
            for t in tokens[i + 1 :]:
                if t in _SEPARATORS:
                    break
                args.append(t)
            yield args


def _check(args: list[str]) -> str | None:
    """Why `phx ARGS` is not a real command line, or None."""
    words = [a.strip("[](),.…") for a in args]
    cmd: click.Command = cli
    ctx = click.Context(cli, info_name="phx")
    path = "phx"
    i = 0
    while i < len(words) and isinstance(cmd, click.Group):
        word = words[i]
        if word.startswith("-"):
            if word.split("=")[0] not in _GLOBAL:
                return f"`{path}` has no option {word}"
            i += 2 if word in ("--config", "--repo") else 1
            continue
        if not word or word.isupper() or word.startswith("<"):
            return None  # a placeholder (phx COMMAND --help)
        sub = cmd.get_command(ctx, word)
        if sub is None:
            return f"`{path}` has no command {word!r}"
        cmd, ctx, path = sub, click.Context(sub, info_name=word, parent=ctx), f"{path} {word}"
        i += 1
    known = {o for p in cmd.get_params(ctx) if isinstance(p, click.Option) for o in (*p.opts, *p.secondary_opts)}
    for word in words[i:]:
        name = word.split("=")[0]
        if re.fullmatch(r"--?[A-Za-z][\w-]*", name) and name not in known | {"--help", "-h"}:
            return f"`{path}` has no option {name}"
    return None


def test_every_phx_command_line_in_the_docs_is_real() -> None:
    problems = []
    count = 0
    for page in PAGES:
        for number, line in _phx_lines(page):
            for args in _invocations(line):
                count += 1
                why = _check(args)
                if why:
                    problems.append(f"{page.relative_to(ROOT)}:{number}: {why}: {line}")
    assert count > 150, f"only {count} phx command lines found: is the parser broken?"
    assert not problems, "command lines in the docs that phx does not accept:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("phx lst", "no command 'lst'"),
        ("phx list --tags x", "no option --tags"),
        ("phx --jsn list", "no option --jsn"),
        ("phx key rm 1234", "no command 'rm'"),
        ("PHX_PASSPHRASE=x phx backup --dryrun && phx list", "no option --dryrun"),
    ],
)
def test_the_command_line_check_catches_what_went_stale(line: str, why: str) -> None:
    found = [_check(args) for args in _invocations(line)]
    assert any(w and why in w for w in found), found


# -- every config key ----------------------------------------------------------------------------


def _config_error(doc: dict[str, Any]) -> str:
    try:
        parse_config({"workspace": "/w", "backupDir": "/r", **doc}, env={"HOME": "/h"})
    except ConfigError as exc:
        return str(exc)
    return ""


def _nest(path: list[str], value: object) -> Any:
    """`value` placed at `path` of a config document ("[]" is the first item of a list)."""
    doc: Any = value
    for part in reversed(path):
        doc = [doc] if part == "[]" else {part: doc}
    return doc


def _known_keys(path: list[str]) -> list[str] | None:
    """The keys the parser knows below `path` (["targets", "s3"]), found by giving it an unknown
    one: its error lists them. None when `path` is not an object."""
    for probe in ({"zzunknown": 1}, [{"zzunknown": 1}]):
        doc = _nest(path, probe)
        message = _config_error(doc)
        match = re.search(r"unknown key \"[^\"]*zzunknown\"; remove it \(known keys: ([^)]*)\)", message)
        if match:
            return [k.strip() for k in match.group(1).split(",")] if not isinstance(probe, list) else ["[]"]
    return None


def _every_key(path: list[str]) -> Iterator[str]:
    keys = _known_keys(path)
    if keys is None:
        yield ".".join(path).replace(".[]", "[]")
        return
    if keys == ["[]"]:
        path = [*path, "[]"]
        keys = _known_keys(path) or []
    for key in keys:
        yield from _every_key([*path, key])


def test_every_config_key_is_in_the_configuration_reference() -> None:
    keys = list(_every_key([]))
    assert "targets.s3.storageClass" in keys and "databases.postgres[].agentId" in keys, keys
    assert len(keys) > 50
    text = (DOCS / "configuration.md").read_text()
    missing = [k for k in keys if f"`{k}`" not in text]
    assert not missing, f"config keys missing from docs/configuration.md: {', '.join(missing)}"


# -- troubleshooting quotes real messages ------------------------------------------------------------


def _string_pieces(root: Path) -> Iterator[str]:
    """Every string literal of the Python files below `root`, f-strings as their literal parts."""
    for file in root.rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text(), str(file))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                yield node.value


def test_troubleshooting_quotes_messages_phoenix_prints() -> None:
    text = (DOCS / "troubleshooting.md").read_text()
    quoted = re.findall(r"^### `(.+)`$", text, flags=re.M)
    assert len(quoted) > 25
    pieces = [*_string_pieces(ROOT / "src" / "phoenix_backup"), *_string_pieces(Path(click.__file__).parent)]
    stale = [q for q in quoted if not any(q in piece for piece in pieces)]
    assert not stale, "troubleshooting.md quotes messages nothing prints any more: " + "; ".join(stale)


# -- links -----------------------------------------------------------------------------------------


def _anchors(page: Path) -> set[str]:
    fence = False
    found = set()
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            fence = not fence
        match = None if fence else re.match(r"^#{1,6} (.*)$", line)
        if match:
            found.add(slugify(match.group(1), "-"))
    return found


def test_the_readme_links_lead_somewhere() -> None:
    """mkdocs checks the links inside docs/; the README is outside the site."""
    readme = ROOT / "README.md"
    links = re.findall(r"\]\(([^)\s]+)\)", readme.read_text())
    assert len(links) > 20
    for link in links:
        if re.match(r"[a-z]+:", link):
            continue
        target, _, anchor = link.partition("#")
        page = (readme.parent / target) if target else readme
        assert page.exists(), f"README links to {link}, which does not exist"
        if anchor:
            assert anchor in _anchors(page), f"README links to {link}: no such heading"


def test_every_docs_page_is_in_the_site_navigation() -> None:
    nav = (ROOT / "mkdocs.yml").read_text()
    pages = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    missing = [p for p in pages if f": {p}" not in nav]
    assert not missing, f"pages missing from the nav of mkdocs.yml: {', '.join(missing)}"


# -- the tests that docs/security.md and docs/reliability.md name -------------------------------------

# `tests/e2e/x.py::test_y`, `e2e/x.py` or `unit/x.py::test_y` (the pages' short form); `::test_y`,
# `…::test_y` and a bare `test_y`: a test of the file named last before it on the page.
_TEST_FILE = re.compile(r"^(?:tests/)?((?:e2e|unit|integration)/[\w/]+\.py)(?:::(\w+)(?:\[[^\]]*\])?)?(?:\s.*)?$")
_TEST_IN_LAST_FILE = re.compile(r"^(?:(?:…|\.\.\.)?::)?(test_\w+)(?:\[[^\]]*\])?$")


def _named_tests(page: Path) -> Iterator[tuple[int, str, str | None]]:
    """(line, file below tests/, test function or None) for every test the page names."""
    last: str | None = None
    for number, line in enumerate(page.read_text().splitlines(), 1):
        for code in re.findall(r"`([^`]+)`", line):
            if m := _TEST_FILE.match(code.strip()):
                last = m.group(1)
                yield number, last, m.group(2)
            elif (m := _TEST_IN_LAST_FILE.match(code.strip())) and last is not None:
                yield number, last, m.group(1)


@pytest.mark.parametrize("page", ["security.md", "reliability.md"])
def test_every_test_a_guarantee_names_exists_under_that_name(page: str) -> None:
    """A guarantee is only as good as the test it names: a test renamed or moved, or a `…::name`
    that follows another file's test on the page, leaves the sentence without its proof."""
    functions: dict[str, set[str]] = {}
    named = list(_named_tests(DOCS / page))
    assert len(named) > 100, named
    missing = []
    for number, rel, name in named:
        path = ROOT / "tests" / rel
        if rel not in functions:
            tree = ast.parse(path.read_text()) if path.is_file() else None
            functions[rel] = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)} if tree else set()
        if not path.is_file() or (name is not None and name not in functions[rel]):
            missing.append(f"docs/{page}:{number}: tests/{rel}" + (f"::{name}" if name else ""))
    assert not missing, "named tests that do not exist there:\n" + "\n".join(missing)
