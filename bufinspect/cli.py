"""The `bufinspect` command: parse, call the core, render, map errors to exit codes.

Exit codes follow diff(1): 0 nothing to report, 1 differences or error findings, 2 bad input or
usage. Data goes to stdout; messages, progress and errors go to stderr.
"""

from __future__ import annotations

import os
import sys
import traceback
from contextlib import contextmanager
from enum import Enum
from typing import Iterator, List, Optional

# bufinspect runs its own workers (--jobs); OpenBLAS helper threads only slow a streaming pass
# (PERFORMANCE.md) and make float sums depend on the core count. Set before numpy is imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import typer  # noqa: E402

from bufinspect import __version__
from bufinspect.errors import BufinspectError
from bufinspect.model import Role

app = typer.Typer(
    name="bufinspect",
    help="Open PyTorch checkpoints: which tensors are parameters and which are buffers, "
         "what changed between two checkpoints, and whether devices and dtypes are consistent. "
         "Nothing in a checkpoint is ever run.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


class ShowFormat(str, Enum):
    TABLE = "table"
    JSON = "json"
    MARKDOWN = "markdown"


def _stderr(message: str) -> None:
    sys.stderr.write(message + "\n")


@contextmanager
def handled(path_hint: str | None = None) -> Iterator[None]:
    """The one place errors become a line on stderr and exit code 2."""
    try:
        yield
    except typer.Exit:
        raise
    except BufinspectError as exc:
        if os.environ.get("BUFINSPECT_DEBUG"):
            traceback.print_exc()
        _stderr(f"bufinspect: error: {exc}")
        raise typer.Exit(2) from None
    except OSError as exc:
        if os.environ.get("BUFINSPECT_DEBUG"):
            traceback.print_exc()
        where = exc.filename or path_hint or "input"
        _stderr(f"bufinspect: error: {where}: {exc.strerror or exc}")
        raise typer.Exit(2) from None
    except Exception as exc:  # a file we could not make sense of must never show a traceback
        if os.environ.get("BUFINSPECT_DEBUG"):
            traceback.print_exc()
        _stderr(f"bufinspect: error: {path_hint or 'input'}: unreadable "
                f"({type(exc).__name__}: {str(exc)[:160]}); BUFINSPECT_DEBUG=1 shows details")
        raise typer.Exit(2) from None


def stdout_console(width: int | None = None):
    """Rich console for stdout: colours only on a terminal; wide tables when piped."""
    from rich.console import Console

    if width is None and not sys.stdout.isatty() and not os.environ.get("COLUMNS"):
        width = 160
    return Console(width=width, soft_wrap=False, highlight=False)


def progress_for(total_bytes: int):
    """A progress callback on stderr for work over ~1 s, only when stderr is a terminal."""
    if total_bytes < (512 << 20) or not sys.stderr.isatty():
        return None, None
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    bar = Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                   TransferSpeedColumn(), console=Console(stderr=True), transient=True)
    task = bar.add_task("reading", total=total_bytes)
    return bar, (lambda n: bar.advance(task, n))


def _version(value: bool) -> None:
    if value:
        print(f"bufinspect {__version__}")
        raise typer.Exit(0)


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """bufinspect: parameters vs buffers in PyTorch checkpoints."""


@app.command()
def show(
    path: str = typer.Argument(..., help="Checkpoint file (.pt .pth .bin .ckpt .safetensors)."),
    format: ShowFormat = typer.Option(ShowFormat.TABLE, "--format", "-f", help="Output format."),
    stats: bool = typer.Option(False, "--stats", help="Stream tensor data for min/max/mean/std, "
                               "NaN, Inf and zero counts."),
    role: Optional[List[Role]] = typer.Option(None, "--role", help="Only entries of this role "
                                              "(repeatable)."),
    filter: Optional[List[str]] = typer.Option(None, "--filter", help="Only keys matching this "
                                               "glob, e.g. 'layer1.*' (repeatable)."),
    container: Optional[List[str]] = typer.Option(None, "--container", help="Only this state dict "
                                                  "inside the checkpoint, e.g. 'model' "
                                                  "(repeatable)."),
    depth: Optional[int] = typer.Option(None, "--depth", min=0, help="Group parameters by the "
                                        "first N components of their module path."),
    explain: bool = typer.Option(False, "--explain", help="List every entry with the evidence "
                                 "that decided its role."),
    jobs: Optional[int] = typer.Option(None, "--jobs", "-j", min=1, help="Workers for --stats "
                                       "(default: the number of cores)."),
    distributed: Optional[bool] = typer.Option(None, "--distributed/--no-distributed",
                                               help="Share --stats across torch.distributed "
                                               "ranks; rank 0 prints the report (default: on "
                                               "when launched by torchrun)."),
) -> None:
    """List every tensor of a checkpoint: buffers first, then parameters by module.

    Reads metadata only (no tensor data, no torch import) unless --stats is given.
    Sharded folders (model.safetensors.index.json, torch.distributed.checkpoint) read as one.
    """
    from bufinspect import listing, load, parallel, render

    with handled(path):
        ck = load(path)
        select = dict(containers=container or (), roles=role or (), filters=filter or ())
        workers = jobs or parallel.default_jobs()
        from bufinspect import distributed as dist

        if stats and dist.wanted(distributed):
            report = dist.show(ck, jobs=workers, **select)
            if report is None:  # not rank 0: rank 0 prints the one report
                return
        else:
            entries = listing.select(ck, **select)
            bar, progress = (None, None)
            if stats:
                bar, progress = progress_for(sum(e.nbytes for e in entries))
            if bar is not None:
                with bar:
                    report = listing.show(ck, **select, stats=stats, progress=progress,
                                          jobs=workers)
            else:
                report = listing.show(ck, **select, stats=stats, jobs=workers)
    if format is ShowFormat.JSON:
        sys.stdout.write(render.to_json(report.to_dict()) + "\n")
    elif format is ShowFormat.MARKDOWN:
        sys.stdout.write(render.render_show_markdown(report, depth=depth, explain=explain))
    elif format is ShowFormat.TABLE:
        render.render_show_table(report, stdout_console(), depth=depth, explain=explain)
    else:
        render.assert_never(format)


# ---- diff (issue: diff) ------------------------------------------------------------------


# ---- check (issue: check) ----------------------------------------------------------------


# ---- annotate and other role commands (issue: roles) -------------------------------------


def main() -> None:
    app()
