"""Checkpoints with many tensors (mixture-of-experts style): `make(out, n, kind)` writes `n`
small tensors named like an MoE model's (`model.layers.L.mlp.experts.E.{w1,w2,w3}.weight`, norms)
as one `.pt`, one `.safetensors`, or a 50-shard safetensors folder with an index."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def state(n: int):
    import torch

    sd = {}
    names = ("mlp.experts.{e}.w1.weight", "mlp.experts.{e}.w2.weight",
             "mlp.experts.{e}.w3.weight", "mlp.experts.{e}.norm.weight")
    i = 0
    while len(sd) < n:
        layer, rest = divmod(i, 256 * len(names))
        e, k = divmod(rest, len(names))
        sd[f"model.layers.{layer}.{names[k].format(e=e)}"] = torch.full((4, 4), float(i % 7))
        i += 1
    return sd


def make(out: Path, n: int, kind: str) -> Path:
    import torch
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    target = out / f"many_{n}.{ {'pt': 'pt', 'st': 'safetensors', 'shards': 'shards'}[kind] }"
    if target.exists():
        return target
    sd = state(n)
    if kind == "pt":
        torch.save(sd, target)
    elif kind == "st":
        save_file(sd, str(target))
    else:
        target.mkdir()
        keys = list(sd)
        per = -(-len(keys) // 50)
        weight_map = {}
        for j in range(50):
            name = f"model-{j + 1:05d}-of-00050.safetensors"
            part = {k: sd[k] for k in keys[j * per:(j + 1) * per]}
            save_file(part, str(target / name), metadata={"format": "pt"})
            weight_map.update({k: name for k in part})
        (target / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": sum(t.nbytes for t in sd.values())},
             "weight_map": weight_map}))
    return target


if __name__ == "__main__":  # python _many.py OUT N pt|st|shards
    print(make(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]))
