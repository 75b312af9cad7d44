"""Streaming tensor bytes: file order, a few reusable page-aligned buffers, one reader thread.

`pieces(entries)` yields `(entry, first_element, array)` where `array` is a 1-D numpy view of the
raw elements (bfloat16 and float8 as unsigned integers: see `bufinspect.numeric.as_float`), or
with `raw=True` a memoryview of their bytes (for the fused kernel, without numpy). A view
is only valid until the next item is taken: consumers reduce it and let it go. Peak memory is
`buffers * chunk_bytes` whatever the checkpoint's size. Small tensors that sit close together in
the file share one read; large ones are cut into chunks.
"""

# Long on purpose (~560 lines): single reads, paired reads and the buffers they share are one
# design (page-aligned, reused, memcmp in place); splitting it would hide the buffer lifetimes.

from __future__ import annotations

import mmap
import operator
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from bufinspect import dtypes
from bufinspect.errors import InputError
from bufinspect.model import Entry, TensorData


class _LazyNumpy:
    """numpy, imported on first use: a diff of identical bytes never needs it (~0.1 s)."""

    def __getattr__(self, name: str):
        import numpy

        globals()["np"] = numpy
        return getattr(numpy, name)


np = _LazyNumpy()

CHUNK_BYTES = 4 << 20
_GAP = 64 << 10  # read through gaps up to this size rather than issuing another read


@dataclass
class _Window:
    file: str
    offset: int
    length: int
    # (entry, first element, byte offset inside the window, element count)
    pieces: list[tuple[Entry, int, int, int]] = field(default_factory=list)


def readable(e: Entry) -> bool:
    """True when bufinspect can stream this entry's elements."""
    d = dtypes.DTYPES.get(e.dtype)
    return e.data is not None and d is not None and d.numpy is not None and e.numel > 0


def _byte_range(data: TensorData, dtype: str, numel: int) -> tuple[int, int]:
    size = dtypes.itemsize(dtype)
    return data.offset + data.storage_offset * size, numel * size


def _segments(e: Entry) -> list[tuple[TensorData, int, int]]:
    """(contiguous data, first element, element count) for each part of an entry."""
    assert e.data is not None
    if not e.data.parts:
        return [(e.data, 0, e.numel)] if e.data.stride is None else []
    out, first = [], 0
    for part, n in zip(e.data.parts, e.data.part_numels):
        out.append((part, first, n))
        first += n
    return out


_FILE_AND_START = operator.itemgetter(0, 1)


def plan(entries: Iterable[Entry], chunk_bytes: int = CHUNK_BYTES) -> list[_Window]:
    """Group the entries' byte ranges into reads of at most `chunk_bytes`, in file order."""
    # (file, first byte, entry, data, first element, elements, bytes per element): the byte
    # range is worked out once per segment (a checkpoint of 100,000 small tensors has as many)
    flat = [(d.file, d.offset + d.storage_offset * size, e, d, f, n, size)
            for e in entries if readable(e) for size in (dtypes.itemsize(e.dtype),)
            for d, f, n in _segments(e) if n > 0]
    flat.sort(key=_FILE_AND_START)
    windows: list[_Window] = []
    cur: _Window | None = None
    for _, start, e, data, base, numel, size in flat:
        length = numel * size
        if length > chunk_bytes:
            per = max(chunk_bytes // size, 1)
            for first in range(0, numel, per):
                count = min(per, numel - first)
                w = _Window(data.file, start + first * size, count * size)
                w.pieces.append((e, base + first, 0, count))
                windows.append(w)
            cur = None
            continue
        if (cur is None or cur.file != data.file or start < cur.offset
                or start > cur.offset + cur.length + _GAP
                or start + length - cur.offset > chunk_bytes):
            cur = _Window(data.file, start, length)
            windows.append(cur)
        cur.length = max(cur.length, start + length - cur.offset)
        cur.pieces.append((e, base, start - cur.offset, numel))
    return windows


class _Files:
    """The files one pass reads, each opened once."""

    def __init__(self) -> None:
        self.fds: dict[str, int] = {}

    def fd(self, file: str) -> int:
        fd = self.fds.get(file)
        if fd is None:
            from bufinspect.formats._files import open_fd

            fd = self.fds[file] = open_fd(file)  # a regular file (never blocks on a FIFO)
        return fd

    def read_into(self, w: _Window, buf: mmap.mmap) -> None:
        view = memoryview(buf)[: w.length]
        try:
            _pread(self.fd(w.file), view, w.offset, w.file)
        finally:
            view.release()

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)


def pieces(entries: Iterable[Entry], chunk_bytes: int = CHUNK_BYTES, *, prefetch: bool = True,
           raw: bool = False) -> Iterator[tuple[Entry, int, np.ndarray | memoryview]]:
    """Yield every readable entry's elements as (entry, first element, 1-D view) in file order.

    With `prefetch` a reader thread fills the next buffer while the caller works on this one;
    without it each chunk is read in line, into one buffer, right before it is yielded: the
    bytes are then still in this core's cache when the caller reduces them (the stats pass
    measured 1.7x less CPU time that way, 2 MiB chunks, on the 2-core machine here).
    With `raw` the views are memoryviews of the buffer's bytes (strided entries still come as
    numpy arrays): the fused kernel takes them as they are, and a pass that needs nothing else
    never imports numpy.
    """
    entries = list(entries)
    windows = plan(entries, chunk_bytes)
    files = _Files()
    buffers = [mmap.mmap(-1, chunk_bytes) for _ in range(2 if prefetch else 1)]
    try:
        if prefetch:
            with ThreadPoolExecutor(1) as pool:
                pending = pool.submit(files.read_into, windows[0], buffers[0]) if windows else None
                for i, w in enumerate(windows):
                    pending.result()
                    if i + 1 < len(windows):
                        pending = pool.submit(files.read_into, windows[i + 1],
                                              buffers[(i + 1) % 2])
                    yield from _window_pieces(w, buffers[i % 2], raw)
        else:
            for w in windows:
                files.read_into(w, buffers[0])
                yield from _window_pieces(w, buffers[0], raw)
        yield from _strided(entries, files)
    finally:
        files.close()
        for b in buffers:
            try:
                b.close()
            except BufferError:  # a consumer still holds a view; the GC frees it later
                pass


def _window_pieces(w: _Window, buf: mmap.mmap, raw: bool = False
                   ) -> Iterator[tuple[Entry, int, np.ndarray | memoryview]]:
    if raw:
        mv = memoryview(buf)
        for e, first, off, count in w.pieces:
            yield e, first, mv[off: off + count * dtypes.itemsize(e.dtype)]
        return
    for e, first, off, count in w.pieces:
        dt = np.dtype(dtypes.DTYPES[e.dtype].numpy)
        yield e, first, np.frombuffer(buf, dt, count, off)


def _strided(entries: list[Entry], files: _Files) -> Iterator[tuple[Entry, int, np.ndarray]]:
    """Non-contiguous views (rare in checkpoints): read the span they cover, one at a time."""
    for e in entries:
        if not readable(e) or e.data.stride is None or e.data.parts:
            continue
        size = dtypes.itemsize(e.dtype)
        span = (sum((n - 1) * s for n, s in zip(e.shape, e.data.stride)) + 1) * size
        w = _Window(e.data.file, e.data.offset + e.data.storage_offset * size, span)
        buf = mmap.mmap(-1, max(span, 1))
        files.read_into(w, buf)
        dt = np.dtype(dtypes.DTYPES[e.dtype].numpy)
        base = np.frombuffer(buf, dt, span // size)
        view = np.lib.stride_tricks.as_strided(
            base, e.shape, tuple(s * dt.itemsize for s in e.data.stride))
        yield e, 0, np.ascontiguousarray(view).reshape(-1)
        del base, view


def read_scalars(entries: Iterable[Entry]) -> list[int | bool]:
    """The values of one-element integer or bool tensors (e.g. `num_batches_tracked`): one
    pread each, each file opened once, no numpy."""
    files = _Files()
    out: list[int | bool] = []
    try:
        for e in entries:
            kind = dtypes.DTYPES[e.dtype].kind
            assert e.numel == 1 and kind in ("int", "uint", "bool") and e.data is not None
            data, _, _ = _segments(e)[0] if e.data.parts else (e.data, 0, 1)
            start, size = _byte_range(data, e.dtype, 1)
            raw = bytearray(size)
            _pread(files.fd(data.file), memoryview(raw), start, data.file)
            value = int.from_bytes(raw, "little", signed=kind == "int")
            out.append(bool(value) if kind == "bool" else value)
    finally:
        files.close()
    return out


def read_array(e: Entry) -> np.ndarray:
    """One entry's elements, in the tensor's C order, as a new 1-D array (whole in memory: for
    small tensors, and the rare pairs that cannot stream in step)."""
    out = np.empty(e.numel, np.dtype(dtypes.DTYPES[e.dtype].numpy))
    boxes = e.data.part_boxes if e.data is not None else ()
    if not boxes:
        for _, first, arr in pieces([e]):
            out[first: first + arr.size] = arr
        return out
    parts = {}  # first element of each part -> (box, element count)
    acc = 0
    for (offsets, sizes), n in zip(boxes, e.data.part_numels):
        parts[acc] = (tuple(slice(o, o + k) for o, k in zip(offsets, sizes)), n)
        acc += n
    whole = out.reshape(e.shape)
    filling: dict[int, tuple[np.ndarray, int]] = {}
    for _, first, arr in pieces([e]):  # a part may arrive in several pieces
        base = max(k for k in parts if k <= first)
        box, n = parts[base]
        buf, got = filling.get(base) or (np.empty(n, out.dtype), 0)
        buf[first - base: first - base + arr.size] = arr
        got += arr.size
        if got == n:
            whole[box] = buf.reshape(whole[box].shape)
            filling.pop(base, None)
        else:
            filling[base] = (buf, got)
    return out


# ---- paired streaming (diff) ---------------------------------------------------------------

_IOV_MAX = 512
_SLOT_ALIGN = 64


@dataclass
class PairChunk:
    """One step of `paired_chunks`: both sides' bytes, laid out identically.

    `equal` says whether the step is byte-identical (padding between slots zeroed on both
    sides). `items` holds `(pair index, first element, element count, a, b)` with 1-D views in
    the entries' element dtype. Views are valid only until the next step is taken. With
    `skip_equal`, an identical step may come with `None` for the arrays.
    """

    items: list[tuple[int, int, int, np.ndarray | None, np.ndarray | None]]
    equal: bool  # every byte of the step is the same on both sides


def _streamable(e: Entry) -> bool:
    """Byte ranges bufinspect can stream in step: one plain range, or parts (DCP chunks); not a
    strided view."""
    return readable(e) and (e.data.stride is None or bool(e.data.parts))


def _pairable(a: Entry, b: Entry) -> bool:
    """Both sides stream in step element for element: their pieces follow the tensor's C order,
    or both are chunked the same way (then chunk k of A meets chunk k of B)."""
    return (_streamable(a) and _streamable(b)
            and a.data.part_boxes == b.data.part_boxes)


# one step's piece of a pair: (pair index, first element, slot in the step's buffers, count,
# A's file, A's byte offset, B's file, B's byte offset)
Piece = tuple[int, int, int, int, str, int, str, int]


def _pair_ranges(a: Entry, b: Entry) -> list[tuple[int, int, str, int, str, int]]:
    """(first element, count, A's file, A's offset, B's file, B's offset) runs that are
    contiguous on both sides: the union of both sides' part boundaries."""
    size = dtypes.itemsize(a.dtype)
    sa, sb = _segments(a), _segments(b)
    out = []
    i = j = 0
    pos = 0
    while i < len(sa) and j < len(sb):
        (da, fa, na), (db, fb, nb) = sa[i], sb[j]
        end = min(fa + na, fb + nb)
        if end > pos:
            oa = _byte_range(da, a.dtype, na)[0] + (pos - fa) * size
            ob = _byte_range(db, b.dtype, nb)[0] + (pos - fb) * size
            out.append((pos, end - pos, da.file, oa, db.file, ob))
            pos = end
        if fa + na == end:
            i += 1
        if fb + nb == end:
            j += 1
    return out


def pair_batches(pairs: list[tuple[Entry, Entry]], chunk_bytes: int = CHUNK_BYTES
                 ) -> list[list[Piece]]:
    """The steps of a paired sweep, in A's file order: small pieces packed together into one
    step, large ones cut into chunks of at most `chunk_bytes`.

    Pairs whose parts (DCP chunks) differ in layout are cut where either side's parts end, so
    every piece is one plain byte range on both sides. Strided views are left out (see
    `paired_chunks`). A pair's pieces depend only on that pair, so any subset of the steps (one
    worker's share, one rank's) yields the same pieces.
    """
    ranges = []
    for i, (a, b) in enumerate(pairs):
        if _pairable(a, b):
            ranges.extend((i, *r) for r in _pair_ranges(a, b))
    ranges.sort(key=lambda r: (r[3], r[4]))
    batches: list[list[Piece]] = []
    cur: list[Piece] = []
    used = 0
    for i, first, count, fa, oa, fb, ob in ranges:
        size = dtypes.itemsize(pairs[i][0].dtype)
        nbytes = count * size
        if nbytes > chunk_bytes // 4:
            per = max(chunk_bytes // size, 1)
            for k in range(0, count, per):
                batches.append([(i, first + k, 0, min(per, count - k), fa, oa + k * size, fb,
                                 ob + k * size)])
            continue
        slot = -(-used // _SLOT_ALIGN) * _SLOT_ALIGN
        if cur and (slot + nbytes > chunk_bytes or len(cur) >= _IOV_MAX // 2):
            batches.append(cur)
            cur, slot = [], 0
        cur.append((i, first, slot, count, fa, oa, fb, ob))
        used = slot + nbytes
    if cur:
        batches.append(cur)
    return batches


def _read_side(files: _Files, spans: list[tuple[str, int, int, int]], buf: mmap.mmap,
               scratch: mmap.mmap) -> None:
    """Read (file, file offset, slot, nbytes) spans into `buf`, one preadv per run of nearby
    spans (gaps land in `scratch`)."""
    spans = sorted(spans, key=lambda s: (s[0], s[1]))
    mv, sc = memoryview(buf), memoryview(scratch)
    i = 0
    while i < len(spans):
        file, start, slot, n = spans[i]
        iov = [mv[slot: slot + n]]
        end = start + n
        j = i + 1
        while (j < len(spans) and spans[j][0] == file and end <= spans[j][1] <= end + _GAP
               and len(iov) < _IOV_MAX - 2):
            _, off, s2, n2 = spans[j]
            if off > end:
                iov.append(sc[: off - end])
            iov.append(mv[s2: s2 + n2])
            end = off + n2
            j += 1
        fd = files.fd(file)
        want, got, pos = end - start, 0, start
        while got < want:
            k = os.preadv(fd, iov, pos)
            if k <= 0:
                raise InputError("file ends inside tensor data (truncated or changed while "
                                 "reading?)", file)
            got += k
            pos += k
            while iov and k >= len(iov[0]):  # drop what is filled, keep the rest of a partial
                k -= len(iov[0])
                iov.pop(0)
            if k:
                iov[0] = iov[0][k:]
        i = j
    mv.release()
    sc.release()


_SUB = 1 << 20  # sub-block for identical data (1 MiB: fewer calls beat L2 residency here)
# Reads start at a file offset rounded down to this: the kernel's copy from the page cache ran
# ~3x slower here from offsets that are only 4-byte aligned (safetensors data often is).
_ALIGN = 64
_memcmp = None


def _libc_memcmp():
    """libc's memcmp through ctypes (called without the GIL), or False where there is none."""
    global _memcmp
    if _memcmp is None:
        try:
            import ctypes

            fn = ctypes.CDLL(None).memcmp
            fn.restype = ctypes.c_int
            fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
            _memcmp = fn
        except (OSError, AttributeError):  # no libc to call: numpy it is
            _memcmp = False
    return _memcmp


class _Buffer:
    """A page-aligned anonymous buffer and its address, for memcmp without numpy."""

    def __init__(self, size: int) -> None:
        self.map = mmap.mmap(-1, size)
        self._pin = None
        self.addr = 0
        if _libc_memcmp():
            import ctypes

            self._pin = ctypes.c_char.from_buffer(self.map)
            self.addr = ctypes.addressof(self._pin)

    def close(self) -> None:
        self._pin = None
        try:
            self.map.close()
        except BufferError:  # a consumer still holds a view; the GC frees it later
            pass


def _same(a: _Buffer, a_off: int, b: _Buffer, b_off: int, n: int) -> bool:
    """n bytes at a_off in a equal n bytes at b_off in b."""
    fn = _libc_memcmp()
    if fn:
        return fn(a.addr + a_off, b.addr + b_off, n) == 0
    return same_bytes(np.frombuffer(a.map, np.uint8, n, a_off),
                      np.frombuffer(b.map, np.uint8, n, b_off))


def same_bytes(a: np.ndarray, b: np.ndarray) -> bool:
    """True when two arrays hold the same bytes: libc memcmp without the GIL and without a
    temporary (numpy's array_equal builds a bool array per call, whose page faults cost more
    than the compare)."""
    if a.nbytes != b.nbytes:
        return False
    fn = _libc_memcmp()
    if fn and a.flags.c_contiguous and b.flags.c_contiguous:
        return fn(a.ctypes.data, b.ctypes.data, a.nbytes) == 0
    return bool(np.array_equal(a.reshape(-1).view(np.uint8), b.reshape(-1).view(np.uint8)))


def _pread(fd: int, view: memoryview, pos: int, file: str) -> None:
    got = 0
    while got < len(view):
        n = os.preadv(fd, [view[got:]], pos + got)
        if n <= 0:
            raise InputError("file ends inside tensor data (truncated or changed while "
                             "reading?)", file)
        got += n


def paired_chunks(pairs: list[tuple[Entry, Entry]], chunk_bytes: int = CHUNK_BYTES, *,
                  skip_equal: bool = False,
                  batches: Iterable[list[Piece]] | None = None,
                  rest: bool = True) -> Iterator[PairChunk]:
    """Stream pairs of entries with the same dtype and element count in step, chunk by chunk.

    Each step (both sides) is read into two reusable page-aligned buffers and compared with
    memcmp: `PairChunk.equal` says whether the whole step is byte-identical, so the caller only
    looks closer at steps that differ. Runs of nearby tensors are read with one `preadv` each.
    Tensors stored in parts (DCP chunks) stream like any other, cut where either side's parts
    end. Strided views (rare: a saved view of a larger storage) are read whole, one pair at a
    time, at the end. Peak memory is about `2 * chunk_bytes` whatever the checkpoints' sizes.

    With `skip_equal`, identical steps come with `equal=True` and `None` for the raw views and
    the arrays, and cost no numpy (the compare is libc memcmp on the buffers' addresses); a step
    that is one piece of a large tensor is first read and compared in 1 MiB sub-blocks through
    two small buffers that stay in the CPU's caches, and read again whole only if they differ.
    Identical data then costs 1.3-1.8x what `cat` costs here (one thread), instead of ~2.5x when
    filling the big buffers.

    `batches` (steps from `pair_batches`, default: all of them; any iterable, e.g. a queue the
    workers of one sweep share, each with its own buffers); `rest=False` leaves out the strided
    pairs.

    Reads of large pieces start at a 64-byte aligned file offset (the views start a few bytes
    into the buffer). No reader thread: the caller has nothing to do for identical steps, and on
    the 2-core machine here a reader thread (or two) measured 1.3-1.7x slower than reading in
    line.
    """
    if batches is None:
        batches = pair_batches(pairs, chunk_bytes)
    files = _Files()
    bufs = [_Buffer(chunk_bytes + _ALIGN) for _ in range(2)]
    hot = [_Buffer(_SUB + _ALIGN) for _ in range(2)]
    scratch = mmap.mmap(-1, _GAP)  # gap bytes land here; nobody reads them
    fd = files.fd

    def spans(batch: list[Piece], side: int) -> list[tuple[str, int, int, int]]:
        """(file, byte offset, slot, nbytes) of each piece on one side."""
        return [(p[4 + 2 * side], p[5 + 2 * side], p[2],
                 p[3] * dtypes.itemsize(pairs[p[0]][0].dtype)) for p in batch]

    def same_in_cache(sa, sb, start: int = 0) -> bool:
        (fa, pa, _, n), (fb, pb, _, _) = sa, sb
        da, db = pa % _ALIGN, pb % _ALIGN
        ha, hb = memoryview(hot[0].map), memoryview(hot[1].map)
        try:
            for off in range(start, n, _SUB):
                m = min(_SUB, n - off)
                _pread(fd(fa), ha[: da + m], pa + off - da, fa)
                _pread(fd(fb), hb[: db + m], pb + off - db, fb)
                if not _same(hot[0], da, hot[1], db, m):
                    return False
            return True
        finally:
            ha.release()
            hb.release()

    def load(batch) -> tuple[bool | None, int, int, int]:
        """Fill the big buffers with the step: (equal, where A's bytes start, where B's start,
        bytes used); equal is None when the step was skipped as identical."""
        ba, bb = bufs
        if len(batch) == 1:  # one piece of one tensor
            sa, sb = spans(batch, 0)[0], spans(batch, 1)[0]
            n = sa[3]
            da, db = sa[1] % _ALIGN, sb[1] % _ALIGN
            ma, mb = memoryview(ba.map), memoryview(bb.map)
            try:
                head = 0
                if skip_equal:  # the first sub-block goes straight into the big buffers:
                    head = min(_SUB, n)  # when it differs (every tensor changed, as between
                    _pread(fd(sa[0]), ma[: da + head], sa[1] - da, sa[0])  # two training
                    _pread(fd(sb[0]), mb[: db + head], sb[1] - db, sb[0])  # steps) nothing
                    if _same(ba, da, bb, db, head):  # is read twice
                        if same_in_cache(sa, sb, head):
                            return None, 0, 0, 0
                        head = 0  # a later sub-block differs: read the step whole
                _pread(fd(sa[0]), ma[da + head: da + n], sa[1] + head, sa[0])
                _pread(fd(sb[0]), mb[db + head: db + n], sb[1] + head, sb[0])
            finally:
                ma.release()
                mb.release()
            return _same(ba, da, bb, db, n), da, db, n
        for side, buf in ((0, ba), (1, bb)):
            _read_side(files, spans(batch, side), buf.map, scratch)
            prev = 0
            for i, _, slot, count, *_ in batch:  # zero the padding: compares stay exact
                if slot > prev:
                    buf.map[prev:slot] = bytes(slot - prev)
                prev = slot + count * dtypes.itemsize(pairs[i][0].dtype)
        return _same(ba, 0, bb, 0, prev), 0, 0, prev

    try:
        for batch in batches:
            equal, da, db, end = load(batch)
            if equal is None or (equal and skip_equal):  # nothing kept: numpy not needed
                yield PairChunk([(p[0], p[1], p[3], None, None) for p in batch], True)
                continue
            ba, bb = bufs[0].map, bufs[1].map
            items = []
            for i, first, slot, count, *_ in batch:
                dt = np.dtype(dtypes.DTYPES[pairs[i][0].dtype].numpy)
                items.append((i, first, count, np.frombuffer(ba, dt, count, slot + da),
                              np.frombuffer(bb, dt, count, slot + db)))
            yield PairChunk(items, equal)
            del items
        for idx, (a, b) in enumerate(pairs):
            if rest and readable(a) and readable(b) and not _pairable(a, b):
                va, vb = read_array(a), read_array(b)
                yield PairChunk([(idx, 0, va.size, va, vb)], same_bytes(va, vb))
    finally:
        files.close()
        scratch.close()
        for buf in bufs + hot:
            buf.close()
