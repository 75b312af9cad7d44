"""TorchScript archives (`torch.jit.save`), read without `torch.jit.load` (which runs code).

The module tree and tensors come from `data.pkl` through the restricted unpickler; which
attributes are parameters and which are buffers comes from the `__parameters__` / `__buffers__`
declarations in the archive's `code/` files, read as text. Persistence is not recorded by
TorchScript, so buffers carry `persistent=None`.
"""

from __future__ import annotations

import io
import re
from typing import Any

from bufinspect.errors import InputError
from bufinspect.formats import _torch_common
from bufinspect.formats._unpickle import (Stub, TensorRef, brief, storage_from_pid, stub_name,
                                          stub_state)
from bufinspect.formats._walk import MAX_DEPTH, MAX_NODES, Walker
from bufinspect.formats.torch_zip import ZipArchive
from bufinspect.model import Checkpoint, Container, ContainerKind, Format, Role

_JIT_DATA = {f"torch.jit._pickle.{n}" for n in (
    "build_tensorlist", "build_intlist", "build_doublelist", "build_boollist",
    "build_tensor_from_id", "restore_type_tag")}
# Linear-time patterns: `^\s+` let every line start scan on across all the blank lines after it
# (400 KB of newlines took over a minute); indentation is spaces and tabs only.
_CLASS = re.compile(r"^class[ \t]+(\w+)[ \t]*\(", re.M)
_DECL = re.compile(r"^[ \t]+__(parameters|buffers)__[ \t]*=[ \t]*\[([^\]\n]*)\]", re.M)
# the declaration's list: quoted attribute names, commas, spaces, nothing else
_NAME_LIST = re.compile(r"""[ \t]*(?:(?:"[^"\\\n]*"|'[^'\\\n]*')[ \t]*,[ \t]*)*"""
                        r"""(?:(?:"[^"\\\n]*"|'[^'\\\n]*')[ \t]*)?""")
_QUOTED = re.compile(r""""([^"\\\n]*)"|'([^'\\\n]*)'""")


def is_torchscript(names: list[str]) -> bool:
    """A zip whose members include `<stem>/code/` and `<stem>/data.pkl`."""
    return any("/code/__torch__" in n for n in names) and any(n.endswith("data.pkl")
                                                               for n in names)


def declarations(arc: ZipArchive) -> dict[str, tuple[list[str], list[str]]]:
    """Qualified class name -> (parameter names, buffer names) from the code files' text."""
    out: dict[str, tuple[list[str], list[str]]] = {}
    code = arc.prefix + "code/"
    for name in arc.infos:
        if not (name.startswith(code) and name.endswith(".py")):
            continue
        module = name[len(code):-3].replace("/", ".")
        text = arc.read(name, limit=64 << 20).decode("utf-8", "replace")
        classes = list(_CLASS.finditer(text))
        for i, m in enumerate(classes):
            body = text[m.end(): classes[i + 1].start() if i + 1 < len(classes) else len(text)]
            found: dict[str, list[str]] = {"parameters": [], "buffers": []}
            for d in _DECL.finditer(body):
                # parsed by pattern, never by ast.literal_eval (`[---...1]` recursed in the
                # compiler until it ran out of stack)
                if _NAME_LIST.fullmatch(d.group(2)) is None:
                    raise InputError(f"unreadable {d.group(1)} declaration in {brief(name)} "
                                     "(expected a list of quoted names)", arc.path)
                found[d.group(1)] = [a or b for a, b in _QUOTED.findall(d.group(2))]
            out[f"{module}.{m.group(1)}"] = (found["parameters"], found["buffers"])
    return out


def _safe_unpickle(arc: ZipArchive, member: str) -> object:
    """Unpickle one of the archive's pickles with stubs; refuse it if it would run code."""
    obj, log = _torch_common.unpickle(arc.path, io.BytesIO(arc.read(member)), storage_from_pid)
    # TorchScript's own list builders are data, not code: neither called nor named counts
    log.calls = [c for c in log.calls if c not in _JIT_DATA]
    log.globals = [g for g in log.globals if g not in _JIT_DATA]
    _torch_common.refuse_calls(arc.path, log)
    return obj


def read(path: str, arc: ZipArchive | None = None) -> Checkpoint:
    """Read the archive's metadata (`arc`: the already opened zip, closed here)."""
    arc = arc or ZipArchive(path)
    try:
        pkl = next((n for n in arc.infos if n.endswith("data.pkl") and n.count("/") <= 1), None)
        if pkl is None:
            raise InputError("TorchScript archive without data.pkl", path)
        arc.prefix = pkl[: -len("data.pkl")]
        obj = _safe_unpickle(arc, pkl)
        if arc.has(arc.prefix + "constants.pkl"):  # read by torch.jit.load: scanned, not used
            _safe_unpickle(arc, arc.prefix + "constants.pkl")
        decl = declarations(arc)
        locate = _torch_common.make_locator(
            path, path, lambda key: arc.data_span(f"{arc.prefix}data/{key}"))
        container = _module_tree(path, obj, decl, Walker(path, locate))
        return Checkpoint(path=path, format=Format.TORCHSCRIPT, size=arc.size,
                          containers=(container,), foreign_globals=())
    finally:
        arc.close()


def _module_tree(path: str, root: Any, decl: dict[str, tuple[list[str], list[str]]],
                 w: Walker) -> Container:
    if not isinstance(root, Stub):
        raise InputError("TorchScript data.pkl does not hold a module", path)
    entries = []
    stack: list[tuple[str, Any, int, tuple[int, ...]]] = [("", root, 0, ())]
    nodes = 0
    while stack:
        prefix, mod, depth, above = stack.pop()
        nodes += 1
        if nodes > MAX_NODES or depth > MAX_DEPTH:
            raise InputError("the TorchScript module tree is too large or too deep", path)
        cls = stub_name(mod) or "?"
        params, buffers = decl.get(cls, ([], []))
        state = stub_state(mod)
        dot = prefix + "." if prefix else ""
        for names, role in ((params, Role.PARAMETER), (buffers, Role.BUFFER)):
            for n in names:
                t = state.get(n)
                if isinstance(t, TensorRef):
                    entries.append(w.entry("", dot + n, t, role, "module:torchscript"))
        declared = set(params) | set(buffers)
        for n, t in state.items():  # tensor attributes: module constants, or undeclared classes
            if isinstance(n, str) and n not in declared and isinstance(t, TensorRef):
                role, evidence = ((Role.OTHER, "module:torchscript-attribute") if cls in decl
                                  else (Role.UNKNOWN, "none"))
                entries.append(w.entry("", dot + n, t, role, evidence))
        children = [(k, v) for k, v in state.items() if isinstance(k, str) and isinstance(v, Stub)
                    and (stub_name(v) or "").startswith("__torch__.")]
        for k, v in reversed(children):
            if id(v) not in above and v is not mod:  # a cycle cannot be a module tree
                stack.append((dot + k, v, depth + 1, above + (id(mod),)))
    return Container("", ContainerKind.MODULE, tuple(entries))
