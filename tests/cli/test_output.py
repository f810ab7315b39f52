"""What the command prints (``cli/output.py``): Go's tables and JSON, docker's units."""

from __future__ import annotations

import pytest

from instancelib.cli.output import format_binary, format_decimal, go_json, tabulate


def test_tabulate_matches_go_tabwriter():
    rows = [["INSTANCE NAME", "PID", "IP"], ["a", "12345678901", ""]]
    assert tabulate(rows, ["IMAGE", "/x"]) == (
        "INSTANCE NAME    PID            IP    IMAGE\n"
        "a                12345678901          /x\n"
    )


def test_go_json_escapes_like_go():
    assert go_json({"k": "<a & b>"}) == '{\n\t"k": "\\u003ca \\u0026 b\\u003e"\n}'


@pytest.mark.parametrize(("size", "binary", "decimal"), [
    (0, "0B", "0B"), (1023, "1023B", "1.02kB"), (1622016, "1.547MiB", "1.62MB"),
    (64 << 20, "64MiB", "67.1MB"), (8388608, "8MiB", "8.39MB"),
])
def test_sizes_print_as_docker_prints_them(size, binary, decimal):
    assert format_binary(size) == binary
    assert format_decimal(size) == decimal
