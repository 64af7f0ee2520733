"""Validation report of a trained posterior (Hahn & Melchior 2022, Sec. 5, Figs. 2-4).

``validate(out_dir)`` writes ``metrics.json``, ``report.md`` and PNG figures:

1. Calibration on ``n_test`` held-out simulations drawn exactly as the training set (same
   prior, SED model and noise model; a fresh seed): SBC rank histograms, p-p plot, coverage
   and TARP (`sedflow.diagnostics`), with the acceptance thresholds of the project (every
   parameter SBC KS p > 0.01, max p-p deviation < 0.05).
2. ANPE vs MCMC (zeus, same forward model and prior) on ``n_mcmc`` of those galaxies:
   per-parameter |difference of medians| / MCMC sigma, ratio of widths, wall times, and a
   corner overlay with photometry and both best-fit SEDs (paper Fig. 2).
3. Real data (NSA rows of ``../shared/data/nsa_lcs`` or ``catalog``): flagged fractions by
   reason and the chi^2 of the best-fit SED per galaxy (paper Sec. 6.1).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from sedflow.diagnostics import calibration_report, plot_pp, plot_rank_histograms, plot_tarp, sbc_ranks, tarp
from sedflow.figures import best_fit, plot_sed_fits
from sedflow.noise import NoiseModel
from sedflow.posterior import load_model
from sedflow.prior import PARAM_NAMES

__all__ = ["held_out_simulations", "validate", "THRESHOLDS"]

THRESHOLDS = {"sbc_ks_pvalue_min": 0.01, "max_pp_deviation_max": 0.05, "mcmc_median_offset_max": 0.2}


MIN_SUBSET = 50   # smallest subset of held-out simulations whose calibration is reported


def _calibration(samples, truths) -> dict:
    cal = calibration_report(samples, truths, names=list(PARAM_NAMES))
    params = cal["parameters"]
    cal["passes"] = {
        "sbc": all(p["sbc_ks_pvalue"] > THRESHOLDS["sbc_ks_pvalue_min"] for p in params.values()),
        "pp": all(p["max_pp_deviation"] < THRESHOLDS["max_pp_deviation_max"] for p in params.values())}
    return cal


def held_out_simulations(post, sed, n: int, seed: int) -> dict:
    """Simulations drawn as the training set was (``sed``: the model's own, `PosteriorModel.sed_model`;
    the same noise envelope, faint-end cut and, for asinh models, random band masks), with a fresh
    seed: theta, x, flux (NaN where masked), flux_err, z."""
    from sedflow.simulate import simulate_rows
    from sedflow.train import mask_bands

    cfg = post.config.get("simulation") or {}
    noise = NoiseModel.from_dict(post.config["noise_model"])
    # models trained before `reported_errors` existed were trained on "true" (sedflow.simulate)
    cols, _ = simulate_rows(sed, noise, post.prior, n, np.random.default_rng(seed),
                            z_min=cfg.get("z_min", 0.0), z_max=cfg.get("z_max", 0.2),
                            reported_errors=cfg.get("reported_errors", "true"),
                            noise_envelope=cfg.get("noise_envelope"), min_detected=cfg.get("min_detected"))
    flux = np.column_stack([cols[f"flux_{b}"] for b in post.bands])
    if post.config.get("missing_fraction"):
        flux = mask_bands(flux, post.config["missing_fraction"], np.random.default_rng([seed, 1]))
    flux_err = np.column_stack([cols[f"flux_err_{b}"] for b in post.bands])
    return {"theta": np.column_stack([cols[p] for p in PARAM_NAMES]),
            "x": post.inputs.observables(flux, flux_err, cols["z"]),
            "flux": flux, "flux_err": flux_err, "z": cols["z"]}


def _mcmc_request(sed, prior, sims, i, seed, mcmc_options) -> dict:
    """What determines galaxy i's chain: its photometry, z, seed, the sampler settings, the SED
    model and the prior (not the flow). JSON-normalised, as it is stored."""
    request = {"flux": sims["flux"][i].tolist(), "flux_err": sims["flux_err"][i].tolist(), "z": float(sims["z"][i]),
               "seed": int(seed + i), "options": dict(sorted((mcmc_options or {}).items())),
               "sed_model": sed.describe(), "prior": prior.to_dict()}
    return json.loads(json.dumps(request))


def _mcmc_chains(sed, prior, sims, n_mcmc, seed, mcmc_options, chain_dir, address=None) -> list[tuple]:
    """(samples, summary) of zeus for galaxies 0..n_mcmc-1, read from ``chain_dir`` where a file there
    was run on the same request; the others run as Ray tasks, one galaxy per CPU (local Ray, or the
    cluster at ``address``: at paper settings one galaxy takes minutes) and each is written to
    ``chain_dir`` as it finishes. The chains do not depend on the flow, so an interrupted report
    resumes, and another model is validated against the same chains."""
    import ray
    from tqdm.auto import tqdm

    from sedflow.mcmc import read_samples, run_mcmc, write_samples
    from sedflow.ray_utils import ray_session

    chain_dir = Path(chain_dir)
    chain_dir.mkdir(parents=True, exist_ok=True)
    requests = [_mcmc_request(sed, prior, sims, i, seed, mcmc_options) for i in range(n_mcmc)]
    paths = [chain_dir / f"galaxy-{i:04d}.parquet" for i in range(n_mcmc)]
    chains, todo = {}, []
    for i in range(n_mcmc):
        try:
            samples, meta = read_samples(paths[i])
        except (OSError, ValueError):        # absent or unreadable: (re)run it
            meta = {}
        if meta.get("request") == requests[i]:
            chains[i] = (samples, meta)
        else:
            todo.append(i)
    if todo:
        with ray_session(address):
            task = ray.remote(run_mcmc).options(num_cpus=1)        # one galaxy per CPU
            sed_ref, prior_ref = ray.put(sed), ray.put(prior)
            refs = {task.remote(sims["flux"][i], sims["flux_err"][i], sims["z"][i], model=sed_ref, prior=prior_ref,
                                seed=seed + i, **(mcmc_options or {})): i for i in todo}
            pending = list(refs)
            with tqdm(total=n_mcmc, initial=n_mcmc - len(todo), desc="MCMC", unit="galaxy") as bar:
                while pending:
                    done, pending = ray.wait(pending, num_returns=1)
                    i = refs[done[0]]
                    write_samples(ray.get(done[0]), paths[i], extra={"request": requests[i]})
                    chains[i] = read_samples(paths[i])     # as a later report will see it
                    bar.update(1)
    return [chains[i] for i in range(n_mcmc)]


def _mcmc_comparison(post, sed, sims, n_mcmc, n_samples, seed, mcmc_options, out, chain_dir, address=None):
    """ANPE (drawn here) vs the zeus chains of `_mcmc_chains`, per galaxy and parameter."""
    anpe, t_anpe = [], []
    for i in range(n_mcmc):
        t0 = time.perf_counter()
        anpe.append(post.sample(sims["x"][i:i + 1], n_samples, seed=seed + i)[0])
        t_anpe.append(time.perf_counter() - t0)
    chains = _mcmc_chains(sed, post.prior, sims, n_mcmc, seed, mcmc_options, chain_dir, address)

    rows = []
    for a, (m, meta) in zip(anpe, chains):
        sig = np.maximum(np.std(m, axis=0), 1e-12)
        par = meta["parameters"]
        # MCMC's own noise: the two halves (in iterations) of the kept chain, compared the same way.
        # Samples are walker-major (walker 0's iterations first); with independent halves the
        # full chain's median scatters by about half of this.
        per_walker = m.reshape(meta["n_walkers"], -1, m.shape[1])
        half = per_walker.shape[1] // 2
        split = np.abs(np.median(per_walker[:, :half].reshape(-1, m.shape[1]), 0)
                       - np.median(per_walker[:, half:].reshape(-1, m.shape[1]), 0)) / sig
        rows.append({"offset": (np.abs(np.median(a, 0) - np.median(m, 0)) / sig).tolist(),
                     "mcmc_halves_offset": split.tolist(),
                     "width_ratio": (np.std(a, 0) / sig).tolist(), "converged": bool(meta["converged"]),
                     "max_autocorr_time": max(p["autocorr_time"] for p in par.values()),
                     "max_rhat": max(p["rhat"] for p in par.values()), "mcmc_seconds": float(meta["seconds"])})
    offset = np.array([r["offset"] for r in rows])
    ratio = np.array([r["width_ratio"] for r in rows])
    halves = np.array([r["mcmc_halves_offset"] for r in rows])
    m0, meta0 = chains[0]
    keep = {"anpe": anpe[0], "mcmc": m0, "mcmc_best": np.array([meta0["parameters"][n]["best"] for n in PARAM_NAMES])}
    _plot_overlay(post, sed, sims, keep, out / "anpe_vs_mcmc.png")
    return {"n": n_mcmc, "converged": int(sum(r["converged"] for r in rows)), "chain_dir": str(chain_dir),
            "median_abs_offset_over_sigma": dict(zip(PARAM_NAMES, np.median(offset, 0).tolist())),
            "median_width_ratio": dict(zip(PARAM_NAMES, np.median(ratio, 0).tolist())),
            "median_mcmc_halves_offset_over_sigma": dict(zip(PARAM_NAMES, np.median(halves, 0).tolist())),
            "anpe_seconds_per_galaxy": float(np.mean(t_anpe)),
            "mcmc_seconds_per_galaxy": float(np.mean([r["mcmc_seconds"] for r in rows])),
            "galaxies": rows}


def _plot_overlay(post, sed, sims, keep, path):
    """Corner overlay (ANPE vs MCMC) for one galaxy, with its photometry and best-fit SEDs."""
    import corner
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    idx = [0, 5, 6, 10, 11]
    names = [PARAM_NAMES[i] for i in idx]
    fig = corner.corner(keep["mcmc"][:, idx], labels=names, color="k", truths=sims["theta"][0, idx],
                        hist_kwargs={"density": True}, plot_datapoints=False)
    corner.corner(keep["anpe"][:, idx], fig=fig, color="C0", hist_kwargs={"density": True}, plot_datapoints=False)
    ax = fig.add_axes([0.62, 0.68, 0.34, 0.28])
    _, best = best_fit(sed, keep["anpe"][None, :500], sims["flux"][:1], sims["flux_err"][:1], sims["z"][:1])
    plot_sed_fits(ax, sed, sims["z"][0], sims["flux"][0], sims["flux_err"][0],
                  [(best[0], "C0", "ANPE best fit"), (keep["mcmc_best"], "k", "MCMC best fit")])
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _real_data(post, sed, catalog, spec, n_samples, seed):
    from sedflow.catalog import CatalogSpec, read_catalog
    from sedflow.infer import COUNTED, check_filters, galaxy_checks

    spec = CatalogSpec.load(spec)
    check_filters(post, spec.bands, spec.filters, f"the description {spec.name!r}")
    frame, _ = read_catalog(catalog, spec)
    x, flags = galaxy_checks(frame, post)
    good = ~flags["flag_bad_input"]
    if not good.any():
        raise ValueError(f"{catalog}: no row of the catalog is usable by the model (all flagged bad input)")
    theta = post.sample(x[good], n_samples, seed=seed)
    flux = frame[[f"flux_{b}" for b in post.bands]].to_numpy()[good]
    err = frame[[f"flux_err_{b}" for b in post.bands]].to_numpy()[good]
    chi2, _ = best_fit(sed, theta[:, :min(n_samples, 200)], flux, err, frame["z"].to_numpy(dtype=float)[good])
    return {"catalog": str(catalog), "rows": int(len(frame)),
            "flagged_fraction": {f: float(np.mean(flags[f] != 0)) for f in COUNTED},
            "any_ood_fraction": float(np.mean(flags["flag_sigma_ood"] | flags["flag_color_ood"]
                                              | flags["flag_posterior_ood"])),
            "best_fit_chi2_percentiles_16_50_84": np.percentile(chi2, [16, 50, 84]).tolist(),
            "n_bands": len(post.bands), "best_fit_chi2_p95_n_bands_dof": _chi2_p95(len(post.bands))}, chi2


def _chi2_p95(dof: int) -> float:
    """95th percentile of chi^2 with ``dof`` degrees of freedom (one per band: the reference for a
    best-fit chi^2, which the fit's free parameters only lower)."""
    from scipy.stats import chi2

    return float(chi2.ppf(0.95, dof))


def validate(out_dir, model_path=None, n_test: int = 1000, n_samples: int = 10000, n_mcmc: int = 50,
             catalog=None, catalog_spec: str = "nsa", seed: int = 20260101, mcmc_options: dict | None = None,
             address: str | None = None, mcmc_dir=None) -> dict:
    """Write the validation report to ``out_dir``; returns the metrics dict. The MCMC runs go to
    the Ray cluster at ``address`` (default: a local Ray on this machine's CPUs); their chains are
    kept in ``mcmc_dir`` (default ``out_dir/mcmc``) and reused by any later report on the same
    galaxies and settings, whatever the flow. The held-out galaxies are a function of ``n_test``
    (`simulate_rows` sizes its batches by it), ``seed`` and the model's simulation settings, so
    a report with another ``n_test`` samples new galaxies and runs new chains."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    post = load_model(model_path)
    sed = post.sed_model()                   # the physics the model was trained on
    metrics = {"model": str(model_path or "shipped"), "architecture": post.config["architecture"],
               "n_test": n_test, "n_samples": n_samples, "seed": seed, "thresholds": THRESHOLDS}

    sims = held_out_simulations(post, sed, n_test, seed)
    t0 = time.perf_counter()
    samples = post.sample(sims["x"], n_samples, seed=seed)
    metrics["anpe_sampling_seconds"] = time.perf_counter() - t0
    cal = _calibration(samples, sims["theta"])
    # the galaxies real catalogs are hardest on, when the model was trained on them
    subsets = {"non_detection": np.any(sims["flux"] <= 0, axis=1),
               "missing_band": np.any(~np.isfinite(sims["flux"]), axis=1)}
    cal["subsets"] = {name: {"n": int(rows.sum()), **_calibration(samples[rows], sims["theta"][rows])}
                      for name, rows in subsets.items() if rows.sum() >= MIN_SUBSET}
    metrics["calibration"] = cal
    plot_pp(samples, sims["theta"], list(PARAM_NAMES), out / "pp.png")
    plot_rank_histograms(sbc_ranks(samples, sims["theta"]), n_samples, list(PARAM_NAMES), out / "sbc_ranks.png")
    plot_tarp(tarp(samples, sims["theta"], seed=seed), out / "tarp.png")

    if n_mcmc > 0:
        mc = _mcmc_comparison(post, sed, sims, n_mcmc, n_samples, seed, mcmc_options, out,
                              Path(mcmc_dir) if mcmc_dir else out / "mcmc", address)
        mc["passes"] = all(v < THRESHOLDS["mcmc_median_offset_max"] for v in mc["median_abs_offset_over_sigma"].values())
        metrics["mcmc"] = mc

    if catalog is None:           # the NSA rows beside the repository, for a model of NSA's filters
        from sedflow.catalog import CatalogSpec

        nsa = Path(__file__).resolve().parents[2] / "shared" / "data" / "nsa_lcs" / "nsa_v0_1_2_lcs_subset.fits"
        catalog = nsa if nsa.exists() and CatalogSpec.load(catalog_spec).filters == post.filters else None
    if catalog is not None:
        real, chi2 = _real_data(post, sed, catalog, catalog_spec, min(n_samples, 1000), seed)
        metrics["real_data"] = real
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.hist(np.clip(chi2, 0, 100), bins=50, histtype="step")
        nb = len(post.bands)
        ax.axvline(_chi2_p95(nb), color="k", ls=":", label=f"chi2({nb} dof) 95%")
        ax.set(xlabel=f"best-fit chi^2 ({nb} bands)", ylabel="galaxies", title=Path(catalog).name)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "real_chi2.png", dpi=100)
        plt.close(fig)

    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    (out / "report.md").write_text(_report_md(metrics))
    return metrics


def _report_md(m: dict) -> str:
    cal = m["calibration"]
    lines = ["# sedflow validation report", "",
             f"Model: `{m['model']}` ({m['architecture']['name']}, {m['architecture'].get('parameters', '?')} "
             f"parameters). {m['n_test']} held-out simulations x {m['n_samples']} draws, seed {m['seed']}.", "",
             "## Calibration", "",
             f"SBC (every KS p > {m['thresholds']['sbc_ks_pvalue_min']}): **{'pass' if cal['passes']['sbc'] else 'FAIL'}**; "
             f"p-p (max deviation < {m['thresholds']['max_pp_deviation_max']}): **{'pass' if cal['passes']['pp'] else 'FAIL'}**; "
             f"TARP ATC {cal['tarp_atc']:+.3f} (KS p {cal['tarp_ks_pvalue']:.2f}).", "",
             "| parameter | SBC KS p | max p-p dev | coverage 68% | coverage 95% |", "|---|---|---|---|---|"]
    for name, p in cal["parameters"].items():
        lines.append(f"| {name} | {p['sbc_ks_pvalue']:.3f} | {p['max_pp_deviation']:.3f} | {p['coverage_68']:.3f} | "
                     f"{p['coverage_95']:.3f} |")
    lines += [""]
    for name, sub in cal.get("subsets", {}).items():
        worst = min(p["sbc_ks_pvalue"] for p in sub["parameters"].values())
        dev = max(p["max_pp_deviation"] for p in sub["parameters"].values())
        lines.append(f"- {name.replace('_', ' ')} ({sub['n']} simulations): SBC "
                     f"**{'pass' if sub['passes']['sbc'] else 'FAIL'}** (lowest KS p {worst:.3f}), p-p "
                     f"**{'pass' if sub['passes']['pp'] else 'FAIL'}** (largest deviation {dev:.3f})")
    lines += ["", "![p-p](pp.png) ![ranks](sbc_ranks.png) ![tarp](tarp.png)", ""]
    if "mcmc" in m:
        mc = m["mcmc"]
        lines += ["## ANPE vs MCMC (zeus)", "",
                  f"{mc['n']} galaxies ({mc['converged']} MCMC runs converged); ANPE {mc['anpe_seconds_per_galaxy']:.3f} s "
                  f"vs MCMC {mc['mcmc_seconds_per_galaxy']:.1f} s per galaxy. Median |d median| / sigma < "
                  f"{m['thresholds']['mcmc_median_offset_max']}: **{'pass' if mc['passes'] else 'FAIL'}**.", "",
                  "The last column is the MCMC's own noise: the same offset between the two halves (in "
                  "iterations) of each kept chain; with independent halves the full chain's median scatters by "
                  "about half of it, so offsets near it cannot be told from MCMC noise.", "",
                  "| parameter | median abs offset / sigma | median width ratio | MCMC halves offset / sigma |",
                  "|---|---|---|---|"]
        for name in PARAM_NAMES:
            lines.append(f"| {name} | {mc['median_abs_offset_over_sigma'][name]:.3f} | "
                         f"{mc['median_width_ratio'][name]:.2f} | "
                         f"{mc['median_mcmc_halves_offset_over_sigma'][name]:.3f} |")
        lines += ["", "![overlay](anpe_vs_mcmc.png)", ""]
    if "real_data" in m:
        r = m["real_data"]
        lines += ["## Real data", "", f"`{r['catalog']}`: {r['rows']} rows.", "",
                  "| flag | fraction |", "|---|---|"]
        lines += [f"| {k} | {v:.3f} |" for k, v in r["flagged_fraction"].items()]
        lo, med, hi = r["best_fit_chi2_percentiles_16_50_84"]
        lines += ["", f"Best-fit chi^2 ({r.get('n_bands', 5)} bands): median {med:.1f} (16-84%: {lo:.1f}-{hi:.1f}).",
                  "",
                  "![chi2](real_chi2.png)", ""]
    return "\n".join(lines)
