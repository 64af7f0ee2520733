"""Simulation rate: the training-set simulator in-process and fanned out with Ray.

1. `sedflow.simulate.simulate_rows` in-process at 1 thread (what one Ray task does):
   galaxies drawn/s and rows kept/s (after the paper's cuts).
2. `sedflow.simulate.run_simulation` end to end on N rows (default 200,000, quick 20,000;
   default 16 shards) with a fresh local Ray, in a spawned child process so that its
   memory is its own: wall time (Ray start, SED model setup, shards, Parquet writes),
   rows/s, the driver's peak RSS (getrusage) and the largest peak RSS among the Ray worker
   processes (polled with psutil; shared pages counted in each).
Peer of (2): the in-process 1-thread kept rate of (1); the ratio is Ray's speedup over one
core (at most the number of CPUs).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import numpy as np

from bench._common import CPUS, ChildPeakRSS, row, sed_model, self_peak_rss_mb, threads


def in_process(n_rows: int) -> dict:
    from sedflow.noise import NoiseModel
    from sedflow.prior import Prior
    from sedflow.simulate import simulate_rows

    model, noise, prior = sed_model(), NoiseModel.default(), Prior()
    with threads(1):
        simulate_rows(model, noise, prior, 1000, np.random.default_rng(1))
        t0 = time.perf_counter()
        _, counts = simulate_rows(model, noise, prior, n_rows, np.random.default_rng(0))
        dt = time.perf_counter() - t0
    return {"rows": n_rows, "seconds": dt, "drawn_per_s": counts["drawn"] / dt, "kept_per_s": n_rows / dt,
            "counts": counts}


def _end_to_end_child(n: int) -> dict:
    """Runs in a spawned process: run_simulation into a temp dir, timed, memory watched."""
    from sedflow.simulate import SimulationConfig, run_simulation

    out = tempfile.mkdtemp(prefix="sedflow-bench-sim-")
    try:
        with ChildPeakRSS(("ray::", "default_worker.py")) as workers:
            t0 = time.perf_counter()
            summary = run_simulation(out, SimulationConfig(n=n, seed=0), progress=False)
            wall = time.perf_counter() - t0
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return {"summary": summary, "wall_s": wall, "driver_peak_rss_mb": self_peak_rss_mb(),
            "worker_peak_rss_mb": workers.max_mb, "worker_processes": workers.processes}


def run(quick: bool = False, n: int | None = None) -> dict:
    n = n or (20_000 if quick else 200_000)
    local = in_process(5_000 if quick else 50_000)
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        e2e = pool.submit(_end_to_end_child, n).result()
    rows_per_s = e2e["summary"]["rows"] / e2e["wall_s"]
    rows = [row("simulate_rows in-process, 1 thread: drawn", local["drawn_per_s"], "gal/s"),
            row("simulate_rows in-process, 1 thread: kept", local["kept_per_s"], "rows/s"),
            row(f"run_simulation {n:,} rows, local Ray ({CPUS} CPUs), end to end", rows_per_s, "rows/s",
                "in-process 1 thread (kept)", local["kept_per_s"]),
            row("run_simulation wall time", e2e["wall_s"], "s"),
            row("run_simulation driver peak RSS", e2e["driver_peak_rss_mb"], "MB")]
    if e2e["worker_peak_rss_mb"] is not None:
        rows.append(row(f"run_simulation max Ray worker peak RSS ({e2e['worker_processes']} procs)",
                        e2e["worker_peak_rss_mb"], "MB"))
    return {"n": n, "in_process": local, "end_to_end": e2e, "rows": rows}
