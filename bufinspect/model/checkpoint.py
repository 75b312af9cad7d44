"""The data model in the middle: checkpoint -> containers -> entries (reports: `model.reports`).

Nothing here opens files or imports torch; readers in `bufinspect.formats` build these objects
and `bufinspect.formats.stream` reads the bytes an entry's `data` points at.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Iterable

SCHEMA = "bufinspect/1"


class Role(str, Enum):
    PARAMETER = "parameter"
    BUFFER = "buffer"
    UNKNOWN = "unknown"
    OTHER = "other"


class Format(str, Enum):
    TORCH_ZIP = "torch-zip"
    TORCH_LEGACY = "torch-legacy"
    SAFETENSORS = "safetensors"
    SAFETENSORS_SHARDED = "safetensors-sharded"
    TORCHSCRIPT = "torchscript"
    TORCH_EXPORT = "torch-export"
    DCP = "dcp"


class ContainerKind(str, Enum):
    STATE_DICT = "state_dict"  # a module state dict (plain tensors keyed by dotted names)
    MODULE = "module"  # a pickled whole nn.Module: roles are exact
    OPTIMIZER = "optimizer"  # an optimizer state dict: tensors are role `other`
    TENSORS = "tensors"  # loose tensors that are not module state


@dataclass(frozen=True, init=False)
class TensorData:
    """Where an entry's bytes live. Read through `bufinspect.formats.stream`, never held in memory."""

    file: str
    offset: int  # byte offset in `file` of element 0 of the storage
    storage_nbytes: int
    storage_offset: int = 0  # in elements
    stride: tuple[int, ...] | None = None  # None: C-contiguous
    # a tensor saved in chunks (DCP, FSDP): the chunks' own C-contiguous data, in the order
    # `stream.pieces` yields them; the fields above then describe the first chunk
    parts: tuple["TensorData", ...] = ()
    part_numels: tuple[int, ...] = ()  # elements in each part
    # each part's (offsets, sizes) in the whole tensor when the parts are not consecutive runs
    # of its C-order elements (e.g. column chunks); empty when they are
    part_boxes: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...] = ()

    def __init__(self, file: str, offset: int, storage_nbytes: int, storage_offset: int = 0,
                 stride: tuple[int, ...] | None = None, parts: tuple["TensorData", ...] = (),
                 part_numels: tuple[int, ...] = (),
                 part_boxes: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...] = ()) -> None:
        # still frozen; written straight into __dict__ (see Entry.__init__)
        d = self.__dict__
        d["file"] = file
        d["offset"] = offset
        d["storage_nbytes"] = storage_nbytes
        d["storage_offset"] = storage_offset
        d["stride"] = stride
        d["parts"] = parts
        d["part_numels"] = part_numels
        d["part_boxes"] = part_boxes

    @property
    def storage_id(self) -> tuple[str, int]:
        return (self.file, self.offset)


@dataclass(frozen=True, init=False)
class Entry:
    """One tensor of a checkpoint with its role and the evidence that decided the role.

    Besides the fields, every entry carries `module` and `name` (the key split at its last dot)
    and `numel`, computed once when it is built: rules and renderers ask for them many times.
    """

    container: str
    key: str
    role: Role
    evidence: str
    shape: tuple[int, ...]
    dtype: str
    device: str | None
    nbytes: int
    persistent: bool | None = None  # only meaningful for buffers
    requires_grad: bool | None = None
    data: TensorData | None = field(default=None, compare=False, repr=False)

    if TYPE_CHECKING:
        module: str
        name: str
        numel: int

    def __init__(self, container: str, key: str, role: Role, evidence: str,
                 shape: tuple[int, ...], dtype: str, device: str | None, nbytes: int,
                 persistent: bool | None = None, requires_grad: bool | None = None,
                 data: TensorData | None = None) -> None:
        # Still frozen (assignment raises), but the fields go straight into __dict__: the
        # generated frozen __init__ pays one object.__setattr__ call per field, and readers
        # build one entry per tensor (50,000 in a large checkpoint).
        d = self.__dict__
        d["container"] = container
        d["key"] = key
        d["role"] = role
        d["evidence"] = evidence
        d["shape"] = shape
        d["dtype"] = dtype
        d["device"] = device
        d["nbytes"] = nbytes
        d["persistent"] = persistent
        d["requires_grad"] = requires_grad
        d["data"] = data
        d["module"], _, d["name"] = key.rpartition(".")
        d["numel"] = math.prod(shape)

    def with_role(self, role: Role, evidence: str, persistent: bool | None) -> "Entry":
        """This entry with another role (`dataclasses.replace`, without its per-call cost)."""
        e = object.__new__(Entry)
        d = e.__dict__
        d.update(self.__dict__)
        d["role"] = role
        d["evidence"] = evidence
        d["persistent"] = persistent
        return e

    def to_dict(self) -> dict[str, Any]:
        return {
            "container": self.container,
            "key": self.key,
            "module": self.module,
            "name": self.name,
            "role": self.role.value,
            "persistent": self.persistent,
            "evidence": self.evidence,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "device": self.device,
            "numel": self.numel,
            "nbytes": self.nbytes,
        }


@dataclass(frozen=True)
class Container:
    """A state dict (or optimizer state, or loose tensors) found inside the checkpoint object."""

    path: str  # keys from the checkpoint root joined with "/"; "" for the root
    kind: ContainerKind
    entries: tuple[Entry, ...]
    # module prefix -> version from the state dict's `_metadata`, when the file kept it
    module_versions: dict[str, int] | None = field(default=None, compare=False)
    # module prefix -> class name, when the file holds the module itself (a pickled module);
    # the buffer diagnostics tell InstanceNorm (which never counts batches) from BatchNorm by it
    module_classes: dict[str, str] | None = field(default=None, compare=False)
    # for optimizer containers: the param groups' parameter ids and names, as saved
    param_groups: tuple[dict[str, Any], ...] | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "kind": self.kind.value}


@dataclass(frozen=True)
class Checkpoint:
    """Everything bufinspect knows about one file (or sharded folder) without reading tensor data."""

    path: str
    format: Format
    size: int  # bytes on disk
    containers: tuple[Container, ...]
    metadata: dict[str, str] = field(default_factory=dict, compare=False)
    # globals the pickle named that bufinspect did not allow (shown, never imported)
    foreign_globals: tuple[str, ...] = ()
    # non-tensor values of a training dict: (path joined with "/", value), e.g. ("epoch", 3)
    values: tuple[tuple[str, Any], ...] = field(default=(), compare=False)
    # (callee, times): the calls `torch.load(weights_only=False)` would make (none is run here)
    calls: tuple[tuple[str, int], ...] = ()

    @property
    def entries(self) -> list[Entry]:
        return [e for c in self.containers for e in c.entries]

    def container(self, path: str) -> Container:
        for c in self.containers:
            if c.path == path:
                return c
        raise KeyError(path)


@dataclass(frozen=True)
class TensorStats:
    min: float | None
    max: float | None
    mean: float | None
    std: float | None
    nan: int
    inf: int
    zeros: int

    def to_dict(self) -> dict[str, Any]:
        return {k: json_number(v) for k, v in self.__dict__.items()}


def summarize(entries: Iterable[Entry]) -> dict[str, Any]:
    """Counts, elements and bytes per role, plus dtype, device and evidence histograms."""
    roles: dict[str, dict[str, int]] = {r.value: {"count": 0, "numel": 0, "nbytes": 0} for r in Role}
    dtypes: dict[str, int] = {}
    devices: dict[str, int] = {}
    evidence: dict[str, int] = {}
    for e in entries:
        r = roles[e.role.value]
        r["count"] += 1
        r["numel"] += e.numel
        r["nbytes"] += e.nbytes
        dtypes[e.dtype] = dtypes.get(e.dtype, 0) + 1
        dev = e.device if e.device is not None else "unrecorded"
        devices[dev] = devices.get(dev, 0) + 1
        kind = e.evidence.partition(":")[0]
        evidence[kind] = evidence.get(kind, 0) + 1
    return {**roles, "dtypes": dtypes, "devices": devices, "evidence": evidence}


def json_number(v: Any) -> Any:
    """Floats that JSON cannot hold become the strings "nan", "inf", "-inf"."""
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
    return v
