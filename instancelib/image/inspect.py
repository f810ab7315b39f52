"""``Image.inspect()``: an image's metadata, as ``apptainer inspect`` shows it.

Where the facts come from:

- a sandbox: ``/.singularity.d`` (``labels.json``, ``runscript``,
  ``startscript``, ``test``, ``runscript.help``, ``Singularity``, the
  ``env/10-docker*.sh`` and ``env/9*-environment.sh`` scripts) and the SCIF
  apps under ``/scif/apps/NAME/scif``;
- a SIF file: its ``inspect-metadata.json`` object (Apptainer's builds and
  ours write one) and its definition-file object; without the former, the
  same files, read from the squashfs with ``unsquashfs``;
- a bare squashfs: the same files;
- an OCI image or archive: its config (labels, environment, entrypoint),
  turned into what the image's ``/.singularity.d`` holds once unpacked.

``ImageMetadata.to_dict()`` is the JSON ``apptainer inspect --json`` prints:
``{"data": {"attributes": {...}}, "type": "container"}``.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import attrs

from instancelib import display
from instancelib.errors import ImageError, Unsupported
from instancelib.image import sif
from instancelib.linux import pathwalk

if TYPE_CHECKING:
    from instancelib.image.image import Image

__all__ = ["AppMetadata", "ImageMetadata", "inspect_image", "read_tree"]

METADATA_OBJECT = "inspect-metadata.json"
_MAX_FILE = 16 << 20
_SCRIPTS = (("runscript", "runscript"), ("startscript", "startscript"), ("test", "test"),
            ("helpfile", "runscript.help"))


def _frozen_map(value: Mapping[str, str] | None) -> dict[str, str]:
    return dict(value or {})


@attrs.frozen
class AppMetadata:
    """The metadata of one SCIF app of an image (``/scif/apps/NAME``)."""

    labels: dict[str, str] = attrs.field(factory=dict, converter=_frozen_map)
    environment: dict[str, str] = attrs.field(factory=dict, converter=_frozen_map)
    runscript: str | None = None
    test: str | None = None
    helpfile: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The app's attributes in Apptainer's JSON shape (empty ones left out)."""
        return _compact({"environment": self.environment, "labels": self.labels,
                         "runscript": self.runscript, "test": self.test,
                         "helpfile": self.helpfile})


@attrs.frozen
class ImageMetadata:
    """What ``apptainer inspect`` reports about an image.

    Attributes:
        labels: the image's labels (``%labels``, build facts, OCI labels).
        deffile: the definition file it was built from, if recorded.
        runscript, startscript, test: the scripts, if the image has them.
        helpfile: the runscript's help (``%help``), if any.
        environment: the environment scripts, by their path inside the image.
        apps: the SCIF apps, by name.
    """

    labels: dict[str, str] = attrs.field(factory=dict, converter=_frozen_map)
    deffile: str | None = None
    runscript: str | None = None
    startscript: str | None = None
    test: str | None = None
    helpfile: str | None = None
    environment: dict[str, str] = attrs.field(factory=dict, converter=_frozen_map)
    apps: dict[str, AppMetadata] = attrs.field(factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Apptainer's inspect JSON: ``{"data": {"attributes": {...}}, "type": "container"}``."""
        attributes = _compact({
            "apps": {name: app.to_dict() for name, app in sorted(self.apps.items())},
            "environment": self.environment, "labels": self.labels,
            "runscript": self.runscript, "test": self.test, "helpfile": self.helpfile,
            "deffile": self.deffile, "startscript": self.startscript,
        })
        return {"data": {"attributes": attributes}, "type": "container"}

    def rows(self) -> list[tuple[str, str]]:
        """What a notebook shows: the labels, the scripts, the environment, the apps."""
        found = [("labels", "\n".join(f"{k}: {v}" for k, v in sorted(self.labels.items()))
                  or "none")]
        for title, text in (("runscript", self.runscript), ("startscript", self.startscript),
                            ("test", self.test), ("help", self.helpfile)):
            if text:
                found.append((title, text.rstrip()))
        if self.environment:
            found.append(("environment", "\n".join(sorted(self.environment))))
        if self.apps:
            found.append(("apps", ", ".join(sorted(self.apps))))
        return found

    def _repr_html_(self) -> str:
        return display.key_values("Image metadata", self.rows())

    def _repr_pretty_(self, printer: display.Printer, cycle: bool) -> None:
        display.pretty_key_values(printer, cycle, "Image metadata", self.rows())

    @classmethod
    def from_dict(cls, data: Any) -> ImageMetadata:
        """Read Apptainer's inspect JSON (as stored in a SIF's ``inspect-metadata.json``).

        Raises:
            ImageError: the document does not have that shape.
        """
        try:
            attributes = data["data"]["attributes"]
            if not isinstance(attributes, dict):
                raise TypeError("attributes is not an object")
            apps = {}
            for name, app in (attributes.get("apps") or {}).items():
                apps[str(name)] = AppMetadata(
                    labels=_strings(app.get("labels")),
                    environment=_strings(app.get("environment")),
                    runscript=_text(app.get("runscript")), test=_text(app.get("test")),
                    helpfile=_text(app.get("helpfile")))
            return cls(
                labels=_strings(attributes.get("labels")),
                deffile=_text(attributes.get("deffile")),
                runscript=_text(attributes.get("runscript")),
                startscript=_text(attributes.get("startscript")),
                test=_text(attributes.get("test")),
                helpfile=_text(attributes.get("helpfile")),
                environment=_strings(attributes.get("environment")),
                apps=apps,
            )
        except (KeyError, TypeError, AttributeError) as err:
            raise ImageError(f"malformed inspect metadata ({err})") from err


def _compact(values: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value}


def _text(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise TypeError(f"expected a string, found {type(value).__name__}")
    return value


def _strings(value: Any) -> dict[str, str]:
    if not value:
        return {}
    if not isinstance(value, dict):
        raise TypeError(f"expected an object, found {type(value).__name__}")
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in value.items()}


# -- reading ----------------------------------------------------------------------------------


def inspect_image(image: Image) -> ImageMetadata:
    """The metadata of ``image`` (see the module's docstring for the sources)."""
    if image.kind == "sandbox":
        return read_tree(image.path)
    if image.kind == "sif":
        return _inspect_sif(image)
    if image.kind == "squashfs":
        with _extracted(image.path, image._details["offset"]) as root:
            return read_tree(root)
    return _inspect_oci(image)


def _inspect_sif(image: Image) -> ImageMetadata:
    parsed = image.sif or sif.SIFImage.open(image.path)
    deffile = None
    for descriptor in parsed.of_type(sif.DATA_DEFFILE):
        deffile = _decode(parsed.read_object(descriptor)).rstrip("\n") or None
        break
    for descriptor in parsed.of_type(sif.DATA_GENERIC_JSON):
        if descriptor.name == METADATA_OBJECT:
            try:
                document = json.loads(parsed.read_object(descriptor))
            except ValueError as err:
                raise ImageError(f"{image.path}: its {METADATA_OBJECT} is not JSON "
                                 f"({err})") from err
            metadata = ImageMetadata.from_dict(document)
            if deffile and not metadata.deffile:
                metadata = attrs.evolve(metadata, deffile=deffile)
            return metadata
    with _extracted(image.path, image._details["offset"]) as root:
        metadata = read_tree(root)
    if deffile:
        metadata = attrs.evolve(metadata, deffile=deffile)
    return metadata


def _inspect_oci(image: Image) -> ImageMetadata:
    from instancelib.image import oci  # noqa: PLC0415 (oci imports image)

    _key, config, _layers, source = oci.describe(image)
    source.close()
    settings = config.get("config") or {}
    if not isinstance(settings, dict):
        settings = {}
    env = [str(item) for item in settings.get("Env") or [] if isinstance(item, str)]
    entrypoint = [str(a) for a in settings.get("Entrypoint") or []]
    cmd = [str(a) for a in settings.get("Cmd") or []]
    labels = settings.get("Labels") or {}
    return ImageMetadata(
        labels=_strings(labels if isinstance(labels, dict) else {}),
        runscript=oci.runscript(entrypoint, cmd, settings.get("WorkingDir")).rstrip("\n"),
        environment={"/.singularity.d/env/10-docker2singularity.sh":
                     oci.env_script(env).rstrip("\n")},
    )


def _decode(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def _read(root: str, path: str) -> str | None:
    """A file of the tree at ``root`` (symlinks resolved inside it), or None."""
    canonical, exists = pathwalk.resolve_in_root(root, path)
    if not exists:
        return None
    full = os.path.join(root, canonical.lstrip("/"))
    try:
        fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(_MAX_FILE + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    if len(data) > _MAX_FILE:
        return None
    return _decode(data).rstrip("\n")


def _labels(root: str, path: str) -> dict[str, str]:
    text = _read(root, path)
    if not text:
        return {}
    try:
        return _strings(json.loads(text))
    except (ValueError, TypeError):
        return {}


def _environment(root: str, directory: str, *, docker: bool) -> dict[str, str]:
    canonical, exists = pathwalk.resolve_in_root(root, directory)
    if not exists:
        return {}
    found = {}
    real = os.path.join(root, canonical.lstrip("/"))
    patterns = (["10-docker*.sh"] if docker else []) + ["9*-environment.sh"]
    for pattern in patterns:
        for path in sorted(glob.glob(os.path.join(glob.escape(real), pattern))):
            inside = os.path.join(directory, os.path.basename(path))
            text = _read(root, inside)
            if text is not None:
                found[inside] = text
    return found


def read_tree(root: str | os.PathLike[str]) -> ImageMetadata:
    """The metadata held in a root filesystem's ``/.singularity.d`` and ``/scif/apps``."""
    top = os.fspath(root)
    meta = "/.singularity.d"
    scripts = {attribute: _read(top, f"{meta}/{name}") for attribute, name in _SCRIPTS}
    deffile = _read(top, f"{meta}/Singularity") or _read(top, f"{meta}/Apptainer")
    apps = {}
    canonical, exists = pathwalk.resolve_in_root(top, "/scif/apps")
    if exists:
        with contextlib.suppress(OSError):
            for name in sorted(os.listdir(os.path.join(top, canonical.lstrip("/")))):
                base = f"/scif/apps/{name}/scif"
                if not pathwalk.resolve_in_root(top, base)[1]:
                    continue
                apps[name] = AppMetadata(
                    labels=_labels(top, f"{base}/labels.json"),
                    environment=_environment(top, f"{base}/env", docker=False),
                    runscript=_read(top, f"{base}/runscript"), test=_read(top, f"{base}/test"),
                    helpfile=_read(top, f"{base}/runscript.help"))
    return ImageMetadata(
        labels=_labels(top, f"{meta}/labels.json"), deffile=deffile or None,
        environment=_environment(top, f"{meta}/env", docker=True), apps=apps,
        **{key: value or None for key, value in scripts.items()},
    )


@contextlib.contextmanager
def _extracted(path: str, offset: int) -> Iterator[str]:
    """The metadata directories of the squashfs at ``offset`` of ``path``, extracted."""
    unsquashfs = shutil.which("unsquashfs") or "/usr/bin/unsquashfs"
    if not os.access(unsquashfs, os.X_OK):
        raise Unsupported("inspecting this image needs unsquashfs (Debian package squashfs-tools)")
    with tempfile.TemporaryDirectory(prefix="instancelib-inspect-") as scratch:
        target = os.path.join(scratch, "root")
        result = subprocess.run(
            [unsquashfs, "-no-progress", "-quiet", "-no-xattrs", "-no-exit-code",
             "-o", str(offset), "-d", target, path, ".singularity.d", "scif"],
            capture_output=True, text=True, check=False)
        if result.returncode != 0 or not os.path.isdir(target):
            raise ImageError(f"cannot read the squashfs of {path}: "
                             f"{result.stderr.strip()[-500:] or 'unsquashfs failed'}")
        try:
            yield target
        finally:
            for directory, dirs, _files in os.walk(target):
                for name in dirs:
                    with contextlib.suppress(OSError):
                        os.chmod(os.path.join(directory, name), 0o700)
