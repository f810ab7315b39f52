"""Commands run on an image in the foreground (Singularity's ``exec|run|shell|test IMAGE``).

A foreground command runs in a temporary instance: no script of its own
(``service=False``), tied to this process (``end_with_caller``: if this
process is killed, PID 1 kills the whole instance at once), kept in a private
registry in the temporary directory, so it is never listed, never takes a
name, and is stopped and removed when the command ends.

The private registry (``$TMPDIR/instancelib-<uid>-fg-XXXXXXXX``) is held under
an ``flock`` for as long as its command runs.  One whose holder was killed
(and so could not remove it) is released by the next foreground command: its
record is pruned (which releases a root instance's cgroup) and the directory
removed.

The public ``instancelib.Image`` is the ``Image`` here: ``image.Image`` with
``exec``/``run``/``test`` and ``temporary_instance`` added (the image floor
cannot start instances; this floor, above ``Instance``, can).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from instancelib.errors import InvalidArgument
from instancelib.image import image as base
from instancelib.instance import Instance
from instancelib.linux import pathwalk
from instancelib.process import ExecResult
from instancelib.registry import InstanceRegistry

__all__ = ["SERVICE_OPTIONS", "Image", "exists_inside", "prune_stale", "test_command"]

log = logging.getLogger("instancelib")

_NAME = "foreground"
_HOLD = ".held"
_TEST = "/.singularity.d/test"
# Instance.start's options a temporary instance may not be given: it has no service and
# no name of the caller's.
SERVICE_OPTIONS = frozenset({"args", "run", "ready", "pid_file", "service", "end_with_caller",
                             "registry"})


def _prefix() -> str:
    return f"instancelib-{os.geteuid()}-fg-"


class Image(base.Image):
    """A container image: a SIF file, a sandbox directory, a squashfs or ext3 file,
    or an OCI/Docker archive (see ``inspect()`` for its metadata).

    ``Instance.start(image, name)`` runs it as a named background instance;
    ``exec``/``run``/``test`` run one command on it in the foreground, as
    ``singularity exec|run|test IMAGE`` do.
    """

    @contextlib.contextmanager
    def temporary_instance(self, **options: Any) -> Iterator[Instance]:
        """A temporary instance of this image (no service) for the ``with`` block.

        ``options`` are ``Instance.start``'s (binds, env, contain, limits,
        network...), except those of a service (args, run, ready, pid_file)
        and ``registry``.  The instance is in no registry of the user's, and
        ends with the block, or at once if this process is killed.

        Raises:
            what ``Instance.start`` raises.
        """
        refused = sorted(SERVICE_OPTIONS & options.keys())
        if refused:
            raise InvalidArgument(f"not an option of a foreground command: {', '.join(refused)}")
        prune_stale()
        root = tempfile.mkdtemp(prefix=_prefix())
        hold = os.open(os.path.join(root, _HOLD), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW
                       | os.O_CLOEXEC, 0o600)
        registry: InstanceRegistry | None = None
        try:
            fcntl.flock(hold, fcntl.LOCK_EX)
            registry = InstanceRegistry(root)
            instance = Instance.start(self, _NAME, registry=registry, service=False,
                                      end_with_caller=True, **options)
            try:
                yield instance
            finally:
                instance.stop(timeout=2.0)
        finally:
            if registry is not None:
                registry.store.close()
            shutil.rmtree(root, ignore_errors=True)
            os.close(hold)

    def exec(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
             cwd: str | None = None, input: bytes | str | None = None,
             timeout: float | None = None, text: bool = True, **options: Any) -> ExecResult:
        """Run ``argv`` on this image in a temporary instance; return its ``ExecResult``.

        ``env``, ``cwd``, ``input``, ``timeout`` and ``text`` are
        ``Instance.exec``'s (``env`` is the command's); ``options`` are the
        instance's (see ``temporary_instance``).  It costs about an instance's
        start, one exec and a stop.
        """
        with self.temporary_instance(**options) as instance:
            return instance.exec(argv, env=env, cwd=cwd, input=input, timeout=timeout,
                                 text=text)

    def run(self, args: Sequence[str] = (), *, env: Mapping[str, str] | None = None,
            input: bytes | str | None = None, timeout: float | None = None,
            text: bool = True, **options: Any) -> ExecResult:
        """Run the image's runscript with ``args`` (``/bin/sh`` if it has none), as ``exec``."""
        with self.temporary_instance(**options) as instance:
            return instance.exec(instance.run_command(args), env=env, input=input,
                                 timeout=timeout, text=text)

    def test(self, *, env: Mapping[str, str] | None = None, timeout: float | None = None,
             text: bool = True, **options: Any) -> ExecResult:
        """Run the image's ``%test`` script (``singularity test``); status 0 without one."""
        with self.temporary_instance(**options) as instance:
            return instance.exec(test_command(instance), env=env, timeout=timeout, text=text)


def exists_inside(instance: Instance, path: str) -> bool:
    """Whether ``path`` exists in the running instance's root (resolved inside it)."""
    try:
        return pathwalk.resolve_in_root(f"/proc/{instance.pid}/root", path)[1]
    except OSError:
        return False


def test_command(instance: Instance) -> list[str]:
    """The command ``test`` runs: the image's test script, or ``true`` if it has none."""
    return ["/bin/sh", _TEST] if exists_inside(instance, _TEST) else ["/bin/sh", "-c", "exit 0"]


def prune_stale() -> list[str]:
    """Remove this user's foreground registries whose command was killed; return them.

    Only directories of ours (owner, mode 0700, not a link) whose hold lock is
    free are touched; a live command's is held and stays.
    """
    removed: list[str] = []
    directory = tempfile.gettempdir()
    try:
        entries = [e for e in os.scandir(directory) if e.name.startswith(_prefix())]
    except OSError:
        return removed
    for entry in entries:
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if (not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid()
                or stat.S_IMODE(info.st_mode) != 0o700):
            continue
        try:
            hold = os.open(os.path.join(entry.path, _HOLD), os.O_RDWR | os.O_NOFOLLOW
                           | os.O_CLOEXEC)
        except FileNotFoundError:
            continue  # being made (the hold file comes first) or being removed
        except OSError:
            continue
        try:
            try:
                fcntl.flock(hold, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its command runs
            registry = InstanceRegistry(entry.path)
            try:
                if registry.records():  # prunes the dead record (and a root one's cgroup)
                    continue
            finally:
                registry.store.close()
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(entry.path)
            log.debug("removed the foreground registry %s of a killed command", entry.path)
        finally:
            os.close(hold)
    return removed
