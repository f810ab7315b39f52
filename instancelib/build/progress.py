"""What a build reports while it runs, and running a host command that reports each line."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable, Mapping

import attrs

from instancelib.errors import BuildError

__all__ = ["BuildProgress", "ProgressCallback", "stream_command"]


@attrs.frozen
class BuildProgress:
    """A step of a build: ``step`` names it; ``fraction`` (0..1) when known; ``output`` a line
    the step printed (``%post``, ``%test``...)."""

    step: str
    fraction: float | None = None
    output: str | None = None


ProgressCallback = Callable[[BuildProgress], None]


# mksquashfs's progress bar: "[====  /  ] 1200/4755  25%", redrawn after a carriage return.
_PROGRESS_BAR = re.compile(r"\[.*\]\s+(\d+)/(\d+)\s+(\d+)%\s*$")


def stream_command(argv: list[str], env: Mapping[str, str] | None, what: str,
            report: ProgressCallback, cwd: str | None = None) -> None:
    """Run ``argv``, reporting each line it prints (a progress bar's updates as fractions)."""
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               env=None if env is None else {**os.environ, **env}, cwd=cwd,
                               text=True, errors="replace")  # universal newlines: \r ends lines
    assert process.stdout is not None
    tail: list[str] = []
    shown = -1
    for raw in process.stdout:
        line = raw.rstrip("\n")
        bar = _PROGRESS_BAR.search(line)
        if bar:
            percent = int(bar.group(3))
            if percent != shown:
                shown = percent
                report(BuildProgress(what, fraction=min(percent, 100) / 100))
            continue
        if not line.strip():
            continue
        report(BuildProgress(what, output=line))
        tail = [*tail[-19:], line]
    if process.wait() != 0:
        raise BuildError(f"{what} failed with exit status {process.returncode}",
                            detail="\n".join(tail))
