"""Property tests: whatever the bytes, `bufinspect.load` returns a Checkpoint or raises one of
bufinspect's own errors, runs nothing, and finishes (a per-example alarm, not a timing assertion).
The longer harness is scripts/fuzz.py."""

from __future__ import annotations

import atexit
import io
import json
import shutil
import signal
import struct
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bufinspect
from conftest import SAMPLES

pytestmark = pytest.mark.slow  # hypothesis runs hundreds of examples

FUZZ = settings(max_examples=200, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
PER_EXAMPLE_S = 30  # a hang, not slowness: a shared 2-core machine under load needs headroom
_DIR = Path(tempfile.mkdtemp(prefix="bufinspect-fuzz-"))
atexit.register(shutil.rmtree, _DIR, True)
SENTINELS = _DIR / "sentinels"
SENTINELS.mkdir()


class Hang(BaseException):
    """Raised by the alarm; a BaseException so no reader's `except Exception` can swallow it."""


@contextmanager
def _bounded(seconds: int = PER_EXAMPLE_S):
    def fire(*_):
        raise Hang(f"one example ran past {seconds} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _load(data: bytes, suffix: str) -> None:
    path = _DIR / f"case{suffix}"
    path.write_bytes(data)
    with _bounded():
        try:
            bufinspect.load(str(path))
        except bufinspect.BufinspectError as exc:
            assert exc.path == str(path) and "\n" not in str(exc)
    assert not any(SENTINELS.iterdir()), "a payload ran"


# ---- safetensors headers -------------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 70), 1 << 70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                  max_size=4),
    max_leaves=12,
)
_dtype = st.sampled_from(["F32", "F16", "BF16", "I64", "BOOL", "U8", "F8_E4M3", "F4", "X", ""])
_tensor = st.fixed_dictionaries({
    "dtype": _dtype | _json,
    "shape": st.lists(st.integers(-2, 1 << 63), max_size=5) | _json,
    "data_offsets": st.lists(st.integers(-2, 1 << 64), min_size=2, max_size=2) | _json,
})
_header = st.dictionaries(st.text(max_size=10) | st.just("__metadata__"), _tensor | _json,
                          max_size=6)


@FUZZ
@given(header=_header, data=st.binary(max_size=64), lie=st.none() | st.integers(0, 1 << 64 - 1),
       pad=st.binary(max_size=4))
def test_safetensors_header_parser(header, data, lie, pad):
    body = json.dumps(header).encode() + pad
    _load(struct.pack("<Q", len(body) if lie is None else lie) + body + data, ".safetensors")


@FUZZ
@given(st.binary(min_size=1, max_size=200))
def test_safetensors_header_bytes(raw):
    _load(struct.pack("<Q", len(raw)) + raw + b"\0" * 16, ".safetensors")


# ---- the restricted unpickler: random opcode streams -----------------------------------------

def _s(text: str) -> bytes:
    return b"X" + struct.pack("<I", len(text.encode())) + text.encode()


def _g(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


_OPS = [
    b"(", b")", b"]", b"}", b"N", b"\x88", b"\x89", b"t", b"l", b"d", b"a", b"e", b"s", b"u",
    b"R", b"b", b"\x81", b"0", b"2", b"1", b"\x85", b"\x86", b"\x87", b"Q", b"\x94",
    b"K\x00", b"K\x07", b"J\xff\xff\xff\x7f", b"M\x00\x01", b"\x8a\x01\x05", b"\x8b\xff\xff\xff\x7f",
    b"X\x03\x00\x00\x00abc", b"X\x07\x00\x00\x00storage", b"X\x01\x00\x00\x000", b"X\x03\x00\x00\x00cpu",
    b"C\x02ab", b"\x8e" + struct.pack("<Q", 1 << 40), b"\x95" + struct.pack("<Q", 9),
    b"q\x00", b"q\x01", b"h\x00", b"h\x01", b"h\x05", b"\x97", b"\x96", b"\x92", b"\x93",
    b"i" + b"os\nsystem\n", b"o", b"p0\n", b"g0\n", b"I1\n", b"L123\n", b"F1.5\n", b"S'x'\n",
    _g("torch._utils", "_rebuild_tensor_v2"), _g("torch._utils", "_rebuild_parameter"),
    _g("torch", "FloatStorage"), _g("torch", "float32"), _g("torch", "Size"),
    _g("collections", "OrderedDict"), _g("builtins", "set"), _g("copyreg", "__newobj__"),
    _g("copyreg", "_reconstructor"), _g("torch._tensor", "_rebuild_from_type_v2"),
    _g("torch.nn.modules.linear", "Linear"), _g("os", "system"), _g("builtins", "getattr"),
    _g("builtins", "eval"), _g("subprocess", "Popen"), _g("__builtin__", "object"),
    b"X" + struct.pack("<I", 0), _s(f"touch {SENTINELS / 'pwned'}"),
]


def _zip_with(pkl: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", pkl)
        z.writestr("archive/data/0", b"\0" * 64)
        z.writestr("archive/version", b"3\n")
    return buf.getvalue()


@FUZZ
@given(ops=st.lists(st.sampled_from(_OPS), max_size=40), proto=st.sampled_from([2, 4, 5]))
def test_unpickler_random_opcode_streams(ops, proto):
    pkl = bytes([0x80, proto]) + b"".join(ops) + b"."
    _load(_zip_with(pkl), ".pt")


# ---- byte mutations of real samples ----------------------------------------------------------

_SAMPLES = {n: (SAMPLES / n).read_bytes() for n in [
    "cnn_state_dict.pt", "cnn_state_dict_legacy.pt", "cnn.safetensors", "buffer_zoo_module.pt",
    "train_adam.pt"]}


def _data_pkl(blob: bytes) -> tuple[list[tuple[str, bytes]], int]:
    with zipfile.ZipFile(io.BytesIO(blob)) as z:
        members = [(i.filename, z.read(i)) for i in z.infolist()]
    return members, next(k for k, (n, _) in enumerate(members) if n.endswith("data.pkl"))


_mutation = st.lists(st.tuples(st.sampled_from(["flip", "set", "insert", "delete", "cut"]),
                               st.floats(0, 1, exclude_max=True), st.integers(0, 255)),
                     min_size=1, max_size=6)


def _mutate(data: bytes, mutations) -> bytes:
    out = bytearray(data)
    for kind, where, value in mutations:
        if not out:
            break
        at = int(where * len(out))
        if kind == "flip":
            out[at] ^= 1 << (value % 8)
        elif kind == "set":
            out[at] = value
        elif kind == "insert":
            out[at:at] = bytes([value]) * (1 + value % 4)
        elif kind == "delete":
            del out[at: at + 1 + value % 8]
        else:
            del out[at:]
    return bytes(out)


@FUZZ
@given(name=st.sampled_from(list(_SAMPLES)), mutations=_mutation)
def test_mutated_sample_files(name, mutations):
    _load(_mutate(_SAMPLES[name], mutations), Path(name).suffix)


@FUZZ
@given(name=st.sampled_from(["cnn_state_dict.pt", "buffer_zoo_module.pt", "train_adam.pt"]),
       mutations=_mutation)
def test_mutated_data_pkl(name, mutations):
    """Mutate the pickle inside the zip (raw zip mutations mostly hit a CRC check first)."""
    members, k = _data_pkl(_SAMPLES[name])
    members[k] = (members[k][0], _mutate(members[k][1], mutations))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for n, d in members:
            z.writestr(n, d)
    _load(buf.getvalue(), ".pt")


def test_fuzz_harness_can_fail():
    """The harness itself: a non-bufinspect exception escaping load is reported."""
    with pytest.raises(Exception) as info:
        with _bounded():
            raise ValueError("escaped")
    assert not isinstance(info.value, bufinspect.BufinspectError)
