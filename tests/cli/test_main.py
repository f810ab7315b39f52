"""The command line's own behaviour: version, and usage errors in Singularity's form."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from instancelib import __version__
from instancelib.build import BuildProgress
from instancelib.cli.image_commands import _BuildReporter
from instancelib.cli.main import ERROR_EXIT, main


def test_version_under_its_own_name(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"instancelib version {__version__}\n"
    assert main(["version"]) == 0
    assert capsys.readouterr().out == f"{__version__}\n"


@pytest.mark.parametrize(("prog", "line", "number"), [
    ("singularity", f"singularity version 3.11.5+instancelib.{__version__}",
     f"3.11.5+instancelib.{__version__}"),
    ("/opt/bin/apptainer", f"apptainer version 1.3.6+instancelib.{__version__}",
     f"1.3.6+instancelib.{__version__}"),
    ("instancelib", f"instancelib version {__version__}", __version__),
])
def test_version_under_singularitys_names(capsys, prog, line, number):
    # spython uses Singularity 3's "instance stop --all" only when it reads "version 3".
    for argv, expected in ((["--version"], line), (["version"], number),
                           (["--quiet", "--version"], line), (["-d", "version"], number)):
        assert main(argv, prog=prog) == 0
        assert capsys.readouterr().out == expected + "\n"
    if prog == "singularity":
        assert "version 3" in line


def test_the_parser_prints_the_same_version_when_asked_its_way(capsys):
    # "--version" among other words goes through argparse: the same line, status 0.
    assert main(["--version", "instance"], prog="singularity") == 0
    assert capsys.readouterr().out.startswith("singularity version 3.11.5+instancelib.")


def test_global_flags_before_the_verb_are_accepted(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("INSTANCELIB_HOME", str(tmp_path / "home"))
    for flag in ("-q", "--quiet", "-d", "--debug", "-s", "--silent", "-v", "--verbose",
                 "--nocolor"):
        assert main([flag, "instance", "list", "--json"]) == 0, flag
        assert capsys.readouterr().out == '{\n\t"instances": []\n}\n'


def test_stop_all_with_nothing_running_is_singularitys_fatal_line(capsys, tmp_path,
                                                                   monkeypatch):
    monkeypatch.setenv("SINGULARITY_CONFIGDIR", str(tmp_path / "config"))
    assert main(["instance", "stop", "--all"], prog="singularity") == ERROR_EXIT
    assert capsys.readouterr().err == "FATAL:   no instance found\n"
    assert main(["instance", "stop", "web"], prog="singularity") == ERROR_EXIT
    assert capsys.readouterr().err == "FATAL:   no instance found with name web\n"


@pytest.mark.parametrize(("argv", "words"), [
    ([], "the following arguments are required: COMMAND (see 'instancelib --help')"),
    (["instance", "bogus"], "invalid choice: 'bogus'"),
    (["instance", "stop", "--timeout", "soon"], "invalid float value: 'soon' (see "
     "'instancelib instance stop --help')"),
    (["instance", "list", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["instance", "start", "--cgroup-parent", "/system.slice", "img", "web"],
     "invalid choice: '/system.slice' (choose from 'instancelib', 'caller')"),
])
def test_a_usage_error_is_one_fatal_line_and_exit_255(capsys, argv, words):
    assert main(argv) == ERROR_EXIT
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("FATAL:   ") and words in lines[0]
    assert captured.out == "" and "usage:" not in captured.err


def test_a_usage_error_names_the_program_it_runs_as(capsys):
    assert main(["instance", "bogus"], prog="singularity") == ERROR_EXIT
    assert "(see 'singularity instance --help')" in capsys.readouterr().err


def test_the_installed_command_exits_255_on_a_usage_error():
    result = subprocess.run([sys.executable, "-m", "instancelib", "instance", "bogus"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 255 and result.stderr.startswith("FATAL:")
    assert "Traceback" not in result.stderr


def test_a_build_on_a_non_terminal_prints_each_step_once(monkeypatch):
    monkeypatch.setattr(sys, "stderr", open(os.devnull, "w"))  # not a terminal  # noqa: SIM115
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("instancelib")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        reporter = _BuildReporter()
        for event in (BuildProgress("bootstrap"), BuildProgress("%post"),
                      BuildProgress("%post", output="a line"), BuildProgress("mksquashfs", 0.0),
                      BuildProgress("mksquashfs", 0.5), BuildProgress("mksquashfs", 1.0),
                      BuildProgress("done", 1.0)):
            reporter(event)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        sys.stderr.close()
    assert seen == ["bootstrap", "%post", "mksquashfs"]


def test_alias_writes_the_launcher_in_the_users_bin_by_default(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert main(["alias", "singularity"]) == 0
    launcher = tmp_path / ".local" / "bin" / "singularity"
    assert launcher.read_text().startswith(f"#!{sys.executable} -S\n")
    err = capsys.readouterr().err
    assert f"INFO:    wrote {launcher}: instancelib as singularity" in err
    assert f"WARNING: {launcher.parent} is not on PATH" in err
    result = subprocess.run([str(launcher), "--version"], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.stdout.startswith("singularity version 3.11.5+instancelib.")
    (tmp_path / "no-home").write_text("a file where a directory should be")
    monkeypatch.setenv("HOME", str(tmp_path / "no-home"))
    assert main(["alias", "apptainer"]) == ERROR_EXIT
    assert capsys.readouterr().err.startswith("FATAL:   cannot make ")
