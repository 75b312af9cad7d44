"""The options several commands share, declared once (Typer `Annotated` aliases), and the enums
behind every choice option."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, List, Optional

import typer

from bufinspect.model import Role
from bufinspect.render import OutputFormat


def _formats(name: str, *members: OutputFormat) -> type[Enum]:
    """A choice enum offering some of `OutputFormat` (what one command can print); its values
    convert back with `OutputFormat(choice.value)`."""
    return Enum(name, {m.name: m.value for m in members}, type=str)  # type: ignore[return-value]


ShowFormat = _formats("ShowFormat", OutputFormat.TABLE, OutputFormat.JSON, OutputFormat.MARKDOWN)
TrendFormat = _formats("TrendFormat", OutputFormat.TABLE, OutputFormat.JSON)
ReportFormat = _formats("ReportFormat", *OutputFormat)


class Device(str, Enum):
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


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
    "--role", help="Only entries of this role (repeatable).")]
All = Annotated[bool, typer.Option("--all", help="Every module-state tensor.")]
Params = Annotated[bool, typer.Option(
    "--params", help="Parameters (and entries whose role is unknown) instead of buffers.")]
ModelSpec = Annotated[Optional[str], typer.Option(
    "--model", metavar="MODULE:FACTORY", help="Take roles from your model: imports MODULE and "
    "calls FACTORY (or CLASS) with no arguments on the meta device. This RUNS YOUR CODE (never "
    "the checkpoint's); it is the only option that does.")]
