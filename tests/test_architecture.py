"""The layers ARCHITECTURE.md draws, enforced by reading every module's imports and calls."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "bufinspect"
MODULES = sorted(PKG.rglob("*.py"))

# layer -> the bufinspect layers it may import (besides itself); imports point one way
ALLOWED = {
    "escape": set(),  # one escaping of names from files for every terminal line
    "_gc": set(),  # the collector paused while a pass builds what it keeps
    "errors": {"escape"},
    "dtypes": set(),
    "_torch": {"errors"},  # torch as an extra: the one place that asks for it
    "model": {"errors"},
    "formats": {"model", "errors", "dtypes"},
    "kernels": {"_kernel"},  # the fused C kernel (issue #16): its compiled module only
    "numeric": {"model", "dtypes", "kernels"},
    "parallel": {"model"},
    "roles": {"model", "errors", "dtypes", "formats"},
    "annotate": {"model", "errors", "formats", "_torch"},
    "scan": {"model", "errors", "dtypes", "formats", "numeric", "parallel", "kernels", "_torch"},
    "analysis": {"_gc", "model", "errors", "dtypes", "scan", "parallel", "numeric"},
    "distributed": {"model", "errors", "parallel", "scan", "_torch"},
    "render": {"model", "errors", "escape"},
    "cli": {"_gc", "model", "errors", "escape", "formats", "roles", "annotate", "analysis", "scan",
            "render", "parallel", "distributed", "root", "_torch"},
    "root": {"_gc", "model", "errors", "formats", "roles", "annotate", "analysis"},  # __init__.py
    "main": {"cli"},  # __main__.py
}
# file I/O: only formats/ opens files (checkpoints, config, metrics, sidecars, outputs)
IO_CALLS = {"open", "read_text", "write_text", "read_bytes", "write_bytes"}


def layer(path: Path) -> str:
    rel = path.relative_to(PKG).parts
    if rel == ("__init__.py",):
        return "root"
    if rel == ("__main__.py",):
        return "main"
    return rel[0].removesuffix(".py")


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) for every import statement, relative imports resolved from the package."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.append((node.module, [a.name for a in node.names]))
    return out


def bufinspect_layers(path: Path) -> set[str]:
    """The bufinspect layers a module imports (`from bufinspect import load` counts as root)."""
    found = set()
    for module, names in imports(path):
        parts = module.split(".")
        if parts[0] != "bufinspect":
            continue
        if len(parts) > 1:
            found.add(parts[1])
            continue
        for name in names or ["<root>"]:
            found.add(name if (PKG / name).is_dir() or (PKG / f"{name}.py").exists() else "root")
    return found


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PKG)))
def test_imports_point_one_way(path):
    mine = layer(path)
    assert mine in ALLOWED, f"{path}: a new top-level module: give it a layer here and in " \
                            "ARCHITECTURE.md"
    wrong = bufinspect_layers(path) - ALLOWED[mine] - {mine}
    assert not wrong, f"{path.relative_to(PKG)} ({mine}) imports {sorted(wrong)}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PKG)))
def test_third_party_edges(path):
    names = {m.split(".")[0] for m, _ in imports(path)}
    mine = layer(path)
    if mine != "cli":
        assert "typer" not in names, "only cli imports typer"
    if mine not in ("cli", "render"):
        assert "rich" not in names, "only cli and render import rich"
    if mine == "model":
        stdlib = {"__future__", "math", "dataclasses", "enum", "typing", "fnmatch", "bufinspect"}
        assert names <= stdlib, f"model imports {sorted(names - stdlib)}"


@pytest.mark.parametrize("path", [p for p in MODULES if layer(p) != "formats"],
                         ids=lambda p: str(p.relative_to(PKG)))
def test_only_formats_opens_files(path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) \
                else None
            assert name not in IO_CALLS, f"{path.relative_to(PKG)}:{node.lineno} calls {name}()"


def test_long_files_say_why():
    """No module over ~450 lines without a reason written at its top."""
    for path in MODULES:
        text = path.read_text()
        if text.count("\n") > 460:
            head = "\n".join(text.splitlines()[:12]).lower()
            assert "long" in head, f"{path.relative_to(PKG)}: {text.count(chr(10))} lines"
