"""Bind mounts requested by the user: ``Bind`` and Singularity's ``src[:dst[:opts]]`` syntax."""

from __future__ import annotations

import os
from collections.abc import Iterable

import attrs

from instancelib.errors import InvalidArgument

__all__ = ["Bind", "parse_binds"]

_OPTIONS = frozenset({"ro", "rw"})


def _absolute(_instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not value.startswith("/"):
        raise InvalidArgument(f"bind {attribute.name} must be an absolute path (got {value!r})")
    if "\0" in value:
        raise InvalidArgument(f"bind {attribute.name} contains a NUL byte")


def _normalise(path: str) -> str:
    return os.path.normpath(path) if path else path


@attrs.frozen(kw_only=True)
class Bind:
    """A host path bound into the instance.

    Attributes:
        source: the host path (absolute; a relative path given to
            ``parse_binds`` is made absolute against the current directory).
        destination: the path inside the instance; defaults to ``source``.
        read_only: mount it read-only (``:ro``).
    """

    source: str = attrs.field(converter=_normalise, validator=_absolute)
    destination: str = attrs.field(converter=_normalise, validator=_absolute)
    read_only: bool = False

    @destination.default
    def _default_destination(self) -> str:
        return self.source

    def __str__(self) -> str:
        return f"{self.source}:{self.destination}:{'ro' if self.read_only else 'rw'}"


def _parse_one(spec: str) -> Bind:
    parts = spec.split(":")
    if len(parts) > 3 or not parts[0]:
        raise InvalidArgument(f"bind spec must be 'src[:dst[:ro|rw]]' (got {spec!r})")
    source = os.path.abspath(os.path.expanduser(parts[0]))
    destination = parts[1] if len(parts) > 1 and parts[1] else source
    read_only = False
    if len(parts) == 3:
        for option in parts[2].split(","):
            if option not in _OPTIONS:
                raise InvalidArgument(
                    f"bind option must be 'ro' or 'rw' (got {option!r} in {spec!r})"
                )
            read_only = option == "ro"
    return Bind(source=source, destination=destination, read_only=read_only)


def parse_binds(specs: Iterable[str | Bind] | str) -> tuple[Bind, ...]:
    """Turn bind specs into ``Bind`` objects.

    Each string may hold several comma-separated specs, as ``--bind`` does:
    ``"/data:/mnt:ro,/scratch"``.  ``Bind`` objects pass through unchanged.

    Raises:
        InvalidArgument: a spec that is malformed or whose paths are not absolute.
    """
    if isinstance(specs, str):
        specs = [specs]
    binds: list[Bind] = []
    for spec in specs:
        if isinstance(spec, Bind):
            binds.append(spec)
            continue
        if not isinstance(spec, str) or not spec.strip(","):
            raise InvalidArgument(f"a bind must be a non-empty string or a Bind (got {spec!r})")
        binds.extend(_parse_one(part) for part in _split_specs(spec))
    return tuple(binds)


def _split_specs(text: str) -> list[str]:
    """Split on commas that start a new spec; ``ro,rw`` option lists stay attached."""
    pieces = text.split(",")
    specs: list[str] = []
    for piece in pieces:
        if specs and piece in _OPTIONS and specs[-1].count(":") == 2:
            specs[-1] += "," + piece
        elif piece:
            specs.append(piece)
    return specs
