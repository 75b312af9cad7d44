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
from bufinspect.model import CheckReport, DiffReport, FileError
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


def error_message(exc: BaseException, path_hint: str | None = None) -> str:
    """The one line an error becomes (after `bufinspect: `): bufinspect's own errors (bad input,
    bad usage) and OS errors name the file; anything else is a bug in bufinspect, reported as
    such (never as "bad input") with the way to see it."""
    if isinstance(exc, BufinspectError):
        return f"error: {exc}"  # str(exc) is escaped and bounded (errors.py)
    if isinstance(exc, OSError):
        where = exc.filename or path_hint or "input"
        return f"error: {path_excerpt(where)}: {excerpt(exc.strerror or exc)}"
    if isinstance(exc, MemoryError):  # a longer message could fail again: a fixed one
        return (f"error: {path_excerpt(path_hint or 'input')}: needs more memory than a "
                "checkpoint should; refusing it")
    return (f"internal error while reading {path_excerpt(path_hint or 'input')} "
            f"({type(exc).__name__}: {excerpt(exc, 160)}); this is a bug in bufinspect: "
            f"BUFINSPECT_DEBUG=1 shows the traceback")


@contextmanager
def handled(path_hint: str | None = None) -> Iterator[None]:
    """The one place errors become a line on stderr and exit code 2."""
    try:
        yield
    except typer.Exit:
        raise
    except BrokenPipeError:
        # the reader of stdout went away (`| head`): no fault of the input file; click ends
        # the run quietly, as it does for a pipe that breaks outside this block
        raise
    except Exception as exc:
        _debug()
        stderr(f"bufinspect: {error_message(exc, path_hint)}")
        raise typer.Exit(2) from None


def load_each(paths: list[str]) -> tuple[list[Any], list[FileError]]:
    """Load every path; one that cannot be read becomes its error line on stderr and a
    `FileError` (the caller goes on with the others)."""
    from bufinspect import load

    checkpoints, errors = [], []
    for p in paths:
        try:
            checkpoints.append(load(p))
        except Exception as exc:
            _debug()
            stderr(f"bufinspect: {error_message(exc, p)}")
            message = exc.message if isinstance(exc, BufinspectError) else \
                error_message(exc, p).removeprefix("error: ")
            errors.append(FileError(p, message.removeprefix(f"{p}: ")))
    return checkpoints, errors


def styled(color: str = "auto") -> bool | None:
    """Whether to style output: True (`always`), False (`never`, or NO_COLOR set to anything
    non-empty, per no-color.org), None (`auto`: styled on a terminal)."""
    if color == "always":
        return True
    if color == "never" or os.environ.get("NO_COLOR"):
        return False
    return None


def stdout_console(width: int | None = None, color: str = "auto") -> Any:
    """Rich console for stdout: styles per `color` and NO_COLOR; wide tables when piped.

    Without styling the console has no colour system at all, so bold and dim go too (rich's
    own NO_COLOR handling keeps them).
    """
    from rich.console import Console

    if width is None and not sys.stdout.isatty() and not os.environ.get("COLUMNS"):
        width = 160
    style = styled(color)
    options: dict[str, Any] = {}
    if style is False:
        options["color_system"] = None
    elif style is True:
        options["force_terminal"] = True
        if not sys.stdout.isatty():
            options["color_system"] = "standard"
    # emoji=False: a key such as 'blocks:fire:' prints as written, and rich skips loading its
    # emoji table (~10 ms)
    return Console(width=width, soft_wrap=False, highlight=False, emoji=False, **options)


def emit(report: Report, fmt: OutputFormat, *, color: str = "auto", **options: Any) -> None:
    """Print `report` on stdout in `fmt` (every format handled; JSON never goes through rich).

    `options` go to the renderer (show: depth, explain; diff: show_equal, stat, limit; check:
    verbose); `color` styles the table.
    """
    from bufinspect import _gc

    with _gc.paused():  # (rendering keeps what it builds until it is done)
        _emit(report, fmt, color=color, **options)


def _emit(report: Report, fmt: OutputFormat, *, color: str, **options: Any) -> None:
    from bufinspect import render

    if fmt is OutputFormat.JSON:
        if options.get("stat") and isinstance(report, DiffReport):
            from bufinspect.model.diffstat import module_stats

            doc = report.to_dict()
            doc["modules"] = [m.to_dict() for m in module_stats(report.entries)]
            sys.stdout.write(render.to_json(doc) + "\n")
        else:
            for chunk in render.report_json_chunks(report):  # (never the whole text at once)
                sys.stdout.write(chunk)
            sys.stdout.write("\n")
    elif fmt is OutputFormat.TABLE:
        render.table(report, stdout_console(color=color), **options)
    elif fmt is OutputFormat.MARKDOWN:
        sys.stdout.write(render.markdown(report, **options))
    elif fmt is OutputFormat.GITHUB:
        sys.stdout.write(render.github(report, **options))
        if isinstance(report, CheckReport):  # annotations carry no verdict line: say it here
            stderr(render.check_verdict(report))
    else:
        render.assert_never(fmt)


def emit_diff(report, fmt: OutputFormat, quiet: bool, color: str, filters, roles,
               shown: dict, *, narrowed: bool = False) -> None:
    """--filter/--role narrow the report (the exit code follows), -q prints nothing.
    `narrowed`: the diff itself kept only the selection (`diff(keep=...)`); a report re-judged
    from saved metrics is narrowed here."""
    if filters or roles:
        if not narrowed:
            from bufinspect.analysis.views import select_diff

            report = select_diff(report, filters=filters or (), roles=roles or ())
        if filters and not report.entries:
            stderr("bufinspect: note: no key matches --filter "
                   + " ".join(repr(g) for g in filters))
    if not quiet:
        emit(report, fmt, color=color, **shown)
    raise typer.Exit(1 if report.has_differences else 0)


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


def apply_model(ck: Any, spec: str | None, hf_config: bool = False) -> tuple[Any, Any]:
    """Roles from the user's model (or the HF config's); missing persistent state is a warning."""
    from bufinspect import annotate

    if hf_config:
        from bufinspect.annotate import hf_key_renamer as key_renamer

        hf_model = annotate.build_hf(ck.path)
        ck, matches = annotate.apply_module(ck, hf_model, "model:hf-config",
                                            rename=key_renamer(hf_model))
    else:
        ck, matches = annotate.apply_model(ck, spec)
    for m in matches:
        where = f" (container {excerpt(repr(m.container), 80)})" if m.container else ""
        if m.missing:
            shown = ", ".join(excerpt(k, 120) for k in m.missing[:5]) \
                + (" ..." if len(m.missing) > 5 else "")
            stderr(f"bufinspect: warning: {path_excerpt(ck.path)}{where}: the model has state "
                   f"the file lacks: {shown}")
        if m.file_only:
            shown = ", ".join(excerpt(k, 120) for k in m.file_only[:5]) \
                + (" ..." if len(m.file_only) > 5 else "")
            stderr(f"bufinspect: note: {path_excerpt(ck.path)}{where}: keys the model lacks: "
                   f"{shown}")
    return ck, matches
