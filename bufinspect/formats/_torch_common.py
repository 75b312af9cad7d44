"""What the zip and legacy torch.save readers share: placing tensors in their storages."""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any, Callable, NoReturn

from bufinspect import dtypes
from bufinspect.errors import InputError, UnsafeInputError
from bufinspect.formats import _prescan, _unpickle
from bufinspect.formats._unpickle import TensorRef
from bufinspect.model import TensorData


_ITEMSIZE = {name: dtypes.itemsize(name) for name in dtypes.DTYPES}  # (0: unknown dtype)
# a view may repeat its storage (stride 0, as `expand` makes) up to this many bytes in all
_MAX_VIEW_BYTES = 1 << 30
_LOCATED = frozenset(("strided", "quantized"))  # layouts whose bytes a storage holds
_UNSEEN = object()


class ViewBudget:
    """Bounds the data passes (`show --stats`, `check`, `diff`) by the bytes a file stores.

    Every entry that points at a storage is charged its logical bytes (numel x itemsize), once
    per place the checkpoint lists it. In all, views may cover at most `_VIEW_FACTOR` times
    the distinct storage bytes plus `_VIEW_SLACK`: tied weights and split views cost 1-3x;
    1000 stride-0 views of one float (a 91 KB file) asked for 3 GB and a timeout, and 40,000
    full views of one 4 MB storage for 160 GB of reads.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.stored = 0
        self.viewed = 0
        self.seen: set[str] = set()

    def charge(self, storage: str, storage_bytes: int, view_bytes: int) -> None:
        if storage not in self.seen:
            self.seen.add(storage)
            self.stored += storage_bytes
        self.viewed += view_bytes
        if self.viewed > _VIEW_FACTOR * self.stored + _VIEW_SLACK:
            views_refused(self.path, self.viewed, self.stored)


def views_refused(path: str, viewed: int, stored: int) -> NoReturn:
    """What a file whose views exceed the budget gets (`ViewBudget`, and the locator's own
    running count of the same budget)."""
    raise InputError(f"tensors view their storages {viewed} bytes' worth, more than "
                     f"{_VIEW_FACTOR}x the {stored} bytes the file stores; refusing it "
                     "(overlapping or stride-0 views)", path)


_VIEW_FACTOR = 16
_VIEW_SLACK = 1 << 30


@lru_cache(maxsize=4096)
def contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, acc = [], 1
    for n in reversed(shape):
        strides.append(acc)
        acc *= max(n, 1)
    return tuple(reversed(strides))


def make_locator(path: str, file: str, storages: Callable[[str], tuple[int, int] | None]
                 ) -> Callable[[TensorRef], TensorData | None]:
    """Return a function mapping a tensor placeholder to where its bytes are in `file`.

    `storages(key)` gives (byte offset, byte length) of a storage, or None if the file lacks it.
    """

    spans: dict[str, tuple[int, int] | None] = {}  # a storage shared by many tensors: one read
    seen: dict[int, TensorData | None] = {}  # a tensor listed many times: its first answer
    keep: list[TensorRef] = []  # every tensor in `seen`, alive: its id is not reused meanwhile
    strides_of: dict[tuple[int, ...], tuple[int, ...]] = {}  # contiguous strides per shape
    # the ViewBudget, kept in two locals: a storage is charged its bytes when it is first
    # resolved (the only time it can be new to the budget), every view its logical bytes
    stored = viewed = 0
    # the per-tensor path (100,000 calls for a large checkpoint) works on locals only
    seen_get, spans_get, strides_get, itemsize_get = seen.get, spans.get, strides_of.get, \
        _ITEMSIZE.get
    prod, located, unseen, limit = math.prod, _LOCATED, _UNSEEN, _VIEW_FACTOR

    def over() -> None:
        views_refused(path, viewed, stored)

    def locate(t: TensorRef) -> TensorData | None:
        nonlocal stored, viewed
        found = seen_get(id(t), unseen)
        if found is not unseen:
            if found is not None:  # listed again: a data pass reads it again
                viewed += t.numel * itemsize_get(t.dtype, 0)
                if viewed > limit * stored + _VIEW_SLACK:
                    over()
            return found
        keep.append(t)
        storage = t.storage
        if storage is None or t.layout not in located:
            seen[id(t)] = None
            return None
        key = storage.key
        where = spans_get(key, unseen)
        new = where is unseen
        if new:
            where = spans[key] = storages(key)
        if where is None:
            raise InputError(f"storage {_unpickle.brief(key)} is missing from the archive", path)
        offset, nbytes = where
        size = itemsize_get(t.dtype, 0)
        shape, stride = t.shape, t.stride
        numel = prod(shape)
        contiguous_stride = strides_get(shape)
        if contiguous_stride is None:
            contiguous_stride = strides_of[shape] = contiguous_strides(shape)
        contiguous = stride == contiguous_stride
        if numel and size:
            last = t.storage_offset + (numel - 1 if contiguous else
                                       sum((n - 1) * s for n, s in zip(shape, stride or ())))
            if (last + 1) * size > nbytes:
                raise InputError(f"a tensor of shape {list(shape)} does not fit in its storage "
                                 f"({nbytes} bytes)", path)
        view = numel * size
        if view > nbytes and view > _MAX_VIEW_BYTES:
            raise InputError(f"a tensor of shape {list(shape)} repeats its {nbytes}-byte "
                             "storage beyond any real checkpoint; refusing it", path)
        if new:
            stored += nbytes
        viewed += view
        if viewed > limit * stored + _VIEW_SLACK:
            over()
        data = seen[id(t)] = TensorData(file, offset, nbytes, t.storage_offset,
                                        None if contiguous else stride)
        return data

    return locate


def refuse_calls(path: str, log: _unpickle.UnpickleLog) -> None:
    """Refuse a pickle that names or calls a code-execution primitive (`_policy`); any other
    call is read (as an inert stub) and reported."""
    refused = _unpickle.refusals(log)
    if refused:
        name, rule, called = refused[0]
        more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
        verb = "asks to call" if called else "names"
        raise UnsafeInputError(f"the pickle {verb} {name}{more}, which {rule.reason}; refusing "
                               "it (nothing was run)", path)


def unpickle(path: str, file: Any, persistent: Callable[[Any], Any]) -> tuple[Any, _unpickle.UnpickleLog]:
    """Run the restricted unpickler, turning every failure into a one-line InputError."""
    try:
        return _unpickle.load(file, persistent)
    except InputError:
        raise
    except _prescan.Refused as exc:
        raise InputError(f"refusing a pickle built to exhaust time or memory: {exc}",
                         path) from None
    except RecursionError:
        raise InputError("the pickle is nested too deeply", path) from None
    except MemoryError:
        raise InputError("the pickle needs more memory than a checkpoint should", path) from None
    except Exception as exc:  # the pickle machine raises many types on corrupt input
        msg = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise InputError(f"corrupt pickle ({msg})", path) from None
