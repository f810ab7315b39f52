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

Exit status: 0 on success; 255 on an error, with one ``FATAL:`` line on stderr
(as Singularity); for ``exec``/``run``/``shell`` the command's own status
(128+N when signal N ended it).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from types import ModuleType

from instancelib.cli.parser import UsageError, build_parser
from instancelib.errors import InstanceError
from instancelib.registry import InstanceRegistry

__all__ = ["ERROR_EXIT", "main"]

log = logging.getLogger("instancelib")

ERROR_EXIT = 255


class _Formatter(logging.Formatter):
    """Singularity's message style: ``INFO:    text``, ``FATAL:   text``."""

    def format(self, record: logging.LogRecord) -> str:
        level = "FATAL" if record.levelno >= logging.ERROR else record.levelname
        return f"{level + ':':<9}{record.getMessage()}"


def _instance_commands() -> ModuleType:
    from instancelib.cli import instance_commands  # noqa: PLC0415 (see _COMMANDS)

    return instance_commands


def _image_commands() -> ModuleType:
    from instancelib.cli import image_commands  # noqa: PLC0415 (see _COMMANDS)

    return image_commands


# Each verb's module is imported when it runs: `instance list` loads nothing of the
# image commands (the CLI's start-up is most of a quick command's time).
_COMMANDS: dict[tuple[str, str | None], tuple[Callable[[], ModuleType], str]] = {
    ("instance", "start"): (_instance_commands, "instance_start"),
    ("instance", "run"): (_instance_commands, "instance_start"),
    ("instance", "list"): (_instance_commands, "instance_list"),
    ("instance", "stop"): (_instance_commands, "instance_stop"),
    ("instance", "stats"): (_instance_commands, "instance_stats"),
    ("exec", None): (_instance_commands, "exec_command"),
    ("run", None): (_instance_commands, "run_command"),
    ("shell", None): (_instance_commands, "shell_command"),
    ("sif", None): (_image_commands, "sif_command"),
    ("build", None): (_image_commands, "build_command"),
    ("inspect", None): (_image_commands, "inspect_command"),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    try:
        args = build_parser().parse_args(argv)
    except UsageError as err:
        sys.stderr.write(f"{'FATAL:':<9}{err}\n")
        return ERROR_EXIT
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    log.addHandler(handler)
    log.propagate = False
    log.setLevel(logging.DEBUG if args.debug else logging.ERROR if args.silent
                 else logging.WARNING if args.quiet else logging.INFO)
    load, function = _COMMANDS[(args.command, getattr(args, "instance_command", None))]
    command: Callable[[argparse.Namespace, InstanceRegistry], int] = getattr(load(), function)
    try:
        user = getattr(args, "user", None)
        registry = InstanceRegistry(user=user) if user else InstanceRegistry()
        return command(args, registry)
    except InstanceError as err:
        log.error("%s", str(err).splitlines()[0] if not args.debug else err)
        return ERROR_EXIT
    except KeyboardInterrupt:
        return 130
    finally:
        log.removeHandler(handler)
