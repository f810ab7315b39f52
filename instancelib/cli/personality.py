"""What the command is under each name it runs as: instancelib, singularity, apptainer."""

from __future__ import annotations

import os
import sys

from instancelib.version import __version__

__all__ = ["GLOBAL_FLAGS", "PERSONALITIES", "Personality", "personality_of"]


class Personality:
    """What the command is when run under a name: its version line, layout, prompt."""

    def __init__(self, name: str, version: str, layout: str, prompt: str) -> None:
        self.name = name
        self.version = version
        self.layout = layout
        self.prompt = prompt

    @property
    def version_line(self) -> str:
        return f"{self.name} version {self.version}"


# The versions claimed are those whose command line and layout instancelib follows
# (SingularityCE 3.11, Apptainer 1.3); the build metadata after "+" says what it is
# (semver: it does not change the version's order).  spython only uses Singularity
# 3's spelling of "instance stop --all" when the line holds "version 3".
PERSONALITIES: dict[str, Personality] = {
    "instancelib": Personality("instancelib", __version__, "instancelib", "Instancelib> "),
    "singularity": Personality("singularity", f"3.11.5+instancelib.{__version__}",
                               "singularity", "Singularity> "),
    "apptainer": Personality("apptainer", f"1.3.6+instancelib.{__version__}", "apptainer",
                             "Apptainer> "),
}

# Global options that take no value (as Singularity's: before the verb).
GLOBAL_FLAGS = frozenset({"-d", "--debug", "-q", "--quiet", "-s", "--silent", "-v",
                          "--verbose", "--nocolor"})


def personality_of(prog: str | None) -> Personality:
    """The personality of a program name (``singularity``, ``apptainer``; else instancelib)."""
    name = os.path.basename(prog if prog is not None else (sys.argv[0] if sys.argv else ""))
    return PERSONALITIES.get(name, PERSONALITIES["instancelib"])


