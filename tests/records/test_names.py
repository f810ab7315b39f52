"""Instance names: the naming rule, and a name claimed by exactly one start."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from instancelib import (
    Instance,
    InvalidName,
    NameConflict,
)


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "a b", "é", "x" * 129, "a:b", "-\n"])
def test_invalid_names_are_refused(image, start, registry, name):
    with pytest.raises(InvalidName):
        start(image, name)
    assert registry.list() == []


@pytest.mark.parametrize("name", ["a", "web-1", "A.b_c", "..x", "-", "x" * 128])
def test_valid_names_are_accepted(image, start, registry, name):
    assert start(image, name).name == name
    assert [i.name for i in registry.list()] == [name]


def test_second_start_of_a_running_name_conflicts(image, start):
    first = start(image, "dup")
    with pytest.raises(NameConflict):
        start(image, "dup")
    assert first.is_running()


def test_concurrent_starts_of_one_name_exactly_one_wins(image, registry):
    results: list[object] = []
    barrier = threading.Barrier(8)

    def attempt() -> None:
        barrier.wait()
        try:
            results.append(Instance.start(image, "race", registry=registry))
        except NameConflict as err:
            results.append(err)

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [r for r in results if isinstance(r, Instance)]
    assert len(winners) == 1
    assert sum(isinstance(r, NameConflict) for r in results) == 7
    assert [i.name for i in registry.list()] == ["race"]


def test_concurrent_starts_from_processes_exactly_one_wins(image, registry, tmp_path):
    code = (
        "import sys; from instancelib import *\n"
        f"reg = InstanceRegistry({str(registry.root)!r})\n"
        "try:\n"
        f"    Instance.start(Image({image.path!r}), 'prace', registry=reg); print('won')\n"
        "except NameConflict: print('lost')\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
             for _ in range(4)]
    outcomes = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
    assert outcomes == ["lost", "lost", "lost", "won"]
