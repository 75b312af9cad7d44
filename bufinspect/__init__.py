"""bufinspect: which tensors of a PyTorch checkpoint are parameters, which are buffers, and what
changed between two checkpoints.

    >>> import bufinspect
    >>> ck = bufinspect.load("model.pt")
    >>> [e.key for e in ck.entries if e.role is bufinspect.Role.BUFFER]
    >>> bufinspect.diff("before.pt", "after.pt").has_differences
    >>> bufinspect.check(["model.pt"], expect_device="cpu").ok

These functions take paths; the analyses they call (`bufinspect.analysis`) take loaded
checkpoints, for callers that already hold them.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from bufinspect.errors import BufinspectError, InputError, UnsafeInputError, UsageError
from bufinspect.model import (CheckReport, Checkpoint, Container, DiffReport, Entry, Role,
                              ShowReport, TrendReport)

__version__ = "0.1.0"

__all__ = [
    "BufinspectError", "CheckReport", "Checkpoint", "Container", "DiffReport", "Entry",
    "InputError", "Role", "ShowReport", "TrendReport", "UnsafeInputError", "UsageError", "check",
    "diff", "load", "save", "show", "trend", "__version__",
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
    from bufinspect import _gc, formats, roles
    from bufinspect.formats import role_metadata

    with _gc.paused():  # (a pickle's cycles are collected once it resumes)
        checkpoint = formats.read(str(path))
        return roles.assign(checkpoint, role_metadata.read_annotations(checkpoint),
                            in_place=True)  # (nothing else holds the entries just read)


def show(path: str, *, stats: bool = False, **select: Any) -> ShowReport:
    """Load `path` and build the `show` report (`report.to_dict()` is the bufinspect/1 JSON).

    Args:
        path: the checkpoint.
        stats: stream every selected tensor once for min/max/mean/std/NaN/Inf/zeros.
        **select: `containers`, `roles`, `filters` as in `bufinspect.analysis.show.select`,
            and `jobs` (workers for the statistics pass).
    """
    from bufinspect.analysis.show import show as run

    return run(load(path), stats=stats, **select)


def diff(a: str, b: str, **options: Any) -> DiffReport:
    """Load two checkpoints and compare their module state (`bufinspect.analysis.diff.diff`).

    Args:
        a, b: the checkpoints before and after.
        **options: `scope` (`buffers`, `parameters`, `all`), `rtol`, `atol`, `tolerances`,
            `containers`, alignment rules, `device`, `jobs`: see `analysis.diff.diff`.

    Returns:
        A `DiffReport`; `report.has_differences` is the verdict, `to_dict()` the JSON document.

    Example:
        >>> bufinspect.diff("before.pt", "after.pt", scope="all", rtol=1e-4).summary
    """
    from bufinspect.analysis.diff import diff as run

    return run(load(a), load(b), **options)


def check(paths: str | Sequence[str], *, expect_dtype: str | None = None,
          expect_device: str | None = None, ignore: Sequence[str] = (), strict: bool = False,
          model: Any = None, **options: Any) -> CheckReport:
    """Load checkpoints and check devices, dtypes and values (`analysis.check.check`).

    Args:
        paths: one path or several (one report for all); a plain folder stands for the
            checkpoints in it, as in `bufinspect check DIR` (a sharded or DCP folder is one).
        expect_dtype, expect_device, ignore, strict: the policy, as the CLI flags take them
            (`[tool.bufinspect.check]` is not read here: pass what you expect).
        model: your model, as `MODULE:FACTORY` (imported and built on meta: this runs your
            code) or an `nn.Module`: exact roles, and whether each file loads strictly into it
            (`missing-key`, `unexpected-key`, `shape-mismatch`, `key-prefix`).
        **options: `device` (`auto`, `cpu`, `cuda`), `containers`, `jobs`.

    Returns:
        A `CheckReport`; `report.ok` is the CI verdict, `to_dict()` the JSON document.
    """
    from bufinspect.analysis.check import check as run
    from bufinspect.analysis.policy import make_policy

    policy = make_policy(expect_dtype=expect_dtype, expect_device=expect_device,
                         ignore=ignore, strict=strict)
    from bufinspect.formats.folders import expand

    paths = expand([paths] if isinstance(paths, (str, os.PathLike)) else [str(p) for p in paths])
    checkpoints = [load(p) for p in paths]
    if model is not None:
        from bufinspect import annotate

        spec = model if isinstance(model, str) else type(model).__name__
        module = annotate.build(model) if isinstance(model, str) else model
        checkpoints = [annotate.apply_module(ck, module, "model:factory")[0] for ck in checkpoints]
        options.update(model=annotate.expected_state(module), model_spec=spec)
    return run(checkpoints, policy, **options)


def trend(paths: Sequence[str], **options: Any) -> TrendReport:
    """Load a series of checkpoints and measure each tensor's drift from the first
    (`analysis.trend.trend`; `metric`, `scope` and diff options as keywords)."""
    from bufinspect.analysis.trend import trend as run

    return run([load(p) for p in paths], **options)


def save(model: Any, path: str, metadata: dict[str, str] | None = None) -> str:
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
