"""The command line's grammar: the argparse parser and the converters of its values."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from instancelib.errors import InvalidArgument

if TYPE_CHECKING:
    from instancelib.cgroups.limits import Limits
    from instancelib.options import StartOptions
    from instancelib.readiness import Probe

# The grammar is built on every call, `instance list` included: what only the
# converters of `instance start`'s values need is imported when they run.

__all__ = ["INSTANCE_URI", "UsageError", "build_parser", "instance_name", "parse_build_args",
           "parse_env", "parse_signal", "start_options"]

INSTANCE_URI = "instance://"


class UsageError(Exception):
    """A command line the grammar refuses (argparse would print its usage and exit 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is raised for ``main`` to report as Singularity does (one
    ``FATAL:`` line, exit 255), never argparse's usage text and exit status 2.  Subparsers
    are made of this class too (``add_subparsers`` takes the parent's)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


def build_parser(prog: str = "instancelib", version: str = "") -> argparse.ArgumentParser:
    """The grammar, for the command called ``prog`` whose ``--version`` prints ``version``."""
    from instancelib.version import __version__  # noqa: PLC0415

    parser = _Parser(
        prog=prog,
        description="Run container images as named background instances.",
    )
    parser.add_argument("--version", action="version",
                        version=version or f"instancelib version {__version__}",
                        help="print the version and exit")
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-d", "--debug", action="store_true", help="print debugging output")
    verbosity.add_argument("-v", "--verbose", action="store_true",
                           help="print routine notes too (VERBOSE)")
    verbosity.add_argument("-q", "--quiet", action="store_true",
                           help="only print warnings and errors")
    verbosity.add_argument("-s", "--silent", action="store_true", help="only print errors")
    parser.add_argument("--nocolor", action="store_true",
                        help="no colours (accepted for Singularity's clients; none are used)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("version", help="print the version number and exit")
    alias = commands.add_parser("alias", help="write a launcher that runs instancelib as "
                                "singularity or apptainer, for their clients")
    alias.add_argument("-F", "--force", action="store_true",
                       help="replace a launcher that instancelib did not write")
    alias.add_argument("name", choices=["singularity", "apptainer"], metavar="NAME")
    alias.add_argument("directory", nargs="?", metavar="DIR",
                       help="where to write it (default ~/.local/bin)")

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
    listing.add_argument("--status", action="store_true",
                         help="show each service's state, restarts and health")
    listing.add_argument("--recover", action="store_true",
                         help="first find running instances whose records were deleted")
    listing.add_argument("pattern", nargs="?", default="*", metavar="PATTERN")

    stop = instance_commands.add_parser("stop", help="stop named instances")
    stop.add_argument("-u", "--user", help="another user's instances (root only)")
    _add_stop_options(stop)

    restart = instance_commands.add_parser("restart", help="restart an instance's service "
                                           "in place (same PID 1, namespaces, cgroup, address)")
    restart.add_argument("-u", "--user", help="another user's instance (root only)")
    restart.add_argument("name", metavar="NAME")

    stats = instance_commands.add_parser("stats", help="show an instance's resource use")
    stats.add_argument("-u", "--user", help="another user's instance (root only)")
    stats.add_argument("-j", "--json", action="store_true", help="print as JSON")
    stats.add_argument("--no-stream", action="store_true",
                       help="print one reading and exit (default: one every second until "
                            "the instance ends or Ctrl-C)")
    stats.add_argument("--interval", type=float, default=1.0, help=argparse.SUPPRESS)
    stats.add_argument("name", metavar="NAME")

    _add_cluster(commands)

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

    for verb, what in (("exec", "run a command in an image or an instance"),
                       ("run", "run the runscript of an image or an instance"),
                       ("shell", "open an interactive shell in an image or an instance"),
                       ("test", "run the test script of an image")):
        action = commands.add_parser(verb, help=what)
        _add_start_options(action, foreground=True)
        action.add_argument("--pwd", help="working directory inside (default: the caller's, "
                            "when it exists inside)")
        action.add_argument("--app", default="", help="the SCIF app to run")
        if verb == "shell":
            action.add_argument("-s", "--shell", dest="shell_path", metavar="PATH",
                                help="the shell to run (default /bin/bash, else /bin/sh)")
        target = "IMAGE" if verb == "test" else "IMAGE|instance://NAME"
        action.add_argument("target", metavar=target)
        if verb != "shell":
            action.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS")
    return parser


def _add_start_options(parser: argparse.ArgumentParser, *, foreground: bool = False) -> None:
    """``instance start``'s options; ``foreground``: those of ``exec|run|shell|test IMAGE``
    (no PID file, readiness or start timeout: the command is the service)."""
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
    parser.add_argument("-n", "--net", action="store_true",
                        help="a network namespace of its own, on the networks of --network "
                             "(default: bridge)")
    parser.add_argument("--network", metavar="NAMES",
                        help="networks to join, comma-separated (none, bridge, ptp, or one "
                             "defined in $INSTANCELIB_NETWORK_DIR); implies --net")
    parser.add_argument("--network-args", action="append", default=[], metavar="ARGS",
                        help="[NETWORK:]KEY=VALUE;... (portmap=HOST[:CONTAINER]/tcp|udp, "
                             "IP=ADDRESS); repeatable, comma-separated; implies --net")
    parser.add_argument("--dns", metavar="SERVERS",
                        help="DNS servers, comma-separated: the instance's resolv.conf "
                             "names only them")
    if not foreground:
        parser.add_argument("--pid-file", help="write the instance's PID to this file")
    parser.add_argument("--writable-tmpfs", action="store_true",
                        help="writable root on a tmpfs overlay, discarded at stop")
    parser.add_argument("-f", "--fakeroot", action="store_true",
                        help="be root inside (an ordinary user's subordinate IDs mapped too)")
    if not foreground:
        parser.add_argument("--ready", metavar="PROBE",
                            help="wait for the service: tcp:PORT, file:PATH, cmd:COMMAND or "
                                 "health (the health check's first pass)")
        parser.add_argument("--timeout", type=float, default=30.0,
                            help="seconds the start (and readiness) may take (default 30)")
        parser.add_argument("--restart", default="no", metavar="POLICY",
                            help="when the service exits: no (stay up, idle; the default), "
                                 "on-failure[:N] or always (PID 1 starts it again)")
        health = parser.add_argument_group("health check (run inside by PID 1)")
        health.add_argument("--health-cmd", metavar="COMMAND",
                            help="a shell command: healthy when it exits 0")
        for flag, default, what in (("interval", "30s", "between checks"),
                                    ("timeout", "30s", "a check may take"),
                                    ("start-period", "0s", "in which failures do not count")):
            health.add_argument(f"--health-{flag}", default=default, metavar="DURATION",
                                help=f"time {what} (default {default})")
        health.add_argument("--health-retries", type=int, default=3, metavar="N",
                            help="failures in a row that make it unhealthy (default 3)")
    limits = parser.add_argument_group("resource limits (the instance's cgroup)")
    limits.add_argument("--cgroup-parent", choices=("instancelib", "caller"),
                        help="where the instance's cgroup goes: instancelib's own tree "
                             "(default), or a child of this command's cgroup (caller: a "
                             "systemd unit's accounting, limits and stop then cover it)")
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


def parse_limits(args: argparse.Namespace) -> Limits | None:
    """``--apply-cgroups`` and the limit flags (which override the file's values)."""
    import attrs  # noqa: PLC0415 (see the imports)

    from instancelib.cgroups.limits import Limits  # noqa: PLC0415
    base = Limits.from_toml(args.apply_cgroups) if args.apply_cgroups else Limits()
    flags = {name: getattr(args, name) for name in (
        "memory", "memory_reservation", "memory_swap", "cpus", "cpu_shares", "cpuset_cpus",
        "cpuset_mems", "blkio_weight", "pids_limit") if getattr(args, name) is not None}
    if args.blkio_weight_device:
        flags["blkio_weight_device"] = list(args.blkio_weight_device)
    if not flags:
        return base or None
    return attrs.evolve(base, **flags)


def parse_env(items: Sequence[str], files: Sequence[str] = ()) -> dict[str, str]:
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


def _health(args: argparse.Namespace) -> Any:
    if args.health_cmd is None:
        return None
    from instancelib.healthcheck import HealthCheck, parse_duration  # noqa: PLC0415

    return HealthCheck(
        ["/bin/sh", "-c", args.health_cmd],
        interval=parse_duration(args.health_interval, "--health-interval"),
        timeout=parse_duration(args.health_timeout, "--health-timeout"),
        retries=args.health_retries,
        start_period=parse_duration(args.health_start_period, "--health-start-period"))


def parse_ready(spec: str | None) -> Probe | None:
    if spec is None:
        return None
    from instancelib.readiness import CommandProbe, FileProbe, HealthProbe, TcpProbe  # noqa: PLC0415

    if spec == "health":
        return HealthProbe()

    kind, sep, value = spec.partition(":")
    if sep and kind == "tcp" and value.isdigit():
        return TcpProbe(int(value))
    if sep and kind == "file":
        return FileProbe(value)
    if sep and kind == "cmd" and value:
        return CommandProbe(["/bin/sh", "-c", value])
    raise InvalidArgument(f"--ready expects tcp:PORT, file:PATH, cmd:COMMAND or health "
                          f"(got {spec!r})")


def parse_signal(text: str) -> int:
    import signal  # noqa: PLC0415

    name = text.upper()
    if name.isdigit():
        return int(name)
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise InvalidArgument(f"unknown signal {text!r}") from None


def instance_name(target: str) -> str:
    if not target.startswith(INSTANCE_URI):
        raise InvalidArgument(f"expected instance://NAME (got {target!r})")
    return target[len(INSTANCE_URI):]


def parse_build_args(items: Sequence[str], path: str | None) -> dict[str, str]:
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


def start_options(args: argparse.Namespace, *, foreground: bool = False) -> StartOptions:
    """The ``StartOptions`` of ``instance start|run``'s flags (``foreground``: of
    ``exec|run|shell|test IMAGE``'s, whose arguments are the command's, not the service's)."""
    from instancelib.network.args import split_flag_values  # noqa: PLC0415 (see the imports)
    from instancelib.options import StartOptions  # noqa: PLC0415

    arguments = [] if foreground else list(args.args)
    if arguments and arguments[0] == "--":
        arguments = arguments[1:]
    extra: dict[str, object] = {} if foreground else {
        "pid_file": args.pid_file, "ready": parse_ready(args.ready), "timeout": args.timeout,
        "run": args.instance_command == "run", "restart": args.restart,
        "health": _health(args)}
    return StartOptions(
        args=arguments, writable_tmpfs=args.writable_tmpfs,
        binds=args.bind, env=parse_env(args.env, args.env_file), cleanenv=args.cleanenv,
        contain=args.contain, hostname=args.hostname, fakeroot=args.fakeroot,
        limits=parse_limits(args), network=_networks(args), network_args=[
            value for flag in args.network_args for value in split_flag_values(flag)],
        dns=args.dns, cgroup_parent=args.cgroup_parent, **extra)  # type: ignore[arg-type]


def _networks(args: argparse.Namespace) -> list[str] | None:
    """As Apptainer: ``--network`` and ``--network-args`` imply ``--net``; ``--net`` is bridge."""
    from instancelib.network.args import split_flag_values  # noqa: PLC0415
    if args.network is not None:
        return split_flag_values(args.network)
    if args.net or args.network_args:
        return ["bridge"]
    return None


def _add_cluster(commands: Any) -> None:
    """``cluster list|stop``: instances across a Dask cluster (``instancelib[dask]``)."""
    cluster = commands.add_parser("cluster", help="instances across a Dask cluster "
                                  "(the instancelib[dask] extra)")
    verbs = cluster.add_subparsers(dest="cluster_command", required=True, metavar="SUBCOMMAND")
    listing = verbs.add_parser("list", help="list the instances of every worker")
    stop = verbs.add_parser("stop", help="stop instances on every worker")
    for verb in (listing, stop):
        verb.add_argument("--scheduler", metavar="ADDR",
                          help="the Dask scheduler (default $DASK_SCHEDULER_ADDRESS)")
        verb.add_argument("--answer-timeout", type=float, default=10.0, metavar="S",
                          help="seconds each worker has to answer (default 10)")
    listing.add_argument("-j", "--json", action="store_true", help="print as JSON")
    listing.add_argument("pattern", nargs="?", default="*", metavar="PATTERN")
    _add_stop_options(stop)


def _add_stop_options(stop: argparse.ArgumentParser) -> None:
    """What ``instance stop`` and ``cluster stop`` take."""
    stop.add_argument("-a", "--all", action="store_true", help="stop every instance")
    stop.add_argument("-s", "--signal", default="SIGINT",
                      help="signal to send (name or number; default SIGINT)")
    stop.add_argument("-t", "--timeout", type=float, default=10.0,
                      help="seconds before SIGKILL (default 10)")
    stop.add_argument("-F", "--force", action="store_true", help="kill at once (SIGKILL)")
    stop.add_argument("pattern", nargs="?", metavar="PATTERN")
