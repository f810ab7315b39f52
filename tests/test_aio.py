"""The async face (``instancelib.aio``): the same core, awaited; cancellation undoes."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path

import pytest

from instancelib import Instance, InvalidArgument, NameConflict, StartError, Timeout, offload
from instancelib.aio import AsyncInstance, AsyncInstanceRegistry
from tests.helpers import instance_pids, instance_processes

TICKER = "#!/bin/sh\ni=0\nwhile true; do i=$((i+1)); echo line$i; sleep 0.05; done\n"


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 120))


def helper_up(image, registry):
    """The helper process answers (the first async start of the process starts it)."""
    if not offload.ready():
        run(AsyncInstance.start(image, "helper-warm-up", registry=registry)).sync.stop()
        deadline = time.monotonic() + 10
        while not offload.ready():
            assert time.monotonic() < deadline, "the helper process did not come up"
            time.sleep(0.01)
    return offload._helper[0]


@pytest.fixture(params=["helper", "threads"])
def face(request, monkeypatch, image, registry):
    """Starts and stops in the helper process, or on threads (INSTANCELIB_AIO_HELPER=0)."""
    if request.param == "helper":
        monkeypatch.setenv("INSTANCELIB_AIO_HELPER", "1")
        helper_up(image, registry)
    else:
        monkeypatch.setenv("INSTANCELIB_AIO_HELPER", "0")
    return request.param


def test_async_with_starts_execs_and_stops(image, registry, face):
    async def main():
        async with AsyncInstance.start(image, "a", registry=registry) as instance:
            result = await instance.exec(["sh", "-c", "cat; echo err >&2; exit 3"],
                                         input="fed")
            assert (result.returncode, result.stdout, result.stderr) == (3, "fed", "err\n")
            assert instance.is_running() and repr(instance).startswith("<AsyncInstance 'a'")
            return instance
    instance = run(main())
    assert not instance.is_running() and registry.list() == []


def test_await_start_and_the_registry_face(image, registry, face):
    async def main():
        instance = await AsyncInstance.start(image, "b", registry=registry, env={"X": "1"})
        faced = AsyncInstanceRegistry(registry=registry)
        assert [i.name for i in await faced.list()] == ["b"]
        assert (await faced.get("b")).pid == instance.pid
        assert (await instance.exec(["sh", "-c", "echo $X"])).stdout == "1\n"
        assert await faced.stop("b") == ["b"]
        assert not instance.is_running()
    run(main())


def test_a_cancelled_exec_kills_and_reaps_its_command(image, start):
    instance = AsyncInstance(start(image, "c"))

    async def main():
        task = asyncio.ensure_future(instance.exec(["sleep", "30"]))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    run(main())
    assert len(instance_pids(instance.sync)) == 1  # PID 1 alone: sleep killed and reaped


def test_an_exec_out_of_time_is_killed(image, start):
    instance = AsyncInstance(start(image, "d"))
    with pytest.raises(Timeout, match=r"still running after 0\.3 s"):
        run(instance.exec(["sleep", "30"], timeout=0.3))
    assert len(instance_pids(instance.sync)) == 1


@pytest.mark.parametrize("delay", [0, 0.3])
def test_a_cancelled_start_leaves_nothing(image, registry, delay, face):
    """Cancelled at once, or while the start waits for readiness (PID 1 up, recorded)."""
    before = instance_processes()

    async def main():
        task = asyncio.ensure_future(AsyncInstance.start(
            image, "e", registry=registry, ready=("file", "/never"), timeout=20))
        await asyncio.sleep(delay)
        if delay:
            assert [i.name for i in registry.list()] == ["e"]  # under way
        assert task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    run(main())
    assert registry.list() == []
    assert instance_processes() - before == set()


def test_wait_follows_pid_1s_end(image, start):
    instance = AsyncInstance(start(image, "f"))

    async def main():
        with pytest.raises(Timeout):
            await instance.wait(0.1)
        await asyncio.gather(instance.wait(10), instance.stop())
    run(main())
    assert not instance.is_running()


def test_logs_follow_until_the_caller_stops_or_the_instance_ends(make_image, start):
    instance = AsyncInstance(start(make_image(startscript=TICKER), "g"))

    async def main():
        seen = []
        async for line in instance.logs(follow=True):
            seen.append(line)
            if len(seen) == 3:
                break
        assert seen == ["line1", "line2", "line3"]
        assert (await _collect(instance.logs(tail=1)))[0].startswith("line")
        follower = asyncio.ensure_future(_collect(instance.logs(follow=True)))
        await asyncio.sleep(0.2)
        await instance.stop()
        lines = await asyncio.wait_for(follower, 10)  # ends with the instance
        assert lines[:3] == ["line1", "line2", "line3"] and len(lines) > 3
    run(main())


def test_stats_stream_until_the_instance_ends(image, start):
    instance = AsyncInstance(start(image, "h"))

    async def main():
        one = await instance.stats()
        assert one.name == "h"
        readings = []
        async for reading in instance.stream_stats(interval=0.05):
            readings.append(reading)
            if len(readings) == 3:
                await instance.stop()
        assert len(readings) == 3  # the stream ended with the instance
    run(main())


def test_async_with_on_the_sync_instance_works(image, registry):
    async def main():
        async with Instance.start(image, "i", registry=registry) as instance:
            assert instance.is_running()
        return instance
    assert not run(main()).is_running()


def test_twenty_starts_at_once_on_one_loop(image, registry, face):
    async def main():
        started = await asyncio.gather(*(AsyncInstance.start(image, f"n{i}", registry=registry)
                                         for i in range(20)))
        assert sorted(i.name for i in registry.list()) == sorted(f"n{i}" for i in range(20))
        await asyncio.gather(*(i.stop() for i in started))
    run(main())
    assert registry.list() == []


async def _collect(lines):
    return [line async for line in lines]


# Forking a process that has threads is what this test is about (3.12+ warns of it).
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_gets_workers_of_its_own(image, registry, start):
    instance = AsyncInstance(start(image, "forked"))
    assert run(instance.stats()).name == "forked"  # the parent's workers exist now
    helper = helper_up(image, registry)  # and its helper
    pid = os.fork()
    if pid == 0:  # the child: none of the parent's threads; the face must still work
        code = 2
        try:
            async def child():
                assert not offload.ready()  # the parent's helper is not the child's
                assert (await instance.stats()).name == "forked"
                await instance.stop()  # on threads (or a helper of its own)
            asyncio.run(asyncio.wait_for(child(), 10))
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert not instance.is_running()
    assert helper_up(image, registry) is helper  # the child did not end the parent's helper
    run(AsyncInstance.start(image, "after-fork", registry=registry)).sync.stop()


# -- the helper process (instancelib.offload) ---------------------------------------------------


def test_starts_and_stops_run_in_the_helper_not_in_the_callers_process(image, registry,
                                                                       monkeypatch):
    helper_up(image, registry)

    def not_here(*args, **kwargs):
        raise AssertionError("ran in the caller's process")

    monkeypatch.setattr(Instance, "start", not_here)
    monkeypatch.setattr(Instance, "stop", not_here)

    async def main():
        instance = await AsyncInstance.start(image, "h1", registry=registry)
        assert isinstance(instance.sync, Instance) and instance.sync.registry is registry
        assert (await instance.exec(["echo", "in"])).stdout == "in\n"  # exec stays here
        await instance.stop()
        return instance
    instance = run(main())
    assert not instance.is_running() and registry.list() == []


def test_the_helper_starts_with_the_callers_environment_directory_and_umask(
        image, registry, tmp_path, monkeypatch):
    helper = helper_up(image, registry)
    monkeypatch.chdir(tmp_path)
    old_umask = os.umask(0o027)
    try:
        async def main():
            found = []
            for value in ("one", "two"):  # a changed environment is the next start's
                monkeypatch.setenv("SINGULARITYENV_WHICH", value)
                instance = await AsyncInstance.start(image, f"env-{value}", registry=registry,
                                                     pid_file=f"{value}.pid")
                found.append((await instance.exec(["sh", "-c", "echo $WHICH"])).stdout)
                assert (tmp_path / f"{value}.pid").read_text() == f"{instance.pid}\n"
                await instance.stop()
            return found
        assert run(main()) == ["one\n", "two\n"]
    finally:
        os.umask(old_umask)
    status = Path(f"/proc/{helper.process.pid}/status").read_text()
    assert "Umask:\t0027" in status  # the umask of the caller when it asked


def test_the_helpers_errors_come_back_typed(image, registry):
    helper_up(image, registry)

    async def main():
        with pytest.raises(InvalidArgument, match="timeout"):
            await AsyncInstance.start(image, "bad", registry=registry, timeout=-1)
        first = await AsyncInstance.start(image, "twice", registry=registry)
        with pytest.raises(NameConflict, match="twice"):
            await AsyncInstance.start(image, "twice", registry=registry)
        await first.stop()
    run(main())
    assert registry.list() == []


def test_the_helpers_log_records_reach_the_callers_logger(make_image, registry, caplog):
    stubborn = make_image(startscript="#!/bin/sh\ntrap '' INT\nwhile :; do sleep 1; done\n")
    helper_up(stubborn, registry)
    caplog.set_level(logging.WARNING, logger="instancelib")

    async def main():
        instance = await AsyncInstance.start(stubborn, "stubborn", registry=registry)
        await instance.stop(timeout=0.3)  # SIGINT ignored: the stop kills, and says so
    run(main())
    assert any("still running" in r.getMessage() and r.name == "instancelib"
               for r in caplog.records)


def test_a_start_that_names_its_caller_stays_on_threads(image, registry, monkeypatch):
    helper_up(image, registry)

    def refuse(*args, **kwargs):
        raise AssertionError("sent to the helper")

    monkeypatch.setattr(offload, "call", refuse)

    async def main():
        instance = await AsyncInstance.start(image, "mine", registry=registry,
                                             end_with_caller=True)
        assert instance.is_running()
        monkeypatch.undo()
        await instance.stop()
    run(main())


def test_a_helper_that_dies_fails_its_calls_and_a_new_one_follows(image, registry):
    helper = helper_up(image, registry)

    async def main():
        task = asyncio.ensure_future(AsyncInstance.start(
            image, "orphaned", registry=registry, ready=("file", "/never"), timeout=20))
        await asyncio.sleep(0.3)
        helper.process.kill()  # our own child, by its PID
        with pytest.raises(StartError, match="helper process ended"):
            await task
    run(main())
    helper.process.wait(5)
    # The start it left half-made is the registry's to clean up: its instance is gone with
    # its caller (no record), or is recovered and stopped here.
    for instance in registry.list():
        instance.stop(force=True)
    assert helper_up(image, registry) is not helper
    assert registry.list() == []
