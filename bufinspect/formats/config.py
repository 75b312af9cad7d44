"""`[tool.bufinspect.check]` from the nearest pyproject.toml: the CI policy a repository keeps
beside its checkpoints (parsed into a `Policy` by `analysis.policy`)."""

from __future__ import annotations

import os
from typing import Any

from bufinspect.errors import UsageError

CONFIG_KEYS = ("expect-dtype", "expect-device", "device", "strict", "ignore")


def find_pyproject(start: str | None = None) -> str | None:
    """The nearest pyproject.toml at or above `start` (default: the current directory)."""
    here = os.path.abspath(start or os.getcwd())
    while True:
        cand = os.path.join(here, "pyproject.toml")
        if os.path.isfile(cand):
            return cand
        parent = os.path.dirname(here)
        if parent == here:
            return None
        here = parent


def load_config(path: str | None = None) -> tuple[dict[str, Any], str | None, str | None]:
    """Read `[tool.bufinspect.check]` from the nearest pyproject.toml.

    Returns (settings, the file it came from, a note when the file could not be read). Settings
    use the flag names: `expect-dtype` (string or table role -> dtype), `expect-device`,
    `device`, `strict`, `ignore` (list of ids).
    """
    path = path or find_pyproject()
    if path is None:
        return {}, None, None
    try:
        import tomllib
    except ModuleNotFoundError:  # python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            return {}, path, "pyproject.toml not read (python 3.10 needs the `tomli` package)"
    from bufinspect.formats import _files

    try:
        with _files.open_file(path) as f:  # a regular file only (a FIFO would block)
            doc = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError, RecursionError) as exc:
        raise UsageError(f"cannot read [tool.bufinspect]: {exc}", path) from None
    section = doc.get("tool", {}).get("bufinspect", {}).get("check", {})
    if not isinstance(section, dict):
        raise UsageError("[tool.bufinspect.check] must be a table", path)
    unknown = sorted(set(section) - set(CONFIG_KEYS))
    if unknown:
        raise UsageError(f"[tool.bufinspect.check]: unknown setting(s) {', '.join(unknown)} "
                         f"(known: {', '.join(CONFIG_KEYS)})", path)
    if "ignore" in section and not isinstance(section["ignore"], list):
        raise UsageError("[tool.bufinspect.check] ignore must be a list of finding ids", path)
    if "strict" in section and not isinstance(section["strict"], bool):
        raise UsageError("[tool.bufinspect.check] strict must be true or false", path)
    return section, path, None
