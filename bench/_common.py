"""Helpers shared by the benchmarks: thread limits, timing, table rows, peak RSS of child
processes, and simulated galaxies to feed the samplers."""

from __future__ import annotations

import contextlib
import functools
import math
import os
import threading
import time

import numpy as np

CPUS = os.cpu_count() or 1


@contextlib.contextmanager
def threads(n: int):
    """Limit BLAS/OpenMP pools (threadpoolctl) and torch's intra-op pool to ``n`` threads."""
    import torch
    from threadpoolctl import threadpool_limits

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with threadpool_limits(limits=n):
            yield
    finally:
        torch.set_num_threads(old)


def best_time(fn, repeat: int = 3, warmup: int = 1) -> float:
    """Smallest wall time of ``repeat`` calls of fn() after ``warmup`` untimed calls (the best
    is the one least disturbed by other load on the machine)."""
    for _ in range(warmup):
        fn()
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def row(measure: str, value: float, unit: str, peer: str | None = None, peer_value: float | None = None,
        ratio: float | None = None) -> dict:
    """One line of the suite's table; ratio defaults to value / peer_value."""
    if ratio is None and peer_value:
        ratio = value / peer_value
    return {"measure": measure, "value": value, "unit": unit, "peer": peer, "peer_value": peer_value,
            "ratio": ratio}


class ChildPeakRSS:
    """Peak resident set size of this process's descendants whose command line contains one
    of ``patterns``, polled every ``interval`` s by a background thread (context manager).

    RSS counts shared pages (torch's libraries, Ray's object store) once per process, so it
    overstates what the processes need together; it is the number the OS reports per process.
    """

    def __init__(self, patterns: tuple[str, ...], interval: float = 0.25):
        self.patterns, self.interval = patterns, interval
        self.peak: dict[int, int] = {}
        self._stop = threading.Event()

    def _poll(self):
        import psutil

        me = psutil.Process()
        while not self._stop.is_set():
            try:
                children = me.children(recursive=True)
            except psutil.Error:
                children = []
            for p in children:
                try:
                    cmd = " ".join(p.cmdline())
                    if any(s in cmd for s in self.patterns):
                        self.peak[p.pid] = max(self.peak.get(p.pid, 0), p.memory_info().rss)
                except psutil.Error:
                    pass
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def max_mb(self) -> float | None:
        return max(self.peak.values()) / 2**20 if self.peak else None

    @property
    def processes(self) -> int:
        return len(self.peak)


def self_peak_rss_mb() -> float:
    """This process's peak RSS over its lifetime (getrusage; Linux reports kB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@functools.lru_cache(maxsize=2)
def sed_model():
    from sedflow.sps.model import SEDModel

    return SEDModel.default()


def simulated(n: int, seed: int = 0) -> dict:
    """``n`` simulated galaxies (`sedflow.simulate.simulate_rows` with the default SED, noise
    and prior): the simulation's columns, fluxes with noise, the paper's cuts applied."""
    from sedflow.noise import NoiseModel
    from sedflow.prior import Prior
    from sedflow.simulate import simulate_rows

    cols, _ = simulate_rows(sed_model(), NoiseModel.default(), Prior(), n, np.random.default_rng(seed))
    return cols


def simulated_x(n: int, seed: int = 0, post=None) -> np.ndarray:
    """x of ``n`` simulated galaxies in the input layout of ``post`` (default: the shipped model)."""
    from sedflow.posterior import load_model

    post = post or load_model()
    cols = simulated(n, seed)
    flux = np.column_stack([cols[f"flux_{b}"] for b in post.bands])
    err = np.column_stack([cols[f"flux_err_{b}"] for b in post.bands])
    return post.inputs.observables(flux, err, cols["z"])


def untrained_posterior(arch: str, precision: str = "float32"):
    """A `PosteriorModel` with an untrained ``arch`` network and the shipped model's configuration
    (input layout, standardisation, prior): sampling cost does not depend on the weights.
    ``precision``: its sampling arithmetic (float32 unless asked: peers compare like with like)."""
    from sedflow.posterior import ARCHITECTURES, PosteriorModel, build_estimator, load_model

    config = dict(load_model().config)
    config["architecture"] = {"name": arch, "kwargs": ARCHITECTURES[arch]}
    return PosteriorModel(build_estimator(arch, n_x=len(config["x_names"])), config, precision=precision)


def untrained_artifact(arch: str, path) -> str:
    """`untrained_posterior` written as an artifact directory (for the pipelines that load one)."""
    from sedflow.posterior import save_model

    post = untrained_posterior(arch)
    save_model(path, post.net, post.config)
    return str(path)
