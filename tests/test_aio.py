"""The async face (``instancelib.aio``): the same core, awaited; cancellation undoes."""

from __future__ import annotations

import asyncio
import os

import pytest

from instancelib import Instance, Timeout
from instancelib.aio import AsyncInstance, AsyncInstanceRegistry
from tests.helpers import instance_pids, instance_processes

TICKER = "#!/bin/sh\ni=0\nwhile true; do i=$((i+1)); echo line$i; sleep 0.05; done\n"


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 120))


def test_async_with_starts_execs_and_stops(image, registry):
    async def main():
        async with AsyncInstance.start(image, "a", registry=registry) as instance:
            result = await instance.exec(["sh", "-c", "cat; echo err >&2; exit 3"],
                                         input="fed")
            assert (result.returncode, result.stdout, result.stderr) == (3, "fed", "err\n")
            assert instance.is_running() and repr(instance).startswith("<AsyncInstance 'a'")
            return instance
    instance = run(main())
    assert not instance.is_running() and registry.list() == []


def test_await_start_and_the_registry_face(image, registry):
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
def test_a_cancelled_start_leaves_nothing(image, registry, delay):
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


def test_twenty_starts_at_once_on_one_loop(image, registry):
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
def test_a_forked_child_gets_workers_of_its_own(image, start):
    instance = AsyncInstance(start(image, "forked"))
    assert run(instance.stats()).name == "forked"  # the parent's workers exist now
    pid = os.fork()
    if pid == 0:  # the child: none of the parent's threads; the face must still work
        code = 2
        try:
            code = 0 if asyncio.run(asyncio.wait_for(instance.stats(), 10)).name == "forked" \
                else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
