"""Flow architectures side by side: sampling at 1,000 and 10,000 draws, training throughput,
parameters.

    python -m bench --only architectures [--quick]

``coupling`` (zuko MAF, two passes: shipped before the 2026-12 model), ``spline`` (zuko NSF coupling),
``realnvp`` (zuko affine coupling, context computed once per galaxy: shipped in the 2026-12 models before
2026-12-04), ``realnvp_deep`` (the same with a third hidden layer per MLP: shipped since) and
``realnvp`` without the context cache (``realnvp-uncached``: zuko's own coupling transform,
the same function and weights). Untrained networks with the shipped model's input layout
(sampling cost does not depend on the weights). Calibration and validation loss need
trained models: the table in docs/validation/architectures.md has them.
"""

from __future__ import annotations

import time

from bench._common import CPUS, row, simulated_x, threads, untrained_posterior
from bench.training import step_rate

ARCHS = ("coupling", "spline", "realnvp", "realnvp_deep")


def _uncached_rate(n: int, n_gal: int) -> float:
    from sedflow.flows import realnvp
    from sedflow.posterior import ARCHITECTURES

    post = untrained_posterior("realnvp")
    kw = ARCHITECTURES["realnvp"]
    post.net = realnvp(11, len(post.x_names), kw["hidden_features"], kw["num_transforms"], cache_context=False)
    x = simulated_x(n_gal, seed=1, post=post)
    with threads(CPUS):
        post.sample(x[:1], 100, seed=0)
        t0 = time.perf_counter()
        post.sample(x, n, seed=0)
        return n_gal / (time.perf_counter() - t0)


def run(quick: bool = False) -> dict:
    from bench.sampling import rate

    galaxies = {1000: 50, 10000: 10} if quick else {1000: 400, 10000: 60}
    min_time, min_steps = (3.0, 2) if quick else (15.0, 5)
    res = {"threads": CPUS, "sampling_gal_per_s": {}, "training_samples_per_s": {}, "parameters": {}}
    for arch in ARCHS:
        res["sampling_gal_per_s"][arch] = {str(n): rate(arch, n, g) for n, g in galaxies.items()}
        res["training_samples_per_s"][arch], res["parameters"][arch] = step_rate(arch, min_time, min_steps)
    res["sampling_gal_per_s"]["realnvp-uncached"] = {str(n): _uncached_rate(n, g) for n, g in galaxies.items()}
    c = res["sampling_gal_per_s"]["coupling"]
    rows = []
    for arch in ("spline", "realnvp", "realnvp_deep", "realnvp-uncached"):
        s = res["sampling_gal_per_s"][arch]
        rows += [row(f"{arch} sampling, {n} draws/gal ({galaxies[int(n)]} gal, {CPUS} threads)", s[n], "gal/s",
                     "coupling", c[n]) for n in s]
    for arch in ("spline", "realnvp", "realnvp_deep"):
        rows.append(row(f"{arch} training, batch 2048, {CPUS} threads", res["training_samples_per_s"][arch],
                        "samples/s", "coupling", res["training_samples_per_s"]["coupling"]))
        rows.append(row(f"{arch} parameters", res["parameters"][arch], "", "coupling", res["parameters"]["coupling"]))
    res["rows"] = rows
    return res
