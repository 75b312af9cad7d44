"""Saved diff metrics (`diff --save-metrics FILE`, `--from-metrics FILE`): a bufinspect/1 diff
document with per-entry envelopes, judged again by `analysis.diff.rejudge_report`."""

from __future__ import annotations

from typing import Any, Iterable

from bufinspect.errors import InputError
from bufinspect.model import SCHEMA


def load_metrics(path: str) -> dict[str, Any]:
    """Read a document written by `--save-metrics` (a diff document with envelopes)."""
    import json

    from bufinspect.formats import _files

    try:
        with _files.open_file(path) as f:  # a regular file only (a FIFO would block)
            doc = json.loads(f.read().decode("utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"not a bufinspect metrics file ({exc.msg})", path) from None
    except UnicodeDecodeError:
        raise InputError("not a bufinspect metrics file (not UTF-8 text)", path) from None
    except RecursionError:  # JSON nested 100,000 deep
        raise InputError("not a bufinspect metrics file (JSON nested too deeply)", path) \
            from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA or doc.get("command") != "diff" \
            or not isinstance(doc.get("entries"), list):
        raise InputError("not a bufinspect metrics file (expected a bufinspect/1 diff document "
                         "written by --save-metrics)", path)
    return doc


def write_metrics(text: str, path: str, *, inputs: Iterable[str] = ()) -> None:
    """Write the metrics document (already rendered as JSON text) to `path`, never over one of
    the `inputs` (the checkpoints compared)."""
    from bufinspect.formats.write import write_atomic

    write_atomic(path, text + "\n", inputs=inputs)
