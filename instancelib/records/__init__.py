"""Instance records on disk: the JSON, the directory checks, locks, claims, pruning, recovery.

Below ``Instance``: nothing here knows instances or cgroups.  ``record``
is the value and its JSON; ``store`` the files (descriptor-relative,
locked); ``recovery`` re-publishes records lost while their instance runs;
``directory`` one user's records as the layers above use them.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from instancelib.records.directory import InstanceRecords, default_root
    from instancelib.records.record import InstanceRecord, NameLock, validate_name
    from instancelib.records.store import RecordStore

__all__ = ["InstanceRecord", "InstanceRecords", "NameLock", "RecordStore", "default_root",
           "validate_name"]

# Imported on first use: the CLI's quick listing reads records.quick and
# records.layout alone, without attrs and the store.
_LAZY = {"InstanceRecords": "directory", "default_root": "directory",
         "InstanceRecord": "record", "NameLock": "record", "validate_name": "record",
         "RecordStore": "store"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'instancelib.records' has no attribute {name!r}")
    import importlib  # noqa: PLC0415

    value = getattr(importlib.import_module(f"instancelib.records.{module}"), name)
    globals()[name] = value
    return value
