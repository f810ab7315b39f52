"""How the command prints: Go's tabwriter tables, Go's JSON, docker's units, the stats table."""

from __future__ import annotations

import json

TYPE_CHECKING = False  # (not typing's: importing typing costs each quick command a lot)
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

    from instancelib.cgroups.stats import Stats

__all__ = ["format_binary", "format_decimal", "format_instances", "format_stats", "go_json",
           "go_json_line", "tabulate"]


def tabulate(rows: Sequence[Sequence[str]], trailing: Sequence[str]) -> str:
    """Lay out columns as Go's tabwriter (minwidth 0, tabwidth 8, padding 4, spaces)."""
    widths = [max(len(row[i]) for row in rows) + 4 for i in range(len(rows[0]))] if rows else []
    lines = []
    for row, last in zip(rows, trailing, strict=True):
        cells = "".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        lines.append(cells + last)
    return "".join(line + "\n" for line in lines)


def format_instances(rows: Sequence[tuple[str, int, str, str, str, str]], *,
                     as_json: bool, extra: Sequence[dict[str, Any]] | None = None) -> str:
    """``instance list``'s output from (name, pid, image, ip, out log, err log) rows:
    Apptainer's JSON (with ``extra`` fields per row after Apptainer's), or its table."""
    if as_json:
        more = list(extra) if extra is not None else [{} for _ in rows]
        return go_json_line({"instances": [
            {"instance": name, "pid": pid, "img": image, "ip": ip, "logErrPath": err,
             "logOutPath": out, **fields}
            for (name, pid, image, ip, out, err), fields in zip(rows, more, strict=True)]})
    table = [["INSTANCE NAME", "PID", "IP"]] + [[r[0], str(r[1]), r[3]] for r in rows]
    return tabulate(table, ["IMAGE"] + [r[2] for r in rows])


def go_json(value: Any) -> str:
    """JSON as Go's ``json.MarshalIndent(v, "", "\\t")`` writes it (what Apptainer prints)."""
    text = json.dumps(value, indent="\t", ensure_ascii=False)
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                         ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, escape)
    return text


def go_json_line(value: object) -> str:
    """JSON as Go's encoder with SetIndent("", "\\t") writes it, and a newline."""
    return go_json(value) + "\n"


def _scaled(size: float, step: float, units: tuple[str, ...], digits: int) -> str:
    value = float(size)
    index = 0
    while value >= step and index < len(units) - 1:
        value /= step
        index += 1
    return f"{value:.{digits}g}{units[index]}"


def format_binary(size: float) -> str:
    """Bytes as docker prints memory: ``3.27MiB`` (4 significant digits, binary units)."""
    return _scaled(size, 1024.0, ("B", "KiB", "MiB", "GiB", "TiB", "PiB"), 4)


def format_decimal(size: float) -> str:
    """Bytes as docker prints block I/O: ``16.4kB`` (3 significant digits, SI units)."""
    return _scaled(size, 1000.0, ("B", "kB", "MB", "GB", "TB", "PB"), 3)


def format_stats(readings: Sequence[Stats]) -> str:
    """Singularity's ``instance stats`` table (docker's units: MiB for memory, kB for I/O)."""
    rows = [["INSTANCE NAME", "CPU USAGE", "MEM USAGE / LIMIT", "MEM %", "BLOCK I/O"]]
    trailing = ["PIDS"]
    for s in readings:
        rows.append([s.name, f"{s.cpu_percent:.2f}%",
                     f"{format_binary(s.memory_usage)} / {format_binary(s.memory_limit)}",
                     f"{s.memory_percent:.2f}%",
                     f"{format_decimal(s.block_read)} / {format_decimal(s.block_write)}"])
        trailing.append(str(s.pids))
    return tabulate(rows, trailing)
