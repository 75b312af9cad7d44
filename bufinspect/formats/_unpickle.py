"""A pickle reader that never imports or runs anything the file names.

Every global outside a small allowlist (bufinspect's own frozen stand-ins) becomes an inert stub
type. A call to a stub (REDUCE, INST, OBJ, or a stub instance called) builds another stub that
records callee and arguments: the calls `torch.load(weights_only=False)` would make. NEWOBJ and
BUILD only fill a stub. Which names make a reader refuse the file is `_policy`'s decision.
"""

# Long on purpose (~580 lines): the opcode-level reader, its stand-in types and the allowlist
# must be read together to see that nothing the file names can run.

from __future__ import annotations

import contextlib
import functools
import io
import math
import os
import pickle
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from bufinspect import dtypes
from bufinspect.formats import _policy, _prescan


def brief(v: Any) -> str:
    """A short description of an object from a pickle (never a full repr: shared lists explode)."""
    if isinstance(v, (str, bytes)):
        return repr(v[:60]) + ("..." if len(v) > 60 else "")
    if v is None or isinstance(v, (bool, float)):
        return repr(v)
    if isinstance(v, int):
        return str(v) if v.bit_length() < 128 else "a huge integer"
    if isinstance(v, (tuple, list)):
        inner = ", ".join(brief(x) if isinstance(x, (str, bytes, int, float, type(None)))
                          else type(x).__name__ for x in v[:6])
        return f"{type(v).__name__} of {len(v)} ({inner}{', ...' if len(v) > 6 else ''})"
    return stub_name(v) or type(v).__name__


@dataclass(frozen=True, slots=True)
class DTypeRef:
    name: str

    def __setstate__(self, state: Any) -> None:
        raise pickle.UnpicklingError("a pickle tried to change a type")


@dataclass(frozen=True, slots=True)
class StorageType:
    dtype: str | None  # None for UntypedStorage (the tensor's dtype comes separately)

    def __setstate__(self, state: Any) -> None:
        raise pickle.UnpicklingError("a pickle tried to change a type")


@dataclass(frozen=True, init=False)
class StorageRef:
    """A storage named by a persistent id; its bytes are never touched here."""

    key: str
    dtype: str | None
    location: str
    numel: int | None  # as declared by the persistent id (elements, or bytes if untyped)
    view_offset: int = 0  # legacy storage views: element offset into the root storage

    def __init__(self, key: str, dtype: str | None, location: str, numel: int | None,
                 view_offset: int = 0) -> None:
        # frozen all the same; one per storage, so no object.__setattr__ per field
        d = self.__dict__
        d["key"] = key
        d["dtype"] = dtype
        d["location"] = location
        d["numel"] = numel
        d["view_offset"] = view_offset

    def __setstate__(self, state: Any) -> None:
        raise pickle.UnpicklingError("a pickle tried to change a storage")


@dataclass(slots=True)
class TensorRef:
    """A tensor placeholder: everything `torch.load` would know, without the data (slotted: one
    per tensor, built and read faster without an instance dict)."""

    storage: StorageRef | None
    storage_offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...] | None
    dtype: str
    requires_grad: bool = False
    is_parameter: bool = False
    layout: str = "strided"  # strided, meta, quantized, sparse, other
    device: str | None = None  # for tensors without storage (meta, wrapper subclasses)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def __setstate__(self, state: Any) -> None:
        raise pickle.UnpicklingError("a pickle tried to change a tensor")


class Stub:
    """Instances stand for objects of classes the file names; nothing of theirs ever runs."""

    __stub_name__ = "?"
    __stub_log__: "UnpickleLog"

    def __new__(cls, *args: Any, **kwargs: Any) -> "Stub":
        self = object.__new__(cls)
        object.__setattr__(self, "_stub_args", args)
        object.__setattr__(self, "_stub_kwargs", kwargs)
        object.__setattr__(self, "_stub_state", {})
        object.__setattr__(self, "_stub_items", [])
        return self

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # only reached through a call (REDUCE/INST/OBJ), never through NEWOBJ
        type(self).__stub_log__.called(type(self).__stub_name__, args)

    def __call__(self, *args: Any, **kwargs: Any) -> "Stub":
        # REDUCE on an instance (a stored partial called later): the result is another stub
        name = type(self).__stub_name__ + "()"
        log = type(self).__stub_log__
        log.called(name, args)
        return log.stub_class(name).__new__(log.stub_class(name), *args)

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:
            state, slots = state
            if isinstance(slots, dict):
                self._stub_state.update(slots)
        if isinstance(state, dict):
            self._stub_state.update(state)
        else:
            object.__setattr__(self, "_stub_state", {"__state__": state})

    def __setattr__(self, name: str, value: Any) -> None:
        self._stub_state[name] = value

    def __setitem__(self, key: Any, value: Any) -> None:
        self._stub_items.append((key, value))

    def append(self, value: Any) -> None:
        self._stub_items.append(value)

    def extend(self, values: Any) -> None:
        self._stub_items.extend(values)

    def __repr__(self) -> str:
        return f"<stub {type(self).__stub_name__}>"


class _StubMeta(type):
    def __setattr__(cls, name: str, value: Any) -> None:
        raise pickle.UnpicklingError("a pickle tried to change a class")

    def __delattr__(cls, name: str) -> None:
        raise pickle.UnpicklingError("a pickle tried to change a class")


def stub_name(obj: Any) -> str | None:
    return type(obj).__stub_name__ if isinstance(obj, Stub) else None


def stub_state(obj: Stub) -> dict[str, Any]:
    return object.__getattribute__(obj, "_stub_state")


class PickledDict(dict):
    """Stands for collections.OrderedDict; keeps the `_metadata` a state dict carries."""

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, dict) and isinstance(state.get("_metadata"), dict):
            dict.__setattr__(self, "_metadata", state["_metadata"])

    def __setattr__(self, name: str, value: Any) -> None:
        raise pickle.UnpicklingError("a pickle tried to set an attribute on a dict")


class _Safe:
    """A frozen wrapper around one of bufinspect's own functions: callable, not mutable.

    Each wrapper is an instance of its own subclass whose `__call__` is the function itself
    (a staticmethod), so REDUCE calls the function with no wrapper frame in between: the
    rebuild functions run once per tensor (100,000 times in a large checkpoint)."""

    __slots__ = ("_fn", "_name")

    def __new__(cls, name: str, fn: Callable[..., Any]) -> "_Safe":
        sub = type(f"_Safe[{name}]", (cls,), {"__slots__": (), "__call__": staticmethod(fn)})
        return object.__new__(sub)

    def __init__(self, name: str, fn: Callable[..., Any]):
        object.__setattr__(self, "_fn", fn)
        object.__setattr__(self, "_name", name)

    def __call__(self, *args: Any) -> Any:  # (replaced by `fn` in each instance's class)
        return self._fn(*args)

    def __setstate__(self, state: Any) -> None:
        raise pickle.UnpicklingError(f"a pickle tried to change {self._name}")

    def __setattr__(self, name: str, value: Any) -> None:
        raise pickle.UnpicklingError(f"a pickle tried to change {self._name}")


# ---- stand-ins for torch's rebuild functions -------------------------------------------------


_DIM_LIMIT = 1 << 63  # torch sizes and strides are int64
_SMALL_DIM = 1 << 31  # two such dimensions multiply to less than _DIM_LIMIT


def _ints(v: Any, what: str) -> tuple[int, ...]:
    if type(v) is tuple and len(v) <= 64:  # the usual case, checked without a generator
        for x in v:
            if type(x) is not int or x < 0 or x >= _DIM_LIMIT:
                break
        else:
            return v
    if not isinstance(v, (tuple, list)) or len(v) > 1 << 16 or not all(
            type(x) is int and x >= 0 for x in v):
        raise pickle.UnpicklingError(f"bad tensor {what}: {brief(v)}")
    if len(v) > 64:
        raise pickle.UnpicklingError(f"tensor {what} has {len(v)} dimensions")
    if any(x >= _DIM_LIMIT for x in v):
        raise pickle.UnpicklingError(f"tensor {what} has a dimension beyond 2**63")
    return tuple(v)


def _shape(v: Any) -> tuple[int, ...]:
    """A tensor size: `_ints`, and at most 2**63 elements (a bound every later formatter and
    product relies on: an unbounded shape crashed the size formatter and JSON)."""
    shape = _ints(v, "size")
    if len(shape) > 1 and math.prod(n for n in shape if n) >= _DIM_LIMIT:
        raise pickle.UnpicklingError(f"tensor size {brief(shape)} holds more than 2**63 "
                                     "elements")
    return shape


def _strided(storage: Any, offset: Any, size: Any, stride: Any, dtype: str | None,
             requires_grad: Any = False) -> TensorRef:
    # the usual tensor (a tuple size of at most two ints below 2**31 and its tuple stride: no
    # product to bound) in one pass of checks; anything else takes the checks below
    if type(storage) is StorageRef and type(offset) is int and offset >= 0 \
            and type(size) is tuple and type(stride) is tuple and len(size) == len(stride) <= 2:
        for x in size + stride:
            if type(x) is not int or x < 0 or x >= _SMALL_DIM:
                break
        else:
            name = dtype or storage.dtype
            if name is not None:
                return TensorRef(storage, offset + storage.view_offset, size, stride, name,
                                 bool(requires_grad))
    return _strided_checked(storage, offset, size, stride, dtype, requires_grad)


def _strided_checked(storage: Any, offset: Any, size: Any, stride: Any, dtype: str | None,
                     requires_grad: Any = False) -> TensorRef:
    """`_strided` for any input: every check, one at a time (the reference for its fast path)."""
    if not isinstance(storage, StorageRef):
        raise pickle.UnpicklingError("tensor without a storage placeholder")
    if type(offset) is not int or offset < 0:
        raise pickle.UnpicklingError(f"bad storage offset {brief(offset)}")
    shape = _shape(size)
    strides = _ints(stride, "stride")
    if len(strides) != len(shape):
        raise pickle.UnpicklingError("tensor stride and size disagree")
    dtype = dtype or storage.dtype
    if dtype is None:
        raise pickle.UnpicklingError("tensor without a dtype")
    return TensorRef(storage, offset + storage.view_offset, shape, strides, dtype,
                     requires_grad=bool(requires_grad))


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any) -> TensorRef:
    return _strided(storage, storage_offset, size, stride, None)


def _rebuild_tensor_v2(storage: Any, storage_offset: Any, size: Any, stride: Any,
                       requires_grad: Any = False, backward_hooks: Any = None,
                       metadata: Any = None) -> TensorRef:
    return _strided(storage, storage_offset, size, stride, None, requires_grad)


def _rebuild_tensor_v3(storage: Any, storage_offset: Any, size: Any, stride: Any,
                       requires_grad: Any, backward_hooks: Any, dtype: Any,
                       metadata: Any = None) -> TensorRef:
    if not isinstance(dtype, DTypeRef):
        raise pickle.UnpicklingError("tensor without a dtype")
    return _strided(storage, storage_offset, size, stride, dtype.name, requires_grad)


def _rebuild_parameter(data: Any, requires_grad: Any, backward_hooks: Any,
                       state: Any = None) -> TensorRef:
    if not isinstance(data, TensorRef):
        raise pickle.UnpicklingError("parameter without a tensor")
    data.is_parameter = True
    data.requires_grad = bool(requires_grad)
    return data


def _rebuild_qtensor(storage: Any, storage_offset: Any, size: Any, stride: Any,
                     quantizer_params: Any, requires_grad: Any, backward_hooks: Any) -> TensorRef:
    t = _strided(storage, storage_offset, size, stride, None, requires_grad)
    t.layout = "quantized"
    return t


def _rebuild_meta(dtype: Any, size: Any, stride: Any, requires_grad: Any = False) -> TensorRef:
    name = dtype.name if isinstance(dtype, DTypeRef) else "float32"
    return TensorRef(None, 0, _shape(size), _ints(stride, "stride"), name,
                     bool(requires_grad), layout="meta", device="meta")


def _rebuild_wrapper_subclass(cls: Any, dtype: Any, size: Any, stride: Any, storage_offset: Any,
                              layout: Any, device: Any, requires_grad: Any) -> TensorRef:
    name = dtype.name if isinstance(dtype, DTypeRef) else "float32"
    dev = device if isinstance(device, str) else None
    return TensorRef(None, 0, _shape(size), None, name, bool(requires_grad),
                     layout="other", device=dev)


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> Any:
    if not isinstance(func, _Safe) or not isinstance(args, tuple):
        raise pickle.UnpicklingError("tensor subclass rebuilt by an unknown function")
    return func(*args)


def _rebuild_opaque(*args: Any, **kwargs: Any) -> TensorRef:
    # sparse and nested tensors: listed, without shape details or data
    return TensorRef(None, 0, (), None, "float32", layout="other")


def _device(kind: Any, index: Any = None) -> str:
    if not isinstance(kind, str):
        raise pickle.UnpicklingError("bad device")
    return f"{kind}:{index}" if type(index) is int else kind


def _encode(text: Any, encoding: Any = "latin1") -> bytes:
    # protocol 2 pickles bytes as _codecs.encode(str, 'latin1')
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("unexpected _codecs.encode")
    return text.encode("latin1")


def _torch_size(v: Any = ()) -> tuple[int, ...]:
    return _shape(v)


def _set(items: Any = ()) -> set:
    return set(items)


def _frozenset(items: Any = ()) -> frozenset:
    return frozenset(items)


def _layout(name: Any = None) -> str:
    if name is not None and not isinstance(name, str):  # str() of a shared tower never ends
        raise pickle.UnpicklingError("bad layout name")
    return str(name)[:64]


_TORCH_UTILS = {
    "_rebuild_tensor": _rebuild_tensor,
    "_rebuild_tensor_v2": _rebuild_tensor_v2,
    "_rebuild_tensor_v3": _rebuild_tensor_v3,
    "_rebuild_parameter": _rebuild_parameter,
    "_rebuild_parameter_with_state": _rebuild_parameter,
    "_rebuild_qtensor": _rebuild_qtensor,
    "_rebuild_meta_tensor_no_storage": _rebuild_meta,
    "_rebuild_wrapper_subclass": _rebuild_wrapper_subclass,
    "_rebuild_sparse_tensor": _rebuild_opaque,
    "_rebuild_nested_tensor": _rebuild_opaque,
    "_rebuild_device_tensor_from_numpy": _rebuild_opaque,
    "_rebuild_device_tensor_from_cpu_tensor": _rebuild_opaque,
}


def _reconstructor(cls: Any, base: Any = None, state: Any = None) -> Any:
    return _newobj(cls)


def _newobj(cls: Any, *args: Any) -> Any:
    if isinstance(cls, type) and issubclass(cls, Stub):
        return cls.__new__(cls, *args)
    raise pickle.UnpicklingError("object of an unexpected class")


def _newobj_ex(cls: Any, args: Any = (), kwargs: Any = None) -> Any:
    if not isinstance(args, tuple) or not isinstance(kwargs, (dict, type(None))):
        raise pickle.UnpicklingError("bad copyreg.__newobj_ex__ arguments")
    return _newobj(cls, *args)


class UnpickleLog:
    """What a pickle named and asked to call: read by the readers, never acted upon."""

    def __init__(self) -> None:
        self.calls: list[str] = []  # stub globals (or stub instances, `name()`) that were called
        self.globals: list[str] = []  # every global outside the allowlist
        self.call_args: dict[str, str] = {}  # callee -> a short description of its first call
        self._stubs: dict[str, type] = {}

    def called(self, name: str, args: tuple[Any, ...]) -> None:
        self.calls.append(name)
        if name not in self.call_args:
            self.call_args[name] = ", ".join(brief(a) for a in args[:4]) + (
                ", ..." if len(args) > 4 else "")

    def stub_class(self, full: str) -> type:
        """The one inert stub type standing for the global `full` in this pickle."""
        cls = self._stubs.get(full)
        if cls is None:
            cls = _StubMeta(full.rpartition(".")[2] or "stub", (Stub,),
                            {"__stub_name__": full, "__stub_log__": self,
                             "__module__": "bufinspect.stub"})
            self._stubs[full] = cls
        return cls


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: io.BufferedIOBase, persistent: Callable[[Any], Any], log: UnpickleLog):
        super().__init__(file, encoding="utf-8")
        # the C unpickler calls this directly (no method frame in between), once per storage
        self.persistent_load = persistent
        self._log = log
        self._allowed = _allowlist()

    def find_class(self, module: str, name: str) -> Any:
        module = {"__builtin__": "builtins", "copy_reg": "copyreg"}.get(module, module)
        found = self._allowed.get((module, name))
        if found is not None:
            return found
        dt = torch_dtype(module, name)
        if dt is not None:
            return dt
        return self._stub(f"{module}.{name}")

    def _stub(self, full: str) -> type:
        if full not in self._log._stubs:
            self._log.globals.append(full)
        return self._log.stub_class(full)


@functools.cache
def _allowlist() -> dict[tuple[str, str], Any]:
    """The globals a pickle may name that are not stubs: built once, shared by every unpickler
    (each value is immutable; a DCP folder unpickles once per item)."""
    allowed: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): PickledDict,
        ("builtins", "set"): _Safe("set", _set),
        ("builtins", "frozenset"): _Safe("frozenset", _frozenset),
        ("_codecs", "encode"): _Safe("_codecs.encode", _encode),
        ("torch", "Size"): _Safe("torch.Size", _torch_size),
        ("torch", "device"): _Safe("torch.device", _device),
        ("torch.serialization", "_get_layout"): _Safe("_get_layout", _layout),
        ("torch._tensor", "_rebuild_from_type_v2"):
            _Safe("_rebuild_from_type_v2", _rebuild_from_type_v2),
        # plain functions, never bound methods: a bound method in the allowlist would keep
        # every unpickler alive in a reference cycle while `load` has the collector off
        # (a DCP folder of 20,000 items peaked at 2.8 GB)
        ("copyreg", "_reconstructor"): _Safe("copyreg._reconstructor", _reconstructor),
        ("copyreg", "__newobj__"): _Safe("copyreg.__newobj__", _newobj),
        # protocol 2's spelling of NEWOBJ_EX (objects with __getnewargs_ex__)
        ("copyreg", "__newobj_ex__"): _Safe("copyreg.__newobj_ex__", _newobj_ex),
        ("torch.storage", "UntypedStorage"): StorageType(None),
        ("torch", "UntypedStorage"): StorageType(None),
    }
    for name, fn in _TORCH_UTILS.items():
        allowed[("torch._utils", name)] = _Safe(name, fn)
    for cls, dt in dtypes.STORAGE_TYPES.items():
        allowed[("torch", cls)] = StorageType(dt)
    return allowed


def torch_dtype(module: str, name: str) -> DTypeRef | None:
    """`torch.float32`, `torch.half`, ... as the inert dtype placeholder; None for other globals."""
    if module != "torch":
        return None
    dt = dtypes.canonical(name)
    return DTypeRef(dt) if dt is not None else None


def load(file: io.BufferedIOBase, persistent: Callable[[Any], Any]) -> tuple[Any, UnpickleLog]:
    """Unpickle one pickle from `file` with stubs for every foreign global.

    Returns the object and a log of the foreign globals it named and the ones it called.
    Raises whatever the pickle machine raises on corrupt input; callers turn that into InputError.
    """
    log = UnpickleLog()
    _prescan.scan_file(file)  # refuses what would blow up hashing before anything is built
    budget = _budget_for(file)
    if isinstance(file, io.BytesIO):
        # the C unpickler prefetches only from a stream with peek(); a bare BytesIO costs it a
        # read() call per opcode (two thirds of the time for a state dict)
        file = io.BufferedReader(file, 1 << 17)  # type: ignore[arg-type]
    with _memory_budget(budget):
        obj = _Unpickler(file, persistent, log).load()
    return obj, log


def _budget_for(file: Any) -> int:
    """Heap a pickle of this size may need: its objects, never gigabytes for a few bytes."""
    try:
        size = len(file.getbuffer()) if isinstance(file, io.BytesIO) else os.fstat(
            file.fileno()).st_size
    except (OSError, AttributeError, ValueError):
        size = 16 << 20
    return (1 << 30) + 64 * size


@contextlib.contextmanager
def _memory_budget(nbytes: int) -> Iterator[None]:
    """Cap the heap (RLIMIT_DATA) while a pickle runs: a 10-byte pickle whose LONG_BINPUT names
    memo slot 2**30 makes the C unpickler allocate and zero 16 GB. With the cap that allocation
    fails at once with MemoryError (a one-line error for the user). Restored afterwards."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
        with open("/proc/self/status") as f:
            used = next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("VmData:"))
        cap = used + nbytes
        if soft != resource.RLIM_INFINITY and soft <= cap:
            cap = None
        elif hard != resource.RLIM_INFINITY:
            cap = min(cap, hard)
        if cap is not None:
            resource.setrlimit(resource.RLIMIT_DATA, (cap, hard))
    except (ImportError, OSError, ValueError, StopIteration):  # no /proc or no rlimits here
        yield
        return
    try:
        yield
    finally:
        if cap is not None:
            resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


def call_counts(log: UnpickleLog) -> tuple[tuple[str, int], ...]:
    """(callee, times) for every call to a foreign global, most frequent first."""
    return tuple(sorted(Counter(log.calls).items(), key=lambda kv: (-kv[1], kv[0])))


def refusals(log: UnpickleLog) -> list[tuple[str, _policy.Rule, bool]]:
    """(global, the policy rule it breaks, whether it was called) for every refused global."""
    called = {c.removesuffix("()") for c in log.calls}
    out = []
    for g in sorted(set(log.globals)):
        rule = _policy.denied(g)
        if rule is not None:
            out.append((g, rule, g in called))
    out.sort(key=lambda r: not r[2])  # calls first: they are the payload
    return out


def storage_from_pid(pid: Any) -> StorageRef:
    """Parse a zip-format persistent id: ('storage', StorageType, key, location, numel)."""
    if type(pid) is tuple and len(pid) == 5:  # the usual id, checked in one pass
        tag, stype, key, location, numel = pid
        if tag == "storage" and type(stype) is StorageType and type(key) is str \
                and type(location) is str and type(numel) is int and numel >= 0:
            return StorageRef(key, stype.dtype, location, numel)
    return _storage_checked(pid)


def _storage_checked(pid: Any) -> StorageRef:
    """`storage_from_pid` for any input (the reference for its fast path)."""
    if not isinstance(pid, tuple) or len(pid) != 5 or pid[0] != "storage":
        raise pickle.UnpicklingError(f"unexpected persistent id {brief(pid)}")
    _, stype, key, location, numel = pid
    if not isinstance(stype, StorageType) or not isinstance(key, str) \
            or not isinstance(location, str) or type(numel) is not int or numel < 0:
        raise pickle.UnpicklingError(f"unexpected persistent id {brief(pid)}")
    return StorageRef(key=key, dtype=stype.dtype, location=location, numel=numel)
