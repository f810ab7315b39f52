"""An instance's environment: the image's ``/.singularity.d/env/*.sh`` applied.

The scripts are shell, so a shell inside the container sources them (in
lexical order, as Singularity does) and prints the result with ``export -p``;
that text is parsed here.  Doing it once at start gives the service and every
later ``exec`` the same environment, and lets instancelib run the final
program itself (so "command not found" is a clear error, not a shell's 127).

``export -p`` is printed differently by each shell: dash and busybox ash use
``export NAME='v'`` with ``'"'"'`` for quotes, bash ``declare -x NAME="v"``
(or ``export NAME="v"`` as ``sh``) with backslash escapes, zsh and mksh may use
``$'...'``.  ``parse_export_p`` reads all of them.

Only the standard library is imported.
"""

from __future__ import annotations

import os
import re
import select
import signal
import time

__all__ = [
    "DEFAULT_PATH",
    "ENV_DIR",
    "EnvScriptError",
    "apply_overrides",
    "has_env_scripts",
    "parse_export_p",
    "source_env_scripts",
]

ENV_DIR = "/.singularity.d/env"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_SOURCE_SCRIPT = (
    'for __instancelib_f in /.singularity.d/env/*.sh; do '
    'if [ -f "$__instancelib_f" ]; then . "$__instancelib_f"; fi; done; '
    "unset __instancelib_f; export -p >&3"
)
_SHELL_VARIABLES = ("PWD", "OLDPWD", "SHLVL", "_")
_ANSI_C = {"n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "e": "\x1b",
           "E": "\x1b", "f": "\f", "v": "\v", "\\": "\\", "'": "'", '"': '"', "?": "?"}
# Signals the child must not inherit as ignored (Python ignores SIGPIPE itself).
RESET_SIGNALS = frozenset(
    s
    for s in (signal.SIGPIPE, getattr(signal, "SIGXFSZ", None), getattr(signal, "SIGXFZ", None))
    if s is not None
)


class EnvScriptError(Exception):
    """Sourcing the image's environment scripts failed."""


def has_env_scripts(env_dir: str = ENV_DIR) -> bool:
    try:
        return any(name.endswith(".sh") for name in os.listdir(env_dir))
    except OSError:
        return False


def source_env_scripts(base: dict[str, str], *, stdout: int, stderr: int,
                       timeout: float) -> dict[str, str]:
    """Source the image's env scripts with ``/bin/sh`` over ``base``; return the environment.

    The shell's own output goes to ``stdout``/``stderr`` (the instance's logs).
    """
    if not os.path.exists("/bin/sh"):
        raise EnvScriptError("the image has environment scripts but no /bin/sh to source them")
    read_end, write_end = os.pipe()
    try:
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, stdout, 1),
            (os.POSIX_SPAWN_DUP2, stderr, 2),
            (os.POSIX_SPAWN_DUP2, write_end, 3),
        ]
        try:
            pid = os.posix_spawn("/bin/sh", ["/bin/sh", "-c", _SOURCE_SCRIPT], base,
                                 file_actions=actions, setsigdef=RESET_SIGNALS, setsigmask=())
        except OSError as err:
            raise EnvScriptError(f"cannot run /bin/sh: {err.strerror}") from err
        os.close(write_end)
        write_end = -1
        output = _read_all(read_end, pid, timeout)
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0 or not output:
        raise EnvScriptError(
            f"sourcing {ENV_DIR}/*.sh failed (shell exit status {code}); "
            "see the instance's error log"
        )
    sourced = parse_export_p(output.decode("utf-8", "surrogateescape"))
    # Variables the shell maintains for itself are not part of the image's environment.
    for name in _SHELL_VARIABLES:
        if name not in base:
            sourced.pop(name, None)
    return sourced


def _read_all(fd: int, pid: int, timeout: float) -> bytes:
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            os.kill(pid, signal.SIGKILL)
            raise EnvScriptError(f"sourcing {ENV_DIR}/*.sh took longer than {timeout:g} s")
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def apply_overrides(env: dict[str, str], overrides: dict[str, str]) -> dict[str, str]:
    """Apply user variables over ``env``; ``APPEND_PATH``/``PREPEND_PATH`` extend ``PATH``."""
    result = dict(env)
    result.setdefault("PATH", DEFAULT_PATH)
    for name, value in overrides.items():
        if name == "APPEND_PATH":
            result["PATH"] = f"{result['PATH']}:{value}"
        elif name == "PREPEND_PATH":
            result["PATH"] = f"{value}:{result['PATH']}"
        else:
            result[name] = value
    return result


def parse_export_p(text: str) -> dict[str, str]:
    """Parse the output of a shell's ``export -p`` into a dict (unset exports are skipped)."""
    env: dict[str, str] = {}
    pos = 0
    while pos < len(text):
        words, pos = _read_command(text, pos)
        if not words or words[0] not in ("export", "declare", "typeset"):
            continue
        for word in words[1:]:
            if word.startswith("-"):
                continue
            name, sep, value = word.partition("=")
            if sep and _NAME.match(name):
                env[name] = value
    return env


def _read_command(text: str, pos: int) -> tuple[list[str], int]:
    """Read shell words up to an unquoted newline; return them and the next position."""
    words: list[str] = []
    current: list[str] | None = None
    length = len(text)
    while pos < length:
        char = text[pos]
        if char == "\n":
            pos += 1
            break
        if char in " \t":
            if current is not None:
                words.append("".join(current))
                current = None
            pos += 1
            continue
        if current is None:
            current = []
        if char == "'":
            end = text.find("'", pos + 1)
            end = length if end < 0 else end
            current.append(text[pos + 1 : end])
            pos = end + 1
        elif char == '"':
            pos = _read_double_quoted(text, pos + 1, current)
        elif char == "$" and text.startswith("$'", pos):
            pos = _read_ansi_c(text, pos + 2, current)
        elif char == "\\" and pos + 1 < length:
            if text[pos + 1] != "\n":
                current.append(text[pos + 1])
            pos += 2
        else:
            current.append(char)
            pos += 1
    if current is not None:
        words.append("".join(current))
    return words, pos


def _read_double_quoted(text: str, pos: int, out: list[str]) -> int:
    while pos < len(text) and text[pos] != '"':
        if text[pos] == "\\" and pos + 1 < len(text) and text[pos + 1] in '$`"\\\n':
            if text[pos + 1] != "\n":
                out.append(text[pos + 1])
            pos += 2
        else:
            out.append(text[pos])
            pos += 1
    return pos + 1


def _read_ansi_c(text: str, pos: int, out: list[str]) -> int:
    """Decode a ``$'...'`` word; octal and hex escapes are bytes of UTF-8 text."""
    raw = bytearray()
    while pos < len(text) and text[pos] != "'":
        if text[pos] == "\\" and pos + 1 < len(text):
            escape = text[pos + 1]
            octal = re.match(r"[0-7]{1,3}", text[pos + 1 :])
            hexa = re.match(r"x([0-9a-fA-F]{1,2})", text[pos + 1 :])
            if escape in _ANSI_C:
                raw += _ANSI_C[escape].encode()
                pos += 2
            elif octal:
                raw.append(int(octal.group(), 8) & 0xFF)
                pos += 1 + len(octal.group())
            elif hexa:
                raw.append(int(hexa.group(1), 16))
                pos += 1 + len(hexa.group())
            else:
                raw += ("\\" + escape).encode()
                pos += 2
        else:
            raw += text[pos].encode("utf-8", "surrogateescape")
            pos += 1
    out.append(raw.decode("utf-8", "surrogateescape"))
    return pos + 1
