"""Starting and joining Ray the same way from every stage.

``ray_session(None)`` starts a local Ray in a temp dir the project controls (and removes
it afterwards) with token auth off, since a local single-user session has no token the
user ever made. ``ray_session("ray://...")`` or ``ray_session("auto")`` joins an existing
cluster and leaves it running. If Ray is already initialised in this process (e.g. a
notebook or the test session), it is reused and left alone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile

__all__ = ["ray_session"]


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None):
    import ray

    if ray.is_initialized():
        yield
        return
    if address:
        ray.init(address=address, log_to_driver=True)
        try:
            yield
        finally:
            ray.shutdown()
        return
    # Local session: no auth token file, all session files under our temp dir.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    tmp = tempfile.mkdtemp(prefix="sedflow-ray-")
    ray.init(num_cpus=num_cpus, _temp_dir=tmp, include_dashboard=False,
             configure_logging=True, log_to_driver=True)
    try:
        yield
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
