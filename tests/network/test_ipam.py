"""Address allocation (``network/ipam.py``): distinct, held by live processes, reused after."""

from __future__ import annotations

import ipaddress
import multiprocessing
import os
import subprocess

import pytest

from instancelib import InvalidArgument, NameConflict
from instancelib.linux import procfs
from instancelib.network.config import load_network
from instancelib.network.ipam import Allocator

A = ipaddress.IPv4Address


def _me() -> tuple[int, int, str]:
    stat = procfs.read_stat(os.getpid())
    assert stat is not None
    return os.getpid(), stat.starttime, "me"


def test_addresses_are_the_lowest_free_and_reused_after_release(tmp_path):
    allocator = Allocator(load_network("bridge", tmp_path), tmp_path / "state")
    first, second = allocator.allocate(_me()), allocator.allocate(_me())
    assert (first, second) == (A("10.22.0.2"), A("10.22.0.3"))   # .1 is the gateway
    allocator.release(first, _me())
    assert allocator.allocate(_me()) == first
    assert set(allocator.holders()) == {first, second}


def test_an_address_of_an_ended_holder_is_free(tmp_path):
    allocator = Allocator(load_network("bridge", tmp_path), tmp_path / "state")
    gone = subprocess.Popen(["true"])
    gone.wait()
    allocator.allocate((gone.pid, 1, "gone"))
    assert allocator.allocate(_me()) == A("10.22.0.2")


@pytest.mark.parametrize(("requested", "error", "match"), [
    (A("10.99.0.5"), InvalidArgument, "not an address of network 'bridge'"),
    (A("10.22.0.1"), InvalidArgument, "gateway"),
    (A("10.22.255.255"), InvalidArgument, "not an address"),
])
def test_a_requested_address_outside_the_range_is_refused(tmp_path, requested, error, match):
    allocator = Allocator(load_network("bridge", tmp_path), tmp_path / "state")
    with pytest.raises(error, match=match):
        allocator.allocate(_me(), requested)


def test_a_requested_address_that_is_taken_is_a_conflict(tmp_path):
    allocator = Allocator(load_network("bridge", tmp_path), tmp_path / "state")
    assert allocator.allocate(_me(), A("10.22.3.4")) == A("10.22.3.4")
    with pytest.raises(NameConflict, match="taken by instance 'me'"):
        allocator.allocate(_me(), A("10.22.3.4"))


def test_release_spares_an_address_taken_again_by_another(tmp_path):
    allocator = Allocator(load_network("bridge", tmp_path), tmp_path / "state")
    address = allocator.allocate((1234567, 1, "old"))          # a holder long gone
    allocator.allocate(_me(), address)                         # taken again
    allocator.release(address, (1234567, 1, "old"))
    assert allocator.holders() == {address: _me()}


def _take(root: str, queue) -> None:  # type: ignore[no-untyped-def]
    allocator = Allocator(load_network("bridge", None), __import__("pathlib").Path(root))
    stat = procfs.read_stat(os.getppid())
    assert stat is not None
    queue.put(str(allocator.allocate((os.getppid(), stat.starttime, f"p{os.getpid()}"))))


def test_30_concurrent_allocations_get_30_distinct_addresses(tmp_path, monkeypatch):
    monkeypatch.setenv("INSTANCELIB_NETWORK_DIR", str(tmp_path / "none"))
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    workers = [context.Process(target=_take, args=(str(tmp_path / "state"), queue))
               for _ in range(30)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    addresses = [queue.get(timeout=5) for _ in workers]
    assert len(set(addresses)) == 30
