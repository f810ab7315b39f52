"""Rich display in notebooks and IPython (``display.py``): human units, HTML, pretty text."""

from __future__ import annotations

import html
import re

import pytest
from IPython.lib.pretty import pretty

from instancelib import ImageMetadata, Limits, Stats, display
from instancelib.linux.userns import has_host_root

STATS = Stats(name="web<1>", timestamp=1_700_000_000.0, cpu_percent=2.123, cpu_seconds=75.5,
              memory_usage=3_460_300, memory_limit=8 << 30, memory_percent=0.04,
              block_read=1 << 20, block_write=0, pids=3, source="cgroup v2")


@pytest.mark.parametrize(("value", "shown"), [
    (0, "0 B"), (512, "512 B"), (1536, "1.5 KiB"), (3_460_300, "3.3 MiB"), (8 << 30, "8.0 GiB"),
    (None, "-"),
])
def test_sizes_in_binary_units(value, shown):
    assert display.size(value) == shown


@pytest.mark.parametrize(("seconds", "shown"), [
    (0.25, "250 ms"), (5.25, "5.2 s"), (42, "42 s"), (185, "3 min 5 s"), (7500, "2 h 5 min"),
    (200_000, "2 d 7 h"),
])
def test_durations_as_people_say_them(seconds, shown):
    assert display.duration(seconds) == shown


def test_stats_show_human_units_and_keep_a_one_line_repr():
    page = STATS._repr_html_()
    for shown in ("2.1 %", "3.3 MiB / 8.0 GiB (0.0 %)", "1.0 MiB read / 0 B written",
                  "1 min 15 s", "cgroup v2"):
        assert html.escape(shown) in page
    assert "web&lt;1&gt;" in page and "web<1>" not in page  # escaped
    text = pretty(STATS)
    assert text.startswith("Stats of web<1>\n") and "  CPU        2.1 %" in text
    assert "\n" not in repr(STATS) and "3460300" in repr(STATS)


def test_image_metadata_shows_its_labels_and_scripts():
    metadata = ImageMetadata(labels={"org.label": "v<2>"}, runscript="#!/bin/sh\necho hi\n",
                             environment={"/.singularity.d/env/90-environment.sh": "x"})
    page = metadata._repr_html_()
    assert "org.label: v&lt;2&gt;" in page and "<pre" in page and "echo hi" in page
    assert "90-environment.sh" in page
    assert pretty(metadata).startswith("Image metadata\n")


def test_an_instance_and_a_listing_show_as_tables(image, start, registry):
    # Limits need a cgroup: root's (an ordinary user here has none); both show the field.
    limited = has_host_root()
    instance = start(image, "shown", limits=Limits(pids_limit=50) if limited else None)
    rows = dict(instance.rows())
    assert rows["status"] == "running" and rows["PID"] == str(instance.pid)
    shown = "pids_limit=50" if limited else "none"
    assert rows["IP"] == "host network" and rows["limits"] == shown
    assert re.fullmatch(r"\d+ ms|\d+\.\d s", rows["uptime"])
    assert "<table" in instance._repr_html_() and shown in instance._repr_html_()
    assert pretty(instance).startswith("Instance shown\n")
    assert "\n" not in repr(instance)
    listed = registry.list()
    assert isinstance(listed, list) and listed == [instance]
    page = listed._repr_html_()
    assert "<th" in page and "NAME" in page and "shown" in page and "Instances (1)" in page
    assert f"Instances in {registry.root}" in registry._repr_html_()
    assert pretty(listed).splitlines()[1].split() == ["NAME", "PID", "STATUS", "IMAGE", "IP",
                                                       "UPTIME"]
    instance.stop()
    assert dict(instance.rows())["status"] == "stopped"
    assert "<i>none</i>" in registry.list()._repr_html_()
