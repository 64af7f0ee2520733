"""Posterior sampling rate: galaxies/s drawing 1,000 and 10,000 samples per galaxy.

Measured: the default ``coupling`` architecture (zuko affine coupling MAF) through
`sedflow.posterior.PosteriorModel.sample` (its chunking: ~20,000 draws per network call,
then the map back to the physical parameters), in-process with all cores.
Peer: the ``paper`` architecture (sbi/nflows MAF, 15 MADE x 500 units, as SEDflow) through
the same code path, same threads, same galaxies. Both nets are untrained (fresh
`build_estimator`), wrapped with the shipped model's standardisation: the cost of drawing
does not depend on the weights. The paper net needs ~25-50 s per galaxy at 10,000 samples,
so it is timed on few galaxies (3 at 10,000 samples, 10 at 1,000); quick mode times it on
2 galaxies at 1,000 samples and skips it at 10,000 (saying so in the table).

`rate` is memoised so that `bench.infer` reuses the paper timing when both run.
"""

from __future__ import annotations

import time

from bench._common import CPUS, row, simulated_x, threads

SAMPLES = (1000, 10000)
GALAXIES = {  # (arch, n_samples) -> galaxies timed, full / quick
    False: {("coupling", 1000): 1000, ("coupling", 10000): 200, ("paper", 1000): 10, ("paper", 10000): 3},
    True: {("coupling", 1000): 100, ("coupling", 10000): 20, ("paper", 1000): 2, ("paper", 10000): 0},
}
_RATES: dict = {}


def posterior(arch: str):
    """An untrained `PosteriorModel` of ``arch`` with the shipped model's configuration."""
    from sedflow.posterior import ARCHITECTURES, PosteriorModel, build_estimator, load_model

    config = dict(load_model().config)
    config["architecture"] = {"name": arch, "kwargs": ARCHITECTURES[arch]}
    return PosteriorModel(build_estimator(arch, n_x=len(config["x_names"])), config)


def rate(arch: str, n_samples: int, n_gal: int, n_threads: int = CPUS) -> float:
    """Galaxies/s of PosteriorModel.sample(x, n_samples) over ``n_gal`` simulated galaxies
    (one untimed call on one galaxy with 100 draws first)."""
    key = (arch, n_samples, n_gal, n_threads)
    if key not in _RATES:
        post, x = posterior(arch), simulated_x(n_gal, seed=1)
        with threads(n_threads):
            post.sample(x[:1], 100, seed=0)
            t0 = time.perf_counter()
            post.sample(x, n_samples, seed=0)
            _RATES[key] = n_gal / (time.perf_counter() - t0)
    return _RATES[key]


def paper_rate(n_samples: int, quick: bool) -> tuple[float | None, str]:
    """The peer's rate as this suite measures it (shared with `bench.infer`): (gal/s or None
    when skipped, description for the table)."""
    n_gal = GALAXIES[quick][("paper", n_samples)]
    if not n_gal:
        return None, "paper MAF: skipped in quick mode"
    return rate("paper", n_samples, n_gal), f"paper MAF ({n_gal} gal)"


def run(quick: bool = False) -> dict:
    res, rows = {"threads": CPUS, "rates": {}}, []
    for n in SAMPLES:
        n_cp = GALAXIES[quick][("coupling", n)]
        coupling = rate("coupling", n, n_cp)
        paper, peer = paper_rate(n, quick)
        res["rates"][str(n)] = {"coupling": coupling, "paper": paper,
                                "galaxies": {"coupling": n_cp, "paper": GALAXIES[quick][("paper", n)]}}
        rows.append(row(f"coupling, {n} samples/gal ({n_cp} gal, {CPUS} threads)", coupling, "gal/s", peer, paper))
    res["rows"] = rows
    return res
