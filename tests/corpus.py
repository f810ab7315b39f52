"""Where the test data kept in the repository is (``tests/data``)."""

from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"


def sif_corpus() -> Path:
    """The SIF reference's test images and goldens (see ``tests/data/sif/README.md``)."""
    return DATA / "sif"
