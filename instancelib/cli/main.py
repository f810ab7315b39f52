"""The ``instancelib`` command: a thin layer over the API, in Singularity's words.

::

    instancelib instance start|run [options] IMAGE NAME [ARGS...]
    instancelib instance list [--json] [--logs] [PATTERN]
    instancelib instance stop [--all] [--signal SIG] [--timeout N] [--force] [PATTERN]
    instancelib instance stats [--no-stream] [--json] NAME
    instancelib exec instance://NAME CMD...
    instancelib run instance://NAME [ARGS...]
    instancelib shell instance://NAME
    instancelib sif header|list IMAGE
    instancelib sif info ID IMAGE
    instancelib build [--sandbox] [--notest] [--force] [--build-arg K=V] TARGET SOURCE
    instancelib inspect [--labels|--deffile|--runscript|--startscript|--test|
                         --environment|--helpfile|--list-apps|--all] [--app APP] [--json] IMAGE
    instancelib alias singularity|apptainer [DIR]
    instancelib version

Run under the name ``singularity`` or ``apptainer`` (a link, or the launcher
``alias`` writes) it is that tool for its clients: its version string, its
registry layout (logs under ``~/.singularity/instances/logs/...``), its prompt.

Exit status: 0 on success; 255 on an error, with one ``FATAL:`` line on stderr
(as Singularity); for ``exec``/``run``/``shell`` the command's own status
(128+N when signal N ended it).

This module is on the path of every call a client makes (spython runs
``singularity --version`` before nearly everything), so it imports nothing
heavy itself: the version is printed before the parser is even built, and each
verb's module is imported when that verb runs.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import TYPE_CHECKING

from instancelib.cli.personality import Personality, personality_of
from instancelib.errors import InstanceError
from instancelib.verbosity import VERBOSE

if TYPE_CHECKING:
    import argparse

    from instancelib.records.directory import InstanceRecords
    from instancelib.registry import InstanceRegistry

__all__ = ["ERROR_EXIT", "Session", "main"]

log = logging.getLogger("instancelib")

ERROR_EXIT = 255



class _Formatter(logging.Formatter):
    """Singularity's message style: ``INFO:    text``, ``FATAL:   text``."""

    def format(self, record: logging.LogRecord) -> str:
        level = "FATAL" if record.levelno >= logging.ERROR else record.levelname
        return f"{level + ':':<9}{record.getMessage()}"


class Session:
    """One run of the command: its arguments, what it is called, its registry (made once)."""

    def __init__(self, args: argparse.Namespace, personality: Personality) -> None:
        self.args = args
        self.personality = personality
        self._registry: InstanceRegistry | None = None

    def _user(self) -> str | None:
        return getattr(self.args, "user", None) or None

    def registry(self) -> InstanceRegistry:
        """The caller's registry (or ``--user``'s), in this name's layout."""
        if self._registry is None:
            from instancelib.registry import InstanceRegistry  # noqa: PLC0415 (see module doc)

            self._registry = InstanceRegistry(user=self._user(),
                                              layout=self.personality.layout)
        return self._registry

    def records(self) -> InstanceRecords:
        """The same registry's records only, without ``Instance`` and its imports (listing)."""
        if self._registry is not None:
            return self._registry
        from instancelib.records.directory import InstanceRecords  # noqa: PLC0415

        return InstanceRecords(user=self._user(), on_ended=_release_ended,
                               layout=self.personality.layout)


def _release_ended(record: object) -> None:
    from instancelib.stopping import release_ended  # noqa: PLC0415 (only when one ended)

    release_ended(record)  # type: ignore[arg-type]


def _module(name: str) -> Callable[[], ModuleType]:
    def load() -> ModuleType:
        import importlib  # noqa: PLC0415

        return importlib.import_module(f"instancelib.cli.{name}")

    return load


# Each verb's module is imported when it runs: `instance list` loads neither the
# image commands nor Instance (the CLI's start-up is most of a quick command's time).
_COMMANDS: dict[tuple[str, str | None], tuple[Callable[[], ModuleType], str]] = {
    ("instance", "start"): (_module("instance_commands"), "instance_start"),
    ("instance", "run"): (_module("instance_commands"), "instance_start"),
    ("instance", "list"): (_module("listing"), "instance_list"),
    ("instance", "stop"): (_module("instance_commands"), "instance_stop"),
    ("instance", "stats"): (_module("instance_commands"), "instance_stats"),
    ("instance", "restart"): (_module("instance_commands"), "instance_restart"),
    ("exec", None): (_module("instance_commands"), "exec_command"),
    ("run", None): (_module("instance_commands"), "run_command"),
    ("shell", None): (_module("instance_commands"), "shell_command"),
    ("test", None): (_module("instance_commands"), "test_command"),
    ("sif", None): (_module("image_commands"), "sif_command"),
    ("build", None): (_module("image_commands"), "build_command"),
    ("inspect", None): (_module("image_commands"), "inspect_command"),
    ("alias", None): (_module("alias"), "alias_command"),
    ("cluster", "list"): (_module("cluster_commands"), "cluster_list"),
    ("cluster", "stop"): (_module("cluster_commands"), "cluster_stop"),
}


# The verbs that start an instance (a foreground command runs in one, a build's %post too).
_STARTING = {("instance", "start"), ("instance", "run"), ("exec", None), ("run", None),
             ("shell", None), ("test", None), ("build", None)}


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    """Run the command line; return the exit status.

    ``prog`` is the name it runs under (default: ``sys.argv[0]``'s); ``singularity``
    and ``apptainer`` make it behave as those tools.
    """
    arguments = list(sys.argv[1:] if argv is None else argv)
    personality = personality_of(prog)
    from instancelib.cli.parser import UsageError, build_parser  # noqa: PLC0415

    try:
        args = build_parser(personality.name, personality.version_line).parse_args(arguments)
    except UsageError as err:
        sys.stderr.write(f"{'FATAL:':<9}{err}\n")
        return ERROR_EXIT
    except SystemExit as done:  # --help, or --version among other words: printed
        return done.code if isinstance(done.code, int) else 0
    if args.command == "version":
        sys.stdout.write(personality.version + "\n")
        return 0
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    saved = (log.propagate, log.level)  # the logger is the caller's too (main in-process)
    log.addHandler(handler)
    log.propagate = False
    log.setLevel(logging.DEBUG if args.debug else VERBOSE if args.verbose
                 else logging.ERROR if args.silent
                 else logging.WARNING if args.quiet else logging.INFO)
    verb = (args.command, getattr(args, "instance_command", None)
            or getattr(args, "cluster_command", None))
    load, function = _COMMANDS[verb]
    if verb in _STARTING:
        from instancelib import warmup  # noqa: PLC0415 (only for the verbs that start)

        warmup.begin()  # the fork-server and a spare get ready while the verb's imports run
    try:
        command: Callable[[argparse.Namespace, Session], int] = getattr(load(), function)
        return command(args, Session(args, personality))
    except InstanceError as err:
        log.error("%s", str(err).splitlines()[0] if not args.debug else err)
        return ERROR_EXIT
    except KeyboardInterrupt:
        return 130
    finally:
        log.removeHandler(handler)
        log.propagate, level = saved
        log.setLevel(level)
