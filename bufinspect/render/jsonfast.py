"""`json.dumps(doc, indent=2, allow_nan=False)`, byte for byte, at several times its speed.

With an indent, CPython (before 3.14) encodes through its pure-Python `_make_iterencode`: about
17 us per entry of a `show` document, the largest single cost of listing 100,000 tensors. Here
strings go through the C string encoder (`json.encoder.encode_basestring_ascii`, what
`ensure_ascii=True` uses), numbers through the same `int.__repr__` / `float.__repr__` json uses,
and the indented layout is assembled with string joins, one call per container. A dict whose
values are all scalars (an entry's stats, say) is laid out in one join.

Anything json would treat differently (a key that is not a str, an unknown type, a NaN or an
infinity) is left to `json.dumps` itself, so the result is always what it would give:
ValueError for a non-finite float, TypeError for an object it cannot encode.
tests/test_jsonfast.py compares the bytes on real reports and on generated documents.
"""

from __future__ import annotations

import json
from json.encoder import encode_basestring_ascii as _string
from typing import Any, Iterator

_INF = float("inf")
_float = float.__repr__
_int = int.__repr__


class _Unusual(Exception):
    """Something json.dumps must decide (and word its own error for)."""


def dumps(doc: Any) -> str:
    """`json.dumps(doc, indent=2, allow_nan=False)`."""
    try:
        return _value(doc, "\n")
    except (_Unusual, RecursionError):
        return json.dumps(doc, indent=2, allow_nan=False)


def _value(v: Any, nl: str) -> str:
    """`v` laid out as json.dumps(indent=2) lays it out when it starts a line at `nl`
    (newline + the current indent)."""
    t = type(v)
    if t is str:
        return _string(v)
    if t is int:
        return _int(v)
    if t is float:
        if v != v or v == _INF or v == -_INF:
            raise _Unusual
        return _float(v)
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if t is dict:
        if not v:
            return "{}"
        layout = _LAYOUTS.get((tuple(v), tuple(map(type, v.values())), nl))
        if layout is None:
            layout = _layout(v, nl)
        fmt, encoders, inner = layout
        return fmt % tuple([_value(x, inner) if f is None else f(x)
                            for f, x in zip(encoders, v.values())])
    if t is list or t is tuple:
        if not v:
            return "[]"
        inner = nl + "  "
        kinds = set(map(type, v))
        if len(kinds) == 1 and (kind := kinds.pop()) in _PLAIN:  # a shape: all ints, say
            return "[" + inner + ("," + inner).join(map(_PLAIN[kind], v)) + nl + "]"
        return "[" + inner + ("," + inner).join([_value(x, inner) for x in v]) + nl + "]"
    raise _Unusual  # subclasses and unknown types: json.dumps decides


def _finite(x: float) -> str:
    if x != x or x == _INF or x == -_INF:
        raise _Unusual
    return _float(x)


_SCALARS = {str: _string, int: _int, float: _finite, type(None): lambda _: "null",
            bool: lambda x: "true" if x else "false"}
_PLAIN = {str: _string, int: _int}  # types whose every value encodes without a check
# (keys, value types, indent) -> (%-format of the laid-out dict, per value its encoder or None
# for a container, the indent of its values): a report repeats a few dict shapes many times
_LAYOUTS: dict[tuple, tuple[str, list, str]] = {}


def _layout(v: dict, nl: str) -> tuple[str, list, str]:
    inner = nl + "  "
    parts, encoders = [], []
    for k, x in v.items():
        if type(k) is not str:
            raise _Unusual  # json converts int/float/bool/None keys: let it
        parts.append(_string(k).replace("%", "%%") + ": %s")
        encoders.append(_SCALARS.get(type(x)))
    layout = ("{" + inner + ("," + inner).join(parts) + nl + "}", encoders, inner)
    if len(_LAYOUTS) < 4096:
        _LAYOUTS[(tuple(v), tuple(map(type, v.values())), nl)] = layout
    return layout


# ---- show documents: entries encoded straight from the Entry objects ---------------------------
#
# `show --format json` of 100,000 tensors spent more in `to_dict` plus the encoder than in
# reading the checkpoint. Entries are flat and all alike, so each is written with one f-string
# from its attributes (strings through the C string encoder), skipping the per-entry dicts. The
# field list is `Entry.to_dict`'s: `_ENTRY_KEYS` is checked against it on every call, and any
# difference (or a value of an unexpected type) falls back to `dumps(report.to_dict())`.

_ENTRY_KEYS = ("container", "key", "module", "name", "role", "persistent", "evidence", "shape",
               "dtype", "device", "numel", "nbytes")
_CONST = {None: "null", True: "true", False: "false"}
_SENTINEL = "\x00entries\x00"


def show_document(report: Any) -> str:
    """`dumps(report.to_dict())` for a `ShowReport`, several times faster on large listings."""
    return "".join(show_chunks(report))


def show_chunks(report: Any) -> Iterator[str]:
    """`show_document(report)` in pieces to write one after another: a 100,000-entry document
    is ~40 MB, and joining it whole (then adding a newline, then encoding it) held several
    copies at once. Everything is encoded, and every error raised, before this returns: the
    pieces are only joined as they are taken."""
    import dataclasses

    from bufinspect.model import summarize

    entries = report.entries
    if not entries or tuple(entries[0].to_dict()) != _ENTRY_KEYS:
        return iter((dumps(report.to_dict()),))
    doc = dataclasses.replace(report, entries=()).to_dict()
    doc["entries"] = _SENTINEL
    doc["summary"] = summarize(entries)
    try:
        texts = _entries(entries, report.stats)
    except _Unusual:
        return iter((dumps(report.to_dict()),))
    head = dumps(doc)
    marker = _string(_SENTINEL)
    if head.count(marker) != 1:  # (a key or path holding the sentinel itself)
        return iter((dumps(report.to_dict()),))
    before, after = head.split(marker)
    return _joined(before + "[\n    ", texts, ",\n    ", "\n  ]" + after)


def _joined(first: str, texts: list[str], sep: str, last: str, per: int = 2048
            ) -> Iterator[str]:
    """`first + sep.join(texts) + last`, in pieces of `per` texts."""
    yield first
    for i in range(0, len(texts), per):
        yield (sep if i else "") + sep.join(texts[i:i + per])
    yield last


class _Encoded(dict):
    """str -> its JSON text, encoded on first use (dtypes, roles, evidence repeat a lot)."""

    def __missing__(self, k: str) -> str:
        if type(k) is not str:
            raise _Unusual
        v = self[k] = _string(k)
        return v


def _entries(entries, stats) -> list[str]:
    """The items of a show document's `entries` list, laid out at their place in it.

    Only `key` and `module` differ from entry to entry in a large listing: the text after
    them (name, role, evidence, shape, dtype, device, sizes) is laid out once per distinct
    combination, and its values are validated then (shape dims as ints, as every reader builds
    them; sizes as ints; persistent as None or a bool)."""
    n6 = "\n      "
    enc = _Encoded({None: "null"})
    heads: dict[Any, str] = {}
    tails: dict[tuple, str] = {}
    out = []
    for e in entries:
        container, shape, persistent = e.container, e.shape, e.persistent
        head = heads.get(container)
        if head is None:
            head = heads[container] = f'{{\n      "container": {enc[container]},\n      "key": '
        # (the role object itself, not its value: an unexpected role type falls to `_tail`)
        combo = (e.name, e.role, persistent, e.evidence, shape, e.dtype, e.device, e.numel,
                 e.nbytes)
        tail = tails.get(combo)
        if tail is None:
            tail = tails[combo] = _tail(e, enc)
        text = head + _string(e.key) + ',\n      "module": ' + _string(e.module) + tail
        if stats is not None:
            st = stats.get((e.container, e.key))
            text += ',\n      "stats": ' + ("null" if st is None else _value(st.to_dict(), n6))
        out.append(text + "\n    }")
    return out


def _tail(e: Any, enc: _Encoded) -> str:
    """An entry's fields after `module`, as `_entries` lays them out (validated here)."""
    shape, persistent, numel, nbytes = e.shape, e.persistent, e.numel, e.nbytes
    if type(shape) is not tuple or not all(type(d) is int for d in shape):
        raise _Unusual
    if type(numel) is not int or type(nbytes) is not int or (
            persistent is not None and type(persistent) is not bool):
        raise _Unusual
    shape_text = "[]" if not shape else (
        "[\n        " + ",\n        ".join(map(_int, shape)) + "\n      ]")
    return (f',\n      "name": {enc[e.name]},\n      "role": {enc[e.role.value]},'
            f'\n      "persistent": {_CONST[persistent]},\n      "evidence": {enc[e.evidence]},'
            f'\n      "shape": {shape_text},\n      "dtype": {enc[e.dtype]},\n      "device": '
            f'{enc[e.device]},\n      "numel": {_int(numel)},\n      "nbytes": {_int(nbytes)}')
