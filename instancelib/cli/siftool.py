"""What ``siftool header|list|info`` print for a SIF file, as the reference tool prints it."""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable

from instancelib.image.sif import (
    DATA_CRYPTO_MESSAGE,
    DATA_OCI_BLOB,
    DATA_OCI_ROOT_INDEX,
    DATA_PARTITION,
    DATA_SBOM,
    DATA_SIGNATURE,
    ZERO_TIME,
    SIFDescriptor,
    SIFImage,
)

__all__ = ["format_header", "format_info", "format_list", "readable_size"]


def readable_size(size: int) -> str:
    """Sizes as siftool prints them: "27 KiB", "9 KiB", "0 B"."""
    if -1024 < size < 1024:
        return f"{size} B"
    units, divisor, exponent = "KMGTPE", 1024, 0
    n = int(size / 1024)
    while n <= -1024 or n >= 1024:
        divisor *= 1024
        exponent += 1
        n = int(n / 1024)
    value = size / divisor
    rounded = math.floor(abs(value) + 0.5) * (1 if value >= 0 else -1)  # Go's math.Round
    return f"{rounded:.0f} {units[exponent]}iB"


def _time(seconds: int) -> str | None:
    """Go's time.Time.String() in UTC; None for the zero time (not printed).

    Integer arithmetic (days to a proleptic Gregorian date), not ``datetime``:
    a SIF may hold any 64-bit time, far outside ``datetime``'s years 1-9999.
    """
    if seconds == ZERO_TIME:
        return None
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    days += 719468  # days from 0000-03-01 to 1970-01-01
    era, day_of_era = divmod(days, 146097)
    year_of_era = (day_of_era - day_of_era // 1460 + day_of_era // 36524
                   - day_of_era // 146096) // 365
    day_of_year = day_of_era - (365 * year_of_era + year_of_era // 4 - year_of_era // 100)
    month_index = (5 * day_of_year + 2) // 153
    day = day_of_year - (153 * month_index + 2) // 5 + 1
    month = month_index + 3 if month_index < 10 else month_index - 9
    year = year_of_era + era * 400 + (1 if month <= 2 else 0)
    return f"{year:04d}-{month:02d}-{day:02d} {hours:02d}:{minutes:02d}:{secs:02d} +0000 UTC"


def _columns(rows: Iterable[tuple[str, str]], *, padding: int, indent: bool = False) -> str:
    """Two columns as Go's tabwriter lays them out (the last cell is not padded)."""
    rows = list(rows)
    width = max(len(label) for label, _ in rows) + padding
    prefix = " " * padding if indent else ""
    return "".join(f"{prefix}{label.ljust(width)}{value}\n" for label, value in rows)


def format_header(image: SIFImage) -> str:
    """The text of ``siftool header`` for ``image``."""
    header = image.header
    rows: list[tuple[str, str]] = []
    if header.launch_script:
        rows.append(("Launch Script:", header.launch_script.removesuffix("\n")))
    rows.append(("Version:", header.version))
    if header.arch != "unknown":
        rows.append(("Primary Architecture:", header.arch))
    if header.id != uuid.UUID(int=0):
        rows.append(("ID:", str(header.id)))
    for label, seconds in (("Created At:", header.created_at),
                           ("Modified At:", header.modified_at)):
        text = _time(seconds)
        if text is not None:
            rows.append((label, text))
    rows += [
        ("Descriptors Free:", str(header.descriptors_free)),
        ("Descriptors Total:", str(header.descriptors_total)),
        ("Descriptors Offset:", str(header.descriptors_offset)),
        ("Descriptors Size:", readable_size(header.descriptors_size)),
        ("Data Offset:", str(header.data_offset)),
        ("Data Size:", readable_size(header.data_size)),
    ]
    return _columns(rows, padding=1)


def _type_text(descriptor: SIFDescriptor) -> str:
    name = descriptor.type_name
    if descriptor.data_type == DATA_PARTITION:
        return f"{name} ({'/'.join(descriptor.partition)})"
    if descriptor.data_type == DATA_SIGNATURE:
        return f"{name} ({descriptor.signature[0]})"
    if descriptor.data_type == DATA_CRYPTO_MESSAGE:
        return f"{name} ({'/'.join(descriptor.crypto_message)})"
    if descriptor.data_type == DATA_SBOM:
        return f"{name} ({descriptor.sbom_format})"
    return name


def format_list(image: SIFImage) -> str:
    """The text of ``siftool list`` for ``image``."""
    rule = "-" * 78 + "\n"
    title = f"{'ID':<4} {'|GROUP':<8} {'|LINK':<8} {'|SIF POSITION (start-end)':<26} |TYPE\n"
    lines = [rule, title, rule]
    for d in image.descriptors:
        group = "|NONE   " if d.group_id == 0 else f"|{d.group_id:<7}"
        if d.linked_id == 0:
            link = "|NONE   "
        elif d.linked_is_group:
            link = f"|{d.linked_id:<3} (G)"
        else:
            link = f"|{d.linked_id:<7}"
        position = f"|{d.offset}-{d.offset + d.size} "
        lines.append(f"{d.id:<4} {group} {link} {position:<26} |{_type_text(d)}\n")
    return "".join(lines)


def format_info(image: SIFImage, object_id: int) -> str:
    """The text of ``siftool info ID`` for ``image``."""
    d = image.descriptor(object_id)
    rows = [("Data Type:", d.type_name), ("ID:", str(d.id)),
            ("Group ID:", "NONE" if d.group_id == 0 else str(d.group_id))]
    if d.linked_id == 0:
        rows.append(("Linked ID:", "NONE"))
    else:
        rows.append(("Linked ID:", f"{d.linked_id} (G)" if d.linked_is_group else str(d.linked_id)))
    rows += [("Offset:", str(d.offset)), ("Size:", str(d.size))]
    for label, seconds in (("Created At:", d.created_at), ("Modified At:", d.modified_at)):
        text = _time(seconds)
        if text is not None:
            rows.append((label, text))
    if d.name:
        rows.append(("Name:", d.name))
    if d.data_type == DATA_PARTITION:
        fs, part, arch = d.partition
        rows += [("Filesystem Type:", fs), ("Partition Type:", part), ("Architecture:", arch)]
    elif d.data_type == DATA_SIGNATURE:
        hash_type, entity = d.signature
        rows.append(("Hash Type:", hash_type))
        if entity:
            rows.append(("Entity:", entity))
    elif d.data_type == DATA_CRYPTO_MESSAGE:
        format_type, message_type = d.crypto_message
        rows += [("Format Type:", format_type), ("Message Type:", message_type)]
    elif d.data_type == DATA_SBOM:
        rows.append(("Format:", d.sbom_format))
    elif d.data_type in (DATA_OCI_BLOB, DATA_OCI_ROOT_INDEX):
        rows.append(("Digest:", d.oci_digest))
    return _columns(rows, padding=2, indent=True)
