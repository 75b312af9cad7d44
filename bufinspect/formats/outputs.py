"""The one place that writes files the user asked for: `diff --save-metrics`, `trend --plot`,
`annotate` sidecars and rewritten safetensors headers (`formats.role_metadata`).

Every write goes through `formats.write.write_atomic`: an output may not be (or lie inside) an
input, is never written through a symlink, and lands by an exclusive temp file in its own folder
and one rename."""

from __future__ import annotations

from typing import Iterable

from bufinspect.formats.write import check_output, files_of, write_atomic  # noqa: F401


def save_text(path: str, text: str, *, inputs: Iterable[str] = ()) -> None:
    """Write `text` (UTF-8) to `path`, never over one of `inputs` (see `formats.write`)."""
    write_atomic(path, text, inputs=inputs)


def save_bytes(path: str, data: bytes, *, inputs: Iterable[str] = ()) -> None:
    """Write `data` to `path`, never over one of `inputs` (see `formats.write`)."""
    write_atomic(path, data, inputs=inputs)
