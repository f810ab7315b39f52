"""The fork-server client (``linux/client.py``): forked callers, interrupted requests."""

from __future__ import annotations

import multiprocessing
import os
import subprocess

import pytest

from instancelib import (
    Image,
    Instance,
    InstanceRegistry,
)
from instancelib.linux import client, wire


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
