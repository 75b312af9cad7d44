"""Streaming tensor bytes: file order, a few reusable page-aligned buffers, one reader thread.

`pieces(entries)` yields `(entry, first_element, array)` where `array` is a 1-D numpy view of the
raw elements (bfloat16 and float8 as unsigned integers: see `bufinspect.numeric.as_float`). A view
is only valid until the next item is taken: consumers reduce it and let it go. Peak memory is
`buffers * chunk_bytes` whatever the checkpoint's size. Small tensors that sit close together in
the file share one read; large ones are cut into chunks.
"""

from __future__ import annotations

import mmap
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np

from bufinspect import dtypes
from bufinspect.errors import InputError
from bufinspect.model import Entry, TensorData

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


def plan(entries: Iterable[Entry], chunk_bytes: int = CHUNK_BYTES) -> list[_Window]:
    """Group the entries' byte ranges into reads of at most `chunk_bytes`, in file order."""
    flat = [(e, d, f, n) for e in entries if readable(e) for d, f, n in _segments(e) if n > 0]
    flat.sort(key=lambda t: (t[1].file, _byte_range(t[1], t[0].dtype, t[3])[0]))
    windows: list[_Window] = []
    cur: _Window | None = None
    for e, data, base, numel in flat:
        start, length = _byte_range(data, e.dtype, numel)
        size = dtypes.itemsize(e.dtype)
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
    def __init__(self) -> None:
        self.fds: dict[str, int] = {}

    def read_into(self, w: _Window, buf: mmap.mmap) -> None:
        fd = self.fds.get(w.file)
        if fd is None:
            fd = self.fds[w.file] = os.open(w.file, os.O_RDONLY)
        view = memoryview(buf)[: w.length]
        got = 0
        while got < w.length:
            n = os.preadv(fd, [view[got:]], w.offset + got)
            if n <= 0:
                raise InputError("file ends inside tensor data (truncated or changed while "
                                 "reading?)", w.file)
            got += n
        view.release()

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)


def pieces(entries: Iterable[Entry], chunk_bytes: int = CHUNK_BYTES
           ) -> Iterator[tuple[Entry, int, np.ndarray]]:
    """Yield every readable entry's elements as (entry, first element, 1-D view) in file order."""
    entries = list(entries)
    windows = plan(entries, chunk_bytes)
    files = _Files()
    buffers = [mmap.mmap(-1, chunk_bytes) for _ in range(2)]
    try:
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(files.read_into, windows[0], buffers[0]) if windows else None
            for i, w in enumerate(windows):
                pending.result()
                if i + 1 < len(windows):
                    pending = pool.submit(files.read_into, windows[i + 1], buffers[(i + 1) % 2])
                buf = buffers[i % 2]
                for e, first, off, count in w.pieces:
                    dt = np.dtype(dtypes.DTYPES[e.dtype].numpy)
                    yield e, first, np.frombuffer(buf, dt, count, off)
        yield from _strided(entries, files)
    finally:
        files.close()
        for b in buffers:
            try:
                b.close()
            except BufferError:  # a consumer still holds a view; the GC frees it later
                pass


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


def read_array(e: Entry) -> np.ndarray:
    """One entry's elements as a new 1-D array (for small tensors: tests, integer buffers)."""
    out = np.empty(e.numel, np.dtype(dtypes.DTYPES[e.dtype].numpy))
    for _, first, arr in pieces([e]):
        out[first: first + arr.size] = arr
    return out
