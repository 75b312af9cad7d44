"""The data model in the middle: checkpoint -> containers -> entries, and the reports built on it.

Nothing here opens files or imports torch; readers in `bufinspect.formats` build these objects
and `bufinspect.formats.stream` reads the bytes an entry's `data` points at.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Iterable

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


@dataclass(frozen=True)
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

    @property
    def storage_id(self) -> tuple[str, int]:
        return (self.file, self.offset)


@dataclass(frozen=True)
class Entry:
    """One tensor of a checkpoint with its role and the evidence that decided the role."""

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

    @property
    def module(self) -> str:
        return self.key.rpartition(".")[0]

    @property
    def name(self) -> str:
        return self.key.rpartition(".")[2]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

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
    # module prefix -> class name, when the file holds the module itself
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


@dataclass(frozen=True)
class ShowReport:
    checkpoint: Checkpoint
    entries: tuple[Entry, ...]  # after --role / --filter / --container selection
    stats: dict[tuple[str, str], TensorStats] | None = None  # (container, key) -> stats

    def to_dict(self) -> dict[str, Any]:
        ck = self.checkpoint
        out_entries = []
        for e in self.entries:
            d = e.to_dict()
            if self.stats is not None:
                st = self.stats.get((e.container, e.key))
                d["stats"] = st.to_dict() if st else None
            out_entries.append(d)
        doc: dict[str, Any] = {
            "schema": SCHEMA,
            "command": "show",
            "path": ck.path,
            "format": ck.format.value,
            "size": ck.size,
            "containers": [c.to_dict() for c in ck.containers],
            "entries": out_entries,
            "summary": summarize(self.entries),
        }
        if ck.metadata:
            doc["metadata"] = dict(ck.metadata)
        if ck.foreign_globals:
            doc["foreign_globals"] = list(ck.foreign_globals)
        return doc


def json_number(v: Any) -> Any:
    """Floats that JSON cannot hold become the strings "nan", "inf", "-inf"."""
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
    return v
