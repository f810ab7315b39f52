"""The command line's own behaviour: version, and usage errors in Singularity's form."""

from __future__ import annotations

import subprocess
import sys

import pytest

from instancelib import __version__
from instancelib.cli.main import ERROR_EXIT, main


def test_version_under_its_own_name(capsys):
    with pytest.raises(SystemExit) as exited:   # argparse's version action, status 0
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"instancelib version {__version__}\n"


@pytest.mark.parametrize(("argv", "words"), [
    ([], "the following arguments are required: COMMAND (see 'instancelib --help')"),
    (["instance", "bogus"], "invalid choice: 'bogus'"),
    (["instance", "stop", "--timeout", "soon"], "invalid float value: 'soon' (see "
     "'instancelib instance stop --help')"),
    (["instance", "list", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
])
def test_a_usage_error_is_one_fatal_line_and_exit_255(capsys, argv, words):
    assert main(argv) == ERROR_EXIT
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("FATAL:   ") and words in lines[0]
    assert captured.out == "" and "usage:" not in captured.err


def test_the_installed_command_exits_255_on_a_usage_error():
    result = subprocess.run([sys.executable, "-m", "instancelib", "instance", "bogus"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 255 and result.stderr.startswith("FATAL:")
    assert "Traceback" not in result.stderr
