"""Find the containers in an unpickled checkpoint object: state dicts, modules, optimizers."""

from __future__ import annotations

from math import prod
from typing import Any, Callable

from bufinspect import dtypes
from bufinspect.errors import InputError
from bufinspect.formats._unpickle import PickledDict, Stub, TensorRef, stub_name, stub_state
from bufinspect.model import Container, ContainerKind, Entry, Role, TensorData

# budget for walking the object graph: a pickle can share one list a billion times over
MAX_NODES = 2_000_000
MAX_DEPTH = 200
MAX_ENTRIES = 500_000  # tensors listed (a shared tensor counts once per place it appears)

Locate = Callable[[TensorRef], TensorData | None]
_itemsize = {name: dtypes.itemsize(name) for name in dtypes.DTYPES}.get  # (unknown: 0)


class Walker:
    def __init__(self, path: str, locate: Locate):
        self.path = path
        self.locate = locate
        self.nodes = 0
        self.entries = 0
        self.containers: list[Container] = []

    # -- entries -----------------------------------------------------------------------------

    def entry(self, container: str, key: str, t: TensorRef, role: Role, evidence: str,
              persistent: bool | None = None) -> Entry:
        self.entries += 1  # one tensor shared a billion times is a bomb too
        if self.entries > MAX_ENTRIES:
            raise InputError(f"the pickle lists more than {MAX_ENTRIES} tensors", self.path)
        storage = t.storage
        return Entry(container, key, role, evidence, t.shape, t.dtype,
                     t.device if storage is None else storage.location,
                     prod(t.shape) * _itemsize(t.dtype, 0), persistent, t.requires_grad,
                     self.locate(t))

    # -- the walk ----------------------------------------------------------------------------

    def walk(self, obj: Any, path: list[str], depth: int = 0) -> None:
        self.nodes += 1
        if self.nodes > MAX_NODES or depth > MAX_DEPTH:
            raise InputError("the pickled object graph is too large or too deep", self.path)
        here = "/".join(path)
        if isinstance(obj, TensorRef):
            self.containers.append(Container(here, ContainerKind.TENSORS, (
                self.entry(here, "tensor", obj, Role.OTHER, "container:tensor"),)))
        elif isinstance(obj, dict):
            self.mapping(obj, path, depth)
        elif isinstance(obj, (list, tuple)):
            loose = []
            for i, v in enumerate(obj):
                if isinstance(v, TensorRef):
                    loose.append((str(i), v))
                else:
                    self.walk(v, path + [str(i)], depth + 1)
            self.loose(here, loose)
        elif isinstance(obj, Stub):
            state = stub_state(obj)
            if isinstance(state.get("_modules"), dict) and isinstance(state.get("_parameters"), dict):
                self.module(obj, here)
            else:
                self.mapping(state, path, depth)

    def mapping(self, obj: dict, path: list[str], depth: int) -> None:
        here = "/".join(path)
        if _is_state_dict(obj):
            # a keep_vars=True state dict pickles nn.Parameter objects: exact evidence, and then
            # its plain tensors are the buffers (keep_vars keeps every parameter a Parameter)
            # (not a converted quantized model: its packed biases are Parameter objects while its
            # quantized weights are neither parameters nor buffers)
            tensors = [v for v in obj.values() if isinstance(v, TensorRef)]
            keep_vars = any(t.is_parameter for t in tensors) and not any(
                t.layout == "quantized" for t in tensors)
            role, evidence, persistent = ((Role.BUFFER, "pickle:keep_vars", True) if keep_vars
                                          else (Role.UNKNOWN, "none", None))
            entry, out = self.entry, []
            add = out.append
            for k, v in obj.items():  # (a loop, not a generator: 100,000 tensors in some dicts)
                if isinstance(v, TensorRef):
                    add(entry(here, k, v, Role.PARAMETER, "pickle:Parameter") if v.is_parameter
                        else entry(here, k, v, role, evidence, persistent))
            entries = tuple(out)
            meta = getattr(obj, "_metadata", None) if isinstance(obj, PickledDict) else None
            versions = None
            if isinstance(meta, dict):
                versions = {k: v.get("version") for k, v in meta.items()
                            if isinstance(k, str) and isinstance(v, dict)}
            self.containers.append(Container(here, ContainerKind.STATE_DICT, entries,
                                             module_versions=versions))
            return
        if _is_optimizer(obj):
            self.optimizer(obj, here)
            return
        loose = []
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                continue
            if isinstance(v, TensorRef):
                loose.append((str(k), v))
            else:
                self.walk(v, path + [str(k)], depth + 1)
        self.loose(here, loose)

    def loose(self, here: str, items: list[tuple[str, TensorRef]]) -> None:
        if items:
            self.containers.append(Container(here, ContainerKind.TENSORS, tuple(
                self.entry(here, k, t, Role.OTHER, "container:tensors") for k, t in items)))

    def optimizer(self, obj: dict, here: str) -> None:
        entries = []
        state = obj.get("state")
        if isinstance(state, dict):
            for pid, slots in state.items():
                if isinstance(slots, dict):
                    for name, t in slots.items():
                        if isinstance(t, TensorRef):
                            entries.append(self.entry(here, f"state.{pid}.{name}", t, Role.OTHER,
                                                      "container:optimizer"))
        groups = tuple(g for g in obj.get("param_groups") or () if isinstance(g, dict))
        # torch.distributed.checkpoint's get_state_dict keys params by name: names, not ids
        clean = tuple({"params": [p for p in g.get("params", []) if type(p) is int],
                       "param_names": [n for n in g.get("param_names", []) if isinstance(n, str)]
                       or [p for p in g.get("params", []) if isinstance(p, str)]}
                      for g in groups)
        self.containers.append(Container(here, ContainerKind.OPTIMIZER, tuple(entries),
                                         param_groups=clean))

    def module(self, root: Stub, here: str) -> None:
        """A pickled nn.Module: roles are exact, non-persistent buffers included."""
        entries: list[Entry] = []
        classes: dict[str, str] = {}
        stack: list[tuple[str, Any, int]] = [("", root, 0)]
        while stack:
            prefix, mod, depth = stack.pop()
            self.nodes += 1
            if self.nodes > MAX_NODES or depth > MAX_DEPTH:
                raise InputError("the pickled module tree is too large or too deep", self.path)
            if not isinstance(mod, Stub):
                continue
            classes[prefix] = stub_name(mod) or "?"
            st = stub_state(mod)
            params = st.get("_parameters") if isinstance(st.get("_parameters"), dict) else {}
            buffers = st.get("_buffers") if isinstance(st.get("_buffers"), dict) else {}
            nonpersistent = st.get("_non_persistent_buffers_set")
            nonpersistent = nonpersistent if isinstance(nonpersistent, (set, frozenset)) else set()
            dot = prefix + "." if prefix else ""
            for name, t in params.items():
                if isinstance(t, TensorRef) and isinstance(name, str):
                    entries.append(self.entry(here, dot + name, t, Role.PARAMETER, "module:pickled"))
            for name, t in buffers.items():
                if isinstance(t, TensorRef) and isinstance(name, str):
                    entries.append(self.entry(here, dot + name, t, Role.BUFFER, "module:pickled",
                                              persistent=name not in nonpersistent))
            children = st.get("_modules") if isinstance(st.get("_modules"), dict) else {}
            for name, child in reversed(list(children.items())):
                if isinstance(name, str):
                    stack.append((dot + name, child, depth + 1))
        self.containers.append(Container(here, ContainerKind.MODULE, tuple(entries),
                                         module_classes=classes))


# module state that a state dict may hold besides tensors: get_extra_state(), and what converted
# quantized layers write (`_packed_params.dtype`, the packed-param tuple, qscheme and dtype)
_NON_TENSOR_STATE = ("_extra_state", "_packed_params", "weight_qscheme", "weight_dtype")


_FILE_KEY = (".ckpt", ".pt", ".pth", ".bin", ".safetensors")


def _keyed_by_files(obj: dict) -> bool:
    """Keys that are checkpoint file names, not module keys: Lightning's ModelCheckpoint keeps
    `best_k_models` ({"/runs/epoch=2-step=30.ckpt": score tensor}) in every .ckpt it writes."""
    # (all() stops at the first module key; any() is False without keys)
    return all(k.endswith(_FILE_KEY) for k in obj if isinstance(k, str)) and any(
        "/" in k or "\\" in k or "=" in k for k in obj if isinstance(k, str))


def _is_state_dict(obj: dict) -> bool:
    """Tensors under string keys; other values only where a module writes them, or anywhere
    when the dict carries a state dict's `_metadata` (a converted quantized model's None bias).
    Never a dict keyed by checkpoint file names (`_keyed_by_files`)."""
    if _keyed_by_files(obj):
        return False
    tensors = 0
    meta = isinstance(obj, PickledDict) and isinstance(getattr(obj, "_metadata", None), dict)
    for k, v in obj.items():
        if not isinstance(k, str):
            return False
        if isinstance(v, TensorRef):
            tensors += 1
        elif not meta and not any(part in _NON_TENSOR_STATE for part in k.split(".")):
            return False
    return tensors > 0


def _is_optimizer(obj: dict) -> bool:
    return "state" in obj and "param_groups" in obj and isinstance(obj.get("param_groups"), list)


def containers_of(root: Any, path: str, locate: Locate) -> tuple[Container, ...]:
    w = Walker(path, locate)
    try:
        w.walk(root, [])
    except RecursionError:
        raise InputError("the pickled object graph is too deep", path) from None
    return tuple(w.containers)
