"""Regenerate every file in sample_checkpoints/ from real torch.nn modules.

    python sample_checkpoints/make_samples.py

Each file and the facts it must produce are listed in SAMPLES at the bottom; tests read them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.serialization as ser
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from sample_modules import BufferZoo, SmallCNN  # noqa: E402


def train_steps(model: torch.nn.Module, steps: int, seed: int) -> torch.optim.Optimizer:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        x = torch.randn(4, 3, 8, 8, generator=g)
        loss = model(x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return opt


def save_tagged(obj, path: Path, tag: str, pick=lambda storage: True) -> None:
    """torch.save with a chosen location tag for some storages (a 'cuda' file made on CPU).

    Tests use it too, to plant CUDA tags without a GPU.
    """
    orig = ser.location_tag
    ser.location_tag = lambda storage: tag if pick(storage) else orig(storage)
    try:
        torch.save(obj, path)
    finally:
        ser.location_tag = orig


def main() -> None:
    torch.manual_seed(0)
    out = HERE
    cnn = SmallCNN()
    train_steps(cnn, 2, seed=1)
    sd = cnn.state_dict()
    torch.save(sd, out / "cnn_state_dict.pt")
    torch.save(sd, out / "cnn_state_dict_legacy.pt", _use_new_zipfile_serialization=False)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(out / "cnn.safetensors"),
              metadata={"format": "pt", "source": "bufinspect samples"})

    zoo = BufferZoo()
    torch.save(zoo.state_dict(), out / "buffer_zoo_state_dict.pt")
    torch.save(zoo, out / "buffer_zoo_module.pt")

    # a training checkpoint: model + Adam state + scalars
    cnn_t = SmallCNN()
    opt = train_steps(cnn_t, 3, seed=2)
    torch.save({"model": cnn_t.state_dict(), "optimizer": opt.state_dict(), "epoch": 3},
               out / "train_adam.pt")

    # tensors saved "from cuda:1": the BatchNorm statistics, tagged while saving on CPU
    bn_keys = {sd[k].untyped_storage().data_ptr() for k in sd if k.startswith("bn1.")}
    save_tagged(sd, out / "cnn_cuda1.pt", "cuda:1",
                lambda st: st.data_ptr() in bn_keys)

    # before/after pairs for diff: train mode moves running stats, eval mode moves nothing
    base = SmallCNN()
    torch.save(base.state_dict(), out / "bn_before.pt")
    train_steps(base, 3, seed=3)
    torch.save(base.state_dict(), out / "bn_after_train.pt")
    base.eval()
    with torch.no_grad():
        base(torch.randn(2, 3, 8, 8))
    torch.save(base.state_dict(), out / "bn_after_eval.pt")

    total = sum(p.stat().st_size for p in out.iterdir() if p.suffix in (".pt", ".safetensors"))
    print(f"wrote samples: {total} bytes in all")


if __name__ == "__main__":
    os.chdir(HERE)
    main()
