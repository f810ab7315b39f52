"""``InstanceRecord`` and its JSON (``records/record.py``): every field survives the round trip."""

from __future__ import annotations

import json

import attrs
import pytest

from instancelib import InstanceRecord
from instancelib.records.record import SCHEMA

FULL = InstanceRecord(
    name="web-1", state="running", pid=4242, starttime=987654, owner_pid=17,
    owner_starttime=12, image="/images/web.sif", image_kind="sif", ip="10.22.0.5",
    log_out="/l/web-1.out", log_err="/l/web-1.err", started_at=1764633600.25, uid=1001,
    user="ilib-a", cwd="/srv", service_pid=4250, service_starttime=987700,
    options={"run": False, "args": ["-p", "80"], "binds": ["/d:/d"], "limits": {"memory": 1}},
    namespaces=0x7C020000, loop="/dev/loop3",
    cgroup={"name": "/instancelib/i.1001.17.abcdef", "v2": None, "v1": {}, "controllers": {}},
    netns="/run/netns/x",
)


@pytest.mark.parametrize("record", [
    FULL,
    InstanceRecord(name="a", state="starting", owner_pid=5, owner_starttime=6),
    attrs.evolve(FULL, loop=None, cgroup=None, netns=None, ip="", options={}),
], ids=["every-field", "starting", "nones"])
def test_the_json_round_trip_keeps_every_field(record):
    on_disk = json.loads(json.dumps(record.to_json()))
    assert InstanceRecord.from_json(on_disk) == record


def test_singularity_clients_find_their_fields_first():
    assert list(FULL.to_json())[:6] == ["instance", "pid", "img", "ip", "logErrPath",
                                       "logOutPath"]
    assert FULL.to_json()["schema"] == SCHEMA


@pytest.mark.parametrize(("change", "why"), [
    ({"schema": 99}, "schema"),
    ({"instance": "../x"}, "malformed"),
    ({"state": "zombie"}, "state"),
    ({"pid": -1}, "PIDs"),
    ({"pid": "12"}, "PIDs"),
    ({"uid": "root"}, ""),
    ({"options": 3}, ""),
    ({"cgroup": "/sys/fs/cgroup"}, ""),
])
def test_a_malformed_record_is_a_value_error(change, why):
    data = {**FULL.to_json(), **change}
    with pytest.raises(ValueError, match=why or None):
        InstanceRecord.from_json(data)


def test_a_missing_field_is_a_value_error():
    data = FULL.to_json()
    del data["starttime"]
    with pytest.raises(ValueError, match="malformed"):
        InstanceRecord.from_json(data)
