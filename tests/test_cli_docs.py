"""Every command has help; every output format is handled for every report."""

from __future__ import annotations


import pytest
import typer

from bufinspect.cli import app
from bufinspect.render import OutputFormat

def _commands():
    group = typer.main.get_command(app)
    return sorted(group.commands)


def test_commands_have_help(cli):
    r = cli("--help")
    assert r.exit_code == 0
    for name in _commands():
        r = cli(name, "--help")
        assert r.exit_code == 0, name
        assert "Usage" in r.stdout and len(r.stdout) > 100, name


@pytest.mark.parametrize("fmt", list(OutputFormat))
def test_emit_handles_every_format_for_every_report(fmt, samples, capsys):
    """Every (report, format) pair prints something or is a clear usage error (exit 2), never an
    unhandled case."""
    import bufinspect
    from bufinspect.cli.runtime import emit
    from bufinspect.errors import UsageError

    a, b = str(samples / "bn_before.pt"), str(samples / "bn_after_train.pt")
    reports = [bufinspect.show(a), bufinspect.diff(a, b), bufinspect.check([a], device="cpu"),
               bufinspect.trend([a, b])]
    for report in reports:
        try:
            emit(report, fmt)
        except UsageError:
            assert fmt in (OutputFormat.MARKDOWN, OutputFormat.GITHUB), (report, fmt)
            continue
        out = capsys.readouterr()
        assert (out.out + out.err).strip(), (type(report).__name__, fmt)
