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
import contextlib
import fcntl
import json
import logging
import os
import pty
import select
import signal
import sys
import termios
import time
import tty
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from instancelib.cgroups.limits import Limits
from instancelib.errors import InstanceError, InvalidArgument, NotFound
from instancelib.image import Image
from instancelib.image import sif as sif_format
from instancelib.instance import Instance, stop_instances
from instancelib.readiness import CommandProbe, FileProbe, TcpProbe
from instancelib.registry import InstanceRegistry

if TYPE_CHECKING:
    from instancelib.cgroups.stats import Stats
    from instancelib.image.build import BuildProgress
    from instancelib.image.inspect import ImageMetadata

__all__ = ["main"]

log = logging.getLogger("instancelib")

ERROR_EXIT = 255
_URI = "instance://"


class _Formatter(logging.Formatter):
    """Singularity's message style: ``INFO:    text``, ``FATAL:   text``."""

    def format(self, record: logging.LogRecord) -> str:
        level = "FATAL" if record.levelno >= logging.ERROR else record.levelname
        return f"{level + ':':<9}{record.getMessage()}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="instancelib",
        description="Run container images as named background instances.",
    )
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-d", "--debug", action="store_true", help="print debugging output")
    verbosity.add_argument("-q", "--quiet", action="store_true",
                           help="only print warnings and errors")
    verbosity.add_argument("-s", "--silent", action="store_true", help="only print errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    instance = commands.add_parser("instance", help="manage background instances")
    instance_commands = instance.add_subparsers(dest="instance_command", required=True,
                                                metavar="SUBCOMMAND")
    for verb, what in (("start", "the startscript"), ("run", "the runscript")):
        start = instance_commands.add_parser(verb, help=f"start a named instance running {what}")
        _add_start_options(start)
        start.add_argument("image", metavar="IMAGE")
        start.add_argument("name", metavar="NAME")
        start.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS")

    listing = instance_commands.add_parser("list", help="list running instances")
    listing.add_argument("-u", "--user", help="another user's instances (root only)")
    listing.add_argument("-j", "--json", action="store_true", help="print as JSON")
    listing.add_argument("-l", "--logs", action="store_true", help="show the log paths")
    listing.add_argument("--recover", action="store_true",
                         help="first find running instances whose records were deleted")
    listing.add_argument("pattern", nargs="?", default="*", metavar="PATTERN")

    stop = instance_commands.add_parser("stop", help="stop named instances")
    stop.add_argument("-u", "--user", help="another user's instances (root only)")
    stop.add_argument("-a", "--all", action="store_true", help="stop every instance")
    stop.add_argument("-s", "--signal", default="SIGINT",
                      help="signal to send (name or number; default SIGINT)")
    stop.add_argument("-t", "--timeout", type=float, default=10.0,
                      help="seconds before SIGKILL (default 10)")
    stop.add_argument("-F", "--force", action="store_true", help="kill at once (SIGKILL)")
    stop.add_argument("pattern", nargs="?", metavar="PATTERN")

    stats = instance_commands.add_parser("stats", help="show an instance's resource use")
    stats.add_argument("-u", "--user", help="another user's instance (root only)")
    stats.add_argument("-j", "--json", action="store_true", help="print as JSON")
    stats.add_argument("--no-stream", action="store_true",
                       help="print one reading and exit (default: one every second until "
                            "the instance ends or Ctrl-C)")
    stats.add_argument("--interval", type=float, default=1.0, help=argparse.SUPPRESS)
    stats.add_argument("name", metavar="NAME")

    sif = commands.add_parser("sif", help="show what a SIF file holds (as siftool does)")
    sif_commands = sif.add_subparsers(dest="sif_command", required=True, metavar="SUBCOMMAND")
    for verb, what in (("header", "the global header"), ("list", "the data objects")):
        sif_command = sif_commands.add_parser(verb, help=f"show {what}")
        sif_command.add_argument("image", metavar="IMAGE")
    info = sif_commands.add_parser("info", help="show one data object's descriptor")
    info.add_argument("id", type=int, metavar="ID")
    info.add_argument("image", metavar="IMAGE")

    build = commands.add_parser("build", help="build an image from a definition file, or "
                                "convert an image")
    build.add_argument("-s", "--sandbox", action="store_true",
                       help="build a sandbox directory instead of a SIF file")
    build.add_argument("-T", "--notest", action="store_true", help="skip the %%test section")
    build.add_argument("-F", "--force", action="store_true", help="replace an existing target")
    build.add_argument("--build-arg", action="append", default=[], metavar="NAME=VALUE",
                       help="a value for a {{ NAME }} build argument (repeatable)")
    build.add_argument("--build-arg-file", metavar="FILE",
                       help="a file of NAME=VALUE lines for build arguments")
    build.add_argument("target", metavar="TARGET")
    build.add_argument("source", metavar="SOURCE")

    inspect = commands.add_parser("inspect", help="show an image's metadata")
    for short, flag, what in (
            ("-l", "labels", "the labels (the default)"),
            ("-d", "deffile", "the definition file it was built from"),
            ("-r", "runscript", "the runscript"), ("-s", "startscript", "the startscript"),
            ("-t", "test", "the test script"), ("-e", "environment", "the environment scripts"),
            ("-H", "helpfile", "the runscript's help")):
        inspect.add_argument(short, f"--{flag}", action="store_true", help=f"show {what}")
    inspect.add_argument("--list-apps", action="store_true", help="list the SCIF apps")
    inspect.add_argument("--app", default="", help="show one SCIF app's metadata")
    inspect.add_argument("--all", action="store_true", help="show everything (as JSON)")
    inspect.add_argument("-j", "--json", action="store_true", help="print as JSON")
    inspect.add_argument("image", metavar="IMAGE")

    for verb, what in (("exec", "run a command in an instance"),
                       ("run", "run an instance's runscript"),
                       ("shell", "open an interactive shell in an instance")):
        action = commands.add_parser(verb, help=what)
        action.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                            help="set a variable (repeatable, comma-separated)")
        if verb == "exec":
            action.add_argument("--pwd", help="working directory inside the instance")
        action.add_argument("target", metavar="instance://NAME")
        if verb != "shell":
            action.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS")
    return parser


def _add_start_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-B", "--bind", action="append", default=[], metavar="SPEC",
                        help="bind src[:dst[:ro|rw]] (repeatable, comma-separated)")
    parser.add_argument("-e", "--cleanenv", action="store_true",
                        help="do not pass the host environment in")
    parser.add_argument("-c", "--contain", action="store_true",
                        help="private $HOME, /tmp, /var/tmp and a minimal /dev")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="set a variable (repeatable, comma-separated)")
    parser.add_argument("--env-file", action="append", default=[], metavar="FILE",
                        help="read NAME=VALUE lines from FILE")
    parser.add_argument("--hostname", help="hostname inside the instance")
    parser.add_argument("--pid-file", help="write the instance's PID to this file")
    parser.add_argument("--writable-tmpfs", action="store_true",
                        help="writable root on a tmpfs overlay, discarded at stop")
    parser.add_argument("-f", "--fakeroot", action="store_true",
                        help="be root inside (an ordinary user's subordinate IDs mapped too)")
    parser.add_argument("--ready", metavar="PROBE",
                        help="wait for the service: tcp:PORT, file:PATH or cmd:COMMAND")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="seconds the start (and readiness) may take (default 30)")
    limits = parser.add_argument_group("resource limits (the instance's cgroup)")
    limits.add_argument("--apply-cgroups", metavar="FILE",
                        help="limits from an Apptainer cgroups TOML file (the flags below "
                             "override it)")
    for flag, what in (("--memory", "memory limit (e.g. 512M, 1.5G)"),
                       ("--memory-reservation", "memory soft limit"),
                       ("--memory-swap", "memory plus swap limit (-1: unlimited swap)"),
                       ("--cpus", "CPUs' worth of time (e.g. 0.5)"),
                       ("--cpu-shares", "relative CPU weight (default 1024)"),
                       ("--cpuset-cpus", "CPUs allowed (e.g. 0-3,5)"),
                       ("--cpuset-mems", "memory nodes allowed"),
                       ("--blkio-weight", "relative block I/O weight (10..1000)"),
                       ("--pids-limit", "most processes at once")):
        limits.add_argument(flag, help=what)
    limits.add_argument("--blkio-weight-device", action="append", default=[],
                        metavar="DEVICE:WEIGHT", help="per-device block I/O weight (repeatable)")


def _parse_limits(args: argparse.Namespace) -> Limits | None:
    """``--apply-cgroups`` and the limit flags (which override the file's values)."""
    base = Limits.from_toml(args.apply_cgroups) if args.apply_cgroups else Limits()
    flags = {name: getattr(args, name) for name in (
        "memory", "memory_reservation", "memory_swap", "cpus", "cpu_shares", "cpuset_cpus",
        "cpuset_mems", "blkio_weight", "pids_limit") if getattr(args, name) is not None}
    if args.blkio_weight_device:
        flags["blkio_weight_device"] = list(args.blkio_weight_device)
    if not flags:
        return base or None
    return attrs.evolve(base, **flags)


def _parse_env(items: Sequence[str], files: Sequence[str] = ()) -> dict[str, str]:
    env: dict[str, str] = {}
    for path in files:
        try:
            with open(path) as f:
                lines = f.read().splitlines()
        except OSError as err:
            raise InvalidArgument(f"cannot read env file {path}: {err.strerror}") from err
        for raw in lines:
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            name, sep, value = line.removeprefix("export ").partition("=")
            if not sep:
                raise InvalidArgument(f"env file {path}: expected NAME=VALUE, got {line!r}")
            env[name.strip()] = value.strip().strip("\"'")
    for item in items:
        for pair in item.split(","):
            name, sep, value = pair.partition("=")
            if not sep:
                raise InvalidArgument(f"--env expects NAME=VALUE (got {pair!r})")
            env[name] = value
    return env


def _parse_ready(spec: str | None) -> Any:
    if spec is None:
        return None
    kind, sep, value = spec.partition(":")
    if sep and kind == "tcp" and value.isdigit():
        return TcpProbe(int(value))
    if sep and kind == "file":
        return FileProbe(value)
    if sep and kind == "cmd" and value:
        return CommandProbe(["/bin/sh", "-c", value])
    raise InvalidArgument(f"--ready expects tcp:PORT, file:PATH or cmd:COMMAND (got {spec!r})")


def _parse_signal(text: str) -> int:
    name = text.upper()
    if name.isdigit():
        return int(name)
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise InvalidArgument(f"unknown signal {text!r}") from None


def _instance_name(target: str) -> str:
    if not target.startswith(_URI):
        raise InvalidArgument(f"expected instance://NAME (got {target!r})")
    return target[len(_URI):]


def _exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def tabulate(rows: Sequence[Sequence[str]], trailing: Sequence[str]) -> str:
    """Lay out columns as Go's tabwriter (minwidth 0, tabwidth 8, padding 4, spaces)."""
    widths = [max(len(row[i]) for row in rows) + 4 for i in range(len(rows[0]))] if rows else []
    lines = []
    for row, last in zip(rows, trailing, strict=True):
        cells = "".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        lines.append(cells + last)
    return "".join(line + "\n" for line in lines)


def _go_json(value: object) -> str:
    """JSON as Go's encoder with SetIndent("", "\\t") writes it, and a newline."""
    from instancelib.image.inspect import go_json  # noqa: PLC0415 (not needed by most commands)

    return go_json(value) + "\n"


# -- commands ----------------------------------------------------------------------------------


def _instance_start(args: argparse.Namespace, registry: InstanceRegistry) -> int:
    args_list = list(args.args)
    if args_list and args_list[0] == "--":
        args_list = args_list[1:]
    Instance.start(
        Image(args.image), args.name, args=args_list, run=args.instance_command == "run",
        writable_tmpfs=args.writable_tmpfs, binds=args.bind,
        env=_parse_env(args.env, args.env_file), cleanenv=args.cleanenv, contain=args.contain,
        hostname=args.hostname, pid_file=args.pid_file, registry=registry,
        ready=_parse_ready(args.ready), timeout=args.timeout, fakeroot=args.fakeroot,
        limits=_parse_limits(args),
    )
    log.info("instance started successfully")
    return 0


def _instance_list(args: argparse.Namespace, registry: InstanceRegistry) -> int:
    if args.json and args.logs:
        raise InvalidArgument("--json and --logs cannot be used together")
    if args.recover:
        for instance in registry.recover():
            log.info("recovered instance %s (pid %d)", instance.name, instance.pid)
    records = registry.records(args.pattern)
    if args.json:
        sys.stdout.write(_go_json({"instances": [
            {"instance": r.name, "pid": r.pid, "img": r.image, "ip": r.ip,
             "logErrPath": r.log_err, "logOutPath": r.log_out} for r in records]}))
    elif args.logs:
        rows = [["INSTANCE NAME", "PID"]]
        trailing = ["LOGS"]
        for r in records:
            rows += [[r.name, str(r.pid)], ["", ""]]
            trailing += [r.log_err, r.log_out]
        sys.stdout.write(tabulate(rows, trailing))
    else:
        rows = [["INSTANCE NAME", "PID", "IP"]] + [[r.name, str(r.pid), r.ip] for r in records]
        trailing = ["IMAGE"] + [r.image for r in records]
        sys.stdout.write(tabulate(rows, trailing))
    return 0


def _instance_stop(args: argparse.Namespace, registry: InstanceRegistry) -> int:
    if args.all == bool(args.pattern):
        raise InvalidArgument("give an instance name (or pattern), or --all")
    pattern = "*" if args.all else args.pattern
    instances = registry.list(pattern)
    if not instances:
        raise NotFound(f"no instance found matching {pattern!r}")
    for instance in instances:
        log.info("Stopping %s instance of %s (PID=%d)", instance.name, instance.image.path,
                 instance.pid)
    stop_instances(instances, signal=_parse_signal(args.signal), timeout=args.timeout,
                   force=args.force)
    return 0


def format_stats(readings: Sequence[Stats]) -> str:
    """Singularity's ``instance stats`` table (docker's units: MiB for memory, kB for I/O)."""
    from instancelib.cgroups.stats import format_binary, format_decimal  # noqa: PLC0415

    rows = [["INSTANCE NAME", "CPU USAGE", "MEM USAGE / LIMIT", "MEM %", "BLOCK I/O"]]
    trailing = ["PIDS"]
    for s in readings:
        rows.append([s.name, f"{s.cpu_percent:.2f}%",
                     f"{format_binary(s.memory_usage)} / {format_binary(s.memory_limit)}",
                     f"{s.memory_percent:.2f}%",
                     f"{format_decimal(s.block_read)} / {format_decimal(s.block_write)}"])
        trailing.append(str(s.pids))
    return tabulate(rows, trailing)


def _instance_stats(args: argparse.Namespace, registry: InstanceRegistry) -> int:
    instance = registry.get(args.name)
    readings: Iterator[Stats] = (instance.stats(stream=True, interval=args.interval)
                                 if not args.no_stream else iter([instance.stats()]))
    first = True
    for reading in readings:
        if first and reading.source == "processes":
            log.info("the instance has no cgroup: figures are summed over its processes")
        first = False
        if args.json:
            sys.stdout.write(json.dumps(reading.to_dict()) + "\n")
        else:
            if not args.no_stream and sys.stdout.isatty():
                sys.stdout.write("\033[H\033[2J")
            sys.stdout.write(format_stats([reading]))
        sys.stdout.flush()
    return 0


def _exec(args: argparse.Namespace, registry: InstanceRegistry) -> int:
    instance = registry.get(_instance_name(args.target))
    command = list(args.args)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise InvalidArgument("exec needs a command to run")
    return _run_attached(instance, command, _parse_env(args.env), args.pwd)


def _run(args: argparse.Namespace, registry: InstanceRegistry) -> int:
    instance = registry.get(_instance_name(args.target))
    extra = list(args.args)
    if extra and extra[0] == "--":
        extra = extra[1:]
    return _run_attached(instance, instance.run_command(extra), _parse_env(args.env), None)


def _run_attached(instance: Instance, command: list[str], env: dict[str, str],
                  cwd: str | None) -> int:
    """Run with this terminal's stdio; Ctrl-C and friends go to the command."""
    process = instance.popen(command, env=env, cwd=cwd)

    def forward(signum: int, _frame: object) -> None:
        process.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in
                (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)}
    try:
        return _exit_code(process.wait())
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _shell(args: argparse.Namespace, registry: InstanceRegistry) -> int:
    instance = registry.get(_instance_name(args.target))
    shell = "/bin/bash" if os.path.exists(f"/proc/{instance.pid}/root/bin/bash") else "/bin/sh"
    env = _parse_env(args.env)
    env.setdefault("TERM", os.environ.get("TERM", "xterm"))
    if not os.isatty(0):
        return _run_attached(instance, [shell], env, None)
    return _shell_on_pty(instance, [shell], env)


def _copy_window_size(source: int, target: int) -> None:
    with contextlib.suppress(OSError):
        size = fcntl.ioctl(source, termios.TIOCGWINSZ, b"\0" * 8)
        fcntl.ioctl(target, termios.TIOCSWINSZ, size)


def _shell_on_pty(instance: Instance, command: list[str], env: dict[str, str]) -> int:
    """Relay this terminal to a new pseudo-terminal whose other end the shell owns."""
    master, slave = pty.openpty()
    _copy_window_size(0, slave)
    try:
        process = instance.popen(command, stdin=slave, stdout=slave, stderr=slave, env=env,
                                 tty=True)
    finally:
        os.close(slave)
    saved = termios.tcgetattr(0)
    previous = signal.signal(signal.SIGWINCH, lambda *_: _copy_window_size(0, master))
    tty.setraw(0)
    try:
        while True:
            try:
                readable, _, _ = select.select([0, master], [], [])
            except InterruptedError:
                continue
            if master in readable:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the shell closed the terminal
                    break
                if not data:
                    break
                os.write(1, data)
            if 0 in readable:
                data = os.read(0, 65536)
                if not data:
                    break
                os.write(master, data)
    finally:
        termios.tcsetattr(0, termios.TCSAFLUSH, saved)
        signal.signal(signal.SIGWINCH, previous)
        os.close(master)
    return _exit_code(process.wait())


def _sif(args: argparse.Namespace, registry: InstanceRegistry) -> int:
    image = sif_format.SIFImage.open(args.image)
    if args.sif_command == "header":
        sys.stdout.write(sif_format.format_header(image))
    elif args.sif_command == "list":
        sys.stdout.write(sif_format.format_list(image))
    else:
        sys.stdout.write(sif_format.format_info(image, args.id))
    return 0


def _build_args(items: Sequence[str], path: str | None) -> dict[str, str]:
    values: dict[str, str] = {}
    lines: list[tuple[str, str]] = []
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                lines = [(f"{path}:{n}", line.strip()) for n, line in enumerate(f, 1)]
        except OSError as err:
            raise InvalidArgument(f"cannot read the build-argument file {path}: "
                                  f"{err.strerror}") from err
    lines += [("--build-arg", item) for item in items]
    for where, line in lines:
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if not sep or not name.strip():
            raise InvalidArgument(f"{where}: expected NAME=VALUE, found {line!r}")
        values[name.strip()] = value
    return values


class _BuildReporter:
    """Shows a build's progress: steps as INFO lines, script output as it comes,
    and a bar on a terminal while a step with a known fraction runs."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.started = time.monotonic()
        self.bar = False

    def __call__(self, event: BuildProgress) -> None:
        if event.output is not None:
            self._clear()
            sys.stdout.write(event.output + "\n")
            sys.stdout.flush()
        elif event.fraction is not None and self.tty and event.step != "done":
            width = 30
            done = int(width * max(0.0, min(1.0, event.fraction)))
            sys.stderr.write(f"\r{event.step:<20.20} [{'=' * done}{' ' * (width - done)}] "
                             f"{event.fraction:4.0%}")
            sys.stderr.flush()
            self.bar = True
        elif event.step == "done":
            self._clear()
        else:
            self._clear()
            log.info("%s", event.step)

    def _clear(self) -> None:
        if self.bar:
            sys.stderr.write("\r\033[K")
            self.bar = False


def _build(args: argparse.Namespace, registry: InstanceRegistry) -> int:
    build_args = _build_args(args.build_arg, args.build_arg_file)
    reporter = _BuildReporter()
    log.info("starting build...")
    Image.build(args.source, args.target, sandbox=args.sandbox, build_args=build_args or None,
                notest=args.notest, force=args.force, progress=reporter)
    log.info("build complete: %s (%.1f s)", args.target, time.monotonic() - reporter.started)
    return 0


_INSPECT_FIELDS = ("labels", "deffile", "runscript", "startscript", "test", "environment",
                   "helpfile")


def _selected(metadata: ImageMetadata, args: argparse.Namespace) -> ImageMetadata:
    """What the flags ask for, as Apptainer selects it (labels when nothing is asked)."""
    from instancelib.image.inspect import AppMetadata, ImageMetadata  # noqa: PLC0415

    wanted = {name for name in _INSPECT_FIELDS if args.all or getattr(args, name)}
    if not wanted and not args.list_apps:
        wanted = {"labels"}
    if args.app and not args.all:
        app = metadata.apps.get(args.app)
        if app is None:
            raise NotFound(f"the image has no app {args.app!r}"
                           f" (apps: {', '.join(sorted(metadata.apps)) or 'none'})")
        app = AppMetadata(**{name: getattr(app, name) if name in wanted else None
                             for name in ("runscript", "test", "helpfile")},
                          labels=app.labels if "labels" in wanted else {},
                          environment=app.environment if "environment" in wanted else {})
        return ImageMetadata(apps={args.app: app})
    apps = dict(metadata.apps) if args.all or args.list_apps else {}
    return ImageMetadata(
        labels=metadata.labels if "labels" in wanted else {},
        environment=metadata.environment if "environment" in wanted else {},
        apps=apps, **{name: getattr(metadata, name) if name in wanted else None
                      for name in ("deffile", "runscript", "startscript", "test", "helpfile")})


def _inspect(args: argparse.Namespace, registry: InstanceRegistry) -> int:
    shown = _selected(Image(args.image).inspect(), args)
    if args.json or args.all:
        sys.stdout.write(_go_json(shown.to_dict()))
        return 0
    out = []
    if args.list_apps:
        out += [f"{name}\n" for name in sorted(shown.apps)]
    app = shown.apps.get(args.app) if args.app else None
    for name in ("deffile", "runscript", "startscript", "test", "helpfile"):
        text = getattr(shown, name) or (
            getattr(app, name, None) if name not in {"deffile", "startscript"} else None)
        if text:
            out.append(f"{text}\n")
    environment = shown.environment or (app.environment if app else {})
    out += [f"=== {key} ===\n{environment[key]}\n\n" for key in sorted(environment)]
    labels = shown.labels or (app.labels if app else {})
    out += [f"{key}: {labels[key]}\n" for key in sorted(labels)]
    sys.stdout.write("".join(out))
    return 0


_COMMANDS = {
    ("instance", "start"): _instance_start,
    ("instance", "run"): _instance_start,
    ("instance", "list"): _instance_list,
    ("instance", "stop"): _instance_stop,
    ("instance", "stats"): _instance_stats,
    ("exec", None): _exec,
    ("run", None): _run,
    ("shell", None): _shell,
    ("sif", None): _sif,
    ("build", None): _build,
    ("inspect", None): _inspect,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = _parser().parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    log.addHandler(handler)
    log.propagate = False
    log.setLevel(logging.DEBUG if args.debug else logging.ERROR if args.silent
                 else logging.WARNING if args.quiet else logging.INFO)
    command = _COMMANDS[(args.command, getattr(args, "instance_command", None))]
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
