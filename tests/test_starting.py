"""Starting (``starting.py``): from threads and event loops; a failed start leaves nothing."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

import pytest

from instancelib import (
    ImageError,
    Instance,
    InvalidArgument,
    StartError,
)


def test_start_from_a_thread_of_a_multithreaded_process(image, registry):
    stop = threading.Event()
    busy = [threading.Thread(target=stop.wait) for _ in range(4)]
    for thread in busy:
        thread.start()
    box: dict[str, object] = {}

    def worker() -> None:
        instance = Instance.start(image, "threaded", registry=registry)
        box["result"] = instance.exec(["echo", "ok"]).stdout
        instance.stop()

    try:
        thread = threading.Thread(target=worker)
        thread.start()
        thread.join(60)
    finally:
        stop.set()
        for t in busy:
            t.join()
    assert box["result"] == "ok\n"


def test_start_from_inside_a_running_event_loop(image, registry):
    async def main() -> str:
        instance = Instance.start(image, "looped", registry=registry)
        try:
            direct = instance.exec(["echo", "direct"]).stdout
            threaded = await asyncio.to_thread(lambda: instance.exec(["echo", "thread"]).stdout)
            return direct + threaded
        finally:
            instance.stop()

    assert asyncio.run(main()) == "direct\nthread\n"







def test_startscript_with_missing_interpreter_is_a_start_error(make_image, start, registry):
    image = make_image(startscript="#!/usr/bin/python9\nprint(1)\n")
    with pytest.raises(StartError) as caught:
        start(image, "broken")
    assert "python9" in str(caught.value)
    assert caught.value.name == "broken"
    assert registry.list() == []
    assert not registry.record_path("broken").exists()


def test_image_without_bin_sh_is_a_start_error(make_image, start, registry):
    image = make_image(startscript="echo no shebang\n")
    os.chmod(Path(image.path) / ".singularity.d/startscript", 0o644)
    os.unlink(Path(image.path) / "bin/sh")
    with pytest.raises(StartError, match="/bin/sh"):
        start(image, "nosh")
    assert registry.list() == []


def test_failing_env_script_is_a_start_error_with_its_output(make_image, start, registry):
    image = make_image(environment={"50-bad.sh": "echo env-script-broke >&2\nexit 3\n"})
    with pytest.raises(StartError) as caught:
        start(image)
    assert "env-script-broke" in (caught.value.detail or "")
    assert registry.list() == []


def test_failed_start_leaves_no_process(make_image, start):
    before = {p for p in os.listdir("/proc") if p.isdigit()}
    image = make_image(startscript="#!/nonexistent/interpreter\n")
    with pytest.raises(StartError):
        start(image)
    time.sleep(0.1)
    for pid in {p for p in os.listdir("/proc") if p.isdigit()} - before:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        assert not cmdline.startswith(b"instancelib-init"), pid


def test_timeout_must_be_positive(image, start):
    with pytest.raises(InvalidArgument):
        start(image, timeout=0)


def test_missing_image_is_an_image_error(start, tmp_path):
    with pytest.raises(ImageError):
        start(str(tmp_path / "nope"))
