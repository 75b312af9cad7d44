"""torch is an extra (`bufinspect[torch]`): the one place that asks for it.

`show`, `diff`, `check`, `trend` and `bufinspect.load` read checkpoints with numpy alone, so
`pip install bufinspect` brings no torch (a CUDA build of torch is gigabytes). What runs torch
code asks for it here: GPU kernels (`--device cuda`), `--model` and `annotate`, `--hf-config`,
`bufinspect.save`, and torch.distributed ranks. Without torch each of those is a `UsageError`:
one line that names the extra, exit 2.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Any

from bufinspect.errors import UsageError

INSTALL = "pip install 'bufinspect[torch]'"

_noted = False  # the CPU note is said once per process


def installed() -> bool:
    """True when torch can be found, without importing it (the import costs seconds)."""
    if "torch" in sys.modules:
        return sys.modules["torch"] is not None  # None: imports of torch are blocked
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        return False


def require(feature: str, path: str | None = None) -> Any:
    """Import and return torch; without it raise `UsageError` naming `feature` and the extra."""
    try:
        import torch
    except ImportError:
        raise UsageError(f"{feature} needs torch, which is not installed: {INSTALL}",
                         path) from None
    return torch


def gpu_present() -> bool:
    """True when a GPU driver exposes a device here (NVIDIA or AMD ROCm).

    Cheap: a few stat calls, no torch import and no subprocess (`nvidia-smi` alone takes ~0.1 s).
    `CUDA_VISIBLE_DEVICES` set to "" or "-1" hides every GPU, as it does for torch.
    """
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    try:
        if os.listdir("/proc/driver/nvidia/gpus"):
            return True
    except OSError:
        pass
    return any(os.path.exists(p) for p in ("/dev/nvidia0", "/dev/nvidiactl", "/dev/kfd"))


def cpu_note(device: str, command: str) -> str | None:
    """The one-time note for `--device auto` on a machine whose GPU goes unused for want of
    torch (None when there is nothing to say, or when it was said already)."""
    global _noted
    if _noted or device != "auto" or installed() or not gpu_present():
        return None
    _noted = True
    unchecked = (" and saved cuda:N devices were not checked against this machine's GPUs"
                 if command == "check" else "")
    return (f"{command} ran on the CPU: a GPU is present but torch is not installed{unchecked}; "
            f"{INSTALL} to use the GPU")
