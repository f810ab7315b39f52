"""A build's SIF output: a squashfs of the root plus the definition and metadata objects."""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import attrs

from instancelib.build.fakeroot import fakeroot_plan, in_fakeroot, remove_build_tree
from instancelib.build.progress import BuildProgress, ProgressCallback, stream_command
from instancelib.errors import ImageError, Unsupported
from instancelib.image import sif
from instancelib.image.deffile import Definition
from instancelib.image.inspect import METADATA_OBJECT, read_tree
from instancelib.linux.userns import has_host_root

__all__ = ["write_sif_image"]

log = logging.getLogger("instancelib")


def write_sif_image(root: Path, target: Path, definition: Definition | None, workdir: Path, *,
               force: bool, report: ProgressCallback) -> None:
    tool = shutil.which("mksquashfs")
    if tool is None:
        raise Unsupported("building a SIF needs mksquashfs (Debian package squashfs-tools)")
    squashfs = workdir / "root.squashfs"
    report(BuildProgress("mksquashfs", 0.0))
    argv = [tool, str(root), str(squashfs), "-noappend", "-quiet"]  # -quiet keeps the bar
    fakeroot = fakeroot_plan()
    if fakeroot is not None:
        # Root of the build's user namespace reads every file %post made (some
        # belong to subordinate IDs) and records owners as they are inside.
        argv = in_fakeroot(fakeroot, argv)
    elif not has_host_root():
        argv.append("-all-root")  # the user's files belong to root in the image
    started = time.monotonic()
    stream_command(argv, None, "mksquashfs", report)
    log.debug("mksquashfs took %.2f s", time.monotonic() - started)
    deffile = definition.full_raw.encode() if definition is not None else _existing_deffile(root)
    labels_path = root / ".singularity.d/labels.json"
    labels = labels_path.read_bytes() if labels_path.exists() else b"{}"
    metadata = read_tree(root)
    if deffile:
        metadata = attrs.evolve(metadata, deffile=deffile.decode(errors="replace").rstrip("\n"))
    # Apptainer's order: the definition, the JSON objects, the root filesystem.
    objects = []
    if deffile:
        objects.append(sif.SIFObject(data_type=sif.DATA_DEFFILE, data=deffile))
    objects.append(sif.SIFObject(data_type=sif.DATA_LABELS, data=labels))
    objects.append(sif.SIFObject(data_type=sif.DATA_GENERIC_JSON,
                                 data=json.dumps(metadata.to_dict(), indent="\t").encode(),
                                 name=METADATA_OBJECT))
    objects.append(sif.SIFObject(data_type=sif.DATA_PARTITION, data=squashfs,
                                 fs_type=sif.FS_SQUASHFS, part_type=sif.PART_PRIMARY_SYSTEM,
                                 arch=sif.host_arch(), alignment=4096))
    report(BuildProgress("write the SIF"))
    if target.is_dir() and not target.is_symlink():
        if not force:
            raise ImageError("the build target exists", path=str(target))
        remove_build_tree(target)
    sif.write_sif(target, objects)


def _existing_deffile(root: Path) -> bytes:
    path = root / ".singularity.d/Singularity"
    return path.read_bytes() if path.is_file() else b""
