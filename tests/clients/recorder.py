"""A recording ``singularity`` for client tests: runs the launcher, notes argv and status."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from instancelib.cli.alias import write_launcher


class Recorder:
    """``bindir/NAME`` runs instancelib's launcher and appends ``[status, argv]`` to a log.

    ``take()`` returns the calls since the last ``take()``; ``names`` are the
    instance names a test uses (its clean-up removes their logs).
    """

    def __init__(self, tmp_path: Path, name: str = "singularity") -> None:
        self.bindir = tmp_path / "recorder-bin"
        self.bindir.mkdir()
        (tmp_path / "launcher").mkdir()
        real = write_launcher(name, tmp_path / "launcher")
        self.log = tmp_path / "calls.jsonl"
        script = self.bindir / name
        # Shell: the status is the launcher's, stdio untouched; argv written as JSON.
        script.write_text(
            "#!/bin/sh\n"
            f'"{real}" "$@"\n'
            "status=$?\n"
            f"'{sys.executable}' -S -c 'import json, sys; "
            "print(json.dumps([int(sys.argv[1]), sys.argv[2:]]))' "
            f'"$status" "$@" >> "{self.log}"\n'
            'exit "$status"\n')
        script.chmod(0o755)
        self.names: list[str] = []
        self._seen = 0

    def calls(self) -> list[tuple[int, list[str]]]:
        if not self.log.exists():
            return []
        return [(status, argv) for status, argv in
                (json.loads(line) for line in self.log.read_text().splitlines())]

    def take(self) -> list[tuple[int, list[str]]]:
        calls = self.calls()
        new, self._seen = calls[self._seen:], len(calls)
        return new
