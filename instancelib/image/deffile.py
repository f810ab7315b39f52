"""Singularity/Apptainer definition files: ``Definition``.

A definition is a header (``Keyword: value`` lines: ``Bootstrap``, ``From``,
``Stage``, ``OSVersion``, ``MirrorURL``, ``Include``...) followed by
sections, each starting with a line whose first word begins with ``%``:
``%help %setup %files [from STAGE] %labels %environment %pre %post
%runscript %startscript %test %arguments`` and the SCIF app sections
(``%appinstall NAME``, ``%apprun NAME``...).  Words after a section's name
are its arguments (``%post -c /bin/bash``).  A file may hold several stages,
each starting with its own ``Bootstrap:`` line; ``%files from STAGE`` copies
from an earlier stage.

Build arguments: ``{{ NAME }}`` anywhere is replaced by the caller's value,
else by the default from ``%arguments`` (``NAME=value`` lines); a name with
neither is an error.

Facts (keywords, how sections and files are split, the JSON shape of
``to_dict``) follow Apptainer's parser; the code is ours.
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Mapping
from typing import Any

import attrs

from instancelib.errors import DefinitionError

__all__ = ["APP_SECTIONS", "HEADER_KEYWORDS", "SECTIONS", "Definition", "FileCopy",
           "Script"]

HEADER_KEYWORDS = frozenset({
    "bootstrap", "from", "includecmd", "mirrorurl", "updateurl", "osversion", "include",
    "library", "registry", "namespace", "stage", "product", "user", "regcode", "productpgp",
    "registerurl", "modules", "fingerprints", "confurl", "setopt",
})
_NUMBERED_HEADER = re.compile(r"otherurl\d+\Z")
SECTIONS = ("help", "setup", "files", "labels", "environment", "pre", "post", "runscript",
            "test", "startscript", "arguments")
APP_SECTIONS = ("appinstall", "applabels", "appfiles", "appenv", "apptest", "apphelp",
                "apprun", "appstart")
_BUILD_ARG = re.compile(r"{{\s*(\w+)\s*}}")
_STAGE_START = re.compile(r"^bootstrap:", re.IGNORECASE | re.MULTILINE)
# A %files line: words, "double-quoted" or 'single-quoted' strings, {{ args }} kept whole.
_FILE_WORDS = re.compile(r"""([^\s"']*{{\s*\w+\s*}}*[^\s{}"']*)+|([^\s"']+|"([^"]*)"|'([^']*))""")


@attrs.frozen
class Script:
    """A script section: its arguments (``-c /bin/bash``) and its body, as written."""

    args: str = ""
    script: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"args": self.args, "script": self.script}


@attrs.frozen
class FileCopy:
    """One ``%files`` line: copy ``source`` (host, or the stage named in the section's
    ``from STAGE`` argument) to ``destination`` in the image ("" = same path)."""

    source: str
    destination: str = ""


@attrs.frozen(kw_only=True)
class Definition:
    """One stage of a definition file, parsed.

    Attributes:
        header: lower-cased keywords to values (``{"bootstrap": "docker", ...}``).
        labels: ``%labels``.
        files: ``%files`` sections as ``(args, [FileCopy...])``, merged by args.
        sections: every script section (``help``, ``setup``, ``post``,
            ``runscript``...) that appeared, by name.
        apps: SCIF app sections by ``"appinstall NAME"``-style keys.
        app_order: app names in the order they first appeared.
        raw: this stage's text (after build-argument substitution).
        full_raw: the whole file's text.
        line: the line of the file this stage starts on.
    """

    header: dict[str, str]
    labels: dict[str, str]
    files: tuple[tuple[str, tuple[FileCopy, ...]], ...]
    sections: dict[str, Script]
    apps: dict[str, str]
    app_order: tuple[str, ...]
    raw: str
    full_raw: str
    line: int = 1

    # -- construction --------------------------------------------------------------------

    @classmethod
    def parse(cls, text: str, *, build_args: Mapping[str, str] | None = None) -> Definition:
        """Parse a definition of one stage.

        Raises:
            DefinitionError: malformed input (with the line number) or a build
                argument without a value.
        """
        stages = cls.parse_stages(text, build_args=build_args)
        if len(stages) != 1:
            raise DefinitionError(f"expected one stage, found {len(stages)} (use parse_stages)",
                                  line=stages[1].line)
        # One stage is the whole file, a comment before its header included (the stages
        # of parse_stages start at their Bootstrap: line, as Apptainer's All does).
        return attrs.evolve(stages[0], raw=stages[0].full_raw)

    @classmethod
    def parse_stages(cls, text: str, *,
                     build_args: Mapping[str, str] | None = None) -> list[Definition]:
        """Parse a whole (possibly multi-stage) definition file: one Definition per stage."""
        if "\0" in text:
            raise DefinitionError("a definition file is text; this one holds NUL bytes")
        text = _substitute(text, dict(build_args or {}))
        starts = [m.start() for m in _STAGE_START.finditer(text)]
        bounds = [0, *starts] if not starts or starts[0] != 0 else starts
        pieces = [(start, text[start:end])
                  for start, end in zip(bounds, [*bounds[1:], len(text)], strict=True)]
        stages = []
        for start, piece in pieces:
            if not piece.strip() or _only_comments(piece):
                continue
            stages.append(cls._parse_stage(piece, text, text.count("\n", 0, start) + 1))
        if not stages:
            raise DefinitionError("empty definition file: no header and no section", line=1)
        names = [s.header.get("stage") for s in stages if s.header.get("stage")]
        if len(names) != len(set(names)):
            raise DefinitionError("two stages have the same Stage name")
        return stages

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], *,
                  build_args: Mapping[str, str] | None = None) -> Definition:
        """Parse the definition file at ``path`` (one stage; see ``stages_from_file``)."""
        return cls.parse(_read(path), build_args=build_args)

    @classmethod
    def stages_from_file(cls, path: str | os.PathLike[str], *,
                         build_args: Mapping[str, str] | None = None) -> list[Definition]:
        return cls.parse_stages(_read(path), build_args=build_args)

    @classmethod
    def _parse_stage(cls, text: str, full: str, first_line: int) -> Definition:
        # Every line keeps exactly one line end, as a line scanner gives them.
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        header_end = next((i for i, line in enumerate(lines) if _section_word(line)), len(lines))
        header = _parse_header(lines[:header_end], first_line)
        sections: dict[str, Script] = {}
        apps: dict[str, str] = {}
        app_order: list[str] = []
        files: list[tuple[str, list[FileCopy]]] = []
        labels: dict[str, str] = {}
        index = header_end
        while index < len(lines):
            start = index
            end = next((i for i in range(index + 1, len(lines)) if _section_word(lines[i])),
                       len(lines))
            title = lines[start].strip().lstrip("%")
            name, _, args = title.partition(" ")
            name = name.lower()
            body = "".join(line + "\n" for line in lines[start + 1:end])
            line_no = first_line + start
            if start == 0:
                # A file that opens with a section (no header, nothing before it): as
                # Apptainer, that first section is read with its trailing white space
                # trimmed, and one with nothing left after its title is refused.
                body = body.rstrip()
                if not body:
                    raise DefinitionError(f"section %{title}: could not be split into a "
                                          "section name and a body", line=line_no)
            if name == "files":
                _add_files(files, args, body)
            elif name in APP_SECTIONS:
                app, _, _rest = args.partition(" ")
                if not app:
                    raise DefinitionError(f"%{name} needs an app name", line=line_no)
                key = f"{name} {app}"
                apps[key] = apps.get(key, "") + body
                if app not in app_order:
                    app_order.append(app)
            elif name in SECTIONS:
                previous = sections.get(name, Script())
                sections[name] = Script(args if args else previous.args, previous.script + body)
                if name == "labels":
                    labels.update(_parse_labels(body))
            else:
                raise DefinitionError(f"unknown section %{name} (expected one of "
                                      f"%{', %'.join(SECTIONS)} or an %app section)",
                                      line=line_no)
            index = end
        if not header and not sections and not files and not apps:
            raise DefinitionError("empty definition: no header and no section", line=first_line)
        return cls(header=header, labels=labels,
                   files=tuple((args, tuple(copies)) for args, copies in files),
                   sections=sections, apps=apps, app_order=tuple(app_order), raw=text,
                   full_raw=full, line=first_line)

    # -- accessors -------------------------------------------------------------------------

    @property
    def bootstrap(self) -> str | None:
        """The bootstrap agent (``busybox``, ``localimage``...), lower-cased; None without one."""
        value = self.header.get("bootstrap")
        return value.lower() if value else None

    @property
    def stage(self) -> str | None:
        return self.header.get("stage")

    def section(self, name: str) -> Script:
        """A script section, empty if the definition has none."""
        return self.sections.get(name, Script())

    def to_dict(self) -> dict[str, Any]:
        """The structure of Apptainer's parsed-definition JSON (for exchange with other tools)."""
        return {
            "header": dict(self.header) if self.header else None,
            "imageData": {
                "metadata": None,
                "labels": dict(self.labels),
                "imageScripts": {
                    "help": self.section("help").to_dict(),
                    "environment": self.section("environment").to_dict(),
                    "runScript": self.section("runscript").to_dict(),
                    "test": self.section("test").to_dict(),
                    "startScript": self.section("startscript").to_dict(),
                },
            },
            "buildData": {
                "files": [{"args": args, "files": [{"source": c.source,
                                                    "destination": c.destination}
                                                   for c in copies]}
                          for args, copies in self.files],
                "buildScripts": {
                    "pre": self.section("pre").to_dict(),
                    "setup": self.section("setup").to_dict(),
                    "post": self.section("post").to_dict(),
                    "test": self.section("test").to_dict(),
                },
            },
            "customData": dict(self.apps) if self.apps else None,
            "raw": base64.b64encode(self.raw.encode()).decode(),
            "fullraw": base64.b64encode(self.full_raw.encode()).decode(),
            "appOrder": list(self.app_order),
        }


# -- the pieces ----------------------------------------------------------------------------


def _read(path: str | os.PathLike[str]) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError as err:
        raise DefinitionError(f"{os.fspath(path)} is not UTF-8 text") from err
    except OSError as err:
        raise DefinitionError(f"cannot read the definition file: {err.strerror}",
                              path=os.fspath(path), errno=err.errno) from err


def _section_word(line: str) -> bool:
    words = line.split()
    return bool(words) and words[0].startswith("%")


def _only_comments(text: str) -> bool:
    return all(not line.strip() or line.strip().startswith("#") for line in text.split("\n"))


def _parse_header(lines: list[str], first_line: int) -> dict[str, str]:
    header: dict[str, str] = {}
    key, value, continued = "", "", False
    for offset, raw in enumerate(lines):
        line = raw.strip()
        if not line or line.startswith("#"):
            if continued:
                header[key] = value
                continued = False
            continue
        content = line.split("#", 1)[0]
        if continued:
            value += content.strip()
            continued = False
        else:
            name, sep, rest = content.partition(":")
            if not sep:
                raise DefinitionError(f"header line {line!r} has no 'Keyword: value' form",
                                      line=first_line + offset)
            key, value = name.strip().lower(), rest.strip()
            if key not in HEADER_KEYWORDS and not _NUMBERED_HEADER.match(key):
                raise DefinitionError(f"unknown header keyword {name.strip()!r} (expected one "
                                      f"of {', '.join(sorted(HEADER_KEYWORDS))}, OtherURLn)",
                                      line=first_line + offset)
        if value.endswith("\\"):
            value, continued = value[:-1], True
            if value.endswith("\\n"):
                value = value[:-2] + "\n"
            continue
        header[key] = value
    if continued:
        header[key] = value
    return header


def _parse_labels(body: str) -> dict[str, str]:
    labels = {}
    for raw in body.strip().split("\n"):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, _, value = line.partition(" ")
        labels[name.strip()] = value.strip()
    return labels


def _add_files(files: list[tuple[str, list[FileCopy]]], args: str, body: str) -> None:
    copies = []
    for raw in body.strip().split("\n"):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        words = [m.group(0) for m in _FILE_WORDS.finditer(line)]
        source = words[0].strip().strip('"')
        destination = words[1].strip().strip('"') if len(words) > 1 else ""
        copies.append(FileCopy(source, destination))
    for existing_args, existing in files:
        if existing_args == args:
            existing.extend(copies)
            return
    files.append((args, copies))


def _argument_defaults(text: str) -> dict[str, str]:
    """``NAME=value`` lines of every %arguments section (placeholders not yet replaced)."""
    defaults: dict[str, str] = {}
    in_arguments = False
    for line in text.split("\n"):
        if _section_word(line):
            in_arguments = line.split()[0].lower() == "%arguments"
            continue
        if in_arguments:
            stripped = line.strip()
            if stripped and not stripped.startswith("#") and "=" in stripped:
                name, _, value = stripped.partition("=")
                defaults[name.strip()] = value.strip().strip("\"'")
    return defaults


def _substitute(text: str, given: dict[str, str]) -> str:
    """Replace every ``{{ NAME }}`` by the caller's value or its %arguments default."""
    values = {**_argument_defaults(text), **given}

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            line = text.count("\n", 0, match.start()) + 1
            raise DefinitionError(
                f"build argument {name!r} has no value: give it with build_args "
                "(--build-arg NAME=VALUE) or a default in %arguments", line=line)
        return values[name]

    return _BUILD_ARG.sub(replace, text)
