"""``instance start|run|list|stop|stats``, ``exec``, ``run`` and ``shell``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

from instancelib.cli.output import format_stats, go_json_line, tabulate
from instancelib.cli.parser import instance_name, parse_env, parse_signal, start_options
from instancelib.cli.terminal import run_attached, shell_on_pty
from instancelib.errors import InvalidArgument, NotFound
from instancelib.image import Image
from instancelib.instance import Instance
from instancelib.registry import InstanceRegistry
from instancelib.stopping import stop_instances

if TYPE_CHECKING:
    from instancelib.cgroups.stats import Stats

__all__ = ["exec_command", "instance_list", "instance_start", "instance_stats", "instance_stop",
           "run_command", "shell_command"]

log = logging.getLogger("instancelib")


def instance_start(args: argparse.Namespace, registry: InstanceRegistry) -> int:
    options = start_options(args)
    Instance.start(Image(args.image), args.name, registry=registry, **options.arguments())
    log.info("instance started successfully")
    return 0


def instance_list(args: argparse.Namespace, registry: InstanceRegistry) -> int:
    if args.json and args.logs:
        raise InvalidArgument("--json and --logs cannot be used together")
    if args.recover:
        for instance in registry.recover():
            log.info("recovered instance %s (pid %d)", instance.name, instance.pid)
    records = registry.records(args.pattern)
    if args.json:
        sys.stdout.write(go_json_line({"instances": [
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


def instance_stop(args: argparse.Namespace, registry: InstanceRegistry) -> int:
    if args.all == bool(args.pattern):
        raise InvalidArgument("give an instance name (or pattern), or --all")
    pattern = "*" if args.all else args.pattern
    instances = registry.list(pattern)
    if not instances:
        raise NotFound(f"no instance found matching {pattern!r}")
    for instance in instances:
        log.info("Stopping %s instance of %s (PID=%d)", instance.name, instance.image.path,
                 instance.pid)
    stop_instances(instances, signal=parse_signal(args.signal), timeout=args.timeout,
                   force=args.force)
    return 0


def instance_stats(args: argparse.Namespace, registry: InstanceRegistry) -> int:
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


def exec_command(args: argparse.Namespace, registry: InstanceRegistry) -> int:
    instance = registry.get(instance_name(args.target))
    command = list(args.args)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise InvalidArgument("exec needs a command to run")
    return run_attached(instance, command, parse_env(args.env), args.pwd)


def run_command(args: argparse.Namespace, registry: InstanceRegistry) -> int:
    instance = registry.get(instance_name(args.target))
    extra = list(args.args)
    if extra and extra[0] == "--":
        extra = extra[1:]
    return run_attached(instance, instance.run_command(extra), parse_env(args.env), None)


def shell_command(args: argparse.Namespace, registry: InstanceRegistry) -> int:
    instance = registry.get(instance_name(args.target))
    shell = "/bin/bash" if os.path.exists(f"/proc/{instance.pid}/root/bin/bash") else "/bin/sh"
    env = parse_env(args.env)
    env.setdefault("TERM", os.environ.get("TERM", "xterm"))
    if not os.isatty(0):
        return run_attached(instance, [shell], env, None)
    return shell_on_pty(instance, [shell], env)
