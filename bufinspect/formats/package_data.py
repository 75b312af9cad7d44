"""Data files shipped inside the package (`bufinspect/data/`, `bufinspect/schema/`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PACKAGE = Path(__file__).resolve().parent.parent
LAYER_TABLE = PACKAGE / "data" / "layers.json"


def read_json(path: Path) -> Any:
    """A shipped JSON file, parsed."""
    return json.loads(path.read_text(encoding="utf-8"))
