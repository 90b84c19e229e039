"""The rooms of docs/architecture.md hold: no module reaches into another's private names, every
command has the module `ops.COMMANDS` names, and ops/ holds nothing else but what it lists. (The
layers themselves are import-linter's contract in pyproject.toml, run by scripts/test.sh.)"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import click

import phoenix_backup
from phoenix_backup import ops
from phoenix_backup.cli.app import cli

PACKAGE = Path(phoenix_backup.__file__).parent
ROOT = PACKAGE.parent


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _is_module(dotted: str) -> bool:
    path = ROOT.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _private_uses(path: Path, name: str) -> list[str]:
    """`from phoenix_backup.x import _name`, and `module._name` on a Phoenix module bound by an
    import, in the source file of module `name`."""
    tree = ast.parse(path.read_text(), str(path))
    modules: dict[str, str] = {}  # local name -> the Phoenix module it is bound to
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            if not base.startswith("phoenix_backup"):
                continue
            for alias in node.names:
                if _is_module(f"{base}.{alias.name}"):
                    modules[alias.asname or alias.name] = f"{base}.{alias.name}"
                elif _private(alias.name):
                    found.append(f"{name}:{node.lineno} imports {alias.name} from {base}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("phoenix_backup") and alias.asname:
                    modules[alias.asname] = alias.name
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in modules
            and _private(node.attr)
        ):
            found.append(f"{name}:{node.lineno} uses {modules[node.value.id]}.{node.attr}")
    return found


def test_no_module_uses_a_private_name_of_another() -> None:
    found = [use for path in sorted(PACKAGE.rglob("*.py")) for use in _private_uses(path, _module_name(path))]
    assert not found, "make the name public (and say why it is shared) or move the code:\n" + "\n".join(found)


def test_the_check_sees_both_kinds_of_private_use(tmp_path: Path) -> None:
    """The check above would pass on anything if it could not see a private use: it must."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from phoenix_backup.repo.pack import _HEAD\nfrom . import ls\nfrom phoenix_backup.sinks import files\n\n"
        "files._leftover('x')\nls.permissions\n"
    )
    found = _private_uses(probe, "phoenix_backup.ops.probe")
    assert len(found) == 2 and "_HEAD" in found[0] and "phoenix_backup.sinks.files._leftover" in found[1], found


def _commands(group: click.Group, prefix: str = "") -> list[str]:
    """Every command of `group`, its groups' commands as "key add". The top group loads its commands
    when asked (`cli.app.LazyGroup`): `group.commands` alone held none of them, and the checks below
    passed on an empty list."""
    out = []
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None, name
        path = f"{prefix}{name}"
        out.append(path)
        if isinstance(command, click.Group):
            out += _commands(command, f"{path} ")
    return out


def test_every_command_has_the_module_the_map_names() -> None:
    importlib.import_module("phoenix_backup.cli.main")  # registers every command
    missing = []
    assert {"backup", "key add", "repair objects", "schedule install"} <= set(_commands(cli))
    for command in _commands(cli):
        words = command.split()
        owner = next(
            (" ".join(words[:n]) for n in range(len(words), 0, -1) if " ".join(words[:n]) in ops.COMMANDS), None
        )
        if owner is None:
            missing.append(command)
    assert not missing, f"commands with no entry in phoenix_backup.ops.COMMANDS: {missing}"
    for module in [*ops.COMMANDS.values(), *ops.SHARED]:
        assert _is_module(f"phoenix_backup.{module}"), module


def test_ops_holds_only_what_the_map_lists() -> None:
    listed = {m for m in [*ops.COMMANDS.values(), *ops.SHARED] if m.startswith("ops.")}
    present = {f"ops.{p.stem}" for p in (PACKAGE / "ops").glob("*.py") if p.stem != "__init__"}
    assert present == listed, f"not in the map: {sorted(present - listed)}; gone: {sorted(listed - present)}"


def test_every_phx_command_a_message_names_is_real() -> None:
    """A message's fix names a command the user will type: `phx snapshots` (no such command; the
    list is `phx list`) reached doctor's and status's lines before this check."""
    import re

    importlib.import_module("phoenix_backup.cli.main")  # registers every command
    commands = set(_commands(cli))
    named = re.compile(r"`phx ([a-z][a-z-]*)(?: ([a-z][a-z-]*))?")
    wrong = []
    for path in sorted(Path(phoenix_backup.__file__).parent.rglob("*.py")):
        for first, second in named.findall(path.read_text()):
            command = cli.get_command(click.Context(cli), first)
            if command is None:
                wrong.append(f"{path.name}: phx {first}")
            elif isinstance(command, click.Group) and second and f"{first} {second}" not in commands:
                wrong.append(f"{path.name}: phx {first} {second}")
    assert not wrong, wrong
