"""Flow architectures for the next shipped model: `spline` (NSF coupling) against today's `coupling`.

    python -m bench --only architectures [--quick]

Untrained networks of each architecture with the shipped model's configuration (sampling cost does
not depend on the weights): posterior sampling at 1,000 and 10,000 draws per galaxy, training
throughput at batch 2048, parameters. Calibration and validation loss need trained models
(``sedflow train --arch spline``); they are not measured here.
"""

from __future__ import annotations

from bench._common import CPUS, row
from bench.sampling import rate
from bench.training import step_rate

ARCHS = ("coupling", "spline")


def run(quick: bool = False) -> dict:
    galaxies = {1000: 50, 10000: 10} if quick else {1000: 400, 10000: 60}
    min_time, min_steps = (3.0, 2) if quick else (15.0, 5)
    res = {"threads": CPUS, "sampling_gal_per_s": {}, "training_samples_per_s": {}, "parameters": {}}
    for arch in ARCHS:
        res["sampling_gal_per_s"][arch] = {str(n): rate(arch, n, g) for n, g in galaxies.items()}
        res["training_samples_per_s"][arch], res["parameters"][arch] = step_rate(arch, min_time, min_steps)
    s, c = res["sampling_gal_per_s"]["spline"], res["sampling_gal_per_s"]["coupling"]
    rows = [row(f"spline sampling, {n} draws/gal ({galaxies[int(n)]} gal, {CPUS} threads)", s[n], "gal/s",
                "coupling", c[n]) for n in s]
    rows.append(row(f"spline training, batch 2048, {CPUS} threads", res["training_samples_per_s"]["spline"],
                    "samples/s", "coupling", res["training_samples_per_s"]["coupling"]))
    rows.append(row("spline parameters", res["parameters"]["spline"], "", "coupling", res["parameters"]["coupling"]))
    res["rows"] = rows
    return res
