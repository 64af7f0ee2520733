"""Starting a local Dask cluster the same way from every stage.

`local_cluster` is what `sedflow infer` (worker processes) and the HATS import (threads) start
when no scheduler address is given: one thread per worker, no dashboard, only errors logged. Its
scheduler's HTTP server (health and metrics only) listens on a free port: Dask's default, 8787,
prints "Port 8787 is already in use" whenever another cluster on the machine holds it.

Example
-------
>>> from distributed import Client
>>> with local_cluster(1, processes=False) as cluster, Client(cluster) as client:
...     client.submit(sum, [1, 2]).result()
3
"""

from __future__ import annotations

import logging

__all__ = ["local_cluster"]


def local_cluster(workers: int, processes: bool, **kwargs):
    """A `distributed.LocalCluster` of ``workers`` one-thread workers (processes or threads), no
    dashboard, quiet, its scheduler's HTTP server on a free port; ``kwargs`` go to LocalCluster."""
    from distributed import LocalCluster

    return LocalCluster(n_workers=workers, threads_per_worker=1, processes=processes, dashboard_address=None,
                        scheduler_kwargs={"dashboard": False, "dashboard_address": ":0"},
                        silence_logs=logging.ERROR, **kwargs)
