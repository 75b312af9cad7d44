"""Every command has help; the package's imports point one way."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import typer

from bufinspect.cli import app

PKG = Path(__file__).resolve().parent.parent / "bufinspect"


def _commands():
    group = typer.main.get_command(app)
    return sorted(group.commands)


def test_commands_have_help(cli):
    r = cli("--help")
    assert r.exit_code == 0
    for name in _commands():
        r = cli(name, "--help")
        assert r.exit_code == 0, name
        assert "Usage" in r.stdout and len(r.stdout) > 100, name


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", sorted(PKG.rglob("*.py")), ids=lambda p: p.name)
def test_import_direction(path):
    names = _imports(path)
    if path.name != "cli.py":
        assert "typer" not in names, "only cli imports typer"
    if path.name not in ("cli.py", "render.py"):
        assert "rich" not in names, "only cli and render import rich"
    if path.name == "model.py":
        assert names <= {"__future__", "math", "dataclasses", "enum", "typing"}
