"""The options several commands share, declared once (Typer `Annotated` aliases), the enums
behind every choice option, and how help reads (usage line, the finding-id table)."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, List, Optional

import typer
from typer.core import TyperCommand

from bufinspect.model import Role
from bufinspect.render import OutputFormat


def _formats(name: str, *members: OutputFormat) -> type[Enum]:
    """A choice enum offering some of `OutputFormat` (what one command can print); its values
    convert back with `OutputFormat(choice.value)`."""
    return Enum(name, {m.name: m.value for m in members}, type=str)  # type: ignore[return-value]


ShowFormat = _formats("ShowFormat", OutputFormat.TABLE, OutputFormat.JSON, OutputFormat.MARKDOWN)
TrendFormat = _formats("TrendFormat", OutputFormat.TABLE, OutputFormat.JSON,
                       OutputFormat.MARKDOWN)
ReportFormat = _formats("ReportFormat", *OutputFormat)


class Device(str, Enum):
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


class Color(str, Enum):
    AUTO = "auto"
    ALWAYS = "always"
    NEVER = "never"


class TrendMetric(str, Enum):
    MAX_ABS = "max_abs"
    REL_L2 = "rel_l2"
    MEAN_ABS = "mean_abs"
    MAX_REL = "max_rel"


class PlotScale(str, Enum):
    NORMALIZED = "normalized"
    LOG = "log"
    LINEAR = "linear"


Containers = Annotated[Optional[List[str]], typer.Option(
    "--container", help="Use only this state dict inside the checkpoint, e.g. 'model' "
    "(repeatable). diff: once for both sides, or twice for A then B; default: the one module "
    "state dict of each side.")]
Jobs = Annotated[Optional[int], typer.Option(
    "--jobs", "-j", min=1, help="Worker threads for the data pass [default: the cores]; the "
    "report is the same for any number.")]
Distributed = Annotated[Optional[bool], typer.Option(
    "--distributed/--no-distributed", help="Share the data pass across torch.distributed "
    "ranks; rank 0 prints the report (default: on when launched by torchrun).")]
DeviceOption = Annotated[Optional[Device], typer.Option(
    "--device", help="Where numeric work runs: cpu (numpy), cuda (a GPU; exit 2 without one), "
    "or auto (a GPU when torch sees one; the default).")]
Roles = Annotated[Optional[List[Role]], typer.Option(
    "--role", help="Only entries of this role (repeatable; diff: without --all or --params, "
    "from every role).")]
All = Annotated[bool, typer.Option("--all", help="Every module-state tensor.")]
Params = Annotated[bool, typer.Option(
    "--params", help="Parameters (and entries whose role is unknown) instead of buffers.")]
ModelSpec = Annotated[Optional[str], typer.Option(
    "--model", metavar="MODULE:FACTORY", help="Take roles from your model: imports MODULE and "
    "calls FACTORY (or CLASS) with no arguments on the meta device. This RUNS YOUR CODE (never "
    "the checkpoint's); it is the only option that does.")]
ColorOption = Annotated[Color, typer.Option(
    "--color", help="Styling of tables: auto (on a terminal, unless the NO_COLOR environment "
    "variable is set), always, or never.")]
Filters = Annotated[Optional[List[str]], typer.Option(
    "--filter", metavar="GLOB", help="Only keys matching this glob, e.g. 'layer1.*' "
    "(repeatable).")]


class Command(TyperCommand):
    """Usage lines with arguments as users write them: `diff [OPTIONS] A B`, `check PATH...`
    (Typer wraps required arguments in braces and optional ones in brackets)."""

    def collect_usage_pieces(self, ctx):  # type: ignore[no-untyped-def]
        pieces = []
        for piece in super().collect_usage_pieces(ctx):
            if piece != "[OPTIONS]" and piece[:1] + piece[-1:] in ("{}", "[]"):
                piece = piece[1:-1]
            pieces.append(piece)
        return pieces


def finding_ids_epilog(width: int = 77) -> str:  # click indents the epilog by 2
    """The finding-id table for `check --help`, wrapped to fit 80 columns."""
    import textwrap

    from bufinspect.analysis.findings import FINDINGS

    key = max(len(k) for k in FINDINGS)
    indent = " " * (2 + key + 2 + 7 + 2)
    rows = []
    for k, (sev, what) in FINDINGS.items():
        first = f"  {k:<{key}}  {sev.value:<7}  "
        rows += textwrap.wrap(what, width, initial_indent=first, subsequent_indent=indent)
    return "Finding ids:\n\n\b\n" + "\n".join(rows)  # \b: click keeps the lines as they are
