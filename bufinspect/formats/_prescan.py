"""An opcode walk over a pickle BEFORE the restricted unpickler builds anything from it.

(A long module: one flat dispatch over every pickle opcode, kept in one function for speed.)

The C unpickler hashes dict keys and set items itself, and nothing of bufinspect runs while it
does: a tuple nested 300,000 deep used as a key overflows the C stack (a segfault), an 831-byte
tower of shared tuples costs 2**30 hash steps per use, and 80,000 integers that all hash alike
(multiples of 2**61 - 1) make one dict insertion quadratic (53 s for a 1 MB pickle). So this pass
simulates the pickle machine's stack with tiny shadow records (no object from the file is built)
and refuses, before anything is hashed, compared or formatted:

- nesting deeper than `MAX_DEPTH` (hashing, comparing and repr recurse in C);
- a container whose shared-reference expansion (the tree it stands for once memo references are
  followed) exceeds `max_expansion(size)`;
- hashing work beyond `MAX_HASH_WORK` element visits in all (a tuple key is hashed again at every
  use: nothing caches a tuple's hash);
- more than `MAX_COLLISIONS` dict keys or set items of one container that share one hash value
  (ints, floats and tuples of them can be chosen to collide; str/bytes hashes are randomised);
- integers longer than `MAX_INT_BITS` bits, and text-encoded numbers longer than `MAX_LINE`;
- memo indices beyond the pickle's own size (a 10-byte pickle naming memo slot 2**30 made the
  C unpickler allocate 16 GB).

A pickle this pass cannot follow (an unknown opcode, a stack underflow, a missing memo slot,
truncation) is left to the unpickler, which stops at the same place with its own error: both
machines read the same opcodes in the same order, so nothing it builds was not walked here.
Cost: `scan` runs the same walk compiled (`_prescan_native.c`, an optional extension built at
install like `bufinspect._kernel`): about 8 ns of CPU per opcode, 0.3 us per tensor of a
torch.save state dict. The Python walk below is the reference (tests/test_prescan_native.py
holds the two to the same verdicts) and the fallback without a compiler or with
BUFINSPECT_NO_KERNEL=1: about 0.2-0.3 us per opcode, 6-9 us per tensor. 100,000 tensors:
`bufinspect.load` 2.02 s with the compiled walk, 2.38 s with the Python one, 1.97 s without a
pre-scan (CPU time; benchmarks/bench_prescan.py).
"""

from __future__ import annotations

import os
import struct
from typing import Any

MAX_DEPTH = 1000  # containers inside containers (a module tree 200 deep needs about 600)
MAX_HASH_WORK = 20_000_000  # element hashes while building dicts and sets (~0.3 s)
MAX_COLLISIONS = 256  # keys of one dict (or items of one set) with the same hash value
MAX_INT_BITS = 2048  # no checkpoint stores a larger integer (seeds and counters are 64-bit)
MAX_LINE = 1000  # text-encoded ints, floats, memo indices (protocol 0)
MAX_ITEMS = 1 << 26  # items in one container
MAX_PICKLE = 1 << 30  # bytes of one pickle read from a file (as for a zip's data.pkl)
_SAT = 1 << 62  # counts saturate here


def max_expansion(size: int) -> int:
    """Nodes a pickle of `size` bytes may stand for once shared references are expanded."""
    return (1 << 26) + 64 * size


class Refused(Exception):
    """The pickle is built to exhaust the machine; the message says how (one line)."""


# A shadow node is a list (cheaper to make than any object; there is one per container built):
#   [kind, depth, size, hcost, sig, extra]
# kind: 0 an atom (str, bytes, small int, None, bool, a global, a persistent object), 1 a number
# that can be chosen to collide (sig: its hash), 2 a tuple, 3 a mutable container or built
# object, 5 a global that may be set/frozenset (a STACK_GLOBAL's names are not tracked). depth: nesting (atoms 0, an empty container 1). size: nodes once shared references are
# expanded. hcost: element hashes that hashing it takes (tuples; 1 for anything else). sig: a
# hash signature for values that can be chosen to collide (equal sig: equal hash). extra: None,
# or a dict: "first" (a tuple's first item), "items" (a container's item count), "counts" (hash
# value -> keys with it), "sigs"/"hitems" (a list's colliding items and their hash cost).
KIND, DEPTH, SIZE, HCOST, SIG, EXTRA = range(6)
_ATOM = [0, 0, 1, 1, None, None]
_SET_BUILDERS = {"builtins.set", "builtins.frozenset", "__builtin__.set",
                 "__builtin__.frozenset"}


def _number(value: Any) -> list:
    if type(value) is int:
        if value.bit_length() > MAX_INT_BITS:
            raise Refused(f"an integer of {value.bit_length()} bits (more than any checkpoint "
                          "holds)")
        if -(1 << 60) < value < (1 << 60):  # hash(n) == n here (but -1 and -2): no collisions
            return _ATOM
    return [1, 0, 1, 1, hash(value), None]


class _Malformed(Exception):
    pass


class _Truncated(Exception):
    """The bytes so far end inside the pickle (a file is read in pieces: read on)."""


DISABLE_ENV = "BUFINSPECT_NO_KERNEL"  # as bufinspect.kernels: "" or "0" leaves C code on
_UNSET = object()
_native_mod: Any = _UNSET


def native():
    """The compiled walk (`_prescan_native.c`), or None when it was not built or
    `BUFINSPECT_NO_KERNEL=1` (then `scan` runs the Python walk below, the reference). The
    variable is read at every call (once per pickle), the module imported once."""
    global _native_mod
    if os.environ.get(DISABLE_ENV, "") not in ("", "0"):
        return None
    if _native_mod is _UNSET:
        try:
            from bufinspect.formats import _prescan_native as mod
        except ImportError:
            mod = None
        _native_mod = mod
    return _native_mod


def reset() -> None:
    """Look for the compiled walk again (as `kernels.reset`)."""
    global _native_mod
    _native_mod = _UNSET


def scan(data: Any, start: int = 0) -> int:
    """Walk one pickle in `data` (bytes-like) from `start`; return its end offset.

    Raises `Refused` for a pickle built to exhaust time, memory or the C stack. Returns -1 when
    `data` ends inside the pickle, -2 when the pickle is malformed: not judged (the unpickler
    stops at the same opcode with its own error; where the two could differ, the walk is the
    more permissive one, so it never stops short of what the unpickler will build).
    """
    if not isinstance(data, bytes):
        data = bytes(data)
    fast = native() if start >= 0 else None
    if fast is not None:
        end = fast.scan(data, start)
        if type(end) is str:
            raise Refused(end)
        return end
    return scan_python(data, start)


def scan_python(data: bytes, start: int = 0) -> int:
    """`scan` by the Python walk (the reference the compiled one is tested against)."""
    try:
        return _scan(data, start)
    except _Truncated:
        return -1
    except _Malformed:
        return -2


def _scan(data: bytes, pos: int) -> int:
    """`_walk`, with every failure sorted: cut short (near the end of `data`), or malformed."""
    try:
        return _walk(data, pos)
    except _Stopped as stop:
        if stop.at + 16 >= len(data):  # an opcode or its argument runs past the bytes read
            raise _Truncated from None
        raise _Malformed from None


class _Stopped(Exception):
    """What malformed bytes raise in the walk, with the offset of the opcode it stopped at."""

    def __init__(self, at: int) -> None:
        self.at = at


def _walk(data: bytes, pos: int) -> int:  # noqa: C901 - one flat loop (speed)
    n = len(data)
    limit = max_expansion(n)
    stack: list[list] = []
    marks: list[int] = []
    memo: dict[int, list] = {}
    push, pop = stack.append, stack.pop
    u32 = struct.Struct("<I").unpack_from
    i32 = struct.Struct("<i").unpack_from
    u64 = struct.Struct("<Q").unpack_from
    f64 = struct.Struct(">d").unpack_from
    work = [0]  # element hashes so far
    max_memo = n + 16
    atom = _ATOM
    # tuples of atoms only (shape and stride tuples, storage ids): one shared node per length
    flat = [[2, 1, k + 1, k + 1, None, None] for k in range(8)]

    def line() -> bytes:
        nonlocal pos
        end = data.find(b"\n", pos)
        if end < 0:
            raise _Truncated
        if end - pos > MAX_LINE:
            raise Refused(f"a text-encoded number or name of {end - pos} bytes")
        text = data[pos:end]
        pos = end + 1
        return text

    def take_mark() -> list[list]:
        at = marks.pop()
        items = stack[at:]
        del stack[at:]
        return items

    def too_big(depth: int, size: int) -> None:
        if depth > MAX_DEPTH:
            raise Refused(f"containers nested more than {MAX_DEPTH} deep")
        raise Refused(f"shared references that expand to more than {limit} objects")

    def container(kind: int, items: list[list]) -> list:
        depth = size = 0
        hcost = 1
        sigs: list | None = None
        for it in items:
            if it is atom:
                size += 1
                hcost += 1
                continue
            if it[1] > depth:
                depth = it[1]
            size += it[2]
            if it[0] <= 2:
                hcost += it[3]
                if it[4] is not None and kind == 2:
                    if sigs is None:
                        sigs = []
                    sigs.append(it[4])
        depth += 1
        size += 1
        if depth > MAX_DEPTH or size > limit:
            too_big(depth, size)
        extra = None  # (most tuples need none: one dict less per tensor)
        if kind != 2:
            extra = {"items": len(items)}
        elif items and items[0][0] == 3 and items[0][1]:  # a container first: set([...])?
            extra = {"first": items[0]}
        return [kind, depth, size if size < _SAT else _SAT,
                (hcost if hcost < _SAT else _SAT) if kind == 2 else 1,
                hash(tuple(sigs)) if sigs is not None else None, extra]

    def grow(box: list, items: list[list], keys: list[list] | None) -> None:
        """Items added to a mutable container (APPEND(S), SETITEM(S), ADDITEMS, BUILD)."""
        if box[0] != 3:  # the unpickler fails on this; scan on all the same (never stricter)
            box = [3, box[1], box[2], 1, None, None]
        extra = box[5]
        if extra is None:
            extra = box[5] = {}
        count = extra.get("items", 0) + len(items)
        if count > MAX_ITEMS:
            raise Refused(f"a container of more than {MAX_ITEMS} items")
        extra["items"] = count
        size, depth = box[2], box[1]
        for it in items:
            if it is atom:
                size += 1
                continue
            size += it[2]
            if it[1] >= depth:
                depth = it[1] + 1
        if depth > MAX_DEPTH or size > limit:
            too_big(depth, size)
        box[2], box[1] = size, depth
        if keys is not None:
            hashed(extra, keys)

    def hashed(extra: dict, keys: list[list]) -> None:
        """`keys` are hashed into one dict or set (whose `extra` keeps its hash counts)."""
        w = work[0]
        for k in keys:
            if k is atom:
                w += 1
                continue
            w += k[3] if k[0] <= 2 else 1
            if k[4] is not None:
                counts = extra.get("counts")
                if counts is None:
                    counts = extra["counts"] = {}
                c = counts[k[4]] = counts.get(k[4], 0) + 1
                if c > MAX_COLLISIONS:
                    raise Refused(f"more than {MAX_COLLISIONS} keys with one hash value "
                                  "(a hash-collision attack)")
        work[0] = w
        if w > MAX_HASH_WORK:
            raise Refused(f"keys that cost more than {MAX_HASH_WORK} steps to hash (deep or "
                          "shared tuples)")

    def listed(box: list, items: list[list]) -> None:
        """What hashing a list's items would cost, should it become a set."""
        if box[0] != 3:
            return
        extra = box[5]
        if extra is None:
            extra = box[5] = {}
        h = 0
        for it in items:
            if it is atom:
                h += 1
                continue
            h += it[3] if it[0] <= 2 else 1
            if it[4] is not None:
                extra.setdefault("sigs", []).append(it[4])
        extra["hitems"] = extra.get("hitems", 0) + h

    def set_call(args: list) -> None:
        """set([...]) / frozenset([...]) (protocol 2): the list's items are hashed now."""
        first = args[5].get("first") if args[0] == 2 and args[5] else None
        if first is None or first[0] != 3 or not first[5]:
            return
        work[0] += first[5].get("hitems", 0)
        hashed({}, [[1, 0, 1, 0, sig, None] for sig in first[5].get("sigs", ())])

    # (a try around the loop costs nothing per opcode in CPython 3.11+; `start` is where the
    # current opcode began, for telling cut-short bytes from malformed ones)
    start = pos
    try:
        while True:
            start = pos
            op = data[pos]  # IndexError past the end: cut short
            pos += 1
            # the frequent opcodes of a torch.save pickle first (30 per tensor: LONG_BINPUT,
            # BINGET, BININT1, BINUNICODE, MARK, TUPLE, TUPLE1, REDUCE, ...)
            if op == 0x72:  # r LONG_BINPUT
                idx = u32(data, pos)[0]
                pos += 4
                if idx > max_memo:
                    raise Refused(f"memo slot {idx} in a pickle of {n} bytes")
                memo[idx] = stack[-1]
            elif op == 0x68:  # h BINGET
                push(memo[data[pos]])
                pos += 1
            elif op == 0x4B:  # K BININT1
                pos += 1
                push(atom)
            elif op == 0x58:  # X BINUNICODE
                pos += 4 + u32(data, pos)[0]
                push(atom)
            elif op == 0x28:  # ( MARK
                marks.append(len(stack))
            elif op == 0x74:  # t TUPLE
                at = marks.pop()
                items = stack[at:]
                del stack[at:]
                for it in items:
                    if it[1] or it[4] is not None:
                        push(container(2, items))
                        break
                else:
                    push(flat[len(items)] if len(items) < 8 else container(2, items))
            elif op == 0x85:  # TUPLE1
                it = stack[-1]
                stack[-1] = flat[1] if not it[1] and it[4] is None else container(2, [it])
            elif op == 0x52:  # R REDUCE
                args = pop()
                fn = stack[-1]
                if fn[0] == 5:
                    set_call(args)
                stack[-1] = [3, args[1], args[2], 1, None, None]
            elif op == 0x51:  # Q BINPERSID
                stack[-1] = [3, 0, 1, 1, None, None]
            elif op == 0x89 or op == 0x88 or op == 0x4E or op == 0x29:  # False True None ()
                push(atom)
            elif op == 0x71:  # q BINPUT
                memo[data[pos]] = stack[-1]
                pos += 1
            elif op == 0x86:  # TUPLE2
                b = pop()
                a = stack[-1]
                stack[-1] = flat[2] if not (a[1] or b[1]) and a[4] is None and b[4] is None \
                    else container(2, [a, b])
            elif op == 0x87:  # TUPLE3
                c = pop()
                b = pop()
                a = stack[-1]
                stack[-1] = flat[3] if not (a[1] or b[1] or c[1]) and a[4] is None \
                    and b[4] is None and c[4] is None else container(2, [a, b, c])
            elif op == 0x7D or op == 0x5D or op == 0x8F:  # EMPTY_DICT EMPTY_LIST EMPTY_SET
                push([3, 1, 1, 1, None, None])
            elif op == 0x75:  # u SETITEMS
                items = take_mark()
                if len(items) % 2:
                    raise _Malformed
                grow(stack[-1], items, items[0::2])
            elif op == 0x65:  # e APPENDS
                items = take_mark()
                listed(stack[-1], items)
                grow(stack[-1], items, None)
            elif op == 0x6A:  # j LONG_BINGET
                push(memo[u32(data, pos)[0]])
                pos += 4
            elif op == 0x94:  # MEMOIZE
                memo[len(memo)] = stack[-1]
            elif op == 0x8C:  # SHORT_BINUNICODE
                pos += 1 + data[pos]
                push(atom)
            elif op == 0x63:  # c GLOBAL
                module = line()
                name = line()
                full = module.decode("utf-8", "replace") + "." + name.decode("utf-8", "replace")
                push([5 if full in _SET_BUILDERS else 0, 0, 1, 1, None, None])
            elif op == 0x93:  # STACK_GLOBAL (its names are not tracked: strings are atoms)
                pop()
                stack[-1] = [5, 0, 1, 1, None, None]  # may be builtins.set
            elif op == 0x4A:  # J BININT
                pos += 4
                push(atom)
            elif op == 0x4D:  # M BININT2
                pos += 2
                push(atom)
            elif op == 0x73:  # s SETITEM
                v = pop()
                k = pop()
                grow(stack[-1], [k, v], [k])
            elif op == 0x61:  # a APPEND
                v = pop()
                listed(stack[-1], [v])
                grow(stack[-1], [v], None)
            elif op == 0x62:  # b BUILD
                state = pop()
                obj = stack[-1]
                if obj[0] == 3:
                    grow(obj, [state], None)
                else:
                    stack[-1] = [3, state[1] + 1, state[2] + 1, 1, None, None]
            elif op == 0x81:  # NEWOBJ
                args = pop()
                stack[-1] = [3, args[1], args[2], 1, None, None]
            elif op == 0x92:  # NEWOBJ_EX
                kw = pop()
                args = pop()
                stack[-1] = [3, max(args[1], kw[1]), min(args[2] + kw[2], _SAT), 1, None, None]
            elif op == 0x30:  # 0 POP
                if marks and marks[-1] == len(stack):
                    marks.pop()  # POP of a bare MARK, as the unpickler allows
                else:
                    pop()
            elif op == 0x31:  # 1 POP_MARK
                take_mark()
            elif op == 0x32:  # 2 DUP
                push(stack[-1])
            elif op == 0x47:  # G BINFLOAT
                push(_number(f64(data, pos)[0]))
                pos += 8
            elif op == 0x46:  # F FLOAT
                push(_number(float(line())))
            elif op == 0x49:  # I INT (and the protocol-0 booleans I00/I01)
                text = line()
                push(atom if text in (b"00", b"01") else _number(int(text)))
            elif op == 0x4C:  # L LONG
                text = line()
                push(_number(int(text[:-1] if text.endswith(b"L") else text)))
            elif op == 0x8A:  # LONG1
                k = data[pos]
                pos += 1 + k
                if pos > n:
                    raise _Truncated
                push(_number(int.from_bytes(data[pos - k:pos], "little", signed=True)))
            elif op == 0x8B:  # LONG4
                k = i32(data, pos)[0]
                if k * 8 > MAX_INT_BITS:
                    raise Refused(f"an integer of {k * 8} bits (more than any checkpoint holds)")
                pos += 4 + k
                if k < 0:
                    raise _Malformed
                if pos > n:
                    raise _Truncated
                push(_number(int.from_bytes(data[pos - k:pos], "little", signed=True)))
            elif op == 0x54 or op == 0x42:  # T BINSTRING, B BINBYTES
                pos += 4 + u32(data, pos)[0]
                push(atom)
            elif op == 0x55 or op == 0x43:  # U SHORT_BINSTRING, C SHORT_BINBYTES
                pos += 1 + data[pos]
                push(atom)
            elif op == 0x8D or op == 0x8E:  # BINUNICODE8 BINBYTES8
                pos += 8 + u64(data, pos)[0]
                push(atom)
            elif op == 0x96:  # BYTEARRAY8
                pos += 8 + u64(data, pos)[0]
                push([3, 1, 1, 1, None, None])
            elif op == 0x53 or op == 0x56:  # S STRING, V UNICODE (text lines of any length)
                end = data.find(b"\n", pos)
                if end < 0:
                    raise _Truncated
                pos = end + 1
                push(atom)
            elif op == 0x6C:  # l LIST
                items = take_mark()
                node = container(3, items)
                listed(node, items)
                push(node)
            elif op == 0x64:  # d DICT
                items = take_mark()
                if len(items) % 2:
                    raise _Malformed
                node = container(3, items)
                hashed(node[5], items[0::2])
                push(node)
            elif op == 0x90:  # ADDITEMS
                items = take_mark()
                grow(stack[-1], items, items)
            elif op == 0x91:  # FROZENSET (hashable; its hash is computed once and cached)
                items = take_mark()
                node = container(3, items)
                hashed(node[5], items)
                push(node)
            elif op == 0x67:  # g GET
                push(memo[int(line())])
            elif op == 0x70:  # p PUT
                idx = int(line())
                if idx > max_memo:
                    raise Refused(f"memo slot {idx} in a pickle of {n} bytes")
                memo[idx] = stack[-1]
            elif op == 0x69:  # i INST: module and name lines, then the marked arguments
                line()
                line()
                push(container(3, take_mark()))
            elif op == 0x6F:  # o OBJ
                items = take_mark()
                push(container(3, items[1:]))
            elif op == 0x50:  # P PERSID
                line()
                push([3, 0, 1, 1, None, None])
            elif op == 0x82 or op == 0x83 or op == 0x84:  # EXT1 EXT2 EXT4
                pos += {0x82: 1, 0x83: 2, 0x84: 4}[op]
                push([5, 0, 1, 1, None, None])
            elif op == 0x80:  # PROTO
                pos += 1
            elif op == 0x95:  # FRAME: frames are transparent to the opcode stream
                pos += 8
            elif op == 0x97:  # NEXT_BUFFER
                push([3, 1, 1, 1, None, None])
            elif op == 0x98:  # READONLY_BUFFER
                pass
            elif op == 0x2E:  # . STOP
                return pos
            else:
                raise _Malformed  # an opcode that does not exist: the unpickler refuses it too
    # (what malformed bytes raise; anything else is a bug here and propagates: the caller then
    # refuses the file rather than unpickling it unscanned)
    except (IndexError, KeyError, struct.error, ValueError, OverflowError):
        raise _Stopped(start) from None


def scan_file(file: Any) -> None:
    """`scan` the pickle that starts at `file`'s position; the position is left unchanged.

    A BytesIO is scanned in place; another file is read in growing pieces until the pickle's
    STOP (a legacy file holds several pickles and then the tensor data).
    """
    import io

    if isinstance(file, io.BytesIO):
        scan(file.getvalue(), file.tell())
        return
    start = file.tell()
    try:
        data = file.read(1 << 20)
        while True:
            end = scan(data)
            if end != -1:  # scanned, or malformed (the unpickler stops at the same opcode)
                return
            if len(data) >= MAX_PICKLE:
                raise Refused(f"a pickle of more than {MAX_PICKLE} bytes")
            more = file.read(min(max(len(data), 1 << 20), MAX_PICKLE - len(data)))
            if not more:
                return  # cut short: the unpickler says so
            data += more
    finally:
        file.seek(start)
