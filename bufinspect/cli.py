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
from bufinspect.errors import BufinspectError, UsageError
from bufinspect.model import Role
from bufinspect.render import OutputFormat

from typer.core import TyperCommand  # noqa: E402


class _Command(TyperCommand):
    """Usage lines with arguments as users write them: `diff [OPTIONS] A B`, `check PATH...`
    (Typer wraps required arguments in braces)."""

    def collect_usage_pieces(self, ctx):  # type: ignore[override]
        pieces = []
        for piece in super().collect_usage_pieces(ctx):
            if piece.startswith("{") and piece.endswith("}"):
                piece = piece[1:-1]
            elif piece.startswith("[") and piece.endswith("]") and piece != "[OPTIONS]":
                piece = piece[1:-1]
            pieces.append(piece)
        return pieces


app = typer.Typer(
    name="bufinspect",
    help="Open PyTorch checkpoints: which tensors are parameters and which are buffers, "
         "what changed between two checkpoints, and whether devices and dtypes are consistent. "
         "Nothing in a checkpoint is ever run.",
    add_completion=True,
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


class ShowFormat(str, Enum):
    TABLE = "table"
    JSON = "json"
    MARKDOWN = "markdown"


def _stderr(message: str) -> None:
    sys.stderr.write(message + "\n")


def error_message(exc: BaseException, path_hint: str | None = None) -> str:
    """The one line an error becomes (without the `bufinspect: error: ` prefix)."""
    if isinstance(exc, BufinspectError):
        return str(exc)
    if isinstance(exc, OSError):
        where = exc.filename or path_hint or "input"
        return f"{where}: {exc.strerror or exc}"
    # a file we could not make sense of must never show a traceback
    return (f"{path_hint or 'input'}: unreadable ({type(exc).__name__}: {str(exc)[:160]}); "
            "BUFINSPECT_DEBUG=1 shows details")


@contextmanager
def handled(path_hint: str | None = None) -> Iterator[None]:
    """The one place errors become a line on stderr and exit code 2."""
    try:
        yield
    except typer.Exit:
        raise
    except Exception as exc:
        if os.environ.get("BUFINSPECT_DEBUG"):
            traceback.print_exc()
        _stderr(f"bufinspect: error: {error_message(exc, path_hint)}")
        raise typer.Exit(2) from None


class Color(str, Enum):
    AUTO = "auto"
    ALWAYS = "always"
    NEVER = "never"


_COLOR_HELP = ("Styling of tables: auto (on a terminal, unless the NO_COLOR environment variable "
               "is set), always, or never.")


def styled(color: "Color | str" = Color.AUTO) -> bool | None:
    """Whether to style output: True (always), False (never, or NO_COLOR), None (a terminal)."""
    color = Color(color)
    if color is Color.ALWAYS:
        return True
    if color is Color.NEVER or os.environ.get("NO_COLOR"):  # no-color.org: any non-empty value
        return False
    return None


def stdout_console(width: int | None = None, color: "Color | str" = Color.AUTO):
    """Rich console for stdout: styles per `color` and NO_COLOR; wide tables when piped.

    Without styling the console has no colour system at all, so bold and dim go too (rich's
    own NO_COLOR handling keeps them).
    """
    from rich.console import Console

    style = styled(color)
    if width is None and not sys.stdout.isatty() and not os.environ.get("COLUMNS"):
        width = 160
    options: dict = {}
    if style is False:
        options["color_system"] = None
    elif style is True:
        options["force_terminal"] = True
        if not sys.stdout.isatty():
            options["color_system"] = "standard"
    # emoji=False: a key such as 'blocks:fire:' prints as written, and rich skips loading its
    # emoji table (~10 ms)
    return Console(width=width, soft_wrap=False, highlight=False, emoji=False, **options)


def _workers(jobs: int | None, shared: bool) -> int:
    """--jobs, or by default the cores (under torchrun: this node's cores shared by its ranks)."""
    from bufinspect import distributed, parallel

    return jobs or (distributed.default_jobs() if shared else parallel.default_jobs())


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


@app.command(cls=_Command, short_help="List every tensor: buffers, parameters by module, values.")
def show(
    path: str = typer.Argument(..., metavar="PATH", help="Checkpoint file (.pt .pth .bin .ckpt "
                               ".safetensors) or sharded/DCP folder."),
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
    hf_config: bool = typer.Option(False, "--hf-config", help="Take roles from the model that "
                                   "the config.json beside the weights describes, built on the "
                                   "meta device by the installed transformers library (opt-in; "
                                   "never code from the checkpoint's folder)."),
    jobs: Optional[int] = typer.Option(None, "--jobs", "-j", min=1, help="Workers for --stats "
                                       "(default: the number of cores)."),
    distributed: Optional[bool] = typer.Option(None, "--distributed/--no-distributed",
                                               help="Share --stats across torch.distributed "
                                               "ranks; rank 0 prints the report (default: on "
                                               "when launched by torchrun)."),
    color: Color = typer.Option(Color.AUTO, "--color", help=_COLOR_HELP),
) -> None:
    """List every tensor of a checkpoint: buffers first, then parameters by module.

    Reads metadata only (no tensor data, no torch import) unless --stats, --model or
    --hf-config is given.
    Sharded folders (model.safetensors.index.json, torch.distributed.checkpoint) read as one.
    """
    from bufinspect import listing, load, render

    matches = []
    with handled(path):
        ck = load(path)
        if model is not None and hf_config:
            raise UsageError("give --model or --hf-config, not both")
        if model is not None or hf_config:
            ck, matches = _apply_model(ck, model, hf_config)
        select = dict(containers=container or (), roles=role or (), filters=filter or ())
        from bufinspect import distributed as dist

        shared = stats and dist.wanted(distributed)
        workers = _workers(jobs, shared)
        if shared:
            report = dist.show(ck, jobs=workers, **select)
            if report is None:  # not rank 0: rank 0 prints the one report
                return
        else:
            bar, progress = (None, None)
            if stats:
                bar, progress = progress_for(sum(e.nbytes for e in listing.select(ck, **select)))
            if bar is not None:
                with bar:
                    report = listing.show(ck, **select, stats=stats, progress=progress,
                                          jobs=workers)
            else:
                report = listing.show(ck, **select, stats=stats, jobs=workers)
    if filter and not report.entries:
        _stderr(f"bufinspect: note: {path}: no key matches --filter "
                + " ".join(repr(g) for g in filter))
    if format is ShowFormat.JSON:
        doc = report.to_dict()
        if model is not None or hf_config:
            doc["model"] = {"spec": model or "hf-config",
                            "containers": [m.to_dict() for m in matches]}
        sys.stdout.write(render.to_json(doc) + "\n")
    elif format is ShowFormat.MARKDOWN:
        sys.stdout.write(render.render_show_markdown(report, depth=depth, explain=explain))
    elif format is ShowFormat.TABLE:
        render.render_show_table(report, stdout_console(color=color), depth=depth,
                                 explain=explain)
    else:
        render.assert_never(format)


# ---- diff (issue: diff) ------------------------------------------------------------------


class TrendMetric(str, Enum):
    MAX_ABS = "max_abs"
    REL_L2 = "rel_l2"
    MEAN_ABS = "mean_abs"
    MAX_REL = "max_rel"


class PlotScale(str, Enum):
    NORMALIZED = "normalized"
    LOG = "log"
    LINEAR = "linear"


class DiffScope(str, Enum):
    BUFFERS = "buffers"
    ALL = "all"
    PARAMETERS = "parameters"


class Device(str, Enum):
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


_TOL_HELP = ("Per-key tolerance override GLOB=RTOL[,ATOL] (repeatable; the last match wins). "
             "GLOB matches the whole key or its tail after a dot: 'running_var=1e-3' covers "
             "every *.running_var; 'layer4.*=1e-4,1e-6' sets both tolerances. Without ATOL the "
             "global --atol applies.")


def _write_metrics(report, path: str) -> None:
    from bufinspect import render

    with open(path, "w", encoding="utf-8") as f:
        f.write(render.to_json(report.to_dict(envelope=True)) + "\n")


def _emit_diff(report, format, show_equal: bool, *, stat: bool = False,
               limit: int | None = None, color: "Color" = Color.AUTO) -> None:
    from bufinspect import render

    if format is render.OutputFormat.JSON:
        doc = report.to_dict()
        if stat:
            from bufinspect.diffstat import module_stats

            doc["modules"] = [m.to_dict() for m in module_stats(report.entries)]
        sys.stdout.write(render.to_json(doc) + "\n")
    elif format is render.OutputFormat.MARKDOWN:
        sys.stdout.write(render.render_diff_markdown(report, show_equal=show_equal, stat=stat,
                                                     limit=limit))
    elif format is render.OutputFormat.GITHUB:
        sys.stdout.write(render.render_diff_github(report))
    elif format is render.OutputFormat.TABLE:
        render.render_diff_table(report, stdout_console(color=color), show_equal=show_equal,
                                 stat=stat, limit=limit)
    else:
        render.assert_never(format)


@app.command(cls=_Command, short_help="Compare the buffers (or all tensors) of two checkpoints.")
def diff(
    a: Optional[str] = typer.Argument(None, metavar="A", help="The checkpoint before."),
    b: Optional[str] = typer.Argument(None, metavar="B", help="The checkpoint after."),
    all_: bool = typer.Option(False, "--all", help="Compare every module-state tensor."),
    params: bool = typer.Option(False, "--params", help="Compare parameters (and entries whose "
                                "role is unknown) instead of buffers."),
    rtol: Optional[float] = typer.Option(None, "--rtol", min=0, help="Relative tolerance "
                                         "[default: 1e-05]."),
    atol: Optional[float] = typer.Option(None, "--atol", min=0, help="Absolute tolerance "
                                         "[default: 1e-08]. An element is close when "
                                         "|a-b| <= atol + rtol*|b| (float64)."),
    tol: Optional[List[str]] = typer.Option(None, "--tol", help=_TOL_HELP),
    format: OutputFormat = typer.Option(OutputFormat.TABLE, "--format", "-f",
                                        help="Output format: github gives workflow "
                                             "annotations, one ::error per differing entry."),
    show_equal: bool = typer.Option(False, "--show-equal", help="List equal entries too."),
    filter: Optional[List[str]] = typer.Option(None, "--filter", metavar="GLOB",
                                               help="Only keys (A's or B's) matching this glob, "
                                               "e.g. 'layer1.*' (repeatable)."),
    role: Optional[List[Role]] = typer.Option(None, "--role", help="Only entries of this role "
                                              "(repeatable); without --all/--params it widens "
                                              "the scope to every role first."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing; the exit code says "
                               "whether anything differs (like cmp -s / diff -q)."),
    stat: bool = typer.Option(False, "--stat", help="A per-module summary instead of the table: "
                              "changed/total tensors and the largest change (like git diff "
                              "--stat)."),
    limit: Optional[int] = typer.Option(None, "--limit", "-n", min=1, metavar="N",
                                        help="List at most N entries in the table, the largest "
                                        "changes first (JSON keeps every entry)."),
    color: Color = typer.Option(Color.AUTO, "--color", help=_COLOR_HELP),
    container: Optional[List[str]] = typer.Option(None, "--container", help="The state dict to "
                                                  "compare, e.g. 'model' (give it twice for A and "
                                                  "B). Default: the one module state dict."),
    strip_prefix: Optional[List[str]] = typer.Option(None, "--strip-prefix", help="Remove this "
                                                     "key prefix on both sides (repeatable)."),
    add_prefix: Optional[List[str]] = typer.Option(None, "--add-prefix", help="Prepend this "
                                                   "prefix to A's keys (repeatable)."),
    rename: Optional[List[str]] = typer.Option(None, "--rename", help="OLD=NEW: rename A's key "
                                               "OLD (or, when OLD ends with '.', every key "
                                               "starting with it) to NEW (repeatable)."),
    no_auto_align: bool = typer.Option(False, "--no-auto-align", help="Do not remove 'module.'"
                                       " / '_orig_mod.' prefixes that only one side has."),
    device: Device = typer.Option(Device.AUTO, "--device", help="Where numeric work runs: cpu "
                                  "(numpy), cuda (a GPU; error without one), or auto (a GPU when "
                                  "present and over 64 MiB of data differs)."),
    save_metrics: Optional[str] = typer.Option(None, "--save-metrics", help="Also write the "
                                               "per-entry metrics as JSON to this file, with "
                                               "what --from-metrics needs to re-judge."),
    from_metrics: Optional[str] = typer.Option(None, "--from-metrics", help="Re-judge a file "
                                               "written by --save-metrics under new --rtol/"
                                               "--atol/--tol, without reading checkpoints."),
    jobs: Optional[int] = typer.Option(None, "--jobs", "-j", min=1, help="CPU threads for the "
                                       "data sweep [default: the cores]; the report is the "
                                       "same for any number."),
    distributed: Optional[bool] = typer.Option(None, "--distributed/--no-distributed",
                                               help="Share the comparison across "
                                               "torch.distributed ranks; rank 0 prints the "
                                               "report (default: on when launched by "
                                               "torchrun)."),
) -> None:
    """Compare the buffers (or all tensors) of two checkpoints, element by element.

    Keys are aligned first: a 'module.' (DDP) or '_orig_mod.' (torch.compile) prefix that one
    side has and the other lacks is removed, and the mapping is printed. Statuses: equal, close
    (within tolerance), changed, added, removed, shape, dtype. Exit code 0 when nothing in scope
    differs beyond tolerance, 1 when something does, 2 on bad input or usage.

    Re-judging with --from-metrics is exact except for entries whose worst element lies within
    about 1% (2**-7) of rtol*|b| of the new tolerance: those are reported changed and marked
    approximate. Mismatch counts are only kept for unchanged tolerances.
    """
    from bufinspect import diff as diff_mod
    from bufinspect import distributed as dist
    from bufinspect import render
    from bufinspect.errors import UsageError

    with handled(from_metrics or a or b):
        shared = dist.wanted(distributed)
        fmt = format
        if all_ and params:
            raise UsageError("--all and --params exclude each other")
        scope = DiffScope.ALL if all_ else DiffScope.PARAMETERS if params else DiffScope.BUFFERS
        if role and not (all_ or params):
            scope = DiffScope.ALL  # --role picks from every role
        if from_metrics is not None:
            if a is not None or b is not None:
                raise UsageError("--from-metrics takes no checkpoints")
            doc = diff_mod.load_metrics(from_metrics)
            report = diff_mod.rejudge_report(doc, rtol=rtol, atol=atol, tolerances=tol,
                                             source=from_metrics)
            approx = sum(e.approximate for e in report.entries)
            if approx:
                _stderr(f"bufinspect: note: {approx} entr{'y is' if approx == 1 else 'ies are'} "
                        "too close to the new tolerance to decide from saved metrics; reported "
                        "changed (diff the checkpoints for an exact verdict)")
        else:
            if a is None or b is None:
                raise UsageError("diff needs two checkpoints A B (or --from-metrics FILE)")
            from bufinspect import load

            with handled(a):
                ck_a = load(a)
            with handled(b):
                ck_b = load(b)
            bar, progress = progress_for(sum(e.nbytes for e in ck_a.entries)
                                         + sum(e.nbytes for e in ck_b.entries))
            kwargs = dict(scope=scope.value, rtol=1e-5 if rtol is None else rtol,
                          atol=1e-8 if atol is None else atol, tolerances=tol or (),
                          containers=container or (), strip_prefix=strip_prefix or (),
                          add_prefix=add_prefix or (), rename=rename or (),
                          auto_align=not no_auto_align, device=device.value,
                          save_envelope=save_metrics is not None, progress=progress,
                          jobs=_workers(jobs, shared))
            if shared:  # every rank builds the report; rank 0 prints it
                report = dist.diff(ck_a, ck_b, **kwargs)
            elif bar is not None:
                with bar:
                    report = diff_mod.diff(ck_a, ck_b, **kwargs)
            else:
                report = diff_mod.diff(ck_a, ck_b, **kwargs)
            if save_metrics is not None and (dist.prints() or not shared):
                _write_metrics(report, save_metrics)
    if shared and not dist.prints():
        raise typer.Exit(0)  # see distributed.prints: the verdict is rank 0's exit code
    if filter or role:
        from bufinspect.views import select_diff

        report = select_diff(report, filters=filter or (), roles=role or ())
        if filter and not report.entries:
            _stderr(f"bufinspect: note: no key matches --filter "
                    + " ".join(repr(g) for g in filter))
    if not quiet:
        _emit_diff(report, fmt, show_equal, stat=stat, limit=limit, color=color)
    raise typer.Exit(1 if report.has_differences else 0)


@app.command(cls=_Command, short_help="How each buffer drifts across a series of checkpoints.")
def trend(
    paths: List[str] = typer.Argument(..., metavar="PATH...",
                                      help="Two or more checkpoints, in order."),
    metric: TrendMetric = typer.Option(TrendMetric.MAX_ABS, "--metric", help="Change measure "
                                       "per step: rel_l2 is ||a-b|| / ||b|| (always 1 for a "
                                       "buffer that started at zero)."),
    all_: bool = typer.Option(False, "--all", help="Every module-state tensor."),
    params: bool = typer.Option(False, "--params", help="Parameters (and unknown entries)."),
    plot: Optional[str] = typer.Option(None, "--plot", metavar="FILE",
                                       help="Also write a line chart (PNG, SVG, PDF by "
                                       "extension); needs bufinspect[plot] (matplotlib)."),
    top: int = typer.Option(12, "--top", min=0, metavar="N", help="Lines in the --plot chart: "
                            "the N keys that drift most (0: all)."),
    scale: PlotScale = typer.Option(PlotScale.NORMALIZED, "--scale", help="Y axis of the "
                                    "--plot chart: each key over its own peak, symmetric log, "
                                    "or as measured."),
    format: ShowFormat = typer.Option(ShowFormat.TABLE, "--format", "-f", help="Output format."),
    container: Optional[List[str]] = typer.Option(None, "--container", help="The state dict to "
                                                  "use in every checkpoint."),
    device: Device = typer.Option(Device.AUTO, "--device", help="Where numeric work runs "
                                  "(as for diff)."),
    color: Color = typer.Option(Color.AUTO, "--color", help=_COLOR_HELP),
) -> None:
    """Show how each buffer drifts across a series of checkpoints (e.g. one per epoch).

    One line per tensor: a sparkline of its change against the first checkpoint at every step,
    sorted by total drift. Keys are aligned as in diff.
    """
    from bufinspect import render
    from bufinspect import trend as trend_mod
    from bufinspect.errors import UsageError

    with handled(paths[0] if paths else None):
        if all_ and params:
            raise UsageError("--all and --params exclude each other")
        scope = "all" if all_ else "parameters" if params else "buffers"
        if plot is not None:
            try:
                import matplotlib  # noqa: F401
            except ImportError:
                raise UsageError("--plot needs matplotlib: pip install 'bufinspect[plot]'") \
                    from None
        report = trend_mod.trend(paths, metric=metric.value, scope=scope,
                                 containers=container[:1] if container else (),
                                 device=device.value)
        if plot is not None:
            drawn = trend_mod.plot(report, plot, top=top or None, scale=scale.value)
            _stderr(f"bufinspect: wrote {plot} ({drawn} of {len(report.rows)} keys"
                    + (f"; --top {top}" if drawn < len(report.rows) else "") + ")")
    if format is ShowFormat.JSON:
        sys.stdout.write(render.to_json(report.to_dict()) + "\n")
    elif format is ShowFormat.MARKDOWN:
        sys.stdout.write(render.render_trend_markdown(report))
    elif format is ShowFormat.TABLE:
        render.render_trend_table(report, stdout_console(color=color))
    else:
        render.assert_never(format)


# ---- check (issue: check) ----------------------------------------------------------------



def _check_epilog(width: int = 77) -> str:  # click indents the epilog by 2
    """The finding-id table for `check --help`, wrapped to fit 80 columns."""
    import textwrap

    from bufinspect.check import FINDINGS

    key = max(len(k) for k in FINDINGS)
    indent = " " * (2 + key + 2 + 7 + 2)
    rows = []
    for k, (sev, what) in FINDINGS.items():
        first = f"  {k:<{key}}  {sev:<7}  "
        rows += textwrap.wrap(what, width, initial_indent=first, subsequent_indent=indent)
    return "Finding ids:\n\n\b\n" + "\n".join(rows)  # \b: click keeps the lines as they are


@app.command(cls=_Command, epilog=_check_epilog(), short_help="Check devices, dtypes and values of checkpoints, for CI.")
def check(
    paths: List[str] = typer.Argument(..., metavar="PATH...", help="Checkpoint files or "
                                      "folders; several give one report. A folder stands for "
                                      "the checkpoints in it (a sharded or DCP folder is one)."),
    expect_dtype: Optional[str] = typer.Option(
        None, "--expect-dtype", help="Expected floating dtype of module tensors: one dtype "
        "(bfloat16) or per role (parameter=bfloat16,buffer=float32; roles parameter, buffer, "
        "unknown, other)."),
    expect_device: Optional[str] = typer.Option(
        None, "--expect-device", help="Device every tensor must have been saved from: cpu, "
        "cuda (any index) or cuda:N."),
    device: Optional[Device] = typer.Option(
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
    jobs: Optional[int] = typer.Option(None, "--jobs", "-j", min=1, help="CPU workers for the "
                                       "numeric scan (default: the number of cores)."),
    distributed: Optional[bool] = typer.Option(None, "--distributed/--no-distributed",
                                               help="Share the numeric scan across "
                                               "torch.distributed ranks; rank 0 prints the "
                                               "report (default: on when launched by "
                                               "torchrun)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="List every key a finding "
                                 "concerns (messages cut long lists to '... and N more')."),
    color: Color = typer.Option(Color.AUTO, "--color", help=_COLOR_HELP),
) -> None:
    """Check devices, dtypes and values of checkpoints, for CI.

    Exit 0 when no error finding remains, 1 when one does (with --strict: or a warning), 2 for
    bad input or usage. Settings can also come from [tool.bufinspect.check] in the nearest
    pyproject.toml (keys expect-dtype, expect-device, device, strict, ignore); flags override
    them. NaN/Inf and negative running variances are found by streaming the data once, on the
    GPU when one is present. Nothing in a checkpoint is ever run.
    """
    from bufinspect import check as checking
    from bufinspect import distributed as dist
    from bufinspect import load, render

    with handled(paths[0] if paths else None):
        shared = dist.wanted(distributed)
        workers = _workers(jobs, shared)
        config, config_path, note = ({}, None, None) if no_config else checking.load_config()
        if note:
            _stderr(f"bufinspect: note: {config_path}: {note}")
        policy = checking.make_policy(expect_dtype=expect_dtype, expect_device=expect_device,
                                      ignore=ignore or (), strict=strict, config=config)
        where = device.value if device is not None else config.get("device", "auto")
    from bufinspect.formats.folders import expand

    with handled(paths[0] if paths else None):
        paths = expand(list(paths))
    # an unreadable file is that file's error: the others are still checked, exit 2 at the end
    loaded, readable, errors = [], [], []
    for p in paths:
        try:
            loaded.append(load(p))
            readable.append(p)
        except Exception as exc:
            if os.environ.get("BUFINSPECT_DEBUG"):
                traceback.print_exc()
            message = error_message(exc, p)
            _stderr(f"bufinspect: error: {message}")
            errors.append(checking.FileError(p, message.removeprefix(f"{p}: ")))
    if not loaded:  # nothing could be checked: bad input, nothing on stdout
        raise typer.Exit(2)
    with handled(paths[0]):
        total = sum(e.nbytes for ck in loaded for e in ck.entries if checking.scannable(e))
        bar, progress = progress_for(total)
        if shared:  # every rank builds the report; rank 0 prints it
            report = dist.check(readable, policy=policy, device=where,
                                containers=container or (), loaded=loaded, jobs=workers)
        elif bar is not None:
            with bar:
                report = checking.check(readable, policy=policy, device=where,
                                        containers=container or (), progress=progress,
                                        loaded=loaded, jobs=workers)
        else:
            report = checking.check(readable, policy=policy, device=where,
                                    containers=container or (), loaded=loaded, jobs=workers)
    if errors:
        import dataclasses

        report = dataclasses.replace(report, paths=tuple(paths), errors=tuple(errors))
    if shared and not dist.prints():
        raise typer.Exit(0)  # see distributed.prints: the verdict is rank 0's exit code
    if format is OutputFormat.JSON:
        sys.stdout.write(render.to_json(report.to_dict()) + "\n")
    elif format is OutputFormat.MARKDOWN:
        sys.stdout.write(render.render_check_markdown(report, verbose=verbose))
    elif format is OutputFormat.GITHUB:
        sys.stdout.write(render.render_check_github(report, verbose=verbose))
        _stderr(render.check_verdict(report))
    elif format is OutputFormat.TABLE:
        render.render_check_table(report, stdout_console(color=color), verbose=verbose)
    else:
        render.assert_never(format)
    raise typer.Exit(2 if errors else 0 if report.ok else 1)



# ---- annotate and other role commands (issue: roles) -------------------------------------


def _apply_model(ck, spec: str | None, hf_config: bool = False):
    """Roles from the user's model (or the HF config's); missing persistent state is a warning."""
    from bufinspect import annotate

    if hf_config:
        ck, matches = annotate.apply_module(ck, annotate.build_hf(ck.path), "model:hf-config")
    else:
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


@app.command(cls=_Command, short_help="Record every tensor's role from your model.")
def annotate(
    path: str = typer.Argument(..., help="Checkpoint to annotate (.pt .pth .bin .ckpt "
                               ".safetensors)."),
    model: str = typer.Option(..., "--model", metavar="MODULE:FACTORY",
                              help="Your model: imports MODULE and calls FACTORY (or CLASS) with "
                              "no arguments on the meta device. This RUNS YOUR CODE."),
    partial: bool = typer.Option(False, "--partial", help="Write the roles of the keys that "
                                 "match even when the model and the file differ."),
) -> None:
    """Record every tensor's role from your model, so later reads need no model.

    A .safetensors file gets the roles in its header metadata (`bufinspect.roles`, rewritten by
    streaming); any other file gets a sidecar `<file>.bufinspect.json` that carries a fingerprint
    of the file, so a stale sidecar is ignored. Exit 2, writing nothing, when the model does not
    fit the file: it matches no key, or some key is only in the model or only in the file
    (--partial writes the roles of the keys that match anyway).
    """
    from bufinspect import annotate as ann
    from bufinspect import load

    with handled(path):
        ck, matches = _apply_model(load(path), model)
        from bufinspect.errors import UsageError

        if not matches or any(m.matched == 0 for m in matches):
            raise UsageError(f"the model {model} matches no key of the file", path)
        missing = sum(len(m.missing) for m in matches)
        extra = sum(len(m.file_only) for m in matches)
        if (missing or extra) and not partial:
            raise UsageError(f"the model {model} does not fit the file ({missing} of its keys "
                             f"missing from the file, {extra} keys of the file not in the "
                             "model); nothing written (--partial writes the roles of the "
                             "keys that match)", path)
        written = ann.write_annotations(ck)
    _stderr(f"bufinspect: wrote roles of {sum(m.matched for m in matches)} tensors to {written}")


def main() -> None:
    try:
        app()
    finally:
        # The process exits next. CPython's last collection would walk every object the run
        # made (0.1 s after diffing two 1,000-tensor checkpoints, measured); frozen objects are
        # skipped, and the memory goes back with the process all the same.
        import gc

        gc.freeze()
