"""Forward-model throughput and resampling accuracy.

    python bench/forward_model.py [--n 100000] [--json OUT] [--provabgs-dir DIR]

1. Galaxies/s of ``SEDModel.photometry`` (default BC03+MILES grid, R=300) on n prior draws
   with z ~ U(0.01, 0.2), at 1 and 2 BLAS threads, and of the PROVABGS FSPS emulator
   (`sedflow.sps.emulator`, spectrum + the same `Photometry`, same draws and threads) in
   the same run; compared with the paper's 340 ms (FSPS) and 2.9 ms (emulator) per galaxy
   (Hahn & Melchior 2022). The emulator part needs the PROVABGS weights (default
   ../shared/data/provabgs beside the repository) and is skipped without them.
   Also rows/s of ``SEDModel.properties`` (the derived properties `sedflow.infer` computes
   for 1,000 draws per galaxy) on the same draws at 1 thread, against the photometry's rate,
   and the time of one ``SEDModel.photometry`` call on 30 rows at one redshift (the batch of
   `sedflow.mcmc`'s 30 walkers) at 1 thread, against the same 30 rows' share of the n-row call.
   Also the rate per band-galaxy of a model of the six LSST bands over 0 < z <= 0.6 (on the
   rest-frame grid those need) against the five SDSS bands at z <= 0.2, same draws, 1 thread.
2. Resampling cost: |d mag| of the default model vs one built on the native, unresampled
   BC03+MILES grid (2000-12000 A), 200 prior draws at z = 0.02, 0.05, 0.1, 0.2.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from sedflow.prior import Prior
from sedflow.sps import BANDS, SEDModel, SSPGrid
from sedflow.sps.photometry import nanomaggies_to_mag
from sedflow.sps.ssp import read_bc03_miles

PAPER_MS = {"FSPS": 340.0, "emulator": 2.9}
LSST_FILTERS = tuple(f"lsst2023-{b}" for b in "ugrizy")
MCMC_BATCH = 30  # walkers of sedflow.mcmc (the paper's): rows per log-probability call
DEFAULT_PROVABGS = Path(__file__).resolve().parents[2] / "shared" / "data" / "provabgs"


def rate(fn, theta, z, threads, repeat):
    """Galaxies per second of fn(theta, z) under a BLAS thread limit: best of ``repeat``
    timed calls after a warm-up (the best is the least disturbed by other load)."""
    best = np.inf
    with threadpool_limits(limits=threads):
        fn(theta[:500], z[:500])
        for _ in range(repeat):
            t0 = time.perf_counter()
            out = fn(theta, z)
            best = min(best, time.perf_counter() - t0)
    outputs = out.values() if isinstance(out, dict) else [out]
    assert all(np.all(np.isfinite(v)) for v in outputs), "non-finite outputs"
    return len(theta) / best


def small_batch_ms(fn, theta, z, calls=200, repeat=5):
    """Milliseconds per call of fn(theta, z) at 1 BLAS thread: the mean of ``calls`` calls, best
    of ``repeat`` such loops after a warm-up (per-call overhead dominates small batches)."""
    best = np.inf
    with threadpool_limits(limits=1):
        for _ in range(20):
            fn(theta, z)
        for _ in range(repeat):
            t0 = time.perf_counter()
            for _ in range(calls):
                fn(theta, z)
            best = min(best, (time.perf_counter() - t0) / calls)
    return 1e3 * best


def throughput(n, provabgs_dir, threads=(1, 2), repeat=2, seed=0):
    rng = np.random.default_rng(seed)
    theta = Prior().sample(n, seed=seed)
    z = rng.uniform(0.01, 0.2, n)
    t0 = time.perf_counter()
    model = SEDModel.default()
    timings = {"setup_s": {"sedflow": time.perf_counter() - t0}, "rates": {}}
    runners = {"sedflow": model.photometry}
    if provabgs_dir is not None and provabgs_dir.is_dir():
        from sedflow.sps.emulator import PROVABGSEmulator
        from sedflow.sps.photometry import Photometry

        t0 = time.perf_counter()
        emu = PROVABGSEmulator.from_dir(provabgs_dir, wave_range=(2000.0, 12000.0))
        phot = Photometry(emu.wave, z_max=0.25)
        timings["setup_s"]["emulator"] = time.perf_counter() - t0
        timings["emulator_n_wave"] = int(emu.wave.size)
        runners["emulator"] = lambda th, zz: emu.photometry(th, zz, phot)
    else:
        print(f"PROVABGS emulator files not found in {provabgs_dir}: emulator timings skipped")
    for name, fn in runners.items():
        timings["rates"][name] = {str(k): rate(fn, theta, z, k, repeat) for k in threads}
    # any survey: six LSST bands over 0 < z <= 0.6 on the grid they need, against SDSS's five
    lsst = SEDModel(filters=LSST_FILTERS, z_max=0.6)
    z_lsst = rng.uniform(0.01, 0.6, n)
    timings["lsst"] = {"n_wave": int(lsst.wave.size), "n_wave_sdss": int(model.wave.size),
                       "rate_1_thread": rate(lsst.photometry, theta, z_lsst, 1, repeat)}
    timings["properties_rows_per_s"] = {"1": rate(model.properties, theta, z, 1, repeat)}
    timings["mcmc_batch_ms"] = small_batch_ms(model.photometry, theta[:MCMC_BATCH], 0.1)
    return timings


def resampling_cost(n=200, redshifts=(0.02, 0.05, 0.1, 0.2), seed=1):
    native = read_bc03_miles()
    keep = (native.wave >= 2000.0) & (native.wave <= 12000.0)
    ref_grid = SSPGrid(wave=native.wave[keep], ages=native.ages, metallicities=native.metallicities,
                       lum=np.ascontiguousarray(native.lum[:, :, keep]),
                       surviving_frac=native.surviving_frac, source=native.source + "; native pixels")
    default = SEDModel.default(z_max=0.25)
    ref = SEDModel(ssp=ref_grid, z_max=0.25, chunk_size=256)
    theta = Prior().sample(n, seed=seed)
    dmag = []
    for z in redshifts:
        dmag.append(nanomaggies_to_mag(default.photometry(theta, z)) - nanomaggies_to_mag(ref.photometry(theta, z)))
    dmag = np.abs(np.concatenate(dmag))
    return {"n_wave_default": int(default.wave.size), "n_wave_native": int(ref_grid.wave.size),
            "redshifts": list(redshifts), "n_draws": n,
            "median_abs_dmag": dict(zip(BANDS, np.median(dmag, axis=0).tolist())),
            "max_abs_dmag": dict(zip(BANDS, dmag.max(axis=0).tolist()))}


def run(quick=False, provabgs_dir=DEFAULT_PROVABGS):
    """Entry point of the suite (`python -m bench`): the throughput part as a dict with table rows."""
    n = 20_000 if quick else 100_000
    res = {"n": n, **throughput(n, provabgs_dir)}
    rates = res["rates"]
    res["rows"] = [{"measure": f"SEDModel.photometry, {t} thread(s)", "value": r, "unit": "gal/s",
                    "peer": "PROVABGS emulator" if "emulator" in rates else None,
                    "peer_value": rates.get("emulator", {}).get(t),
                    "ratio": r / rates["emulator"][t] if "emulator" in rates else None}
                   for t, r in rates["sedflow"].items()]
    lsst, sdss = res["lsst"]["rate_1_thread"], rates["sedflow"]["1"]
    res["rows"].append({"measure": f"SEDModel.photometry per band-galaxy, 6 LSST bands, 0<z<=0.6 "
                                   f"({res['lsst']['n_wave']} pixels), 1 thread",
                        "value": 6 * lsst, "unit": "band-gal/s",
                        "peer": f"5 SDSS bands, z<=0.2 ({res['lsst']['n_wave_sdss']} pixels)",
                        "peer_value": 5 * sdss, "ratio": 6 * lsst / (5 * sdss)})
    prop, phot = res["properties_rows_per_s"]["1"], rates["sedflow"]["1"]
    res["rows"].append({"measure": "SEDModel.properties, 1 thread(s)", "value": prop, "unit": "rows/s",
                        "peer": "SEDModel.photometry", "peer_value": phot, "ratio": prop / phot})
    share = 1e3 * MCMC_BATCH / phot                  # ms the same rows take inside the n-row call
    res["rows"].append({"measure": f"SEDModel.photometry, {MCMC_BATCH} rows at one z (MCMC), 1 thread",
                        "value": res["mcmc_batch_ms"], "unit": "ms/call", "peer": f"same rows in {n:,}-row call",
                        "peer_value": share, "ratio": res["mcmc_batch_ms"] / share})
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=100_000, help="prior draws for the timings")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--repeat", type=int, default=2, help="timed calls per setting (best is kept)")
    p.add_argument("--provabgs-dir", type=Path, default=DEFAULT_PROVABGS)
    args = p.parse_args(argv)

    res = {"n": args.n, "repeat": args.repeat, "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                    "loadavg_before": os.getloadavg()}}
    res.update(throughput(args.n, args.provabgs_dir, repeat=args.repeat))
    rates = res["rates"]
    print(f"\nForward model: {args.n} prior draws, z ~ U(0.01, 0.2), SDSS ugriz fluxes "
          f"(best of {args.repeat}; load average before: {res['machine']['loadavg_before'][0]:.2f} on {os.cpu_count()} CPUs)")
    print(f"{'model':<10}{'threads':>8}{'gal/s':>11}{'ms/gal':>9}{'x FSPS 340ms':>14}{'x emu 2.9ms':>13}")
    for name, by_t in rates.items():
        for t, r in by_t.items():
            ms = 1e3 / r
            print(f"{name:<10}{t:>8}{r:>11.0f}{ms:>9.4f}{PAPER_MS['FSPS'] / ms:>14.0f}"
                  f"{PAPER_MS['emulator'] / ms:>13.0f}")
    if "emulator" in rates:
        res["ratio_sedflow_over_emulator"] = {t: rates["sedflow"][t] / rates["emulator"][t]
                                              for t in rates["sedflow"]}
        print("sedflow / emulator throughput: " + ", ".join(
            f"{r:.1f}x at {t} thread(s)" for t, r in res["ratio_sedflow_over_emulator"].items()))
    prop = res["properties_rows_per_s"]["1"]
    print(f"SEDModel.properties: {prop:.0f} rows/s at 1 thread, {prop / rates['sedflow']['1']:.1f}x the photometry")
    batch = res["mcmc_batch_ms"]
    share = 1e3 * MCMC_BATCH / rates["sedflow"]["1"]
    print(f"SEDModel.photometry on {MCMC_BATCH} rows at one z (an MCMC batch): {batch:.3f} ms/call at 1 thread, "
          f"{batch / share:.1f}x the same rows' share of the {args.n}-row call ({share:.3f} ms)")
    print("setup [s]: " + ", ".join(f"{k} {v:.1f}" for k, v in res["setup_s"].items()))
    res["machine"]["loadavg_after"] = os.getloadavg()
    if max(res["machine"]["loadavg_before"][0], res["machine"]["loadavg_after"][0]) > 0.5 * os.cpu_count():
        print("note: other load on the machine; multi-thread BLAS timings collapse when a core is busy")

    res["resampling"] = rs = resampling_cost()
    print(f"\nResampling cost: default grid ({rs['n_wave_default']} px, R=300) vs native BC03+MILES "
          f"({rs['n_wave_native']} px), {rs['n_draws']} draws x z in {rs['redshifts']}")
    print(f"{'band':<6}{'median |dmag|':>15}{'max |dmag|':>12}")
    for b in BANDS:
        print(f"{b:<6}{rs['median_abs_dmag'][b]:>15.5f}{rs['max_abs_dmag'][b]:>12.5f}")

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2))
        print(f"\nwrote {args.json}")
    return res


if __name__ == "__main__":
    main()
