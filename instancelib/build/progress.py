"""What a build reports while it runs, and running a host command that reports each line."""

from __future__ import annotations

import contextlib
import html
import importlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import attrs

from instancelib.errors import BuildError

__all__ = ["BuildProgress", "NotebookBar", "ProgressCallback", "default_progress",
           "reporting", "stream_command"]


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


class NotebookBar:
    """A build's progress as a bar in a Jupyter notebook, updated in place.

    Through IPython's own ``display(..., display_id=True)`` and an HTML
    ``<progress>`` element, so no ipywidgets: the step, its bar when the
    fraction is known, the steps done, the last line printed.  At most ten
    redraws a second.
    """

    _EVERY = 0.1

    def __init__(self, display: Callable[..., Any], make_html: Callable[[str], Any]) -> None:
        self._html = make_html
        self._steps: list[str] = []
        self._fraction: float | None = None
        self._line = ""
        self._drawn = 0.0
        self._began = time.monotonic()
        self._handle = display(self._html(self._render("starting")), display_id=True)

    def __call__(self, event: BuildProgress) -> None:
        if not self._steps or self._steps[-1] != event.step:
            self._steps.append(event.step)
            self._fraction = None
        if event.fraction is not None:
            self._fraction = event.fraction
        if event.output:
            self._line = event.output
        now = time.monotonic()
        if now - self._drawn >= self._EVERY or event.fraction == 1.0:
            self._drawn = now
            self._handle.update(self._html(self._render("building")))

    def finish(self, failed: bool) -> None:
        """The last redraw: done (the bar full) or failed."""
        self._fraction = None if failed else 1.0
        self._handle.update(self._html(self._render("failed" if failed else "done")))

    def _render(self, state: str) -> str:
        step = self._steps[-1] if self._steps else ""
        value = "" if self._fraction is None else f" value='{self._fraction:.3f}'"
        bar = "" if state == "failed" else f"<progress max='1'{value} style='width:40%'>" \
                                            "</progress> "
        return (f"<div style='font-family:monospace'>{bar}<b>{html.escape(state)}</b> "
                f"{html.escape(step)} (step {len(self._steps)}, "
                f"{time.monotonic() - self._began:.1f} s)<br><span style='color:#666'>"
                f"{html.escape(self._line[-200:])}</span></div>")


def default_progress() -> NotebookBar | None:
    """A ``NotebookBar`` when this code runs in a Jupyter kernel, else None (a build's
    default: silent, as a library should be outside a notebook)."""
    if "ipykernel" not in sys.modules or "IPython" not in sys.modules:
        return None  # not a kernel: nothing to import, nothing to show
    # The kernel's own IPython, already loaded (never a dependency of ours).
    ipython: Any = sys.modules["IPython"]
    try:
        shell = ipython.get_ipython()
        shown: Any = importlib.import_module("IPython.display")
    except (AttributeError, ImportError):
        return None
    if shell is None or type(shell).__name__ != "ZMQInteractiveShell":
        return None
    return NotebookBar(shown.display, shown.HTML)


@contextlib.contextmanager
def reporting(progress: ProgressCallback | None) -> Iterator[ProgressCallback]:
    """The callback a build reports to: the caller's; else in a notebook a ``NotebookBar``
    (finished as the build ends, done or failed); else one that drops every report."""
    if progress is not None:
        yield progress
        return
    bar = default_progress()
    if bar is None:
        yield lambda _event: None
        return
    try:
        yield bar
    except BaseException:
        bar.finish(failed=True)
        raise
    bar.finish(failed=False)


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
