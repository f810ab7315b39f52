"""The test data kept in the repository (``tests/data``), and the SIF goldens' cases."""

from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"


def sif_corpus() -> Path:
    """The SIF reference's test images and goldens (see ``tests/data/sif/README.md``)."""
    return DATA / "sif"


# Case name in the goldens -> image in test/images.
HEADER_AND_LIST_CASES = {
    "Empty": "empty", "EmptyID": "empty-id", "EmptyLaunchScript": "empty-launch-script",
    "OneGroup": "one-group", "OneGroupSignedLegacy": "one-group-signed-legacy",
    "OneGroupSignedLegacyAll": "one-group-signed-legacy-all",
    "OneGroupSignedLegacyGroup": "one-group-signed-legacy-group",
    "OneGroupSignedPGP": "one-group-signed-pgp",
    "OneObjectCryptMessage": "one-object-crypt-message",
    "OneObjectGenericJSON": "one-object-generic-json", "OneObjectOCIBlob": "one-object-oci-blob",
    "OneObjectOCIRootIndex": "one-object-oci-root-index", "OneObjectSBOM": "one-object-sbom",
    "OneObjectTime": "one-object-time", "TwoGroups": "two-groups",
    "TwoGroupsSignedLegacy": "two-groups-signed-legacy",
    "TwoGroupsSignedLegacyAll": "two-groups-signed-legacy-all",
    "TwoGroupsSignedLegacyGroup": "two-groups-signed-legacy-group",
    "TwoGroupsSignedPGP": "two-groups-signed-pgp",
}


# Case name in TestApp_Info -> (image, object ID).
INFO_CASES = {
    "CryptMessage": ("one-object-crypt-message", 1), "DataPartitionEXT3": ("two-groups", 3),
    "DataPartitionRaw": ("one-group", 1), "DataPartitionSquashFS": ("one-group", 2),
    "DataSignature": ("two-groups-signed-pgp", 4), "GenericJSON": ("one-object-generic-json", 1),
    "OCIBlob": ("one-object-oci-blob", 1), "OCIRootIndex": ("one-object-oci-root-index", 1),
    "SBOM": ("one-object-sbom", 1), "Time": ("one-object-time", 1),
}


def image_path(name: str) -> Path:
    return sif_corpus() / "test" / "images" / f"{name}.sif"


def golden(kind: str, case: str) -> str:
    return (sif_corpus() / f"TestApp_{kind}" / f"{case}.golden").read_text()
