"""The one place that writes files the user asked for: `diff --save-metrics`, `trend --plot`,
`annotate` sidecars and rewritten safetensors headers (`formats.role_metadata`)."""

from __future__ import annotations


def save_text(path: str, text: str) -> None:
    """Write `text` (UTF-8) to `path`."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def save_bytes(path: str, data: bytes) -> None:
    """Write `data` to `path`."""
    with open(path, "wb") as f:
        f.write(data)
