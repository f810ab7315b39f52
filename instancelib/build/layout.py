"""The Singularity layout of a built root: ``/.singularity.d``, ``%files``, SCIF apps."""

from __future__ import annotations

import datetime
import glob
import json
import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from instancelib.errors import DefinitionError, ImageError
from instancelib.image import sif
from instancelib.image.deffile import Definition
from instancelib.linux import pathwalk
from instancelib.version import __version__

__all__ = ["BASE_ENV", "copy_files", "copy_tree", "ensure_layout", "write_layout"]


BASE_ENV = """#!/bin/sh
# instancelib: the default environment of an image
if [ -z "${PATH:-}" ]; then
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
fi
export PATH
"""


def ensure_layout(root: Path) -> None:
    for directory in (".singularity.d/env", ".singularity.d/actions", ".singularity.d/libs",
                      "proc", "sys", "dev", "tmp", "var/tmp", "home", "root", "etc", "mnt"):
        target = root / directory
        if not target.is_dir() and not target.is_symlink():
            target.mkdir(parents=True, exist_ok=True)
    for sticky in ("tmp", "var/tmp"):
        if (root / sticky).is_dir() and not (root / sticky).is_symlink():
            os.chmod(root / sticky, 0o1777)
    base = root / ".singularity.d/env/01-base.sh"
    if not base.exists():
        base.write_text(BASE_ENV)
        base.chmod(0o755)
    for name in ("90-environment.sh", "91-environment.sh"):
        script = root / ".singularity.d/env" / name
        if not script.exists():
            script.write_text("#!/bin/sh\n")
            script.chmod(0o755)


def copy_files(args: str, copies: Sequence[Any], root: Path, roots: Mapping[str, Path]) -> None:
    words = args.split()
    base = Path("/")
    if words:
        if len(words) != 2 or words[0] != "from" or words[1] not in roots:
            raise DefinitionError(f"%files {args}: expected 'from STAGE' naming an earlier stage "
                                  f"(known: {', '.join(roots) or 'none'})")
        base = roots[words[1]]
    for copy in copies:
        pattern = copy.source if not words else str(base / copy.source.lstrip("/"))
        matches = sorted(glob.glob(os.path.expanduser(pattern))) if any(
            c in pattern for c in "*?[") else [os.path.expanduser(pattern)]
        if not matches or not all(os.path.lexists(m) for m in matches):
            raise ImageError(f"%files: {copy.source} not found")
        destination = copy.destination or copy.source
        for match in matches:
            where = destination
            if len(matches) > 1 or destination.endswith("/"):
                where = os.path.join(destination, os.path.basename(match))
            canonical, exists = pathwalk.resolve_in_root(str(root), where)
            if exists and os.path.isdir(root / canonical.lstrip("/")):
                canonical = os.path.join(canonical, os.path.basename(match))
            parent = (root / canonical.lstrip("/")).parent
            parent.mkdir(parents=True, exist_ok=True)
            copy_tree(match, str(root / canonical.lstrip("/")))


def copy_tree(source: str, destination: str) -> None:
    """``cp -a`` (owners, modes, times, links and special files kept)."""
    result = subprocess.run(["cp", "-a", "--reflink=auto", "--", source, destination],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ImageError(f"cannot copy {source} to {destination}: "
                         f"{result.stderr.strip()[-500:] or 'cp failed'}")


def _trimmed(body: str) -> str:
    """A section's text without its leading and trailing blank lines, ending in a newline."""
    lines = body.splitlines()
    while lines and not lines[0].strip():
        lines.pop(0)
    while lines and not lines[-1].strip():
        lines.pop()
    return "".join(line + "\n" for line in lines)


def _script_file(body: str, default_interpreter: str = "/bin/sh") -> str:
    text = _trimmed(body)
    if text.lstrip().startswith("#!"):
        return text.lstrip()
    return f"#!{default_interpreter}\n\n{text}"


def write_layout(root: Path, stage: Definition) -> None:
    meta = root / ".singularity.d"
    environment = stage.section("environment").script
    if environment.strip():
        (meta / "env/90-environment.sh").write_text(f"#!/bin/sh\n{_trimmed(environment)}")
    for name, section in (("runscript", "runscript"), ("startscript", "startscript"),
                          ("test", "test")):
        body = stage.section(section).script
        if body.strip():
            path = meta / name
            path.write_text(_script_file(body))
            path.chmod(0o755)
    help_text = stage.section("help").script
    if help_text.strip():
        (meta / "runscript.help").write_text(_trimmed(help_text))
    (meta / "Singularity").write_text(stage.raw)
    labels_file = meta / "labels.json"
    labels = json.loads(labels_file.read_text()) if labels_file.exists() else {}
    labels.update({
        "org.label-schema.build-date": datetime.datetime.now(datetime.timezone.utc).strftime(
            "%A_%-d_%B_%Y_%-H:%M:%S_%Z"),
        "org.label-schema.schema-version": "1.0",
        "org.label-schema.build-arch": sif.host_arch(),
        "org.label-schema.usage.instancelib.version": __version__,
    })
    if help_text.strip():
        labels["org.label-schema.usage"] = "/.singularity.d/runscript.help"
        labels["org.label-schema.usage.singularity.runscript.help"] = (
            "/.singularity.d/runscript.help")
    for key, value in (("bootstrap", stage.bootstrap), ("from", stage.header.get("from"))):
        if value:
            labels[f"org.label-schema.usage.singularity.deffile.{key}"] = value
    labels.update(stage.labels)
    labels_file.write_text(json.dumps(labels, indent=4, sort_keys=True) + "\n")
    for app in stage.app_order:
        base = root / "scif/apps" / app / "scif"
        base.mkdir(parents=True, exist_ok=True)
        for section, name in (("apprun", "runscript"), ("apptest", "test"),
                              ("appstart", "startscript")):
            app_body = stage.apps.get(f"{section} {app}")
            if app_body:
                (base / name).write_text(_script_file(app_body))
                (base / name).chmod(0o755)
        if stage.apps.get(f"appenv {app}"):
            (base / "env").mkdir(exist_ok=True)
            (base / "env/90-environment.sh").write_text(
                f"#!/bin/sh\n{_trimmed(stage.apps[f'appenv {app}'])}")
        if stage.apps.get(f"apphelp {app}"):
            (base / "runscript.help").write_text(_trimmed(stage.apps[f"apphelp {app}"]))
        app_labels = stage.apps.get(f"applabels {app}")
        if app_labels:
            pairs = dict(line.strip().partition(" ")[::2] for line in app_labels.splitlines()
                         if line.strip() and not line.strip().startswith("#"))
            (base / "labels.json").write_text(json.dumps(pairs, indent=4) + "\n")
