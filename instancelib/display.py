"""Rich display for notebooks and IPython: human units, HTML tables, pretty text.

Jupyter shows an object through its ``_repr_html_`` and IPython's terminal
through its ``_repr_pretty_(printer, cycle)``; both are plain protocols, so
nothing here imports IPython (or anything but the standard library).  The
classes that display themselves (``Instance``, ``InstanceList``, ``Stats``,
``ImageMetadata``) build their fields and call ``key_values`` or ``table``;
their plain ``repr`` stays one line.
"""

from __future__ import annotations

import datetime
import html
from collections.abc import Sequence
from typing import Any

__all__ = ["Printer", "duration", "key_values", "percent", "pretty_key_values", "pretty_table",
           "size", "table", "timestamp"]

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
_STYLE = "border-collapse:collapse;font-family:monospace;font-size:90%"
_CELL = "padding:2px 10px;text-align:left;vertical-align:top"

Printer = Any  # IPython.lib.pretty.PrettyPrinter (duck-typed: .text, .break_)


def size(value: float | None) -> str:
    """Bytes in binary units, as docker stats shows them: ``3.3 MiB``, ``512 B``."""
    if value is None:
        return "-"
    number = float(value)
    for unit in _UNITS:
        if abs(number) < 1024 or unit == _UNITS[-1]:
            return f"{int(number)} {unit}" if unit == "B" else f"{number:.1f} {unit}"
        number /= 1024
    raise AssertionError("unreachable")


def percent(value: float | None) -> str:
    """``2.1 %``."""
    return "-" if value is None else f"{value:.1f} %"


def duration(seconds: float | None) -> str:
    """A span as people say it: ``850 ms``, ``12 s``, ``3 min 4 s``, ``2 h 5 min``, ``3 d 4 h``."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {secs} s"
    return f"{seconds:.1f} s" if seconds < 10 else f"{secs} s"


def timestamp(epoch: float) -> str:
    """Seconds since the epoch as local ISO time, to the second."""
    return datetime.datetime.fromtimestamp(epoch).astimezone().isoformat(timespec="seconds")


def key_values(title: str, rows: Sequence[tuple[str, str]]) -> str:
    """An HTML table of ``(field, value)`` rows under a bold ``title``."""
    body = "".join(f"<tr><th style='{_CELL}'>{html.escape(key)}</th>"
                   f"<td style='{_CELL}'>{_cell(value)}</td></tr>" for key, value in rows)
    return (f"<table style='{_STYLE}'><caption style='text-align:left'><b>"
            f"{html.escape(title)}</b></caption>{body}</table>")


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """An HTML table with a header row (``title`` as its caption)."""
    head = "".join(f"<th style='{_CELL}'>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td style='{_CELL}'>{_cell(v)}</td>" for v in row)
                   + "</tr>" for row in rows)
    if not rows:
        body = f"<tr><td style='{_CELL}' colspan='{len(headers)}'><i>none</i></td></tr>"
    return (f"<table style='{_STYLE}'><caption style='text-align:left'><b>"
            f"{html.escape(title)}</b></caption><thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table>")


def _cell(value: str) -> str:
    text = html.escape(value)
    return f"<pre style='margin:0'>{text}</pre>" if "\n" in value else text


def pretty_key_values(printer: Printer, cycle: bool, title: str,
                      rows: Sequence[tuple[str, str]]) -> None:
    """``_repr_pretty_``'s text: the title, then one aligned ``field: value`` line each."""
    if cycle:
        printer.text(f"<{title}>")
        return
    printer.text(title)
    width = max((len(key) for key, _ in rows), default=0)
    for key, value in rows:
        printer.break_()
        printer.text(f"  {key.ljust(width)}  {value}")


def pretty_table(printer: Printer, cycle: bool, title: str, headers: Sequence[str],
                 rows: Sequence[Sequence[str]]) -> None:
    """``_repr_pretty_``'s text: a title and an aligned table."""
    if cycle:
        printer.text(f"<{title}>")
        return
    widths = [max([len(h)] + [len(row[i]) for row in rows]) for i, h in enumerate(headers)]
    printer.text(title)
    for row in [list(headers), *rows]:
        printer.break_()
        cells = (value.ljust(width) for value, width in zip(row, widths, strict=True))
        printer.text(("  " + "  ".join(cells)).rstrip())
