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
from typing import Any

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
