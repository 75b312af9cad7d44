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
    model: Optional[str] = typer.Option(None, "--model", metavar="MODULE:FACTORY",
                                        help="Take roles from your model: imports MODULE and "
                                        "calls FACTORY (or CLASS) with no arguments on the meta "
                                        "device. This RUNS YOUR CODE (never the checkpoint's); "
                                        "it is the only option that does."),
    jobs: Optional[int] = typer.Option(None, "--jobs", "-j", min=1, help="Workers for --stats "
                                       "(default: the number of cores)."),
    distributed: Optional[bool] = typer.Option(None, "--distributed/--no-distributed",
                                               help="Share --stats across torch.distributed "
                                               "ranks; rank 0 prints the report (default: on "
                                               "when launched by torchrun)."),
) -> None:
    """List every tensor of a checkpoint: buffers first, then parameters by module.

    Reads metadata only (no tensor data, no torch import) unless --stats or --model is given.
    Sharded folders (model.safetensors.index.json, torch.distributed.checkpoint) read as one.
    """
    from bufinspect import listing, load, parallel, render

    matches = []
    with handled(path):
        ck = load(path)
        if model is not None:
            ck, matches = _apply_model(ck, model)
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
        doc = report.to_dict()
        if model is not None:
            doc["model"] = {"spec": model, "containers": [m.to_dict() for m in matches]}
        sys.stdout.write(render.to_json(doc) + "\n")
    elif format is ShowFormat.MARKDOWN:
        sys.stdout.write(render.render_show_markdown(report, depth=depth, explain=explain))
    elif format is ShowFormat.TABLE:
        render.render_show_table(report, stdout_console(), depth=depth, explain=explain)
    else:
        render.assert_never(format)


# ---- diff (issue: diff) ------------------------------------------------------------------


# ---- check (issue: check) ----------------------------------------------------------------

from bufinspect.render import OutputFormat  # noqa: E402  (kept under this anchor for merges)


def _check_epilog() -> str:
    from bufinspect.check import FINDINGS

    width = max(len(k) for k in FINDINGS)
    rows = [f"  {k:<{width}}  {sev:<7}  {what}" for k, (sev, what) in FINDINGS.items()]
    return "Finding ids:\n\n\b\n" + "\n".join(rows)  # \b: click keeps the lines as they are


@app.command(epilog=_check_epilog())
def check(
    paths: List[str] = typer.Argument(..., help="Checkpoint files; several give one report."),
    expect_dtype: Optional[str] = typer.Option(
        None, "--expect-dtype", help="Expected floating dtype of module tensors: one dtype "
        "(bfloat16) or per role (parameter=bfloat16,buffer=float32; roles parameter, buffer, "
        "unknown, other)."),
    expect_device: Optional[str] = typer.Option(
        None, "--expect-device", help="Device every tensor must have been saved from: cpu, "
        "cuda (any index) or cuda:N."),
    device: Optional[str] = typer.Option(
        None, "--device", help="Where numeric checks run: auto (a CUDA GPU when torch sees "
        "one, else the CPU; default), cpu, or cuda (exit 2 without a GPU)."),
    strict: Optional[bool] = typer.Option(None, "--strict/--no-strict", help="Warnings fail "
                                          "the check too (exit 1)."),
    ignore: Optional[List[str]] = typer.Option(None, "--ignore", help="Drop findings with this "
                                               "id (repeatable, or comma-separated)."),
    format: OutputFormat = typer.Option(OutputFormat.TABLE, "--format", "-f",
                                        help="table, json, markdown (a GitHub job summary) or "
                                             "github (workflow annotations)."),
    container: Optional[List[str]] = typer.Option(None, "--container", help="Only this state "
                                                  "dict inside each checkpoint (repeatable)."),
    no_config: bool = typer.Option(False, "--no-config", help="Ignore [tool.bufinspect.check] "
                                   "in the nearest pyproject.toml."),
) -> None:
    """Check devices, dtypes and values of checkpoints, for CI.

    Exit 0 when no error finding remains, 1 when one does (with --strict: or a warning), 2 for
    bad input or usage. Settings can also come from [tool.bufinspect.check] in the nearest
    pyproject.toml (keys expect-dtype, expect-device, device, strict, ignore); flags override
    them. NaN/Inf and negative running variances are found by streaming the data once, on the
    GPU when one is present. Nothing in a checkpoint is ever run.
    """
    from bufinspect import check as checking
    from bufinspect import load, render

    with handled(paths[0] if paths else None):
        config, config_path, note = ({}, None, None) if no_config else checking.load_config()
        if note:
            _stderr(f"bufinspect: note: {config_path}: {note}")
        policy = checking.make_policy(expect_dtype=expect_dtype, expect_device=expect_device,
                                      ignore=ignore or (), strict=strict, config=config)
        where = device if device is not None else config.get("device", "auto")
    loaded = []
    for p in paths:
        with handled(p):
            loaded.append(load(p))
    with handled(paths[0]):
        total = sum(e.nbytes for ck in loaded for e in ck.entries if checking.scannable(e))
        bar, progress = progress_for(total)
        if bar is not None:
            with bar:
                report = checking.check(paths, policy=policy, device=where,
                                        containers=container or (), progress=progress,
                                        loaded=loaded)
        else:
            report = checking.check(paths, policy=policy, device=where,
                                    containers=container or (), loaded=loaded)
    if format is OutputFormat.JSON:
        sys.stdout.write(render.to_json(report.to_dict()) + "\n")
    elif format is OutputFormat.MARKDOWN:
        sys.stdout.write(render.render_check_markdown(report))
    elif format is OutputFormat.GITHUB:
        sys.stdout.write(render.render_check_github(report))
        _stderr(render.check_verdict(report))
    elif format is OutputFormat.TABLE:
        render.render_check_table(report, stdout_console())
    else:
        render.assert_never(format)
    raise typer.Exit(0 if report.ok else 1)



# ---- annotate and other role commands (issue: roles) -------------------------------------


def _apply_model(ck, spec: str):
    """Roles from the user's model; missing persistent state is a warning on stderr."""
    from bufinspect import annotate

    ck, matches = annotate.apply_model(ck, spec)
    for m in matches:
        where = f" (container {m.container!r})" if m.container else ""
        if m.missing:
            shown = ", ".join(m.missing[:5]) + (" ..." if len(m.missing) > 5 else "")
            _stderr(f"bufinspect: warning: {ck.path}{where}: the model has state the file lacks: "
                    f"{shown}")
        if m.file_only:
            shown = ", ".join(m.file_only[:5]) + (" ..." if len(m.file_only) > 5 else "")
            _stderr(f"bufinspect: note: {ck.path}{where}: keys the model lacks: {shown}")
    return ck, matches


@app.command()
def annotate(
    path: str = typer.Argument(..., help="Checkpoint to annotate (.pt .pth .bin .ckpt "
                               ".safetensors)."),
    model: str = typer.Option(..., "--model", metavar="MODULE:FACTORY",
                              help="Your model: imports MODULE and calls FACTORY (or CLASS) with "
                              "no arguments on the meta device. This RUNS YOUR CODE."),
) -> None:
    """Record every tensor's role from your model, so later reads need no model.

    A .safetensors file gets the roles in its header metadata (`bufinspect.roles`, rewritten by
    streaming); any other file gets a sidecar `<file>.bufinspect.json` that carries a fingerprint
    of the file, so a stale sidecar is ignored. Exit 2 when the model does not fit the file.
    """
    from bufinspect import annotate as ann
    from bufinspect import load

    with handled(path):
        ck, matches = _apply_model(load(path), model)
        if not matches or any(m.matched == 0 for m in matches):
            from bufinspect.errors import UsageError

            raise UsageError(f"the model {model} matches no key of the file", path)
        written = ann.write_annotations(ck)
    _stderr(f"bufinspect: wrote roles of {sum(m.matched for m in matches)} tensors to {written}")


def main() -> None:
    app()
