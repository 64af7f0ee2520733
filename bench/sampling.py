"""Posterior sampling rate: galaxies/s drawing 1,000 and 10,000 samples per galaxy.

Measured: the default architecture (``DEFAULT_ARCH``, the shipped model's) in float32 through
`sedflow.posterior.PosteriorModel.sample` (its chunking: ~20,000 draws per network call, then
the map back to the physical parameters), in-process with all cores.
Peers, through the same code path, same threads, same galaxies: ``realnvp`` (the same coupling
flow with two hidden layers per MLP, shipped before 2026-12-04) and ``paper`` (sbi/nflows MAF, 15 MADE x 500
units, as SEDflow). All nets are untrained (`bench._common.untrained_posterior`), wrapped with
the shipped model's input layout and standardisation: the cost of drawing does not depend on
the weights. The paper net needs ~25-50 s per galaxy at 10,000 samples, so it is timed on few
galaxies (3 at 10,000 samples, 10 at 1,000); quick mode times it on 2 galaxies at 1,000
samples and skips it at 10,000 (saying so in the table).

On a CPU where ``--precision auto`` means bfloat16 (`sedflow.flows.bfloat16_is_fast`), the
default architecture is also timed in bfloat16 against its float32 rate in the same run.

`rate` is memoised so that `bench.infer` and `bench.architectures` reuse timings.
"""

from __future__ import annotations

import time

from bench._common import CPUS, row, simulated_x, threads, untrained_posterior

SAMPLES = (1000, 10000)
PREVIOUS_ARCH = "realnvp"       # the architecture shipped before realnvp_deep (2026-12-04)
GALAXIES = {  # (n_samples) -> galaxies timed for the flows / for the paper MAF, full / quick
    False: {1000: (1000, 10), 10000: (200, 3)},
    True: {1000: (100, 2), 10000: (20, 0)},
}
_RATES: dict = {}


def rate(arch: str, n_samples: int, n_gal: int, n_threads: int = CPUS, precision: str = "float32") -> float:
    """Galaxies/s of PosteriorModel.sample(x, n_samples) over ``n_gal`` simulated galaxies
    (one untimed call on one galaxy with 100 draws first), sampling in ``precision``."""
    key = (arch, n_samples, n_gal, n_threads, precision)
    if key not in _RATES:
        post = untrained_posterior(arch, precision)
        x = simulated_x(n_gal, seed=1, post=post)
        with threads(n_threads):
            post.sample(x[:1], 100, seed=0)
            t0 = time.perf_counter()
            post.sample(x, n_samples, seed=0)
            _RATES[key] = n_gal / (time.perf_counter() - t0)
    return _RATES[key]


def paper_rate(n_samples: int, quick: bool) -> tuple[float | None, str]:
    """The paper MAF's rate as this suite measures it: (gal/s or None when skipped, description)."""
    n_gal = GALAXIES[quick][n_samples][1]
    if not n_gal:
        return None, "paper MAF: skipped in quick mode"
    return rate("paper", n_samples, n_gal), f"paper MAF ({n_gal} gal)"


def run(quick: bool = False) -> dict:
    from sedflow.posterior import DEFAULT_ARCH

    from sedflow.flows import resolve_precision

    auto = resolve_precision("auto")        # what `sedflow infer` samples in on this machine
    res, rows = {"threads": CPUS, "arch": DEFAULT_ARCH, "precision": auto, "rates": {}}, []
    for n in SAMPLES:
        n_gal = GALAXIES[quick][n][0]
        measured, previous = rate(DEFAULT_ARCH, n, n_gal), rate(PREVIOUS_ARCH, n, n_gal)
        paper, peer = paper_rate(n, quick)
        res["rates"][str(n)] = {DEFAULT_ARCH: measured, PREVIOUS_ARCH: previous, "paper": paper, "galaxies": n_gal}
        label = f"{DEFAULT_ARCH}, {n} samples/gal ({n_gal} gal, {CPUS} threads)"
        if auto != "float32":
            fast = rate(DEFAULT_ARCH, n, n_gal, precision=auto)
            res["rates"][str(n)][f"{DEFAULT_ARCH}_{auto}"] = fast
            rows.append(row(f"{label}, {auto}", fast, "gal/s", f"{DEFAULT_ARCH}, float32", measured))
        rows.append(row(label, measured, "gal/s", f"{PREVIOUS_ARCH} (shipped before)", previous))
        rows.append(row(label, measured, "gal/s", peer, paper))
    res["rows"] = rows
    return res
