"""``build``, ``inspect`` and ``sif header|list|info``: the commands on images."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import TYPE_CHECKING

from instancelib.cli import siftool
from instancelib.cli.output import go_json_line
from instancelib.cli.parser import parse_build_args
from instancelib.errors import NotFound
from instancelib.image import Image
from instancelib.image.sif import SIFImage

if TYPE_CHECKING:
    from instancelib.build import BuildProgress
    from instancelib.cli.main import Session
    from instancelib.image.inspect import ImageMetadata

__all__ = ["build_command", "inspect_command", "sif_command"]

log = logging.getLogger("instancelib")


def sif_command(args: argparse.Namespace, session: Session) -> int:
    image = SIFImage.open(args.image)
    if args.sif_command == "header":
        sys.stdout.write(siftool.format_header(image))
    elif args.sif_command == "list":
        sys.stdout.write(siftool.format_list(image))
    else:
        sys.stdout.write(siftool.format_info(image, args.id))
    return 0


class _BuildReporter:
    """Shows a build's progress: steps as INFO lines, script output as it comes,
    and a bar on a terminal while a step with a known fraction runs."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.started = time.monotonic()
        self.bar = False
        self.step: str | None = None

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
        elif event.step != self.step:  # a step's progress events after its first: no line
            self._clear()
            log.info("%s", event.step)
        if event.output is None:
            self.step = event.step

    def _clear(self) -> None:
        if self.bar:
            sys.stderr.write("\r\033[K")
            self.bar = False


def build_command(args: argparse.Namespace, session: Session) -> int:
    from instancelib.build import build_image  # noqa: PLC0415 (only this command builds)

    build_args = parse_build_args(args.build_arg, args.build_arg_file)
    reporter = _BuildReporter()
    log.info("starting build...")
    build_image(args.source, args.target, sandbox=args.sandbox, build_args=build_args or None,
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


def inspect_command(args: argparse.Namespace, session: Session) -> int:
    shown = _selected(Image(args.image).inspect(), args)
    if args.json or args.all:
        sys.stdout.write(go_json_line(shown.to_dict()))
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
