"""A build's progress bar in a notebook (``build.progress.NotebookBar``), with a stand-in
for the kernel's IPython (the notebooks in CI show the real one)."""

from __future__ import annotations

import sys
import types

import pytest

from instancelib.build.progress import BuildProgress, NotebookBar, default_progress, reporting


class ZMQInteractiveShell:  # the class name IPython's kernel shell has
    pass


class Handle:
    def __init__(self, first):
        self.shown = [first]

    def update(self, html):
        self.shown.append(html)


def _kernel(monkeypatch, shell):
    handles = []
    ipython = types.ModuleType("IPython")
    ipython.get_ipython = lambda: shell
    shown = types.ModuleType("IPython.display")
    shown.HTML = lambda text: ("html", text)

    def display(obj, display_id=False):
        assert display_id is True
        handles.append(Handle(obj))
        return handles[-1]

    shown.display = display
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    monkeypatch.setitem(sys.modules, "IPython.display", shown)
    return handles


def test_outside_a_kernel_a_build_stays_silent(monkeypatch):
    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
    assert default_progress() is None
    _kernel(monkeypatch, shell=object())  # IPython's terminal, not a kernel
    assert default_progress() is None


def test_in_a_kernel_the_bar_shows_steps_fractions_and_the_end(monkeypatch):
    handles = _kernel(monkeypatch, ZMQInteractiveShell())
    bar = default_progress()
    assert isinstance(bar, NotebookBar)
    bar(BuildProgress("%post", output="Setting up <nginx>"))
    bar._drawn = 0.0
    bar(BuildProgress("mksquashfs", fraction=0.5))
    bar.finish(failed=False)
    shown = [text for _kind, text in handles[0].shown]
    assert "%post (step 1" in shown[1] and "Setting up &lt;nginx&gt;" in shown[1]
    assert "value='0.500'" in shown[2] and "mksquashfs (step 2" in shown[2]
    assert "<b>done</b>" in shown[-1] and "value='1.000'" in shown[-1]
    failed = default_progress()
    failed.finish(failed=True)
    assert "<b>failed</b>" in handles[1].shown[-1][1] and "<progress" not in handles[1].shown[-1][1]


def test_a_build_without_a_callback_reports_to_the_bar_and_finishes_it(monkeypatch):
    handles = _kernel(monkeypatch, ZMQInteractiveShell())
    mine = []
    with reporting(mine.append) as report:  # the caller's own callback wins
        report(BuildProgress("%post"))
    assert mine == [BuildProgress("%post")] and handles == []
    with reporting(None) as report:
        report(BuildProgress("%post"))
    assert "<b>done</b>" in handles[0].shown[-1][1]
    with pytest.raises(RuntimeError), reporting(None):
        raise RuntimeError("the build failed")
    assert "<b>failed</b>" in handles[1].shown[-1][1]
    monkeypatch.delitem(sys.modules, "ipykernel")
    with reporting(None) as report:  # outside a kernel: reports go nowhere
        report(BuildProgress("%post"))
    assert len(handles) == 2
