"""Where numeric work can run: the one rule for finding a usable CUDA GPU.

`gpu_may_exist` is a cheap look for device nodes, so that a machine without a GPU never pays for
importing torch (seconds); only when it says yes is torch asked. `check`, `diff` and `trend`
all decide through `resolve_device`.
"""

from __future__ import annotations

from bufinspect import _torch
from bufinspect.errors import UsageError

DEVICES = ("auto", "cpu", "cuda")


def gpu_may_exist() -> bool:
    """Cheap test before importing torch: no NVIDIA/AMD device node means no GPU."""
    return _torch.gpu_present()


def cuda_available() -> bool:
    """True when torch can use a CUDA GPU here; torch is imported only if a GPU may exist."""
    if not gpu_may_exist():
        return False
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def cuda_device_count() -> int:
    import torch

    return torch.cuda.device_count()


def resolve_device(device: str) -> str:
    """`auto` -> `cuda:0` when a GPU is usable, else `cpu`; `cuda` without one is a usage error."""
    if device not in DEVICES:
        raise UsageError(f"--device must be auto, cpu or cuda (got {device!r})")
    if device == "cpu":
        return "cpu"
    if device == "cuda":
        _torch.require("--device cuda")
    if cuda_available():
        return "cuda:0"
    if device == "cuda":
        raise UsageError("--device cuda: no CUDA GPU is available here (torch.cuda.is_available() "
                         "is False); use --device cpu or auto")
    return "cpu"
