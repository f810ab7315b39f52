"""``instance start|run|stop|stats``, and ``exec``, ``run``, ``shell``, ``test`` on an
image (in the foreground) or on ``instance://NAME``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from instancelib import foreground
from instancelib.cli.output import format_stats
from instancelib.cli.parser import (
    INSTANCE_URI,
    instance_name,
    parse_env,
    parse_signal,
    start_options,
)
from instancelib.cli.terminal import run_attached, shell_on_pty
from instancelib.environment import prefixed_overrides
from instancelib.errors import InvalidArgument, NotFound
from instancelib.instance import Instance
from instancelib.stopping import stop_instances

if TYPE_CHECKING:
    from instancelib.cgroups.stats import Stats
    from instancelib.cli.main import Session

__all__ = ["exec_command", "instance_restart", "instance_start", "instance_stats", "instance_stop",
           "run_command", "shell_command", "test_command"]

log = logging.getLogger("instancelib")


def instance_start(args: argparse.Namespace, session: Session) -> int:
    options = start_options(args)
    Instance.start(foreground.Image(args.image), args.name, registry=session.registry(),
                   **options.arguments())
    log.info("instance started successfully")
    return 0


def instance_stop(args: argparse.Namespace, session: Session) -> int:
    if args.all == bool(args.pattern):
        raise InvalidArgument("give an instance name (or pattern), or --all")
    pattern = "*" if args.all else args.pattern
    instances = session.registry().list(pattern)
    if not instances:
        # Singularity's words, with --all and nothing running too (exit 255).
        raise NotFound("no instance found" if args.all else
                       f"no instance found with name {pattern}")
    for instance in instances:
        log.info("Stopping %s instance of %s (PID=%d)", instance.name, instance.image.path,
                 instance.pid)
    stop_instances(instances, signal=parse_signal(args.signal), timeout=args.timeout,
                   force=args.force)
    return 0


def instance_restart(args: argparse.Namespace, session: Session) -> int:
    instance = session.registry().get(args.name)
    log.info("Restarting the service of %s instance of %s (PID=%d)", instance.name,
             instance.image.path, instance.pid)
    instance.restart()
    return 0


def instance_stats(args: argparse.Namespace, session: Session) -> int:
    instance = session.registry().get(args.name)
    if not args.json:
        log.info("Stats for %s instance of %s (PID=%d)", instance.name, instance.image.path,
                 instance.pid)
    # As Apptainer: JSON is one reading (the stream is the table's).
    single = args.no_stream or args.json
    readings: Iterator[Stats] = (instance.stats(stream=True, interval=args.interval)
                                 if not single else iter([instance.stats()]))
    first = True
    for reading in readings:
        if first and reading.source == "processes":
            log.info("the instance has no cgroup: figures are summed over its processes")
        first = False
        if args.json:
            sys.stdout.write(json.dumps(reading.to_dict()) + "\n")
        else:
            if not single and sys.stdout.isatty():
                sys.stdout.write("\033[H\033[2J")
            sys.stdout.write(format_stats([reading]))
        sys.stdout.flush()
    return 0


# The options that shape a container: a running instance's were fixed at its start
# (its mounts, namespaces, limits), so on instance://NAME they are ignored, with a
# warning naming them, as joining an instance leaves it as it is.
_SHAPING = ("bind", "contain", "cleanenv", "writable_tmpfs", "hostname", "fakeroot", "net",
            "network", "network_args", "dns", "apply_cgroups", "memory", "memory_reservation",
            "memory_swap", "cpus", "cpu_shares", "cpuset_cpus", "cpuset_mems", "blkio_weight",
            "pids_limit", "blkio_weight_device", "cgroup_parent")


def _command_args(args: argparse.Namespace) -> list[str]:
    command = list(getattr(args, "args", None) or [])
    return command[1:] if command and command[0] == "--" else command


def _exec_env(args: argparse.Namespace) -> dict[str, str]:
    """The command's variables: the caller's APPTAINERENV_*/SINGULARITYENV_* (read now, as
    Singularity reads them at each exec), then --env-file, then --env."""
    env = prefixed_overrides(os.environ)
    env.update(parse_env(args.env, args.env_file))
    return env


def _caller_cwd(instance: Instance, pwd: str | None) -> str | None:
    """``--pwd``; else the caller's directory when it exists inside (as Singularity);
    else None (the instance's own)."""
    if pwd:
        return pwd
    try:
        here = os.getcwd()
    except OSError:
        return None
    return here if foreground.exists_inside(instance, here) else None


def _attached(args: argparse.Namespace, session: Session,
              command: Callable[[Instance], list[str]], *, shell: bool = False) -> int:
    """Run ``command(instance)`` attached to this terminal in ``instance://NAME``, or on
    the image ``args.target`` in a temporary instance (Singularity's foreground mode)."""
    env = _exec_env(args)
    if shell:
        env.setdefault("TERM", os.environ.get("TERM", "xterm"))
        env.setdefault("PS1", session.personality.prompt)
    if args.app:
        env.update(_app_environment(args.app))
        inner = command

        def command(instance: Instance) -> list[str]:
            return _in_app(instance, args.app, inner(instance))
    if args.target.startswith(INSTANCE_URI):
        instance = session.registry().get(instance_name(args.target))
        ignored = [f"--{name.replace('_', '-')}" for name in _SHAPING
                   if getattr(args, name, None) not in (None, False, [], "")]
        if ignored:
            log.warning("%s: not applied to a running instance (set at its start)",
                        ", ".join(ignored))
        return _attach(instance, command(instance), env, _caller_cwd(instance, args.pwd),
                       shell)
    options = {name: value for name, value in start_options(args, foreground=True)
               .arguments().items() if name not in foreground.SERVICE_OPTIONS}
    with foreground.Image(args.target).temporary_instance(**options) as instance:
        return _attach(instance, command(instance), env, _caller_cwd(instance, args.pwd),
                       shell)


def _attach(instance: Instance, argv: list[str], env: dict[str, str], cwd: str | None,
            shell: bool) -> int:
    if shell and os.isatty(0):
        return shell_on_pty(instance, argv, env, cwd)
    return run_attached(instance, argv, env, cwd)


# SCIF apps (``--app NAME``), as Singularity runs them: the app's variables, its env
# scripts sourced, its bin and lib first; run and test take the app's scripts.
_APP_SHELL = ('for f in "$SCIF_APPROOT"/scif/env/*.sh; do [ -f "$f" ] && . "$f"; done; '
              'exec "$@"')


def _app_environment(app: str) -> dict[str, str]:
    root = f"/scif/apps/{app}"
    return {"SCIF_APPNAME": app, "SCIF_APPROOT": root, "SCIF_APPDATA": f"/scif/data/{app}",
            "SCIF_APPRUN": f"{root}/scif/runscript", "SCIF_APPTEST": f"{root}/scif/test",
            "SCIF_APPENV": f"{root}/scif/env", "SCIF_APPBIN": f"{root}/bin",
            "SCIF_APPLIB": f"{root}/lib", "PREPEND_PATH": f"{root}/bin"}


def _in_app(instance: Instance, app: str, argv: list[str]) -> list[str]:
    if "/" in app or app in (".", ".."):
        raise InvalidArgument(f"--app expects an app name (got {app!r})")
    if not foreground.exists_inside(instance, f"/scif/apps/{app}"):
        raise NotFound(f"no app {app} in the image (see 'inspect --list-apps')")
    return ["/bin/sh", "-c", _APP_SHELL, "sh", *argv]


def exec_command(args: argparse.Namespace, session: Session) -> int:
    command = _command_args(args)
    if not command:
        raise InvalidArgument("exec needs a command to run")
    return _attached(args, session, lambda _instance: command)


def run_command(args: argparse.Namespace, session: Session) -> int:
    extra = _command_args(args)
    if args.app:  # the app's runscript (wrapped in the app's environment by _attached)
        return _attached(args, session, lambda _instance: [
            "/bin/sh", f"/scif/apps/{args.app}/scif/runscript", *extra])
    return _attached(args, session, lambda instance: instance.run_command(extra))


def test_command(args: argparse.Namespace, session: Session) -> int:
    if args.app:
        return _attached(args, session, lambda _instance: [
            "/bin/sh", f"/scif/apps/{args.app}/scif/test"])
    return _attached(args, session, foreground.test_command)


def shell_command(args: argparse.Namespace, session: Session) -> int:
    def shell(instance: Instance) -> list[str]:
        if args.shell_path:
            return [args.shell_path]
        has_bash = foreground.exists_inside(instance, "/bin/bash")
        # As Singularity: bash without the host's or the image's rc files (its prompt
        # stays the one set here), else sh.
        return ["/bin/bash", "--norc"] if has_bash else ["/bin/sh"]

    return _attached(args, session, shell, shell=True)
