"""Instance records on disk: the JSON, the directory checks, locks, claims, pruning, recovery.

Below ``Instance``: nothing here knows instances or cgroups.  ``record``
is the value and its JSON; ``store`` the files (descriptor-relative,
locked); ``recovery`` re-publishes records lost while their instance runs;
``directory`` one user's records as the layers above use them.
"""

from instancelib.records.directory import InstanceRecords, default_root
from instancelib.records.record import InstanceRecord, NameLock, validate_name
from instancelib.records.store import RecordStore

__all__ = ["InstanceRecord", "InstanceRecords", "NameLock", "RecordStore", "default_root",
           "validate_name"]
