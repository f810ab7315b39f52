"""PID 1 (``linux/init.py``): reaping, forwarding signals, stopping, ending with its processes."""

from __future__ import annotations

import os
import signal
import threading
import time

import attrs
import pytest

from instancelib import (
    Instance,
)
from instancelib.linux import procfs
from tests.helpers import instance_pids, wait_for


def test_init_reaps_orphaned_zombies(make_image, start):
    script = "#!/bin/sh\nfor i in 1 2 3 4 5; do sh -c 'sleep 0.05 &'; done\nexec sleep 1000\n"
    instance = start(make_image(startscript=script))
    time.sleep(0.5)

    def zombies() -> list[int]:
        found = []
        for pid in instance_pids(instance):
            stat = procfs.read_stat(pid)
            if stat is not None and stat.state == "Z":
                found.append(pid)
        return found

    assert wait_for(lambda: not zombies() or None, timeout=3) is None or not zombies()
    assert len(instance_pids(instance)) == 2  # init and the sleep


def test_hup_is_forwarded_to_the_service(make_image, start, tmp_path):
    script = ("#!/bin/sh\ntrap 'echo got-hup' HUP\n"
              "while true; do sleep 0.05; done\n")
    instance = start(make_image(startscript=script))
    time.sleep(0.2)
    instance.kill(signal.SIGHUP)
    wait_for(lambda: "got-hup" in instance.stdout_path.read_text())
    assert instance.is_running()


def test_stop_forwards_sigint_and_waits_for_the_service(make_image, start, registry):
    script = ("#!/bin/sh\ntrap 'echo stopping; exit 0' INT\n"
              "while true; do sleep 0.05; done\n")
    instance = start(make_image(startscript=script))
    time.sleep(0.2)
    pids = instance_pids(instance)
    instance.stop(timeout=5)
    assert "stopping" in instance.stdout_path.read_text()
    assert not any(procfs.read_stat(p) and procfs.read_stat(p).running for p in pids)
    assert registry.list() == []


def test_stop_returns_when_the_service_exits_despite_background_jobs(make_image, start):
    """Background jobs of a non-interactive shell ignore SIGINT; they must not hold the stop."""
    script = "#!/bin/sh\ntrap 'exit 0' INT TERM\nsleep 1000 &\nwait\n"
    instance = start(make_image(startscript=script))
    time.sleep(0.2)
    pids = instance_pids(instance)
    assert len(pids) == 3  # init, sh, sleep
    began = time.monotonic()
    instance.stop(timeout=10)
    assert time.monotonic() - began < 2
    for pid in pids:
        stat = procfs.read_stat(pid)
        assert stat is None or not stat.running


def test_stop_waits_for_a_daemonised_service(make_image, start):
    """A start script that forks a daemon and exits: stop waits for the daemon."""
    # (A background job starts with SIGINT ignored, and a shell cannot trap a
    # signal ignored on entry: the daemon is stopped with SIGTERM.)
    script = ("#!/bin/sh\n(trap 'sleep 0.3; echo daemon-done; exit 0' TERM; "
              "while :; do sleep 0.05; done) &\nexit 0\n")
    instance = start(make_image(startscript=script))
    time.sleep(0.3)
    began = time.monotonic()
    instance.stop(signal=signal.SIGTERM, timeout=10)
    assert 0.3 <= time.monotonic() - began < 5
    assert "daemon-done" in instance.stdout_path.read_text()


def test_stop_kills_a_service_that_ignores_sigint(make_image, start):
    script = "#!/bin/sh\ntrap '' INT TERM\nwhile true; do sleep 0.05; done\n"
    instance = start(make_image(startscript=script))
    time.sleep(0.2)
    pids = instance_pids(instance)
    began = time.monotonic()
    instance.stop(timeout=0.5)
    elapsed = time.monotonic() - began
    assert 0.5 <= elapsed < 5
    for pid in pids:
        stat = procfs.read_stat(pid)
        assert stat is None or not stat.running


def test_stop_with_force_kills_at_once(make_image, start):
    instance = start(make_image(startscript="#!/bin/sh\ntrap '' INT TERM\nexec sleep 1000\n"))
    began = time.monotonic()
    instance.stop(force=True, timeout=30)
    assert time.monotonic() - began < 2
    assert not instance.is_running()


def test_stop_with_custom_signal(make_image, start):
    script = "#!/bin/sh\ntrap 'echo term; exit 0' TERM\nwhile true; do sleep 0.05; done\n"
    instance = start(make_image(startscript=script))
    time.sleep(0.2)
    instance.stop(signal=signal.SIGTERM)
    assert "term" in instance.stdout_path.read_text()


def test_stop_is_idempotent(image, start):
    instance = start(image)
    instance.stop()
    instance.stop()
    assert not instance.is_running()


def test_stop_also_ends_exec_processes(image, start):
    instance = start(image)
    process = instance.popen(["sleep", "1000"])
    instance.stop()
    # SIGINT is forwarded to every process of the instance, exec'd ones included.
    assert process.wait(timeout=5) == -signal.SIGINT


def test_wait_returns_when_the_instance_ends(image, start):
    instance = start(image)
    with pytest.raises(TimeoutError):
        instance.wait(timeout=0.05)
    threading.Timer(0.2, instance.kill, args=(signal.SIGTERM,)).start()
    instance.wait(timeout=10)
    assert not instance.is_running()


def test_context_manager_stops_the_instance(image, registry):
    with Instance.start(image, "ctx", registry=registry) as instance:
        assert instance.is_running()
    assert not instance.is_running()
    assert registry.list() == []


def test_instance_killed_from_outside_is_pruned_and_name_reusable(image, start, registry):
    instance = start(image, "victim")
    os.kill(instance.pid, signal.SIGKILL)
    wait_for(lambda: not instance.is_running())
    assert registry.list() == []
    assert not registry.record_path("victim").exists()
    again = start(image, "victim")
    assert again.is_running() and again.pid != instance.pid


def test_reused_pid_is_not_mistaken_for_the_instance(image, start, registry):
    """A record whose PID now belongs to another process (other start time) is dead."""
    instance = start(image, "real")
    record = registry._read("real")
    assert record is not None
    forged = attrs.evolve(record, name="forged", pid=os.getpid())
    registry._write(forged)
    assert [i.name for i in registry.list()] == ["real"]
    assert not registry.record_path("forged").exists()
    instance.stop()
