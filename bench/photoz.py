"""The photo-z model against the spec-z model: galaxies/s at 1,000 and 10,000 draws per galaxy.

Measured: the shipped photometric-redshift model (``load_model("photoz")``: 13 parameters, x
without z) through `PosteriorModel.sample`, and `sedflow.infer.infer_frame` end to end (checks,
sampling, summaries, 1,000 draws per galaxy through the SED model for the derived properties,
each at its own redshift) at 1,000 draws, in-process with all cores, on the first galaxies of the
kcorrect SDSS sample (in the kcorrect wheel). Peer: the shipped spec-z model (``"sdss"``) on the
same galaxies in the same run, the catalog's spectroscopic z as its input. `infer_frame` of the
photo-z model runs with its population prior (the default: 2x flow draws, importance-resampled)
and without it (``population_prior=False``), the second the peer of the first.
"""

from __future__ import annotations

import time

import numpy as np

from bench._common import CPUS, row, threads

SAMPLES = (1000, 10000)
GALAXIES = {False: {1000: 2000, 10000: 200}, True: {1000: 200, 10000: 20}}


def _frame(n: int):
    from sedflow.catalog import CatalogSpec, kcorrect_sample_path, read_catalog

    return read_catalog(kcorrect_sample_path(), CatalogSpec.load("sdss_kcorrect"), max_rows=n)[0]


def run(quick: bool = False) -> dict:
    from sedflow.infer import galaxy_checks, infer_frame, load_models

    models = {name: load_models(name) for name in ("photoz", "sdss")}
    frame = _frame(max(GALAXIES[quick].values()))
    res, rows = {"threads": CPUS, "rates": {}}, []
    with threads(CPUS):
        for n in SAMPLES:
            n_gal = GALAXIES[quick][n]
            rates = {}
            for name, (post, _) in models.items():
                x = galaxy_checks(frame.iloc[:n_gal], post)[0]
                post.sample(x[:1], 100, seed=0)
                t0 = time.perf_counter()
                post.sample(x, n, seed=0)
                rates[name] = n_gal / (time.perf_counter() - t0)
            res["rates"][f"sample_{n}"] = rates
            rows.append(row(f"photoz sample, {n} draws/gal ({n_gal} gal, {CPUS} threads)", rates["photoz"], "gal/s",
                            "sdss (spec-z)", rates["sdss"]))
        n_gal = GALAXIES[quick][1000]
        rates = {}
        runs = {"photoz": ("photoz", True), "photoz_training_prior": ("photoz", False), "sdss": ("sdss", True)}
        for label, (name, population) in runs.items():
            post, sed = models[name]
            sub = frame.iloc[:n_gal]
            t0 = time.perf_counter()
            infer_frame(sub, post, sed, n_samples=1000, seed=0, population_prior=population)
            rates[label] = n_gal / (time.perf_counter() - t0)
        res["rates"]["infer_frame_1000"] = rates
        rows.append(row(f"photoz infer_frame, 1000 draws/gal ({n_gal} gal)", rates["photoz_training_prior"], "gal/s",
                        "sdss (spec-z)", rates["sdss"]))
        rows.append(row(f"photoz infer_frame with its population prior ({n_gal} gal)", rates["photoz"], "gal/s",
                        "photoz, training prior", rates["photoz_training_prior"]))
    res["rows"] = rows
    return res
