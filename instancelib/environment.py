"""What a command in an instance gets: its environment (before the image's env
scripts run) and its checked arguments.

Follows Singularity/Apptainer: the host environment passes in, except
``PATH`` (reset to the container default), ``LD_LIBRARY_PATH`` (reset to
``/.singularity.d/libs``) and the prompt; ``cleanenv`` keeps only ``HOME``,
``TERM``, ``LANG=C`` and the proxy variables.  Host variables named
``APPTAINERENV_X`` / ``SINGULARITYENV_X`` set ``X`` inside, with the same
precedence as ``env=`` (the image's scripts first, then these).  instancelib's
own ``INSTANCELIB_*`` settings never pass into an instance.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence

from instancelib.errors import InvalidArgument

__all__ = ["DEFAULT_PATH", "base_environment", "check_args", "check_argv", "check_env",
           "check_exec_size", "prefixed_overrides", "runtime_variables"]

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
LIBRARY_PATH = "/.singularity.d/libs"
PROMPT = "Instancelib> "

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_ALWAYS_OMIT = frozenset({"PATH", "LD_LIBRARY_PATH", "PS1", "PROMPT_COMMAND", "HOME"})
_ALWAYS_PASS = frozenset({
    "TERM", "http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "no_proxy", "NO_PROXY",
    "all_proxy", "ALL_PROXY", "ftp_proxy", "FTP_PROXY",
})
# execve(2): one argument or "NAME=value" may be at most 32 pages (MAX_ARG_STRLEN),
# and all of them together, with their pointers, at most ARG_MAX.
MAX_ARG_STRLEN = 32 * 4096
_OVERRIDE_PREFIXES = ("APPTAINERENV_", "SINGULARITYENV_")
_INTERNAL_PREFIX = "INSTANCELIB_"


def check_env(env: Mapping[str, str] | None) -> dict[str, str]:
    """Validate user variables: names must be shell identifiers, values text without NULs."""
    checked: dict[str, str] = {}
    for name, value in (env or {}).items():
        if not isinstance(name, str) or not _NAME.match(name):
            raise InvalidArgument(f"environment variable name must match [A-Za-z_][A-Za-z0-9_]* "
                                  f"(got {name!r})")
        if not isinstance(value, str) or "\0" in value:
            raise InvalidArgument(f"environment variable {name} must be a string without NUL "
                                  f"bytes (got {value!r})")
        checked[name] = value
    return checked


def check_args(args: Sequence[str], what: str = "args") -> tuple[str, ...]:
    """Arguments as a tuple: strings without NUL bytes (a lone string is refused)."""
    if isinstance(args, str):
        raise InvalidArgument(f"{what} must be a list of strings, not a string (got {args!r})")
    checked = tuple(args)
    for arg in checked:
        if not isinstance(arg, str) or "\0" in arg:
            raise InvalidArgument(f"each argument must be a string without NUL bytes "
                                  f"(got {arg!r})")
    return checked


def check_argv(argv: Sequence[str]) -> list[str]:
    """A command line to run: a non-empty list of arguments (see ``check_args``)."""
    if isinstance(argv, str):
        raise InvalidArgument(f"argv must be a list of strings, not a string (got {argv!r}); "
                              f"to run a shell command use ['sh', '-c', {argv!r}]")
    command = list(check_args(argv, "argv"))
    if not command:
        raise InvalidArgument("argv must not be empty")
    return command


def check_exec_size(argv: list[str], env: Mapping[str, str], what: str = "the command") -> None:
    """Refuse what ``execve`` would refuse (E2BIG), with the culprit named.

    Raises:
        InvalidArgument: an argument or variable longer than 128 KiB, or all of
            them together more than the kernel's ``ARG_MAX``.
    """
    total = 0
    for kind, strings in (("argument", argv), ("variable", [f"{k}={v}" for k, v in env.items()])):
        for index, string in enumerate(strings):
            size = len(string.encode(errors="surrogateescape")) + 1
            if size > MAX_ARG_STRLEN:
                shown = string.partition("=")[0] if kind == "variable" else f"{index}"
                raise InvalidArgument(f"{what}: {kind} {shown} is {size - 1} bytes long; the "
                                      f"kernel takes at most {MAX_ARG_STRLEN - 1} bytes each")
            total += size + 8
    limit = os.sysconf("SC_ARG_MAX")
    if total > limit:
        raise InvalidArgument(f"{what}: its arguments and environment take {total} bytes; the "
                              f"kernel takes at most {limit} (ARG_MAX) in all")


def base_environment(host: Mapping[str, str], *, cleanenv: bool, home: str) -> dict[str, str]:
    """The variables the image's env scripts are sourced over."""
    if cleanenv:
        env = {name: value for name, value in host.items() if name in _ALWAYS_PASS}
        env["LANG"] = "C"
    else:
        env = {
            name: value
            for name, value in host.items()
            if name not in _ALWAYS_OMIT
            and not name.startswith(_OVERRIDE_PREFIXES)
            and not name.startswith(_INTERNAL_PREFIX)
            and _NAME.match(name)
            and "\0" not in value
        }
    env["HOME"] = home
    env["PATH"] = DEFAULT_PATH
    env["LD_LIBRARY_PATH"] = LIBRARY_PATH
    env["PS1"] = PROMPT
    return env


def prefixed_overrides(host: Mapping[str, str]) -> dict[str, str]:
    """``APPTAINERENV_X=v`` / ``SINGULARITYENV_X=v`` host variables as ``{X: v}``."""
    overrides: dict[str, str] = {}
    for prefix in reversed(_OVERRIDE_PREFIXES):  # APPTAINERENV_ wins over SINGULARITYENV_
        for name, value in host.items():
            if name.startswith(prefix) and _NAME.match(name[len(prefix):]):
                overrides[name[len(prefix):]] = value
    return overrides


def runtime_variables(name: str, image_path: str) -> dict[str, str]:
    """Variables describing the instance, set last (as Singularity's runtime does)."""
    image_name = image_path.rstrip("/").rsplit("/", 1)[-1]
    return {
        "APPTAINER_INSTANCE": name,
        "SINGULARITY_INSTANCE": name,
        "APPTAINER_CONTAINER": image_path,
        "SINGULARITY_CONTAINER": image_path,
        "APPTAINER_NAME": image_name,
        "SINGULARITY_NAME": image_name,
        "APPTAINER_ENVIRONMENT": "/.singularity.d/env/91-environment.sh",
        "SINGULARITY_ENVIRONMENT": "/.singularity.d/env/91-environment.sh",
    }
