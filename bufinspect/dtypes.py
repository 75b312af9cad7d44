"""Dtype facts shared by every reader: names, item sizes, and how each maps to numpy."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DType:
    name: str  # torch's name, e.g. "float32", "bfloat16"
    itemsize: int
    kind: str  # "float", "int", "uint", "bool", "complex", "quantized", "packed"
    numpy: str | None  # numpy dtype string the raw bytes can be viewed as, None if none

    @property
    def is_floating(self) -> bool:
        return self.kind == "float"


_TABLE = [
    DType("float64", 8, "float", "<f8"),
    DType("float32", 4, "float", "<f4"),
    DType("float16", 2, "float", "<f2"),
    DType("bfloat16", 2, "float", "<u2"),  # widened by hand: numpy has no bfloat16
    DType("float8_e4m3fn", 1, "float", "u1"),
    DType("float8_e5m2", 1, "float", "u1"),
    DType("float8_e4m3fnuz", 1, "float", "u1"),
    DType("float8_e5m2fnuz", 1, "float", "u1"),
    DType("float8_e8m0fnu", 1, "float", "u1"),
    DType("float4_e2m1fn_x2", 1, "packed", "u1"),
    DType("complex128", 16, "complex", "<c16"),
    DType("complex64", 8, "complex", "<c8"),
    DType("complex32", 4, "complex", None),
    DType("int64", 8, "int", "<i8"),
    DType("int32", 4, "int", "<i4"),
    DType("int16", 2, "int", "<i2"),
    DType("int8", 1, "int", "i1"),
    DType("uint64", 8, "uint", "<u8"),
    DType("uint32", 4, "uint", "<u4"),
    DType("uint16", 2, "uint", "<u2"),
    DType("uint8", 1, "uint", "u1"),
    DType("bool", 1, "bool", "?"),
    DType("qint8", 1, "quantized", "i1"),
    DType("quint8", 1, "quantized", "u1"),
    DType("qint32", 4, "quantized", "<i4"),
    DType("quint4x2", 1, "quantized", "u1"),
    DType("quint2x4", 1, "quantized", "u1"),
]

DTYPES: dict[str, DType] = {d.name: d for d in _TABLE}

# torch attribute names that are aliases of a canonical dtype (torch.float, torch.long, ...)
ALIASES = {
    "float": "float32",
    "double": "float64",
    "half": "float16",
    "long": "int64",
    "int": "int32",
    "short": "int16",
    "cfloat": "complex64",
    "cdouble": "complex128",
    "chalf": "complex32",
}

# legacy typed storage classes (torch.FloatStorage, ...) -> dtype name
STORAGE_TYPES = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "ComplexDoubleStorage": "complex128",
    "ComplexFloatStorage": "complex64",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "QInt8Storage": "qint8",
    "QUInt8Storage": "quint8",
    "QInt32Storage": "qint32",
    "QUInt4x2Storage": "quint4x2",
    "QUInt2x4Storage": "quint2x4",
}

# safetensors header codes -> dtype name
SAFETENSORS = {
    "BOOL": "bool",
    "U8": "uint8",
    "I8": "int8",
    "F8_E5M2": "float8_e5m2",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E4M3FNUZ": "float8_e4m3fnuz",
    "F8_E5M2FNUZ": "float8_e5m2fnuz",
    "F8_E8M0": "float8_e8m0fnu",
    "I16": "int16",
    "U16": "uint16",
    "F16": "float16",
    "BF16": "bfloat16",
    "I32": "int32",
    "U32": "uint32",
    "F32": "float32",
    "C64": "complex64",
    "F64": "float64",
    "I64": "int64",
    "U64": "uint64",
}
# sub-byte safetensors dtypes we list but cannot read element-wise
SAFETENSORS_PACKED = {"F4": 0.5, "F6_E2M3": 0.75, "F6_E3M2": 0.75}


def canonical(name: str) -> str | None:
    """Return the canonical dtype name for a torch attribute name, or None if it is no dtype."""
    name = ALIASES.get(name, name)
    return name if name in DTYPES else None


def itemsize(name: str) -> int:
    d = DTYPES.get(name)
    return d.itemsize if d else 0


def is_floating(name: str) -> bool:
    d = DTYPES.get(name)
    return bool(d and d.is_floating)
