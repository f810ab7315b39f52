"""``sif header|list|info`` (``cli/siftool.py``) against the SIF reference's goldens."""

from __future__ import annotations

import subprocess
import sys

import pytest

from instancelib.cli import siftool
from instancelib.image import sif
from tests.corpus import HEADER_AND_LIST_CASES, INFO_CASES, golden, image_path


@pytest.mark.parametrize("case", sorted(HEADER_AND_LIST_CASES))
def test_header_matches_the_reference(case):
    image = sif.SIFImage.open(image_path(HEADER_AND_LIST_CASES[case]))
    assert siftool.format_header(image) == golden("Header", case)


@pytest.mark.parametrize("case", sorted(HEADER_AND_LIST_CASES))
def test_list_matches_the_reference(case):
    image = sif.SIFImage.open(image_path(HEADER_AND_LIST_CASES[case]))
    assert siftool.format_list(image) == golden("List", case)


@pytest.mark.parametrize("case", sorted(INFO_CASES))
def test_info_matches_the_reference(case):
    name, object_id = INFO_CASES[case]
    image = sif.SIFImage.open(image_path(name))
    assert siftool.format_info(image, object_id) == golden("Info", case)


@pytest.mark.parametrize(("command", "case"), [("header", "OneGroup"), ("list", "TwoGroups")])
def test_cli_prints_the_reference_text(command, case):
    path = image_path(HEADER_AND_LIST_CASES[case])
    result = subprocess.run([sys.executable, "-m", "instancelib", "sif", command, str(path)],
                            capture_output=True, text=True, check=True, timeout=60)
    assert result.stdout == golden(command.capitalize(), case)


def test_cli_info_and_its_errors():
    path = image_path("one-group")
    result = subprocess.run([sys.executable, "-m", "instancelib", "sif", "info", "2", str(path)],
                            capture_output=True, text=True, check=True, timeout=60)
    assert result.stdout == golden("Info", "DataPartitionSquashFS")
    missing = subprocess.run([sys.executable, "-m", "instancelib", "sif", "info", "9", str(path)],
                             capture_output=True, text=True, check=False, timeout=60)
    assert missing.returncode == 255 and "no object with ID 9" in missing.stderr


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "1970-01-01 00:00:00 +0000 UTC"), (1590175859, "2020-05-22 19:30:59 +0000 UTC"),
    (-1, "1969-12-31 23:59:59 +0000 UTC"), (951782400, "2000-02-29 00:00:00 +0000 UTC"),
    (253402300800, "10000-01-01 00:00:00 +0000 UTC"), (sif.ZERO_TIME, None),
])
def test_times_print_as_go_does(seconds, text):
    assert siftool._time(seconds) == text
