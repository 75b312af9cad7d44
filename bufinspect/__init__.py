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
    "UnsafeInputError", "UsageError", "load", "show", "__version__",
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
    from bufinspect import formats, roles

    return roles.assign(formats.read(str(path)))


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
