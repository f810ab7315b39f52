"""The host environment an instance starts from (Singularity's rules)."""

from __future__ import annotations

import pytest

from instancelib import InvalidArgument
from instancelib.environment import (
    DEFAULT_PATH,
    base_environment,
    check_env,
    prefixed_overrides,
)

HOST = {
    "PATH": "/host/bin", "LD_LIBRARY_PATH": "/host/lib", "PS1": "$ ", "HOME": "/home/u",
    "TERM": "xterm", "LANG": "de_DE.UTF-8", "MYVAR": "1", "INSTANCELIB_HOME": "/x",
    "APPTAINERENV_FOO": "a", "SINGULARITYENV_FOO": "s", "SINGULARITYENV_BAR": "b",
    "http_proxy": "http://p",
}


def test_host_variables_pass_except_path_libs_prompt_and_internals():
    env = base_environment(HOST, cleanenv=False, home="/home/u")
    assert env["MYVAR"] == "1" and env["LANG"] == "de_DE.UTF-8"
    assert env["PATH"] == DEFAULT_PATH
    assert env["LD_LIBRARY_PATH"] == "/.singularity.d/libs"
    assert env["PS1"] != "$ "
    assert "INSTANCELIB_HOME" not in env
    assert not any(k.startswith(("APPTAINERENV_", "SINGULARITYENV_")) for k in env)


def test_cleanenv_keeps_only_the_essentials():
    env = base_environment(HOST, cleanenv=True, home="/home/u")
    assert set(env) == {"TERM", "http_proxy", "LANG", "HOME", "PATH", "LD_LIBRARY_PATH", "PS1"}
    assert env["LANG"] == "C"


def test_prefixed_overrides_apptainer_wins():
    assert prefixed_overrides(HOST) == {"FOO": "a", "BAR": "b"}


@pytest.mark.parametrize("env", [{"": "x"}, {"A-B": "x"}, {"A": "x\0y"}, {"A": 1}])
def test_check_env_refuses(env):
    with pytest.raises(InvalidArgument):
        check_env(env)
