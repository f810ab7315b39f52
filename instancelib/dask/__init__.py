"""Instances on a Dask cluster (extra ``instancelib[dask]``; the core never imports this).

Dask reaches Slurm, PBS and LSF through dask-jobqueue and Kubernetes through
dask-kubernetes, so this is how instancelib runs on many machines without a scheduler of
its own::

    from dask.distributed import Client
    import instancelib.dask as cluster

    client = Client("tcp://scheduler:8786")
    cluster.register(client)                      # InstancelibPlugin on every worker
    web = cluster.start(client, "/shared/web.sif", "web", replicas=4, writable_tmpfs=True)
    print(cluster.list(client))                   # worker, host, name, pid, ip, image, status
    print(cluster.exec(client, "web-0", ["cat", "/etc/os-release"]).stdout)
    cluster.stop(client, "web-*")

Every worker keeps its instances in a registry of its own (see ``worker``); the client
asks all workers at once (``Client.run``: out of band, no task slot taken) and gets plain
attrs values back.  Errors are the usual ``InstanceError`` classes with ``worker`` set.
"""

from __future__ import annotations

from .client import exec, get, list, register, start, stats, stop
from .values import ClusterInstance, ClusterList, ClusterStats
from .worker import InstancelibPlugin

__all__ = ["ClusterInstance", "ClusterList", "ClusterStats", "InstancelibPlugin", "exec", "get",
           "list", "register", "start", "stats", "stop"]
