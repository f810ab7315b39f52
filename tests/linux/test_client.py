"""The fork-server client (``linux/client.py``): forked callers, interrupted requests."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time

import pytest

from instancelib import (
    Image,
    Instance,
    InstanceRegistry,
)
from instancelib.linux import client, wire
from tests.helpers import our_cgroups


def _start_in_forked_child(image_path: str, root: str, queue) -> None:  # type: ignore[no-untyped-def]
    instance = Instance.start(Image(image_path), "forked", registry=InstanceRegistry(root))
    queue.put(instance.exec(["echo", "from-child"]).stdout)


def test_a_forked_caller_gets_its_own_fork_server(image, registry):
    Instance.start(image, "parent", registry=registry)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_start_in_forked_child,
                            args=(image.path, str(registry.root), queue))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    assert queue.get(timeout=5) == "from-child\n"
    assert sorted(i.name for i in registry.list()) == ["forked", "parent"]
    assert registry.get("parent").exec(["true"]).ok


def test_interrupted_request_retires_the_fork_server(image, registry, monkeypatch):
    first = client.get_forkserver()
    real_recv = wire.recv_message

    def interrupted(sock):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt

    monkeypatch.setattr(wire, "recv_message", interrupted)
    with pytest.raises(KeyboardInterrupt):
        first.request({"op": "ping"})
    monkeypatch.setattr(wire, "recv_message", real_recv)
    assert not first.alive()
    instance = Instance.start(image, "after", registry=registry)
    assert client.get_forkserver() is not first
    assert instance.exec(["true"]).ok


def test_exec_when_the_caller_has_no_stdin(image, start):
    instance = start(image)
    saved = os.dup(0)
    os.close(0)
    try:
        result = instance.exec(["cat"])
        process = instance.popen(["cat"], stdout=subprocess.PIPE)
        out, _ = process.communicate(timeout=10)
    finally:
        os.dup2(saved, 0)
        os.close(saved)
    assert result.stdout == "" and out == b""


CALLER = """
import sys, time
from instancelib import Image, Instance, InstanceRegistry
from instancelib.linux import client
Instance.start(Image(sys.argv[1]), "once", registry=InstanceRegistry(sys.argv[2])).stop()
print(client.get_forkserver().process.pid, flush=True)  # a spare PID 1 waits in its cgroups
time.sleep(60)
"""


def test_a_terminated_process_tree_leaves_no_spare_cgroups(image, registry):
    """As Slurm's scancel or systemctl stop: SIGTERM to the caller and its fork-server."""
    caller = subprocess.Popen([sys.executable, "-c", CALLER, image.path, str(registry.root)],
                              stdout=subprocess.PIPE, text=True)
    try:
        server = int(caller.stdout.readline())
        spares = {c for c in our_cgroups() if os.path.basename(c).split(".")[2:3] == [str(server)]}
        assert spares or os.geteuid() != 0  # root's spares are born in cgroups
        for pid in (caller.pid, server):  # processes this test started
            os.kill(pid, signal.SIGTERM)
        caller.wait(10)
        deadline = time.monotonic() + 5
        while os.path.exists(f"/proc/{server}") and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not os.path.exists(f"/proc/{server}"), "the fork-server did not end"
        assert not spares & our_cgroups(), "the spare's cgroups were left behind"
    finally:
        if caller.poll() is None:
            caller.kill()
            caller.wait()
