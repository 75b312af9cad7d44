"""Printing laid-out tables on a rich console: the one path every human table takes.

`render.layout` decides columns, widths and cell text for the console's width; this module
prints the lines, styled on a terminal (rich `Text`, never markup: names from files stay inert),
plain past PLAIN_ROWS rows or without colour, and adds the note naming dropped columns.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from bufinspect.render import layout
from bufinspect.render.common import PLAIN_ROWS
from bufinspect.render.layout import Column


def print_lines(console: Any, lines: Iterable[str], style: str | None = None) -> None:
    """Plain lines on the console (inert: no markup, no highlighting), one style for all."""
    text = "\n".join(lines)
    if style and console.color_system is not None:
        from rich.text import Text

        console.print(Text(text, style=style), soft_wrap=True)
    else:
        console.file.write(text + "\n")


def print_wrapped(console: Any, text: str, style: str | None = None) -> None:
    """One paragraph wrapped at word boundaries to the console's width."""
    print_lines(console, layout.wrap(text, console.width), style)


def print_table(console: Any, columns: list[Column], rows: list[list[str]], *,
                title: str | None = None, row_styles: list[str | None] | None = None,
                cell_styles: dict[str, Callable[[str], str | None]] | None = None
                ) -> layout.Plan:
    """A table laid out for the console's width (see render.layout), styled on a terminal.

    `row_styles` gives each row a style; `cell_styles` maps a column name to a function of the
    cell's text returning its style. Past PLAIN_ROWS rows, or without colour, the lines are
    written as plain text. A note under the table names the columns a narrow terminal left out.
    """
    p = layout.plan(columns, rows, console.width)
    lines = layout.table_lines(columns, rows, p)
    styled = console.color_system is not None and len(rows) <= PLAIN_ROWS
    if title:
        print_wrapped(console, title, "bold")
    if not styled:
        console.file.write("".join(text + "\n" for text, _ in lines))
    else:
        from rich.text import Text

        starts = layout.column_starts(p)
        kept = [columns[i].name for i in p.kept]
        seen: set[int] = set()
        out = []
        for text, r in lines:
            t = Text(text)
            if r is None:
                t.stylize("dim")
            else:
                if row_styles and row_styles[r]:
                    t.stylize(row_styles[r])
                if cell_styles and not p.compact and r not in seen:
                    for name, fn in cell_styles.items():
                        if name in kept:
                            k = kept.index(name)
                            style = fn(rows[r][p.kept[k]])
                            if style:
                                t.stylize(style, starts[k], starts[k] + p.widths[k])
                seen.add(r)
            out.append(t)
        console.print(Text("\n").join(out), soft_wrap=True)
    note = layout.dropped_note(p)
    if note:
        print_wrapped(console, note, "dim")
    return p
