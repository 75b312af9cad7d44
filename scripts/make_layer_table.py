"""Regenerate bufinspect/data/layers.json from the installed torch (run after a torch upgrade).

    python scripts/make_layer_table.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import layer_table  # noqa: E402  (scripts/layer_table.py: build-time only, not shipped)


def main() -> None:
    table = layer_table.introspect()
    out = ROOT / "bufinspect" / "data" / "layers.json"
    out.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    print(f"{out}: {len(table['signatures'])} signatures from torch {table['torch']}")


if __name__ == "__main__":
    main()
