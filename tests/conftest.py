"""Shared fixtures: busybox images, an isolated registry per test, and leak checks.

Every test runs the real thing (namespaces, mounts, processes).  A test's
registry lives in its own temporary directory; whatever instance a failing
test leaves running is killed when the test ends.  At the end of the session
no instance process may remain and the host's mount table must be as it was.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from instancelib import Image, Instance, InstanceRegistry, offload
from instancelib.build.busybox import make_busybox_rootfs
from instancelib.linux import client
from tests.helpers import (
    cgroup_tops,
    host_mounts,
    instance_processes,
    loop_devices,
    network_links,
    our_cgroups,
    routing_state,
)
from tests.images import (  # noqa: F401 (session fixtures, registered by being imported here)
    busybox_rootfs,
    image_dir,
    podman_archives,
    sif_path,
    squashfs_path,
)
from tests.users import make_shared, remove_shared

ImageFactory = Callable[..., Image]


@pytest.fixture(scope="session", autouse=True)
def nothing_left_behind(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    # Address allocations of every test go to a directory of the session's own,
    # never to root's shared /run/instancelib/networks.
    os.environ["INSTANCELIB_NETWORK_STATE"] = str(tmp_path_factory.mktemp("network-state"))
    processes_before = instance_processes()
    links_before = network_links()
    routing_before = routing_state()
    cgroup_tops_before = cgroup_tops()
    mounts_before = host_mounts()
    loops_before = loop_devices()
    cgroups_before = our_cgroups()
    yield
    offload.shutdown()
    client._shutdown()
    deadline = time.monotonic() + 5
    leftover = instance_processes() - processes_before
    while leftover and time.monotonic() < deadline:
        time.sleep(0.05)
        leftover = instance_processes() - processes_before
    assert not leftover, f"instance processes left running: {sorted(leftover)}"
    assert host_mounts() == mounts_before, "the host's mount table changed"
    assert loop_devices() - loops_before == set(), "loop devices left attached"
    # Bridges and veths are made only in network namespaces the tests make themselves.
    assert network_links() - links_before == set(), "network links added to the host"
    assert routing_state() == routing_before, "the host's forwarding or nf_tables changed"
    # Nor cgroups outside instancelib's tree (the peers a test runs, podman, make their own).
    assert cgroup_tops() - cgroup_tops_before == set(), "cgroups left at a hierarchy's top"
    # The fork-servers remove their spares' cgroups as they exit: give them a moment.
    leftover_cgroups = our_cgroups() - cgroups_before
    while leftover_cgroups and time.monotonic() < deadline + 3:
        time.sleep(0.05)
        leftover_cgroups = our_cgroups() - cgroups_before
    assert not leftover_cgroups, f"cgroups left behind: {sorted(leftover_cgroups)}"


@pytest.fixture(autouse=True)
def no_cgroup_left(request: pytest.FixtureRequest) -> Iterator[None]:
    """Each test removes the cgroups its instances had (checked once its fixtures are gone)."""
    before = our_cgroups(spares=False)
    yield  # autouse: set up first, so torn down after the test's other fixtures
    _check_cgroups(before, request.node.nodeid)


def _check_cgroups(before: set[str], test: str) -> None:
    deadline = time.monotonic() + 3
    left = our_cgroups(spares=False) - before
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = our_cgroups(spares=False) - before
    assert not left, f"{test} left cgroups behind: {sorted(left)}"


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[InstanceRegistry]:
    reg = InstanceRegistry(tmp_path / "registry")
    yield reg
    for instance in reg.list():
        instance.stop(force=True)


@pytest.fixture
def make_image(tmp_path: Path) -> ImageFactory:
    counter = itertools.count()

    def make(**kwargs: Any) -> Image:
        return Image(make_busybox_rootfs(tmp_path / f"image{next(counter)}", **kwargs))

    return make


@pytest.fixture
def image(make_image: ImageFactory) -> Image:
    """A busybox image without start/run scripts (an idle instance)."""
    return make_image()


@pytest.fixture
def start(registry: InstanceRegistry) -> Callable[..., Instance]:
    """``Instance.start`` bound to the test's registry."""

    def start(image: Image, name: str = "test", **kwargs: Any) -> Instance:
        return Instance.start(image, name, registry=registry, **kwargs)

    return start


@pytest.fixture(scope="module")
def shared() -> Iterator[Path]:
    """For the two-user tests (root only): an image and the package, readable by the users."""
    directory = make_shared()
    try:
        yield directory
    finally:
        remove_shared(directory)
