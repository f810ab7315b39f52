"""The pytest plugin: real services in tests, without home-made fixtures.

Installed with instancelib (the ``pytest11`` entry point ``instancelib``), so
any project's tests get these fixtures; ``-p no:instancelib`` turns it off.

- ``instancelib_registry``: a private registry for the test, in its
  temporary directory; an instance still running at the end fails the test
  (after it has been stopped).
- ``instance_factory``: ``instance_factory(image, name=None, *, port=None,
  ready=None, **start_options)`` starts an instance in that registry under a
  unique name (the test's, numbered); ``port="PORT"`` picks a free TCP port
  on 127.0.0.1, hands it to the service as ``$PORT`` and waits until the
  service listens on it (unless ``ready`` says otherwise).  Every instance
  is stopped at teardown, also when the test fails, and a failing test's
  report carries each instance's logs.  ``instance_factory.port(instance)``
  is the port it was handed.
- ``instancelib_image``: session-scoped; ``instancelib_image(definition)``
  builds a definition (a file's path or its text) once and returns the
  ``Image``; images are cached by the hash of the definition's text (and
  build arguments) in pytest's cache directory, across sessions too
  (``--cache-clear`` empties it).
"""

from __future__ import annotations

import itertools
import os
import re
import socket
from collections.abc import Callable, Generator, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:  # imported when a fixture is used: a test run that uses none pays nothing
    from instancelib.foreground import Image
    from instancelib.instance import Instance
    from instancelib.registry import InstanceRegistry

__all__ = ["InstanceFactory"]

_STARTED = pytest.StashKey[list["Instance"]]()
_LOG_LINES = 200  # of each stream, in a failing test's report


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class InstanceFactory:
    """Starts instances for one test (``instance_factory``; see the module doc)."""

    def __init__(self, registry: InstanceRegistry, test_name: str,
                 started: list[Instance]) -> None:
        self.registry = registry
        self._prefix = re.sub(r"[^a-zA-Z0-9._-]+", "-", test_name).strip("-.")[:80] or "test"
        self._numbers = itertools.count()
        self._started = started
        self._ports: dict[str, int] = {}

    def __call__(self, image: Image | str | os.PathLike[str], name: str | None = None, *,
                 port: str | None = None, ready: Any = None,
                 env: Mapping[str, str] | None = None, **options: Any) -> Instance:
        """Start ``image`` (``Instance.start``'s options); see the module doc."""
        from instancelib.instance import Instance  # noqa: PLC0415 (see the imports)

        name = name or f"{self._prefix}-{next(self._numbers)}"
        variables = dict(env or {})
        chosen = None
        if port is not None:
            chosen = _free_port()
            variables[port] = str(chosen)
            if ready is None:
                ready = ("tcp", chosen)
        instance = Instance.start(image, name, registry=self.registry, env=variables,
                                  ready=ready, **options)
        self._started.append(instance)
        if chosen is not None:
            self._ports[instance.name] = chosen
        return instance

    def port(self, instance: Instance) -> int:
        """The free port handed to ``instance`` (``port="..."``)."""
        return self._ports[instance.name]


@pytest.fixture
def instancelib_registry(tmp_path: Path) -> Iterator[InstanceRegistry]:
    """A registry of the test's own; fails the test if an instance is left running."""
    from instancelib.registry import InstanceRegistry  # noqa: PLC0415 (see the imports)

    registry = InstanceRegistry(tmp_path / "instancelib-registry")
    yield registry
    left = registry.stop(force=True)
    if left:
        pytest.fail(f"instances left running at the end of the test (now stopped): "
                    f"{', '.join(left)}", pytrace=False)


@pytest.fixture
def instance_factory(request: pytest.FixtureRequest,
                     instancelib_registry: InstanceRegistry) -> Iterator[InstanceFactory]:
    """Start instances under unique names; all stopped at teardown (see the module doc)."""
    started = request.node.stash.setdefault(_STARTED, [])
    yield InstanceFactory(instancelib_registry, request.node.name, started)
    for instance in started:
        instance.stop(force=True)


@pytest.fixture(scope="session")
def instancelib_image(request: pytest.FixtureRequest) -> Callable[..., Image]:
    """Build a definition once (cached by its hash); returns a function giving the Image."""
    from instancelib.build import build_cached  # noqa: PLC0415 (see the imports)

    # pytest's cache directory (``--cache-clear`` empties it), unless the cache plugin
    # is off (``-p no:cacheprovider``): then build_cached's own.
    cache_plugin = getattr(request.config, "cache", None)
    cache = Path(cache_plugin.mkdir("instancelib-images")) if cache_plugin is not None \
        else None

    def build(definition: str | os.PathLike[str], *,
              build_args: Mapping[str, str] | None = None, sandbox: bool = True) -> Image:
        return build_cached(definition, cache_dir=cache, build_args=build_args,
                            sandbox=sandbox)

    return build


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item,
                              call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    """A failing test's report carries the logs of the instances it started."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        _attach_logs(item, report)


def _attach_logs(item: pytest.Item, report: pytest.TestReport) -> None:
    for instance in item.stash.get(_STARTED, []):
        for stream, stderr in (("stdout", False), ("stderr", True)):
            try:
                lines = list(instance.logs(stderr=stderr, tail=_LOG_LINES))
            except Exception as err:  # a report must not fail: say why the log is missing
                lines = [f"(cannot read the log: {err})"]
            if lines:
                report.sections.append((f"instance {instance.name} {stream}",
                                        "\n".join(lines)))
