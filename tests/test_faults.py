"""Faults in the start path leave nothing behind, and the name stays usable.

- the caller is SIGKILLed at many points of a start (a real process, killed for real);
- ENOSPC at each write, EMFILE at each descriptor the start opens (injected);
- the registry on a full disk (a real, small tmpfs; root only: it is mounted);
- the fork-server is SIGKILLed with a spare PID 1 (and its cgroup) ready.

After each: no process, cgroup, mount or loop device of that start, no temporary
file in the registry, and the name can be started again.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from instancelib import Instance, InstanceError, InstanceRegistry, RegistryError
from instancelib.linux import client
from instancelib.linux.userns import has_host_root
from tests.helpers import host_mounts, instance_processes, loop_devices, our_cgroups, wait_for

SLEEPER = "#!/bin/sh\nexec sleep 1000\n"
CALLER = """
import os, sys, time
from instancelib import Image, Instance, InstanceRegistry
from instancelib.linux import client
registry, image = InstanceRegistry(sys.argv[1]), Image(sys.argv[2])
Instance.start(image, "warm", registry=registry).stop()   # a warm fork-server, a spare
print("ready", os.getpid(), client.get_forkserver().process.pid, flush=True)
sys.stdin.readline()
Instance.start(image, "victim", registry=registry)
print("started", flush=True)
time.sleep(1000)
"""


def _of(pids: set[int], cgroups: set[str], processes: set[int]) -> dict[str, Any]:
    """What of ``cgroups`` and ``processes`` belongs to the processes ``pids`` made."""
    mine = {c for c in cgroups if any(f".{pid}." in os.path.basename(c) for pid in pids)}
    return {kind: what for kind, what in (("cgroups", mine), ("processes", processes)) if what}


class Leftovers:
    """What the host holds now, to compare with what it held before a fault."""

    def __init__(self, *, spares: bool = True) -> None:
        # Spares: our own fork-server makes a new spare (in a new cgroup) after each start.
        self.spares = spares
        self.processes = instance_processes()
        self.cgroups = our_cgroups(spares=spares)
        self.mounts = host_mounts()
        self.loops = loop_devices()

    def new_since(self, before: Leftovers) -> dict[str, Any]:
        found = {"processes": self.processes - before.processes,
                 "cgroups": self.cgroups - before.cgroups,
                 "mounts": self.mounts ^ before.mounts, "loops": self.loops - before.loops}
        return {kind: what for kind, what in found.items() if what}


def _settled(before: Leftovers, timeout: float = 5.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        left = Leftovers(spares=before.spares).new_since(before)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.02)


def _registry_files(registry: InstanceRegistry) -> list[str]:
    with contextlib.suppress(FileNotFoundError):
        return sorted(os.listdir(registry.instances_dir))
    return []


# -- the caller killed during a start ----------------------------------------------------------


def test_a_caller_killed_at_any_point_of_a_start_leaves_nothing(make_image, tmp_path):
    image = make_image(startscript=SLEEPER)
    registry = InstanceRegistry(tmp_path / "registry")
    delays = [i * 0.0007 for i in range(24)] + [0.02, 0.05]
    outcomes = []
    for delay in delays:
        processes_before = instance_processes()
        caller = subprocess.Popen([sys.executable, "-c", CALLER, str(registry.root),
                                   image.path], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  text=True, cwd=str(Path(__file__).resolve().parents[1]))
        try:
            assert caller.stdout is not None and caller.stdin is not None
            word, *pids = caller.stdout.readline().split()
            assert word == "ready"
            caller.stdin.write("go\n")
            caller.stdin.flush()
            time.sleep(delay)
        finally:
            caller.kill()
            caller.wait()
        running = registry.list()   # committed before the kill: a real instance, listed
        outcomes.append(bool(running))
        for instance in running:
            instance.stop()
        # Only what the killed caller and its fork-server made (other suites may run too).
        made_by = {int(pid) for pid in pids}
        left = _of(made_by, our_cgroups(), instance_processes() - processes_before)
        deadline = time.monotonic() + 5
        while left and time.monotonic() < deadline:
            time.sleep(0.02)
            left = _of(made_by, our_cgroups(), instance_processes() - processes_before)
        assert not left, f"killed after {delay * 1000:.1f} ms: {left}"
        assert _registry_files(registry) == [".lock"], delay
        Instance.start(image, "victim", registry=registry).stop()   # the name is free
    assert not all(outcomes), "every kill came after the start had finished"


# -- injected faults: ENOSPC at each write, EMFILE at each new descriptor -----------------------


@contextlib.contextmanager
def _failing(monkeypatch: pytest.MonkeyPatch, targets: list[tuple[Any, str]], error: int,
             at: int | None) -> Iterator[list[int]]:
    """Make the ``at``-th call (counted over ``targets``) fail with ``error``; count calls."""
    calls = [0]
    for owner, name in targets:
        original = getattr(owner, name)

        def wrapper(*args: Any, _original: Callable[..., Any] = original, **kwargs: Any) -> Any:
            calls[0] += 1
            if calls[0] == at:
                raise OSError(error, os.strerror(error))
            return _original(*args, **kwargs)

        monkeypatch.setattr(owner, name, wrapper)
    try:
        yield calls
    finally:
        monkeypatch.undo()


FAULTS = {
    "ENOSPC on write": ([(os, "write"), (os, "pwrite"), (os, "ftruncate")], errno.ENOSPC),
    "EMFILE on open": ([(os, "open"), (os, "pipe2"), (os, "memfd_create"), (os, "dup")],
                       errno.EMFILE),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_fault_at_each_step_of_a_start_is_typed_and_leaves_nothing(
        fault, make_image, tmp_path, monkeypatch):
    targets, error = FAULTS[fault]
    image = make_image(startscript=SLEEPER)
    registry = InstanceRegistry(tmp_path / "registry")
    Instance.start(image, "warm", registry=registry).stop()   # the fork-server is up
    with _failing(monkeypatch, targets, error, None) as calls:
        Instance.start(image, "victim", registry=registry, pid_file=tmp_path / "pid").stop()
    total = calls[0]
    assert total > 3
    for at in range(1, total + 1):
        before = Leftovers(spares=False)
        try:
            with _failing(monkeypatch, targets, error, at):
                instance = Instance.start(image, "victim", registry=registry,
                                          pid_file=tmp_path / "pid")
        except InstanceError as err:
            assert err.errno in (error, None) or isinstance(err.errno, int), err
        else:
            instance.stop()   # the fault hit a step that may fail (a retried call)
        assert not _settled(before), f"{fault} at call {at} of {total}"
        assert _registry_files(registry) == [".lock"], (fault, at)
    Instance.start(image, "victim", registry=registry).stop()


# -- a real full disk ----------------------------------------------------------------------------


@pytest.fixture
def small_tmpfs() -> Iterator[Path]:
    if not has_host_root():
        pytest.skip("needs root: mounts a small tmpfs to fill")
    point = Path(tempfile.mkdtemp(prefix="instancelib-full-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(point)],
                   check=True)
    try:
        yield point
    finally:
        subprocess.run(["umount", "-l", str(point)], check=False)
        point.rmdir()


def _fill(path: Path) -> Path:
    """A file that takes all the space its filesystem has left."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 4096)
    finally:
        os.close(fd)
    return path


@pytest.mark.parametrize("free_pages", [0, 1, 2, 3])
def test_a_start_on_a_full_disk_is_a_registry_error_and_leaves_nothing(
        free_pages, small_tmpfs, make_image):
    registry = InstanceRegistry(small_tmpfs / "registry")
    registry.ensure_dirs()
    filler = _fill(small_tmpfs / "filler")
    if free_pages:
        os.truncate(filler, os.path.getsize(filler) - free_pages * 4096)
    image = make_image(startscript=SLEEPER)
    env = {f"VARIABLE_{i}": "x" * 200 for i in range(40)}   # an environment of two pages
    before = Leftovers(spares=False)
    with pytest.raises(RegistryError, match="No space left on device"):
        Instance.start(image, "full", registry=registry, env=env)
    assert not _settled(before)
    assert _registry_files(registry) == [".lock"]
    filler.unlink()
    Instance.start(image, "full", registry=registry, env=env).stop()


def test_the_cli_on_a_full_disk_prints_one_fatal_line(small_tmpfs, make_image):
    registry = InstanceRegistry(small_tmpfs / "registry")
    registry.ensure_dirs()
    _fill(small_tmpfs / "filler")
    image = make_image(startscript=SLEEPER)
    result = subprocess.run([sys.executable, "-m", "instancelib", "instance", "start", image.path,
                             "full"], capture_output=True, text=True, check=False, timeout=60,
                            env=dict(os.environ, INSTANCELIB_HOME=str(registry.root)))
    assert result.returncode == 255
    assert result.stderr.startswith("FATAL:") and result.stderr.count("\n") == 1, result.stderr
    assert "No space left on device" in result.stderr
    assert "Traceback" not in result.stderr


# -- a killed fork-server ------------------------------------------------------------------------


def test_a_killed_forkserver_leaves_no_spare_cgroup(make_image, start):
    start(make_image(), "warm").stop()
    server = client.get_forkserver()
    spares = wait_for(lambda: {c for c in our_cgroups()
                               if f".{server.process.pid}." in os.path.basename(c)}
                      or (not has_host_root()) or None)
    os.kill(server.process.pid, signal.SIGKILL)
    server.process.wait()
    client.get_forkserver()   # noticing the dead server sweeps its spare's cgroup
    if has_host_root():
        assert spares and not spares & our_cgroups()
    start(make_image(), "after").stop()
