"""What every command does around the analysis: turn errors into one line and an exit code,
print a report in the chosen format, show progress, and share the data pass (`--jobs`,
torchrun)."""

from __future__ import annotations

import os
import sys
import traceback
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import typer

from bufinspect.errors import BufinspectError
from bufinspect.escape import excerpt, path_excerpt
from bufinspect.model import CheckReport
from bufinspect.parallel import Work
from bufinspect.render import OutputFormat, Report


def stderr(message: str) -> None:
    sys.stderr.write(message + "\n")


def cpu_note(device: str, command: str) -> None:
    """Say once on stderr when a GPU goes unused because torch is not installed."""
    from bufinspect import _torch

    note = _torch.cpu_note(device, command)
    if note:
        stderr(f"bufinspect: note: {note}")


def _debug() -> None:
    if os.environ.get("BUFINSPECT_DEBUG"):
        traceback.print_exc()


@contextmanager
def handled(path_hint: str | None = None) -> Iterator[None]:
    """The one place errors become a line on stderr and exit code 2.

    bufinspect's own errors (bad input, bad usage) and OS errors name the file; anything else is
    a bug in bufinspect, reported as such (never as "bad input") with the way to see it.
    """
    try:
        yield
    except typer.Exit:
        raise
    except BufinspectError as exc:
        _debug()
        stderr(f"bufinspect: error: {exc}")  # str(exc) is escaped and bounded (errors.py)
        raise typer.Exit(2) from None
    except OSError as exc:
        _debug()
        where = exc.filename or path_hint or "input"
        stderr(f"bufinspect: error: {path_excerpt(where)}: {excerpt(exc.strerror or exc)}")
        raise typer.Exit(2) from None
    except MemoryError:  # a longer message could fail again: a fixed one
        stderr(f"bufinspect: error: {path_excerpt(path_hint or 'input')}: needs more memory "
               "than a checkpoint should; refusing it")
        raise typer.Exit(2) from None
    except Exception as exc:
        _debug()
        stderr(f"bufinspect: internal error while reading {path_excerpt(path_hint or 'input')} "
               f"({type(exc).__name__}: {excerpt(exc, 160)}); this is a bug in bufinspect: "
               f"BUFINSPECT_DEBUG=1 shows the traceback")
        raise typer.Exit(2) from None


def stdout_console(width: int | None = None) -> Any:
    """Rich console for stdout: colours only on a terminal; wide tables when piped."""
    from rich.console import Console

    if width is None and not sys.stdout.isatty() and not os.environ.get("COLUMNS"):
        width = 160
    # emoji=False: a key such as 'blocks:fire:' prints as written, and rich skips loading its
    # emoji table (~10 ms)
    return Console(width=width, soft_wrap=False, highlight=False, emoji=False)


def emit(report: Report, fmt: OutputFormat, **options: Any) -> None:
    """Print `report` on stdout in `fmt` (every format handled; JSON never goes through rich)."""
    from bufinspect import render

    if fmt is OutputFormat.JSON:
        sys.stdout.write(render.to_json(report.to_dict()) + "\n")
    elif fmt is OutputFormat.TABLE:
        render.table(report, stdout_console(), **options)
    elif fmt is OutputFormat.MARKDOWN:
        sys.stdout.write(render.markdown(report, **options))
    elif fmt is OutputFormat.GITHUB:
        sys.stdout.write(render.github(report))
        if isinstance(report, CheckReport):  # annotations carry no verdict line: say it here
            stderr(render.check_verdict(report))
    else:
        render.assert_never(fmt)


@contextmanager
def progress(total_bytes: int) -> Iterator[Callable[[int], None] | None]:
    """A progress callback on stderr for work over ~1 s, only when stderr is a terminal; None
    (and no bar) otherwise."""
    if total_bytes < (512 << 20) or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    bar = Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                   TransferSpeedColumn(), console=Console(stderr=True), transient=True)
    task = bar.add_task("reading", total=total_bytes)
    with bar:
        yield lambda n: bar.advance(task, n)


@contextmanager
def work(jobs: int | None, distributed: bool | None) -> Iterator[Work]:
    """How the data pass is shared: `jobs` threads (default: the cores), across torch.distributed
    ranks when launched by torchrun or asked with --distributed (then the node's cores are
    shared by its ranks)."""
    from bufinspect import distributed as dist
    from bufinspect import parallel

    if dist.wanted(distributed):
        with dist.RankWork(jobs or dist.default_jobs()) as shared:
            yield shared
    else:
        yield Work(jobs or parallel.default_jobs())


def silent(shared: Work) -> bool:
    """True on torchrun ranks other than 0: they print nothing and exit 0 (rank 0's exit code is
    the command's, see `distributed.prints`)."""
    from bufinspect import distributed as dist

    return isinstance(shared, dist.RankWork) and not dist.prints()
