"""Generate the hostile corpus: checkpoints that try to run code, lie about sizes, or explode.

    python tests/hostile/make_corpus.py OUTDIR

Every payload tries to create a file under `OUTDIR/sentinels/` (named after its case): if that
folder is ever non-empty, something ran. Nothing here is committed: tests build the corpus into a
session tmp dir. `build(outdir)` returns the cases (see `Case`); tests/hostile/README.md lists them.
"""

from __future__ import annotations

import io
import os
import re
import json
import pickle
import struct
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

SAMPLES = Path(__file__).resolve().parents[2] / "sample_checkpoints"


@dataclass(frozen=True)
class Case:
    name: str
    path: Path
    kind: str  # pickle (zip member), legacy, zip, safetensors, torchscript, pt2, dcp
    what: str  # what the case exercises (one line)
    bomb: bool = False  # run it in a subprocess under memory and time limits
    payload: bool = False  # tries to run code (scanners should flag it)
    klass: int = 0  # the defect class of "hostile inputs, round 2" it exercises (0: round 1)
    expect: str = "refused"  # or "readable": must be read (exit 0/1), safely rendered


# ---- pickle opcodes, written by hand so that no payload object ever exists here --------------

PROTO2 = b"\x80\x02"
MARK, STOP, TUPLE, REDUCE, BUILD = b"(", b".", b"t", b"R", b"b"
EMPTY_DICT, EMPTY_LIST, EMPTY_TUPLE, NONE = b"}", b"]", b")", b"N"
APPEND, APPENDS, SETITEM, SETITEMS, NEWOBJ, POP = b"a", b"e", b"s", b"u", b"\x81", b"0"


def glob(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def s(text: str) -> bytes:
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def i(n: int) -> bytes:
    return b"J" + struct.pack("<i", n)


def tup(*items: bytes) -> bytes:
    return MARK + b"".join(items) + TUPLE


def lst(*items: bytes) -> bytes:
    return EMPTY_LIST + (MARK + b"".join(items) + APPENDS if items else b"")


def dct(**items: bytes) -> bytes:
    return EMPTY_DICT + MARK + b"".join(s(k) + v for k, v in items.items()) + SETITEMS


def put(n: int) -> bytes:
    return b"q" + bytes([n])


def get(n: int) -> bytes:
    return b"h" + bytes([n])


def call(fn: bytes, *args: bytes) -> bytes:
    return fn + tup(*args) + REDUCE


def wrap(obj: bytes) -> bytes:
    """A complete pickle whose result is {"model": <obj>}, like a training checkpoint."""
    return PROTO2 + dct(model=obj) + STOP


def _pickles(sentinel: str) -> dict[str, tuple[str, bytes]]:
    """name -> (what, pickle bytes): every way we know for a pickle to ask for code."""
    cmd = f"touch {sentinel}"
    imp_os = call(glob("builtins", "__import__"), s("os"))
    return {
        "os_system": ("os.system via GLOBAL+REDUCE", wrap(call(glob("os", "system"), s(cmd)))),
        "posix_system": ("posix.system (what os.system pickles as)",
                         wrap(call(glob("posix", "system"), s(cmd)))),
        "subprocess_popen": ("subprocess.Popen with an argv list",
                             wrap(call(glob("subprocess", "Popen"), lst(s("touch"), s(sentinel))))),
        "subprocess_check_output": ("subprocess.check_output", wrap(call(
            glob("subprocess", "check_output"), lst(s("touch"), s(sentinel))))),
        "builtins_eval": ("builtins.eval of an expression", wrap(call(
            glob("builtins", "eval"), s(f"open({sentinel!r}, 'w')")))),
        "builtins_exec": ("builtins.exec of a statement", wrap(call(
            glob("builtins", "exec"), s(f"import os; os.system({cmd!r})")))),
        "builtins_getattr": ("getattr(__import__('os'), 'system')(cmd)", wrap(call(
            call(glob("builtins", "getattr"), imp_os, s("system")), s(cmd)))),
        "builtins_import": ("__import__('os') kept as data", wrap(imp_os)),
        "functools_partial": ("functools.partial(os.system, cmd)()", wrap(call(
            call(glob("functools", "partial"), glob("os", "system"), s(cmd))))),
        "operator_attrgetter": ("operator.attrgetter('system')(os)(cmd)", wrap(call(
            call(call(glob("operator", "attrgetter"), s("system")), imp_os), s(cmd)))),
        "torch_save": ("torch.save (outside the rebuild allowlist) writing the sentinel", wrap(
            call(glob("torch", "save"), NONE, s(sentinel)))),
        "torch_load": ("torch.load of another file", wrap(call(glob("torch", "load"),
                                                              s(sentinel + ".pt")))),
        "torch_hub_download": ("torch.hub.download_url_to_file(file://..., sentinel)", wrap(call(
            glob("torch.hub", "download_url_to_file"), s("file:///etc/hostname"), s(sentinel)))),
        "torch_hub_load": ("torch.hub.load", wrap(call(glob("torch.hub", "load"), s("x/y"),
                                                         s("m")))),
        "torch_c": ("a torch._C function", wrap(call(glob("torch._C", "_jit_set_profiling_mode"),
                                                     b"\x88"))),
        "py2_builtin_eval": ("py2 name __builtin__.eval", wrap(call(
            glob("__builtin__", "eval"), s(f"open({sentinel!r}, 'w')")))),
        "py2_copy_reg": ("copy_reg._reconstructor on os.system", wrap(call(
            call(glob("copy_reg", "_reconstructor"), glob("os", "system"),
                 glob("__builtin__", "object"), NONE)))),
        "inst_opcode": ("INST opcode (import + call in one)", wrap(
            MARK + s(cmd) + b"ios\nsystem\n")),
        "obj_opcode": ("OBJ opcode", wrap(MARK + glob("os", "system") + s(cmd) + b"o")),
        "newobj_then_call": ("NEWOBJ of a stub, then REDUCE on it", wrap(call(
            glob("os", "system") + EMPTY_TUPLE + NEWOBJ, s(cmd)))),
        "memo_stub_call": ("stub kept in the memo, fetched with BINGET and called later", wrap(
            glob("os", "system") + put(7) + POP + lst(s("x")) + POP + get(7) + tup(s(cmd))
            + REDUCE)),
        "build_on_rebuild_fn": ("BUILD on torch._utils._rebuild_tensor_v2 (replace its code)",
                                wrap(glob("torch._utils", "_rebuild_tensor_v2")
                                     + dct(_fn=glob("os", "system")) + BUILD)),
        "build_slots_on_rebuild_fn": ("BUILD with slot state on an allowed callable", wrap(
            glob("torch._utils", "_rebuild_tensor_v2")
            + tup(NONE, dct(_fn=glob("os", "system"))) + BUILD)),
        "build_on_ordereddict_class": ("BUILD on the collections.OrderedDict class", wrap(
            glob("collections", "OrderedDict") + dct(__setstate__=glob("os", "system")) + BUILD)),
        "build_slots_on_ordereddict_class": ("slot-state setattr on the OrderedDict class", wrap(
            glob("collections", "OrderedDict")
            + tup(NONE, dct(__setstate__=glob("os", "system"))) + BUILD)),
        "build_class_swap": ("slot state setting __class__ of an OrderedDict instance", wrap(
            call(glob("collections", "OrderedDict")) + tup(NONE, dct(
                __class__=glob("os", "system"))) + BUILD)),
        "build_on_set": ("BUILD on builtins.set", wrap(
            glob("builtins", "set") + dct(_fn=glob("os", "system")) + BUILD)),
        "build_on_storage_type": ("BUILD on a storage type (torch.FloatStorage)", wrap(
            glob("torch", "FloatStorage") + dct(dtype=glob("os", "system")) + BUILD)),
        "build_on_dtype": ("BUILD on a dtype (torch.float32)", wrap(
            glob("torch", "float32") + dct(name=s("evil")) + BUILD)),
        "rebuild_calls_stub": ("_rebuild_from_type_v2 asked to call os.system", wrap(call(
            glob("torch._tensor", "_rebuild_from_type_v2"), glob("os", "system"), NONE,
            tup(s(cmd)), EMPTY_DICT))),
        "reduce_in_persistent_id": ("a payload inside a persistent id", PROTO2 + dct(
            w=call(glob("torch._utils", "_rebuild_tensor_v2"), tup(
                s("storage"), call(glob("os", "system"), s(cmd)), s("0"), s("cpu"), i(4)) + b"Q",
                i(0), tup(i(4)), tup(i(1)), b"\x89", glob("collections", "OrderedDict")
                + EMPTY_TUPLE + REDUCE)) + STOP),
    }


def _broken_pickles() -> dict[str, tuple[str, bytes, bool]]:
    """name -> (what, pickle bytes, bomb): corrupt, huge or deep pickles (no payload)."""
    nest = EMPTY_LIST + put(0)  # L0 = []; L(k) = [L(k-1), L(k-1)], 30 levels: 2**30 leaves
    for k in range(1, 31):
        nest += POP + MARK + get(k - 1) + get(k - 1) + b"l" + put(k)
    tensor = call(glob("torch._utils", "_rebuild_tensor_v2"), tup(
        s("storage"), glob("torch", "FloatStorage"), s("0"), s("cpu"), i(1)) + b"Q", i(0),
        tup(i(1)), tup(i(1)), b"\x89", call(glob("collections", "OrderedDict")))
    # one tensor referenced 60000 times in a list, that list referenced 60000 times: 3.6e9 entries
    fan = tensor + put(1) + POP + EMPTY_LIST + MARK + get(1) * 60000 + APPENDS + put(2) + POP \
        + EMPTY_LIST + MARK + get(2) * 60000 + APPENDS
    deep = b"".join([EMPTY_TUPLE] + [b"\x85"] * 200_000)  # TUPLE1 around TUPLE1 ...
    deep_list = MARK * 50_000 + b"l" * 50_000
    return {
        "memory_bomb_nested_lists": ("lists of the same list memo-referenced 30 levels deep",
                                     PROTO2 + dct(model=nest) + STOP, True),
        "memory_bomb_tensor_fanout": ("one tensor shared 3.6e9 times through two list levels",
                                      PROTO2 + dct(model=fan) + STOP, True),
        "repr_bomb_in_persistent_id": ("a 2**30-leaf shared list as a persistent id (error "
                                       "messages must not repr it)", PROTO2 + nest + b"Q" + STOP,
                                       True),
        "repr_bomb_in_size": ("a 2**30-leaf shared list as a tensor size", PROTO2 + dct(w=call(
            glob("torch._utils", "_rebuild_tensor_v2"), tup(
                s("storage"), glob("torch", "FloatStorage"), s("0"), s("cpu"), i(1)) + b"Q",
            i(0), nest, tup(i(1)), b"\x89", call(glob("collections", "OrderedDict")))) + STOP,
                              True),
        "long4_huge": ("LONG4 declaring 2**31-1 bytes", PROTO2 + b"\x8b\xff\xff\xff\x7f" + b"\0"
                       * 16 + STOP, True),
        "binbytes8_huge": ("BINBYTES8 declaring 2**62 bytes", b"\x80\x04\x8e"
                           + struct.pack("<Q", 1 << 62) + b"abc" + STOP, True),
        "binunicode8_huge": ("BINUNICODE8 declaring 2**40 bytes", b"\x80\x04\x8d"
                             + struct.pack("<Q", 1 << 40) + b"abc" + STOP, True),
        "frame_huge": ("protocol-4 FRAME declaring 2**60 bytes", b"\x80\x04\x95"
                       + struct.pack("<Q", 1 << 60) + EMPTY_DICT + STOP, True),
        "deep_tuples": ("200000 nested tuples (recursion)", PROTO2 + deep + STOP, True),
        "deep_lists": ("50000 nested lists built with MARK/LIST", PROTO2 + deep_list + STOP,
                       True),
        "memo_cycle": ("a list that contains itself", PROTO2 + dct(
            model=EMPTY_LIST + put(0) + get(0) + APPEND) + STOP, False),
        "memo_missing": ("BINGET of a memo slot never set", PROTO2 + dct(model=get(9)) + STOP,
                         False),
        "out_of_band_buffer": ("protocol-5 NEXT_BUFFER without buffers", b"\x80\x05\x97" + STOP,
                               False),
        "garbage_opcode": ("an opcode that does not exist", PROTO2 + b"\xff" + STOP, False),
        "empty_pickle": ("data.pkl of zero bytes", b"", False),
    }


# ---- torch.save zip archives ---------------------------------------------------------------

def _zip_members(path: Path) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(path) as z:
        return [(info.filename, z.read(info)) for info in z.infolist()]


def _write_zip(path: Path, members: list[tuple[str, bytes]], deflate: tuple[str, ...] = ()) -> None:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members:
            kind = zipfile.ZIP_DEFLATED if any(name.endswith(d) for d in deflate) \
                else zipfile.ZIP_STORED
            info = zipfile.ZipInfo(name, (2020, 1, 1, 0, 0, 0))
            info.compress_type = kind
            z.writestr(info, data)


def _patch_central_size(blob: bytes, name: str, size: int) -> bytes:
    """Rewrite the uncompressed size a zip's central directory declares for `name`."""
    key = name.encode()
    at = blob.rfind(b"PK\x01\x02", 0, blob.rfind(key))
    out = bytearray(blob)
    struct.pack_into("<L", out, at + 24, size)
    if struct.unpack_from("<H", out, at + 10)[0] == 0:  # stored: compressed size must match
        struct.pack_into("<L", out, at + 20, size)
    return bytes(out)


def _zip_cases(out: Path, sentinel_dir: Path, real: list[tuple[str, bytes]]) -> list[Case]:
    cases = []
    stem = real[0][0].split("/")[0]
    payload = _pickles(str(sentinel_dir / "zip"))["os_system"][1]

    def add(name: str, what: str, members, deflate=(), payload_=False, bomb=False):
        p = out / f"zip_{name}.pt"
        _write_zip(p, members, deflate)
        cases.append(Case(f"zip_{name}", p, "zip", what, bomb=bomb, payload=payload_))
        return p

    def swap(prefix: str, pkl: bytes):
        return [((n.replace(stem + "/", prefix, 1)), pkl if n.endswith("data.pkl") else d)
                for n, d in real]

    add("traversal", "member names with ../ (never extracted; refused)", swap("../../evil/",
        real[0][1]))
    add("absolute_names", "absolute member names", swap("/tmp/evil/", real[0][1]))
    add("duplicate_pkl_benign_first", "two data.pkl: benign one first, payload second",
        real[:1] + [(real[0][0], payload)] + real[1:], payload_=True)
    add("duplicate_pkl_payload_first", "two data.pkl: payload first, benign second",
        [(real[0][0], payload)] + real, payload_=True)
    add("deflated_payload_pkl", "deflated data.pkl carrying a payload",
        [(n, payload if n.endswith("data.pkl") else d) for n, d in real], deflate=("data.pkl",),
        payload_=True)
    add("deflated_tensor_data", "deflated tensor data (torch.save never compresses it)", real,
        deflate=("/data/0",))
    add("zip_bomb_pkl", "deflated data.pkl inflating to 64 MB of MARK opcodes (about 1000:1)",
        [(real[0][0], b"(" * (64 << 20))], deflate=("data.pkl",), bomb=True)
    p = out / "zip_pkl_size_lie.pt"  # central directory says data.pkl is 4 GiB - 1
    _write_zip(p, real)
    p.write_bytes(_patch_central_size(p.read_bytes(), real[0][0], 0xFFFFFFFF))
    cases.append(Case("zip_pkl_size_lie", p, "zip", "data.pkl declared far beyond the file"))
    p = out / "zip_data_size_lie.pt"
    _write_zip(p, real)
    data0 = next(n for n, _ in real if n.endswith("/data/0"))
    p.write_bytes(_patch_central_size(p.read_bytes(), data0, 0x7FFFFFFF))
    cases.append(Case("zip_data_size_lie", p, "zip", "tensor data declared far beyond the file"))
    p = out / "zip_version_too_new.pt"  # central directory: "needs zip version 9.9 to extract"
    blob = bytearray((out / "zip_traversal.pt").read_bytes())
    at = blob.find(b"PK\x01\x02")
    blob[at + 6] = 99
    p.write_bytes(bytes(blob))
    cases.append(Case("zip_version_too_new", p, "zip", "a member that needs zip version 9.9"))
    p = out / "zip_encrypted_flag.pt"
    _write_zip(p, real)
    blob = bytearray(p.read_bytes())
    for at in (blob.find(b"PK\x03\x04") + 6, blob.find(b"PK\x01\x02") + 8):
        blob[at] |= 1
    p.write_bytes(bytes(blob))
    cases.append(Case("zip_encrypted_flag", p, "zip", "data.pkl marked encrypted"))
    p = out / "zip_corrupt_deflate.pt"
    _write_zip(p, real, deflate=("data.pkl",))
    blob = bytearray(p.read_bytes())
    start = blob.find(b"PK\x03\x04") + 30 + len(real[0][0])
    blob[start: start + 8] = b"\xff" * 8
    p.write_bytes(bytes(blob))
    cases.append(Case("zip_corrupt_deflate", p, "zip", "data.pkl's deflate stream is broken"))
    p = out / "zip_truncated_directory.pt"
    blob = (out / "zip_traversal.pt").read_bytes()
    p.write_bytes(blob[:-10])
    cases.append(Case("zip_truncated_directory", p, "zip", "end-of-central-directory cut"))
    # a tensor that claims 2**40 elements through a zero stride over a 4-byte storage
    huge = PROTO2 + dct(w=call(glob("torch._utils", "_rebuild_tensor_v2"), tup(
        s("storage"), glob("torch", "FloatStorage"), s("0"), s("cpu"), i(1)) + b"Q", i(0),
        tup(b"\x8a\x06" + (1 << 40).to_bytes(6, "little")), tup(i(0)), b"\x89",
        call(glob("collections", "OrderedDict")))) + STOP
    add("zero_stride_bomb", "a 2**40-element view with stride 0 over one float (--stats bomb)",
        [(real[0][0], huge), (f"{stem}/data/0", b"\0\0\0\0")], bomb=True)
    return cases


def _legacy_cases(out: Path, sentinel_dir: Path) -> list[Case]:
    blob = (SAMPLES / "cnn_state_dict_legacy.pt").read_bytes()
    cases = []
    # the file: magic pickle, protocol pickle, sys_info pickle, object pickle, keys pickle, data
    heads = []
    f = io.BytesIO(blob)
    for _ in range(5):
        start = f.tell()
        pickle.load(f) if _ < 3 or _ == 4 else _skip_pickle(f)
        heads.append((start, f.tell()))
    data_at = heads[4][1]
    evil_sysinfo = PROTO2 + call(glob("os", "system"), s(f"touch {sentinel_dir / 'legacy'}")) \
        + STOP
    p = out / "legacy_payload_in_sys_info.pt"
    p.write_bytes(blob[:heads[2][0]] + evil_sysinfo + blob[heads[2][1]:])
    cases.append(Case("legacy_payload_in_sys_info", p, "legacy",
                      "payload in the sys_info header pickle", payload=True))
    evil_obj = _pickles(str(sentinel_dir / "legacy"))["os_system"][1]
    p = out / "legacy_payload_in_object.pt"
    p.write_bytes(blob[:heads[3][0]] + evil_obj + blob[heads[3][1]:])
    cases.append(Case("legacy_payload_in_object", p, "legacy", "payload in the object pickle",
                      payload=True))
    lie = bytearray(blob)
    struct.pack_into("<q", lie, data_at, 1 << 50)
    p = out / "legacy_storage_size_lie.pt"
    p.write_bytes(bytes(lie))
    cases.append(Case("legacy_storage_size_lie", p, "legacy",
                      "first storage declares 2**50 elements"))
    lie = bytearray(blob)
    struct.pack_into("<q", lie, data_at, -5)
    p = out / "legacy_storage_negative.pt"
    p.write_bytes(bytes(lie))
    cases.append(Case("legacy_storage_negative", p, "legacy", "negative storage size"))
    p = out / "legacy_binbytes_huge.pt"
    p.write_bytes(blob[:heads[2][0]] + b"\x80\x04\x8e" + struct.pack("<Q", 1 << 40) + b"x")
    cases.append(Case("legacy_binbytes_huge", p, "legacy",
                      "BINBYTES8 of 2**40 bytes read from the file itself", bomb=True))
    p = out / "legacy_frame_huge.pt"
    p.write_bytes(blob[:heads[2][0]] + b"\x80\x04\x95" + struct.pack("<Q", 1 << 60) + b"}.")
    cases.append(Case("legacy_frame_huge", p, "legacy", "FRAME of 2**60 bytes from the file",
                      bomb=True))
    return cases


def _skip_pickle(f: io.BytesIO) -> None:
    import pickletools

    for op, _, _ in pickletools.genops(f):
        if op.name == "STOP":
            return


# ---- safetensors ------------------------------------------------------------------------

def _st(header, data: bytes = b"", length: int | None = None, raw: bytes | None = None) -> bytes:
    body = raw if raw is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(body) if length is None else length) + body + data


def _safetensors_cases(out: Path) -> list[Case]:
    t = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
    blobs = {
        "overlap": ("two tensors share bytes", _st(
            {"a": t, "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12)),
        "out_of_range": ("offsets past the data", _st({"a": {**t, "data_offsets": [0, 8000]}},
                                                      b"\0" * 8)),
        "reversed_offsets": ("end before begin", _st({"a": {**t, "data_offsets": [8, 0]}},
                                                     b"\0" * 8)),
        "negative_offsets": ("negative offsets", _st({"a": {**t, "data_offsets": [-8, 0]}},
                                                     b"\0" * 8)),
        "huge_header_length": ("header length 2**63", _st({}, length=1 << 63)),
        "header_length_past_end": ("header length beyond the file", _st({}, length=10_000)),
        "not_utf8": ("header bytes that are not UTF-8", _st(None, raw=b'{"\xff\xfe":1}')),
        "duplicate_keys": ("the same tensor name twice", _st(None, b"\0" * 16, raw=(
            b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
            b'"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}'))),
        "negative_shape": ("a negative dimension", _st({"a": {**t, "shape": [-2]}}, b"\0" * 8)),
        "absurd_shape": ("2**62 x 2**62 elements", _st({"a": {**t, "shape": [1 << 61, 1 << 61]}},
                                                       b"\0" * 8)),
        "float_shape": ("a float dimension", _st({"a": {**t, "shape": [2.0]}}, b"\0" * 8)),
        "dtype_size_mismatch": ("F64 x 2 in 8 bytes", _st({"a": {**t, "dtype": "F64"}},
                                                          b"\0" * 8)),
        "dtype_not_string": ("a dtype that is a JSON list (found by hypothesis)", _st(
            {"a": {**t, "dtype": ["F32"]}}, b"\0" * 8)),
        "unknown_dtype": ("dtype that does not exist", _st({"a": {**t, "dtype": "Q7"}},
                                                           b"\0" * 8)),
        "header_is_array": ("a JSON array header", _st([1, 2, 3])),
        "header_is_string": ("a JSON string header", _st("hello")),
        "metadata_not_strings": ("__metadata__ with a number and a list", _st(
            {"__metadata__": {"a": 1, "b": ["x"]}, "a": t}, b"\0" * 8)),
        "metadata_is_list": ("__metadata__ that is a list", _st(
            {"__metadata__": ["x"], "a": t}, b"\0" * 8)),
        "tensor_not_object": ("a tensor described by a number", _st({"a": 5})),
        "deep_json": ("JSON nested 100000 deep", _st(None, raw=b'{"a":' + b"[" * 100_000
                                                     + b"]" * 100_000 + b"}")),
        "huge_int_offset": ("a 5000-digit integer offset", _st(None, b"\0" * 8, raw=(
            b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,' + b"9" * 5000 + b"]}}"))),
        "nan_shape": ("NaN where a dimension should be", _st(None, b"\0" * 8, raw=(
            b'{"a":{"dtype":"F32","shape":[NaN],"data_offsets":[0,8]}}'))),
        "truncated": ("file shorter than 8 bytes", b"\x05\0\0"),
    }
    cases = []
    for name, (what, blob) in blobs.items():
        p = out / f"st_{name}.safetensors"
        p.write_bytes(blob)
        cases.append(Case(f"st_{name}", p, "safetensors", what))
    return cases


# ---- TorchScript, torch.export (.pt2), distributed checkpoint (DCP) ---------------------------

def _torchscript_cases(out: Path, sentinel_dir: Path) -> list[Case]:
    import torch

    sys.path.insert(0, str(SAMPLES))
    from sample_modules import SmallCNN

    base = out / "_torchscript_clean.pt"
    torch.jit.save(torch.jit.script(SmallCNN().eval()), str(base))
    members = _zip_members(base)
    base.unlink()
    cases = []
    for part in ("data.pkl", "constants.pkl"):
        evil = _pickles(str(sentinel_dir / f"ts_{part}"))["os_system"][1]
        p = out / f"torchscript_payload_{part.replace('.', '_')}.pt"
        _write_zip(p, [(n, evil if n.endswith("/" + part) else d) for n, d in members])
        cases.append(Case(p.stem, p, "torchscript", f"TorchScript archive, payload in {part}",
                          payload=True))
    evil_code = "def forward(self, x):\n    import os\n    os.system('touch {}')\n".format(
        sentinel_dir / "ts_code")
    p = out / "torchscript_payload_code_and_pkl.pt"
    _write_zip(p, [(n, evil_code.encode() if n.endswith(".py") else
                    _pickles(str(sentinel_dir / "ts_code"))["builtins_exec"][1]
                    if n.endswith("/data.pkl") else d) for n, d in members])
    cases.append(Case(p.stem, p, "torchscript", "TorchScript with planted code/ and data.pkl",
                      payload=True))
    return cases


def _pt2_cases(out: Path, sentinel_dir: Path) -> list[Case]:
    import torch

    sys.path.insert(0, str(SAMPLES))
    from sample_modules import SmallCNN

    base = out / "_clean.pt2"
    ep = torch.export.export(SmallCNN().eval(), (torch.zeros(1, 3, 4, 4),))
    torch.export.save(ep, str(base))
    members = _zip_members(base)
    base.unlink()
    evil_pt = out / "_evil_inputs.pt"
    _write_zip(evil_pt, [("archive/data.pkl",
                          _pickles(str(sentinel_dir / "pt2"))["os_system"][1])])
    evil = evil_pt.read_bytes()
    evil_pt.unlink()
    cases = []
    p = out / "pt2_payload_sample_inputs.pt2"
    _write_zip(p, [(n, evil if n.endswith("sample_inputs/model.pt") else d) for n, d in members])
    cases.append(Case(p.stem, p, "pt2", ".pt2 whose sample inputs pickle carries a payload",
                      payload=True))
    p = out / "pt2_payload_pickled_weight.pt2"
    rewritten = []
    for n, d in members:
        if n.endswith("model_weights_config.json"):
            conf = json.loads(d)
            for v in conf.get("config", {}).values():
                if isinstance(v, dict):
                    v["use_pickle"] = True
            d = json.dumps(conf).encode()
        elif "/data/weights/" in n and not n.endswith(".json"):
            d = evil
        rewritten.append((n, d))
    _write_zip(p, rewritten)
    cases.append(Case(p.stem, p, "pt2", ".pt2 with use_pickle weights that carry a payload",
                      payload=True))
    return cases


def _dcp_cases(out: Path, sentinel_dir: Path) -> list[Case]:
    import warnings

    import torch
    import torch.distributed.checkpoint as dcp

    folder = out / "dcp_payload_metadata"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({"w": torch.zeros(3), "b": torch.ones(2)}, checkpoint_id=str(folder))
    (folder / ".metadata").write_bytes(
        b"\x80\x04" + call(glob("os", "system"), s(f"touch {sentinel_dir / 'dcp'}")) + STOP)
    return [Case(folder.name, folder, "dcp", "DCP folder whose .metadata pickle is a payload",
                 payload=True)]


def build(out: Path | str) -> list[Case]:
    """Write every case into `out` (created); return them. Payloads aim at `out/sentinels/`."""
    import warnings

    with warnings.catch_warnings():  # duplicate zip names, torch.jit deprecation: on purpose
        warnings.simplefilter("ignore")
        return _build(Path(out))


def _build(out: Path) -> list[Case]:
    import torch

    sentinel_dir = out / "sentinels"
    sentinel_dir.mkdir(parents=True, exist_ok=True)
    cases: list[Case] = []
    clean = out / "_clean.pt"
    torch.save({"w": torch.arange(4.0), "b": torch.ones(2)}, clean)
    real = _zip_members(clean)
    clean.unlink()
    pkl_name = real[0][0]
    for name, (what, blob) in _pickles(str(sentinel_dir / "pkl")).items():
        p = out / f"pkl_{name}.pt"
        _write_zip(p, [(pkl_name, blob)] + real[1:])
        cases.append(Case(f"pkl_{name}", p, "pickle", what, payload=True))
    for name, (what, blob, bomb) in _broken_pickles().items():
        p = out / f"pkl_{name}.pt"
        _write_zip(p, [(pkl_name, blob)] + real[1:])
        cases.append(Case(f"pkl_{name}", p, "pickle", what, bomb=bomb))
    cases += _zip_cases(out, sentinel_dir, real)
    cases += _legacy_cases(out, sentinel_dir)
    cases += _safetensors_cases(out)
    cases += _torchscript_cases(out, sentinel_dir)
    cases += _pt2_cases(out, sentinel_dir)
    cases += _dcp_cases(out, sentinel_dir)
    cases += round2_cases(out, sentinel_dir, real)
    return cases




# ---- round 2: the attack on the landed tool, one generator per defect class ----------------
#
# Each generator is written from its class (see tests/hostile/README.md, "Round 2"), not from
# the files the attack used. Names are `r2_c<class>_<what>`.

DCP_META = "torch.distributed.checkpoint.metadata"


def _deep_tuple(depth: int) -> bytes:
    """NONE wrapped in `depth` TUPLE1s: a tuple nested `depth` deep."""
    return NONE + b"\x85" * depth


def _tuple_tower(levels: int, first_memo: int = 0) -> bytes:
    """t0 = (1,); t(k) = (t(k-1), t(k-1)): one value that stands for 2**levels leaves, each
    level memoised once (a few bytes per level). The tower is left on the stack."""
    out = i(1) + b"\x85" + put(first_memo)
    for k in range(levels):
        out += POP + get(first_memo + k) + get(first_memo + k) + b"\x86" + put(first_memo + k + 1)
    return out


def _list_tower(levels: int, first_memo: int) -> bytes:
    """Like `_tuple_tower`, with lists: equal to another tower, never the same object."""
    out = lst(i(0)) + put(first_memo)
    for k in range(levels):
        out += POP + EMPTY_LIST + MARK + get(first_memo + k) + get(first_memo + k) + APPENDS \
            + put(first_memo + k + 1)
    return out


def _colliding_int(k: int) -> bytes:
    """k * (2**61 - 1) as LONG1: every such int hashes to 0 in CPython."""
    v = k * ((1 << 61) - 1)
    raw = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def _tensor(dims: bytes, strides: bytes, key: str = "0", numel: int = 1,
            storage: str = "FloatStorage") -> bytes:
    """_rebuild_tensor_v2 over storage `key` (a pickle fragment)."""
    return call(glob("torch._utils", "_rebuild_tensor_v2"), tup(
        s("storage"), glob("torch", storage), s(key), s("cpu"), i(numel)) + b"Q", i(0),
        dims, strides, b"\x89", call(glob("collections", "OrderedDict")))


def _rec(cls: str, fields: dict[str, bytes], module: str = DCP_META) -> bytes:
    """A DCP dataclass instance as torch pickles it: NEWOBJ, then BUILD with its fields."""
    return glob(module, cls) + EMPTY_TUPLE + NEWOBJ + EMPTY_DICT + MARK + b"".join(
        s(k) + v for k, v in fields.items()) + SETITEMS + BUILD


def _size(*dims: int) -> bytes:
    return call(glob("torch", "Size"), tup(*(i(d) for d in dims)))


def dcp_metadata(*, size: bytes | None = None, offsets: list[bytes] | None = None,
                 sizes: list[bytes] | None = None, relative_path: str = "__0_0.distcp",
                 item_offset: int = 0, item_length: int = 0, prefix: bytes = b"",
                 key: str = "w") -> bytes:
    """A `.metadata` pickle for one float32 tensor `key` in chunks (pickle fragments)."""
    size = size if size is not None else _size(3)
    offsets = offsets if offsets is not None else [_size(0)]
    sizes = sizes if sizes is not None else [_size(3)] * len(offsets)
    chunks = lst(*(_rec("ChunkStorageMetadata", {"offsets": o, "sizes": z})
                   for o, z in zip(offsets, sizes)))
    tsm = _rec("TensorStorageMetadata", {
        "properties": _rec("TensorProperties", {"dtype": glob("torch", "float32")}),
        "size": size, "chunks": chunks})
    index = _rec("MetadataIndex", {"fqn": s(key), "offset": offsets[0], "index": i(0)})
    info = _rec("_StorageInfo", {"relative_path": s(relative_path), "offset": i(item_offset),
                                 "length": i(item_length)},
                module="torch.distributed.checkpoint.filesystem")
    md = _rec("Metadata", {
        "state_dict_metadata": EMPTY_DICT + s(key) + tsm + SETITEM,
        "planner_data": EMPTY_DICT + s(key) + tup(s(key)) + SETITEM,
        "storage_data": EMPTY_DICT + index + info + SETITEM})
    return PROTO2 + prefix + md + STOP


def _genuine_dcp(folder: Path, tensors: dict | None = None) -> tuple[int, int]:
    """A real dcp.save of {"w": zeros(3)} into `folder`; returns its item's (offset, length)."""
    import warnings

    import torch
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(tensors or {"w": torch.zeros(3)}, checkpoint_id=str(folder))
        md = dcp.FileSystemReader(str(folder)).read_metadata()
    info = next(iter(md.storage_data.values()))
    return info.offset, info.length


def dcp_many(folder: Path, n: int) -> Path:
    """A genuine dcp.save of `n` small tensors (class 6: memory while reading many items)."""
    import torch

    _genuine_dcp(folder, {f"layer{k}.weight": torch.full((4,), float(k)) for k in range(n)})
    return folder


def _dcp_case(out: Path, name: str, metadata: bytes, what: str, klass: int, bomb: bool = False,
              item: bool = True) -> Case:
    folder = out / name
    folder.mkdir()
    if item:
        src = out / "_dcp_genuine"
        for f in src.iterdir():
            if f.name != ".metadata":
                (folder / f.name).write_bytes(f.read_bytes())
    (folder / ".metadata").write_bytes(metadata)
    return Case(name, folder, "dcp", what, bomb=bomb, klass=klass)


def _ts_members(out: Path) -> list[tuple[str, bytes]]:
    import torch

    sys.path.insert(0, str(SAMPLES))
    from sample_modules import SmallCNN

    base = out / "_ts_r2.pt"
    torch.jit.save(torch.jit.script(SmallCNN().eval()), str(base))
    members = _zip_members(base)
    base.unlink()
    return members


def _zip_case(out: Path, name: str, kind: str, members, what: str, klass: int,
              bomb: bool = False, deflate: tuple[str, ...] = (), suffix: str = ".pt",
              payload: bool = False) -> Case:
    p = out / f"{name}{suffix}"
    _write_zip(p, members, deflate)
    return Case(name, p, kind, what, bomb=bomb, klass=klass, payload=payload)


def _class1_stack_overflow(out: Path, real) -> list[Case]:
    """Hashing a value nested far deeper than the C stack allows (dict key, set item)."""
    pkl = real[0][0]
    deep_key = PROTO2 + EMPTY_DICT + _deep_tuple(300_000) + NONE + SETITEM + STOP
    deep_item = PROTO2 + call(glob("builtins", "set"), lst(_deep_tuple(300_000))) + STOP
    deep_frozen = b"\x80\x04" + MARK + _deep_tuple(300_000) + b"\x91" + STOP
    ts = _ts_members(out)
    return [
        _zip_case(out, "r2_c1_deep_tuple_dict_key", "pickle", [(pkl, deep_key)] + real[1:],
                  "a tuple nested 300,000 deep used as a dict key", 1, bomb=True),
        _zip_case(out, "r2_c1_deep_tuple_set_item", "pickle", [(pkl, deep_item)] + real[1:],
                  "a tuple nested 300,000 deep as an item of set([...])", 1, bomb=True),
        _zip_case(out, "r2_c1_deep_tuple_frozenset", "pickle", [(pkl, deep_frozen)] + real[1:],
                  "a tuple nested 300,000 deep in a protocol-4 FROZENSET", 1, bomb=True),
        _zip_case(out, "r2_c1_deep_key_torchscript", "torchscript",
                  [(n, deep_key if n.endswith("/data.pkl") else d) for n, d in ts],
                  "TorchScript data.pkl with a 300,000-deep tuple key", 1, bomb=True),
        _dcp_case(out, "r2_c1_deep_key_dcp", b"\x80\x04" + EMPTY_DICT + _deep_tuple(300_000)
                  + NONE + SETITEM + STOP, "DCP .metadata with a 300,000-deep tuple key", 1,
                  bomb=True),
    ]


def _class2_unbounded_cpu(out: Path, real) -> list[Case]:
    """Small files that ask for exponential or quadratic work: hashing, comparing, formatting,
    products of huge ints, backtracking patterns, hash collisions."""
    pkl = real[0][0]
    hash_bomb = PROTO2 + EMPTY_DICT + _tuple_tower(40) + NONE + SETITEM + STOP
    # two equal towers of lists as the offsets of two chunks: sorting compares 2**32 leaves
    towers = _list_tower(32, 0) + POP + _list_tower(32, 40) + POP
    compare_bomb = dcp_metadata(offsets=[get(32), get(72)], sizes=[_size(3), _size(3)],
                                prefix=towers)
    repr_bomb = dcp_metadata(size=call(glob("torch", "Size"), tup(get(32))),
                             prefix=_list_tower(32, 0) + POP)
    big = (1 << 400_000) - 1
    raw = big.to_bytes(50_001, "little", signed=True)
    huge_dim = PROTO2 + b"\x8b" + struct.pack("<i", len(raw)) + raw + put(0) + POP + EMPTY_DICT \
        + MARK + b"".join(s(f"t{k}") + _tensor(tup(get(0)), tup(i(1))) for k in range(50)) \
        + SETITEMS + STOP
    collide = PROTO2 + EMPTY_DICT + MARK + b"".join(
        _colliding_int(k) + NONE for k in range(1, 80_000)) + SETITEMS + STOP
    set_collide = PROTO2 + call(glob("builtins", "set"), lst(*(
        _colliding_int(k) for k in range(1, 40_000)))) + STOP
    ts = _ts_members(out)
    blank = "\n" * 400_000
    ts_slow = [(n, (d.decode() + "class Evil(Module):\n" + blank
                    + "  __parameters__ = [---1]\n").encode()
                if n.endswith(".py") and "/code/__torch__/" in n else d) for n, d in ts]
    return [
        _zip_case(out, "r2_c2_hash_bomb_tuple_tower", "pickle", [(pkl, hash_bomb)] + real[1:],
                  "a dict key built from 40 levels of shared tuples (2**40 hash steps)", 2,
                  bomb=True),
        _dcp_case(out, "r2_c2_compare_bomb_dcp_offsets", compare_bomb,
                  "DCP chunk offsets: two equal, distinct 32-level list towers (sorting "
                  "compares 2**32 leaves)", 2, bomb=True),
        _dcp_case(out, "r2_c2_repr_bomb_dcp_size", repr_bomb,
                  "DCP torch.Size of a 2**32-leaf shared list (an error message must not repr "
                  "it)", 2, bomb=True),
        _zip_case(out, "r2_c2_huge_int_dimension", "pickle", [(pkl, huge_dim)] + real[1:],
                  "a memoised 400,000-bit integer as the dimension of 50 tensors", 2,
                  bomb=True),
        _zip_case(out, "r2_c2_hash_collisions_dict", "pickle", [(pkl, collide)] + real[1:],
                  "80,000 dict keys that all hash to 0 (multiples of 2**61-1), ~1 MB", 2,
                  bomb=True),
        _zip_case(out, "r2_c2_hash_collisions_set", "pickle", [(pkl, set_collide)] + real[1:],
                  "set([...]) of 40,000 ints that all hash to 0", 2, bomb=True),
        _zip_case(out, "r2_c2_torchscript_blank_lines", "torchscript", ts_slow,
                  "TorchScript code/ file with 400 KB of blank lines before a declaration "
                  "(backtracking pattern), then a bad declaration", 2, bomb=True),
    ]


def _class4_terminal(out: Path, real, sentinel_dir: Path) -> list[Case]:
    """Control characters, OSC 8 links, bidi overrides and forged lines from a file or a path."""
    pkl = real[0][0]
    forge = "\x1b]8;;http://evil\x07click\x1b]8;;\x07\x1b[2K\r\u202ebufinspect: all good\x07"
    cases = []
    # a path: ESC, BEL, CR, LF, U+202E and an undecodable byte (a lone surrogate in Python)
    name = os.fsdecode(b"r2_c4_path_\x1b[31m\r\n\xe2\x80\xaebufinspect: all good\xff.pt")
    p = out / name
    p.write_bytes(b"not a checkpoint at all")
    cases.append(Case("r2_c4_path_controls", p, "zip", "a file name with ESC, CR, LF, U+202E "
                      "and an undecodable byte", klass=4))
    evil_global = PROTO2 + call(b"c" + b"os" + b"\n" + forge.encode("utf-8")
                                + b"\n", s("x")) + STOP
    cases.append(_zip_case(out, "r2_c4_global_name_controls", "pickle",
                           [(pkl, evil_global)] + real[1:],
                           "a refused global whose name carries an OSC 8 link, CR and U+202E",
                           4, payload=True))
    cases.append(_zip_case(out, "r2_c4_zip_member_controls", "zip",
                           [("../" + forge + "/data.pkl", real[0][1])] + real[1:],
                           "a zip member name with controls (and ../)", 4))
    cases.append(_dcp_case(out, "r2_c4_dcp_strings", dcp_metadata(
        relative_path=forge + "\nbufinspect: all good"), "DCP relative_path with controls and "
        "a newline (the data file is missing)", 4))
    key = forge + "\nbufinspect: all good"
    p = out / "r2_c4_key_controls.safetensors"
    p.write_bytes(_st({key: {"dtype": "F32", "shape": [-1], "data_offsets": [0, 8]}}, b"\0" * 8))
    cases.append(Case("r2_c4_key_controls", p, "safetensors", "a tensor key with controls, an "
                      "OSC 8 link and a forged line, in an error message", klass=4))
    return cases


def _class5_render(out: Path, real) -> list[Case]:
    """Values that crashed the formatters after the reader accepted them: unbounded shapes,
    lone surrogates, huge keys."""
    pkl = real[0][0]
    meta = PROTO2 + dct(m=call(glob("torch._utils", "_rebuild_meta_tensor_no_storage"),
                               glob("torch", "float32"), tup(i(1 << 30), i(1 << 30), i(1 << 30)),
                               tup(i(1), i(1), i(1)))) + STOP
    big = (1 << 20_000) - 1
    raw = big.to_bytes(2501, "little", signed=True)
    wide = PROTO2 + dct(w=_tensor(tup(b"\x8b" + struct.pack("<i", len(raw)) + raw),
                                  tup(i(1)))) + STOP
    wrapper = PROTO2 + dct(w=call(glob("torch._utils", "_rebuild_wrapper_subclass"),
                                  glob("torch", "Tensor"), glob("torch", "float32"),
                                  tup(*(i((1 << 31) - 1) for _ in range(40))), tup(i(1)), i(0),
                                  NONE, s("cpu"), b"\x89")) + STOP
    cases = [
        _zip_case(out, "r2_c5_meta_tensor_huge_shape", "pickle", [(pkl, meta)] + real[1:],
                  "a meta tensor of 2**90 elements (no storage to bound it)", 5),
        _zip_case(out, "r2_c5_wrapper_subclass_huge_shape", "pickle",
                  [(pkl, wrapper)] + real[1:], "a wrapper subclass of 2**1240 elements", 5),
        _zip_case(out, "r2_c5_20000_bit_dimension", "pickle", [(pkl, wide)] + real[1:],
                  "a 20,000-bit dimension (JSON cannot print it)", 5),
    ]
    # readable files that the renderers must print safely (exit 0, bounded output)
    p = out / "r2_c5_surrogate_key.safetensors"
    p.write_bytes(_st(None, b"\0" * 8, raw=(
        b'{"__metadata__":{"note\\udfff":"v\\ud800"},'
        b'"k\\ud800":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}')))
    cases.append(Case("r2_c5_surrogate_key", p, "safetensors", "lone surrogates in a key and "
                      "in metadata (readable)", klass=5, expect="readable"))
    p = out / "r2_c5_huge_key.safetensors"
    header = {("k" * (10 << 20)): {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}
    header.update({f"t{k}": {"dtype": "F32", "shape": [1], "data_offsets": [4 + 4 * k, 8 + 4 * k]}
                   for k in range(2000)})
    p.write_bytes(_st(header, b"\0" * (4 + 4 * 2000)))
    cases.append(Case("r2_c5_huge_key", p, "safetensors", "a 10 MB key beside 2000 tensors "
                      "(every table row was padded to it; readable)", klass=5,
                      expect="readable"))
    return cases


def _class7_error_text(out: Path) -> list[Case]:
    """Errors whose text would quote something huge."""
    size = tup(s("A"), i(300_000_000))  # prod(('A', 300000000)) is a 300 MB string
    return [
        _dcp_case(out, "r2_c7_dcp_size_string_times_int", dcp_metadata(size=size),
                  "DCP size ('A', 300000000): a 300 MB product in the error text", 7),
        _dcp_case(out, "r2_c7_long_key_in_error", dcp_metadata(
            key="x" * 5_000_000, size=_size(3), offsets=[tup(s("bad"))]),
            "a 5 MB tensor key quoted by an error message", 7),
    ]


def _class8_views(out: Path, real) -> list[Case]:
    """Views whose data passes would read far more than the file stores."""
    pkl = real[0][0]
    stem = pkl.split("/")[0]
    zero = PROTO2 + EMPTY_DICT + MARK + b"".join(
        s(f"v{k}") + _tensor(tup(b"\x8a\x04" + (1 << 28).to_bytes(4, "little")), tup(i(0)))
        for k in range(1000)) + SETITEMS + STOP
    n = 1 << 20  # a 4 MB float storage
    full = PROTO2 + EMPTY_DICT + MARK + b"".join(
        s(f"v{k}") + _tensor(tup(i(n)), tup(i(1)), numel=n) for k in range(40_000)) \
        + SETITEMS + STOP
    return [
        _zip_case(out, "r2_c8_stride0_views", "pickle",
                  [(pkl, zero), (f"{stem}/data/0", b"\0" * 4)],
                  "1000 stride-0 views of 2**28 floats over one 4-byte storage", 8, bomb=True),
        _zip_case(out, "r2_c8_many_views_one_storage", "pickle",
                  [(pkl, full), (f"{stem}/data/0", b"\0" * (4 * n))],
                  "40,000 full views of one 4 MB storage (160 GB of reads)", 8, bomb=True),
    ]


def _class9_symlinks(out: Path) -> list[Case]:
    """Names read from a folder that resolve outside it."""
    outside = out / "_outside"
    outside.mkdir(exist_ok=True)
    secret = {"secret": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}
    (outside / "secret.safetensors").write_bytes(_st(secret, b"\0" * 4))
    cases = []
    folder = out / "r2_c9_sharded_symlink_shard"
    folder.mkdir()
    (folder / "a.safetensors").write_bytes(_st({"a": secret["secret"]}, b"\0" * 4))
    os.symlink(os.path.relpath(outside / "secret.safetensors", folder),
               folder / "b.safetensors")
    cases.append(Case(folder.name, folder, "safetensors", "unindexed shard folder with "
                      "b.safetensors -> a file outside the folder", klass=9))
    folder = out / "r2_c9_sharded_symlink_index"
    folder.mkdir()
    (folder / "a.safetensors").write_bytes(_st({"a": secret["secret"]}, b"\0" * 4))
    (outside / "index.json").write_text(json.dumps({"weight_map": {"a": "a.safetensors"}}))
    os.symlink(os.path.relpath(outside / "index.json", folder),
               folder / "model.safetensors.index.json")
    cases.append(Case(folder.name, folder, "safetensors", "a shard folder whose index is a "
                      "symlink to a file outside", klass=9))
    offset, length = _genuine_dcp(outside / "dcp_src")
    md = dcp_metadata(item_offset=offset, item_length=length)
    folder = out / "r2_c9_dcp_symlink_distcp"
    folder.mkdir()
    (folder / ".metadata").write_bytes(md)
    os.symlink(os.path.relpath(outside / "dcp_src" / "__0_0.distcp", folder),
               folder / "__0_0.distcp")
    cases.append(Case(folder.name, folder, "dcp", "DCP folder whose __0_0.distcp is a "
                      "symlink to a file outside", klass=9))
    folder = out / "r2_c9_dcp_symlink_subfolder"
    folder.mkdir()
    (folder / ".metadata").write_bytes(dcp_metadata(relative_path="sub/__0_0.distcp",
                                                    item_offset=offset, item_length=length))
    os.symlink(os.path.relpath(outside / "dcp_src", folder), folder / "sub")
    cases.append(Case(folder.name, folder, "dcp", "DCP relative_path through a symlinked "
                      "sub-folder", klass=9))
    return cases


def _class10_special_files(out: Path) -> list[Case]:
    """FIFOs where a reader expects a regular file (an open() that never returns)."""
    if not hasattr(os, "mkfifo"):
        return []
    cases = []
    p = out / "r2_c10_fifo.pt"
    os.mkfifo(p)
    cases.append(Case("r2_c10_fifo_checkpoint", p, "zip", "a FIFO named x.pt", bomb=True,
                      klass=10))
    p = out / "r2_c10_fifo_model.safetensors.index.json"
    os.mkfifo(p)
    cases.append(Case("r2_c10_fifo_index_file", p, "safetensors", "a FIFO as the "
                      "model.safetensors.index.json given on the command line", bomb=True,
                      klass=10))
    folder = out / "r2_c10_fifo_index_in_folder"
    folder.mkdir()
    os.mkfifo(folder / "model.safetensors.index.json")
    cases.append(Case(folder.name, folder, "safetensors", "a folder whose index is a FIFO",
                      bomb=True, klass=10))
    folder = out / "r2_c10_fifo_dcp_metadata"
    folder.mkdir()
    os.mkfifo(folder / ".metadata")
    cases.append(Case(folder.name, folder, "dcp", "a DCP folder whose .metadata is a FIFO",
                      bomb=True, klass=10))
    folder = out / "r2_c10_fifo_distcp"
    folder.mkdir()
    (folder / ".metadata").write_bytes(dcp_metadata(item_length=100))
    os.mkfifo(folder / "__0_0.distcp")
    cases.append(Case(folder.name, folder, "dcp", "a DCP folder whose data file is a FIFO",
                      bomb=True, klass=10))
    return cases


def _class11_specific(out: Path, real) -> list[Case]:
    """Inputs that reached the catch-all "unreadable (SomeError ...)" line."""
    pkl = real[0][0]
    src = out / "_dcp_genuine"
    offset, length = _GENUINE_ITEM[0]
    item = (src / "__0_0.distcp").read_bytes()
    cases = [
        _dcp_case(out, "r2_c11_dcp_offsets_strings", dcp_metadata(
            offsets=[tup(s("0"))], item_offset=offset, item_length=length),
            "DCP chunk offsets given as strings", 11),
        _dcp_case(out, "r2_c11_dcp_offsets_int", dcp_metadata(
            offsets=[i(0)], item_offset=offset, item_length=length),
            "DCP chunk offsets given as an int", 11),
    ]
    enc = bytearray(item)
    for at in (enc.find(b"PK\x03\x04", offset) + 6, enc.find(b"PK\x01\x02", offset) + 8):
        enc[at] |= 1
    c = _dcp_case(out, "r2_c11_dcp_item_encrypted", dcp_metadata(
        item_offset=offset, item_length=length), "a DCP item whose zip members are marked "
        "encrypted", 11)
    (c.path / "__0_0.distcp").write_bytes(bytes(enc))
    cases.append(c)
    inner = zipfile.ZipFile(io.BytesIO(item[offset: offset + length]))
    members = [(n, inner.read(n)) for n in inner.namelist()]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for n, d in members:
            info = zipfile.ZipInfo(n, (2020, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED if n.endswith("data.pkl") \
                else zipfile.ZIP_STORED
            z.writestr(info, d)
    blob = bytearray(buf.getvalue())
    at = blob.find(b"PK\x03\x04") + 30 + len(members[0][0])
    blob[at: at + 6] = b"\xff" * 6
    c = _dcp_case(out, "r2_c11_dcp_item_broken_deflate", dcp_metadata(
        item_offset=0, item_length=len(blob)), "a DCP item whose data.pkl deflate stream is "
        "broken", 11)
    (c.path / "__0_0.distcp").write_bytes(bytes(blob))
    cases.append(c)
    p = out / "r2_c11_numel_overflows_float.safetensors"
    p.write_bytes(_st({"a": {"dtype": "F4", "shape": [(1 << 62) - 1] * 64,
                             "data_offsets": [0, 8]}}, b"\0" * 8))
    cases.append(Case(p.stem, p, "safetensors", "an element count that overflows a float "
                      "(packed F4 dtype)", klass=11))
    key = (10 ** 4999)
    raw = key.to_bytes((key.bit_length() + 8) // 8, "little", signed=True)
    big_key = PROTO2 + dct(m=EMPTY_DICT + b"\x8b" + struct.pack("<i", len(raw)) + raw
                           + _tensor(tup(i(1)), tup(i(1))) + SETITEM) + STOP
    cases.append(_zip_case(out, "r2_c11_int_key_5000_digits", "pickle",
                           [(pkl, big_key)] + real[1:], "a 5000-digit int dict key", 11))
    cases.append(_pt2_case(out, "r2_c11_pt2_as_int_infinity", b"Infinity",
                           "torch.export sizes with as_int: Infinity", 11))
    cases.append(_pt2_case(out, "r2_c5_pt2_size_1e308", b"1e308",
                           "torch.export sizes of 1e308 (OverflowError in the size formatter)",
                           5))
    ts = _ts_members(out)
    minus = "[" + "-" * 100_000 + "1]"
    cases.append(_zip_case(out, "r2_c11_torchscript_minus_declaration", "torchscript",
                           [(n, re.sub(rb"__parameters__ = \[[^\]]*\]",
                                       b"__parameters__ = " + minus.encode(), d)
                             if n.endswith(".py") else d) for n, d in ts],
                           "a TorchScript __parameters__ declaration [---...1]", 11))
    return cases


_GENUINE_ITEM: list[tuple[int, int]] = []


def _pt2_case(out: Path, name: str, literal: bytes, what: str, klass: int) -> Case:
    import torch

    sys.path.insert(0, str(SAMPLES))
    from sample_modules import SmallCNN

    base = out / f"_{name}.pt2"
    ep = torch.export.export(SmallCNN().eval(), (torch.zeros(1, 3, 4, 4),))
    torch.export.save(ep, str(base))
    members = _zip_members(base)
    base.unlink()
    rewritten = []
    for n, d in members:
        if n.endswith("model_weights_config.json"):
            d = re.sub(rb'"as_int":\s*\d+', b'"as_int": ' + literal, d, count=1)
            if b"use_pickle" in d:
                d = d.replace(b'"use_pickle": false', b'"use_pickle": true', 1)
        rewritten.append((n, d))
    p = out / f"{name}.pt2"
    _write_zip(p, rewritten)
    return Case(name, p, "pt2", what, klass=klass)


def round2_cases(out: Path, sentinel_dir: Path, real: list[tuple[str, bytes]]) -> list[Case]:
    """Every round-2 case (classes 1-11; classes 3 and 6 also have tests of their own)."""
    _GENUINE_ITEM[:] = [_genuine_dcp(out / "_dcp_genuine")]
    cases: list[Case] = []
    cases += _class1_stack_overflow(out, real)
    cases += _class2_unbounded_cpu(out, real)
    cases += _class3_outputs(out, sentinel_dir)
    cases += _class4_terminal(out, real, sentinel_dir)
    cases += _class5_render(out, real)
    cases += _class6_memory(out)
    cases += _class7_error_text(out)
    cases += _class8_views(out, real)
    cases += _class9_symlinks(out)
    cases += _class10_special_files(out)
    cases += _class11_specific(out, real)
    return cases


def _class3_outputs(out: Path, sentinel_dir: Path) -> list[Case]:
    """Checkpoints beside planted links: an output option must never write through them (the
    links aim at the sentinel folder). Readable; tests/test_hostile_round2.py runs annotate,
    --save-metrics and --plot against them."""
    import torch
    from safetensors.torch import save_file

    sys.path.insert(0, str(SAMPLES))
    from sample_modules import SmallCNN

    folder = out / "r2_c3_planted_links"
    folder.mkdir()
    torch.manual_seed(0)
    sd = SmallCNN().state_dict()
    torch.save(sd, folder / "victim.pt")
    os.symlink(sentinel_dir / "r2_c3_sidecar", folder / "victim.pt.bufinspect.json")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / "victim.safetensors"))
    os.symlink(sentinel_dir / "r2_c3_tmp", folder / "victim.safetensors.bufinspect-tmp")
    return [Case("r2_c3_planted_sidecar_link", folder / "victim.pt", "zip",
                 "a checkpoint whose sidecar name is a planted symlink", klass=3,
                 expect="readable"),
            Case("r2_c3_planted_tmp_link", folder / "victim.safetensors", "safetensors",
                 "a safetensors file whose old fixed temp name is a planted symlink", klass=3,
                 expect="readable")]


def _class6_memory(out: Path) -> list[Case]:
    """Memory while reading many DCP items (the large, genuine case is built by a slow test:
    `dcp_many`)."""
    folder = dcp_many(out / "r2_c6_dcp_many_items", 500)
    return [Case(folder.name, folder, "dcp", "a genuine dcp.save of 500 tensors (the slow "
                 "test reads 20,000 under a 2 GiB limit)", klass=6, expect="readable")]


MANIFEST = Path(__file__).with_name("cases.txt")


def manifest_lines(cases: list[Case]) -> list[str]:
    """The manifest the suite collects from: `name kind flags`, one case a line."""
    out = ["# name kind flags — written by `python tests/hostile/make_corpus.py --manifest`; the "
           "suite", "# collects from this list and checks that a fresh build of the corpus "
           "matches it"]
    for c in cases:
        flags = ",".join(f for f, v in (("bomb", c.bomb), ("payload", c.payload),
                                        ("readable", c.expect == "readable")) if v) or "-"
        out.append(f"{c.name} {c.kind} {flags}")
    return out


def read_manifest() -> list[tuple[str, str, set[str]]]:
    """(name, kind, flags) of every case, without building anything (cheap at collection)."""
    rows = []
    for line in MANIFEST.read_text().splitlines():
        if line and not line.startswith("#"):
            name, kind, flags = line.split()
            rows.append((name, kind, set(flags.split(",")) - {"-"}))
    return rows


if __name__ == "__main__":
    if sys.argv[1:] == ["--manifest"]:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            MANIFEST.write_text("\n".join(manifest_lines(build(tmp))) + "\n")
        sys.exit(0)
    if len(sys.argv) != 2:
        sys.exit("usage: make_corpus.py OUTDIR | --manifest")
    for c in build(sys.argv[1]):
        print(f"{c.name:40} {c.kind:12} {'bomb ' if c.bomb else ''}{c.what!a:.100}")
