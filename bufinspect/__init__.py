"""bufinspect: which tensors of a PyTorch checkpoint are parameters, which are buffers, and what
changed between two checkpoints.

    >>> import bufinspect
    >>> ck = bufinspect.load("model.pt")
    >>> [e.key for e in ck.entries if e.role is bufinspect.Role.BUFFER]
"""

from __future__ import annotations

from bufinspect.errors import BufinspectError, InputError, UnsafeInputError, UsageError
from bufinspect.model import Checkpoint, Container, Entry, Role, ShowReport

__version__ = "0.1.0"

__all__ = [
    "BufinspectError", "Checkpoint", "Container", "Entry", "InputError", "Role", "ShowReport",
    "UnsafeInputError", "UsageError", "load", "save", "show", "__version__",
]


def load(path: str) -> Checkpoint:
    """Read a checkpoint's metadata and decide every tensor's role, without reading tensor data.

    Args:
        path: a torch.save file (zip or legacy), a `.safetensors` file, or a sharded folder
            (safetensors shards with or without `model.safetensors.index.json`, or a
            torch.distributed.checkpoint folder), read as one checkpoint.

    Returns:
        A `Checkpoint` whose containers hold one `Entry` per tensor, each with its role,
        the evidence that decided it, shape, dtype and the device it was saved from.

    Raises:
        InputError: the file is missing, corrupt, not a checkpoint, or asks to run code.

    Nothing from the file is imported or run, and torch is not imported.
    """
    import gc

    from bufinspect import formats, roles

    # A load allocates several objects per tensor and frees almost none of them, so every
    # collection it triggers rescans the growing graph for nothing: half the time at 50,000
    # tensors. The collector resumes afterwards (a pickle's cycles are collected then).
    enabled = gc.isenabled()
    gc.disable()
    try:
        return roles.assign(formats.read(str(path)))
    finally:
        if enabled:
            gc.enable()


def show(path: str, *, stats: bool = False, **select) -> ShowReport:
    """Load `path` and build the `show` report (`report.to_dict()` is the bufinspect/1 JSON).

    Args:
        path: the checkpoint.
        stats: stream every selected tensor once for min/max/mean/std/NaN/Inf/zeros.
        **select: `containers`, `roles`, `filters` as in `bufinspect.listing.select`, and
            `jobs` (workers for the statistics pass, see `bufinspect.parallel`).
    """
    from bufinspect import listing

    return listing.show(load(path), stats=stats, **select)


def save(model, path: str, metadata: dict[str, str] | None = None) -> str:
    """Save `model`'s weights with their roles, so `bufinspect` reads the roles back exactly.

    Args:
        model: an `nn.Module`.
        path: `*.safetensors` (roles in the header's `__metadata__` under `bufinspect.roles`) or
            any other name (a `torch.save` state dict plus a `<path>.bufinspect.json` sidecar).
        metadata: extra string metadata for safetensors files.

    Returns:
        The path of the file that holds the roles.
    """
    from bufinspect import annotate

    return annotate.save(model, str(path), metadata)
