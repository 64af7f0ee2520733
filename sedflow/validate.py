"""Validation report of a trained posterior (Hahn & Melchior 2022, Sec. 5, Figs. 2-4).

``validate(out_dir)`` writes ``metrics.json``, ``report.md`` and PNG figures:

1. Calibration on ``n_test`` held-out simulations drawn exactly as the training set (same
   prior, SED model and noise model; a fresh seed): SBC rank histograms, p-p plot, coverage
   and TARP (`sedflow.diagnostics`), with the acceptance thresholds of the project (every
   parameter SBC KS p > 0.01, max p-p deviation < 0.05). With ``repeat_sets=K``, the SBC test
   again on K more independent held-out sets of ``n_test`` and on all of them pooled
   (`repeated_calibration`): whether a failure belongs to the one set or to the model. And how
   often a calibrated posterior passes the same tests on the same galaxies
   (`calibrated_pass_rates`): the thresholds do not scale with the number of galaxies. And how
   unusual the set's own truths are, and how much the data narrow each parameter's prior
   (`truth_draw`): a parameter the data barely constrain inherits its truths' draw in its SBC test.
   The same tests on the derived properties `sedflow infer` reports
   (`sedflow.infer.derived_properties`).
2. ANPE vs a reference sampler (same forward model and prior) on ``n_mcmc`` of those galaxies,
   at least a fifth of them (10 of 50) with a non-detection or a missing band when the model
   was trained on such galaxies: per-parameter |difference of medians| / reference sigma, ratio
   of widths, wall times, convergence, and a corner overlay with photometry and both best-fit
   SEDs (paper Fig. 2). The reference is defensive importance sampling with a proposal fitted to
   the flow's draws (default; `sedflow.importance`: exact, its noise set by its effective sample
   size, whatever the flow), nautilus nested sampling (`sedflow.nested`, converges by its own
   criteria but is biased where the likelihood is flat) or the paper's zeus MCMC
   (`sedflow.mcmc`, does not converge at the paper's chain length), with
   the catalog likelihood of the paper's Eq. 1 (sigma = the reported error) or, with
   ``likelihood="simulator"``, the likelihood the training simulations were drawn from (sigma
   follows the model flux, `sedflow.mcmc.simulator_flux_error`): the posterior the flow learns,
   so that comparison measures the flow alone.
3. Real data (NSA rows of ``../shared/data/nsa_lcs`` or ``catalog``): flagged fractions by
   reason and the chi^2 of the best-fit SED per galaxy (paper Sec. 6.1).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from sedflow.diagnostics import (calibration_report, max_pp_deviation_of_ranks, null_ranks, plot_pp, plot_rank_histograms,
                                 plot_tarp, sbc_metrics, sbc_ranks, tarp)
from sedflow.figures import best_fit, plot_sed_fits
from sedflow.infer import derived_properties
from sedflow.noise import NoiseModel
from sedflow.posterior import load_model
from sedflow.prior import PARAM_NAMES, PriorWithRedshift
from sedflow.sps.model import PROPERTY_NAMES

__all__ = ["held_out_simulations", "reference_galaxies", "calibrated_pass_rates", "repeated_calibration", "truth_draw",
           "width_comparison",
           "photoz_real_data", "reference_sky_flux", "validate", "THRESHOLDS", "REFERENCES", "LIKELIHOODS"]

THRESHOLDS = {"sbc_ks_pvalue_min": 0.01, "max_pp_deviation_max": 0.05, "mcmc_median_offset_max": 0.2}


TRUTH_REFERENCE_FACTOR = 10   # `truth_draw` compares a set's truths with this many times more drawn the same way
MIN_SUBSET = 50   # smallest subset of held-out simulations whose calibration is reported
NULL_REPLICATES = 200   # pseudo-truths per galaxy in `calibrated_pass_rates` (pass rates +- 0.035 at most)
# the real NSA rows of ../shared/data beside a source checkout (absent from an installed package)
NSA_BESIDE_REPO = Path(__file__).resolve().parents[2] / "shared" / "data" / "nsa_lcs" / "nsa_v0_1_2_lcs_subset.fits"


def _passes(ks_pvalues, pp_deviations) -> dict:
    """The report's calibration verdicts (`THRESHOLDS`) from every parameter's SBC KS p and max p-p deviation."""
    return {"sbc": bool(np.min(ks_pvalues) > THRESHOLDS["sbc_ks_pvalue_min"]),
            "pp": bool(np.max(pp_deviations) < THRESHOLDS["max_pp_deviation_max"])}


def _calibration(samples, truths, names=PARAM_NAMES) -> dict:
    cal = calibration_report(samples, truths, names=list(names))
    params = cal["parameters"].values()
    cal["passes"] = _passes([p["sbc_ks_pvalue"] for p in params], [p["max_pp_deviation"] for p in params])
    return cal


def calibrated_pass_rates(samples, subsets: dict, n_replicates: int = NULL_REPLICATES) -> dict:
    """How often a calibrated posterior passes the report's calibration criteria (`THRESHOLDS`) on
    these very galaxies: ``n_replicates`` times, one of each galaxy's own draws is its truth,
    ranked among the other draws (`sedflow.diagnostics.null_ranks`), and the tests are run on
    every set of rows in ``subsets`` (name: boolean mask) as on the real truths. The thresholds
    do not scale with the number of galaxies, so a calibrated posterior fails some of them by
    chance, most often the p-p deviation of a subset of a few hundred galaxies.

    Returns ``{"n_replicates", "sets": {name: {"sbc", "pp"}}, "every"}``: the fraction of replicates
    passing each test on each set, and every test on every set at once.
    """
    n_draws = samples.shape[1] - 1                   # a pseudo-truth is ranked among the others
    verdicts = [{name: _passes(sbc_metrics(ranks[rows], n_draws, seed=k)["ks_pvalue"],
                               max_pp_deviation_of_ranks(ranks[rows], n_draws))
                 for name, rows in subsets.items()}
                for k, ranks in enumerate(null_ranks(samples, n_replicates))]
    return {"n_replicates": n_replicates,
            "sets": {name: {test: float(np.mean([v[name][test] for v in verdicts])) for test in ("sbc", "pp")}
                     for name in subsets},
            "every": float(np.mean([all(all(t.values()) for t in v.values()) for v in verdicts]))}


def held_out_simulations(post, sed, n: int, seed: int, population=None) -> dict:
    """Simulations drawn as the training set was (``sed``: the model's own, `PosteriorModel.sed_model`;
    the same noise envelope, faint-end cut and, for asinh models, random band masks), with a fresh
    seed: theta (with z last for a photo-z model), x, flux (NaN where masked), flux_err, z.
    ``population``: parameters (and, for a photo-z model, z) from this
    `sedflow.population.PopulationPrior` instead of the training prior."""
    from sedflow.simulate import simulate_rows
    from sedflow.train import mask_bands

    cfg = post.config.get("simulation") or {}
    noise = NoiseModel.from_dict(post.config["noise_model"])
    z_min, z_max = cfg.get("z_min", 0.0), cfg.get("z_max", 0.2)
    draw = None
    if population is not None:
        def draw(size, rng):
            theta = post.prior.from_unconstrained(population.sample_unconstrained(size, rng))
            if post.infers_redshift:
                return theta[:, :-1], theta[:, -1]
            return theta, z_max - (z_max - z_min) * rng.uniform(size=size)
    # models trained before `reported_errors` existed were trained on "true" (sedflow.simulate)
    cols, _ = simulate_rows(sed, noise, post.prior.sed_prior, n, np.random.default_rng(seed),
                            z_min=z_min, z_max=z_max, reported_errors=cfg.get("reported_errors", "true"),
                            noise_envelope=cfg.get("noise_envelope"), min_detected=cfg.get("min_detected"),
                            draw=draw)
    flux = np.column_stack([cols[f"flux_{b}"] for b in post.bands])
    if post.config.get("missing_fraction"):
        flux = mask_bands(flux, post.config["missing_fraction"], np.random.default_rng([seed, 1]))
    flux_err = np.column_stack([cols[f"flux_err_{b}"] for b in post.bands])
    return {"theta": np.column_stack([cols[p] for p in post.names]),
            "x": post.inputs.observables(flux, flux_err, cols["z"]),
            "flux": flux, "flux_err": flux_err, "z": cols["z"]}


def truth_draw(post, sed, theta, samples, seed: int) -> dict:
    """How unusual a held-out set's own true parameters ``theta`` are, and how much its posteriors
    (``samples``, galaxies x draws x parameters) narrow the prior: per parameter, the two-sample KS p
    of ``theta`` against `TRUTH_REFERENCE_FACTOR` times as many parameters drawn the same way
    (`held_out_simulations`, seed ``SeedSequence([seed, 0])``: the simulator's cuts select theta
    too), and the median posterior std over the std of those parameters.

    Where a parameter's width ratio is near 1 its posterior is nearly the prior, so the SBC rank of
    its truth is nearly the truth's prior quantile: an unusual draw of truths (a low KS p here)
    shows in that parameter's SBC test for any posterior, the exact one included. Returns
    ``{"n_reference", "parameters": {name: {"truths_ks_pvalue", "width_over_prior"}}}``.
    """
    ref = _truth_reference(post, sed, len(theta), seed)["theta"]
    width = np.median(np.std(samples, axis=1), axis=0) / np.std(ref, axis=0)
    p = _truths_ks_pvalues(theta, ref)
    return {"n_reference": int(len(ref)),
            "parameters": {name: {"truths_ks_pvalue": float(p[j]), "width_over_prior": float(width[j])}
                           for j, name in enumerate(post.names)}}


def _truth_reference(post, sed, n: int, seed: int) -> dict:
    """`TRUTH_REFERENCE_FACTOR` * n held-out simulations (seed ``SeedSequence([seed, 0])``, which no
    held-out set of `validate` or `repeated_calibration` uses): how a set's truths should be drawn."""
    return held_out_simulations(post, sed, TRUTH_REFERENCE_FACTOR * n,
                                int(np.random.SeedSequence([seed, 0]).generate_state(1)[0]))


def _truths_ks_pvalues(truths, reference) -> np.ndarray:
    """Per column, the two-sample KS p of a set's truths against the reference's."""
    from scipy.stats import ks_2samp

    return np.array([ks_2samp(truths[:, j], reference[:, j], method="asymp").pvalue for j in range(truths.shape[1])])


def repeated_calibration(post, sed, n: int, sets: int, n_samples: int = 2000, seed: int = 0) -> dict:
    """The SBC test on ``sets`` more independent held-out sets of ``n`` simulations each
    (`held_out_simulations` with seeds drawn from ``SeedSequence([seed, k])``, k = 1..sets) and on
    their ranks pooled. A calibrated model fails one set's test now and then (12 parameters at
    p < 0.01: about one set in nine); a bias too small for one set shows in the pooled test, and in
    the pooled mean rank (0.5 for a calibrated marginal). ``n_samples`` draws per galaxy: ranks
    need far fewer than the report's posterior summaries.

    The same for the derived properties (`sedflow.infer.derived_properties`) under ``derived``: each
    set's lowest KS p and the pooled test. For each set's lowest parameter, ``truths_ks_pvalue`` is
    `truth_draw`'s test of that set's own truths of it (against the same reference draw): whether
    the set's failure is in its truths already.

    Returns ``{"n_sets", "n_per_set", "n_samples", "sets": [{"seed", "lowest_ks_pvalue",
    "lowest_parameter", "truths_ks_pvalue", "passes"}], "sets_passing", "pooled": {"n", "parameters": {name:
    {"ks_pvalue", "mean_rank"}}}, "derived": {"sets": [...], "sets_passing", "pooled": {...}}}``;
    mean ranks are fractions of ``n_samples``.
    """
    names = {"parameters": list(post.names), "derived": list(PROPERTY_NAMES)}
    per_set = {kind: [] for kind in names}
    ranks = {kind: [] for kind in names}

    def truths(sims):
        return {"parameters": sims["theta"],
                "derived": derived_properties(sed, sims["theta"], sims["z"], post.infers_redshift)}

    reference = truths(_truth_reference(post, sed, n, seed))
    for k in range(1, sets + 1):
        set_seed = int(np.random.SeedSequence([seed, k]).generate_state(1)[0])
        sims = held_out_simulations(post, sed, n, set_seed)
        samples = post.sample(sims["x"], n_samples, seed=set_seed)
        true = truths(sims)
        ranks["parameters"].append(sbc_ranks(samples, true["parameters"]))
        ranks["derived"].append(sbc_ranks(derived_properties(sed, samples, sims["z"][:, None], post.infers_redshift),
                                          true["derived"]))
        for kind in names:
            p = sbc_metrics(ranks[kind][-1], n_samples, seed=set_seed)["ks_pvalue"]
            j = int(p.argmin())
            per_set[kind].append({"seed": set_seed, "lowest_ks_pvalue": float(p[j]), "lowest_parameter": names[kind][j],
                                  "truths_ks_pvalue": float(_truths_ks_pvalues(true[kind][:, [j]],
                                                                               reference[kind][:, [j]])[0]),
                                  "passes": bool(p.min() > THRESHOLDS["sbc_ks_pvalue_min"])})

    def pooled(kind):
        r = np.concatenate(ranks[kind])
        p = sbc_metrics(r, n_samples, seed=seed)["ks_pvalue"]
        mean_rank = r.mean(axis=0) / n_samples
        return {"n": int(len(r)), "parameters": {name: {"ks_pvalue": float(p[j]), "mean_rank": float(mean_rank[j])}
                                                  for j, name in enumerate(names[kind])}}

    return {"n_sets": sets, "n_per_set": n, "n_samples": n_samples, "sets": per_set["parameters"],
            "sets_passing": sum(s["passes"] for s in per_set["parameters"]), "pooled": pooled("parameters"),
            "derived": {"sets": per_set["derived"], "sets_passing": sum(s["passes"] for s in per_set["derived"]),
                        "pooled": pooled("derived")}}


def _population_calibration(post, sed, n: int, n_samples: int, seed: int, out) -> dict:
    """SBC / p-p of the posteriors re-weighted to the model's population prior as `sedflow.infer` does
    (`sedflow.population.sample_population`), on simulations drawn from it."""
    from sedflow.population import sample_population

    sims = held_out_simulations(post, sed, n, seed + 1, population=post.population_prior)
    samples, ess = sample_population(post, sims["x"], n_samples, seed + 1)
    plot_pp(samples, sims["theta"], list(post.names), out / "pp_population_prior.png")
    return {"n": int(n), **_calibration(samples, sims["theta"], post.names),
            "population_ess": {"median": float(np.median(ess)), "p5": float(np.percentile(ess, 5))}}


REFERENCES = ("nautilus", "zeus", "importance")
# the references that sample in the prior's unit cube and end in a weighted sample with an
# effective sample size (zeus is a Markov chain in the unconstrained coordinates)
WEIGHTED_REFERENCES = ("nautilus", "importance")
LIKELIHOODS = ("catalog", "simulator")


def reference_sky_flux(config: dict) -> list[float]:
    """The ``sky_flux`` (`sedflow.mcmc.log_likelihood`) that gives a reference sampler the likelihood of
    a model's training simulations, from its artifact ``config``; a clear error for simulations whose
    errors do not follow `sedflow.mcmc.simulator_flux_error` (no sky-limited floor, or errors
    reported from the noiseless flux)."""
    sim = config.get("simulation") or {}
    if not config.get("noise_model") or sim.get("min_detected") is None or sim.get("reported_errors") != "observed":
        raise ValueError("the simulator likelihood needs simulations with sky-limited errors reported from the "
                         "observed flux (simulate --min-detected, the default --reported-errors observed); "
                         "this model's were not: use the catalog likelihood (with a noise envelope and errors "
                         "reported as the noise's own sigma, --reported-errors true, it is the simulations' likelihood)")
    return NoiseModel.from_dict(config["noise_model"]).sky_limited_flux().tolist()


def _hard(flux) -> np.ndarray:
    """Rows (or one row) with a non-detection (flux <= 0) or a missing band (NaN)."""
    return np.any(~(np.asarray(flux) > 0), axis=-1)


def reference_galaxies(sims, n: int) -> np.ndarray:
    """Indices of the ``n`` held-out galaxies compared with the reference sampler: the first ones,
    except that at least n // 5 of them (all there are, if fewer) have a non-detection or a
    missing band, the galaxies the input layout was built for."""
    is_hard = _hard(sims["flux"])
    hard, easy = np.flatnonzero(is_hard), np.flatnonzero(~is_hard)
    if n > len(is_hard):
        raise ValueError(f"asked for {n} reference galaxies of {len(is_hard)} held-out simulations")
    n_hard = max(min(len(hard), max(n // 5, int(is_hard[:n].sum()))), n - len(easy))
    picked = np.concatenate([hard[:n_hard], easy[:n - n_hard]])
    return np.sort(picked)


def _mcmc_request(sed, prior, sims, i, seed, reference, mcmc_options) -> dict:
    """What determines galaxy i's chain: its photometry, z, seed, the sampler and its settings
    (for importance sampling its proposal, fitted to the flow's draws), the SED model and the prior.
    JSON-normalised, as it is stored. Nautilus and importance sampling draw in the prior's unit cube,
    so for them the prior is its distribution over theta, whatever map to the unconstrained
    coordinates the model uses (zeus walks those coordinates: for it the map counts)."""
    z = None if isinstance(prior, PriorWithRedshift) else float(sims["z"][i])      # None: z is sampled too
    described = prior.to_dict()
    if reference in WEIGHTED_REFERENCES:
        described.pop("unconstrained", None)
    request = {"flux": sims["flux"][i].tolist(), "flux_err": sims["flux_err"][i].tolist(), "z": z,
               "seed": int(seed + i), "sampler": reference, "options": dict(sorted((mcmc_options or {}).items())),
               "sed_model": sed.describe(), "prior": described}
    return json.loads(json.dumps(request))      # NaN (a missing band's flux) round-trips as NaN


def _mcmc_chains(sed, prior, sims, galaxies, seed, reference, mcmc_options, chain_dir, address=None,
                 likelihood: str = "catalog", galaxy_options: dict | None = None) -> list[tuple]:
    """(samples, summary) of the reference sampler for the held-out ``galaxies``, read from
    ``chain_dir`` where a file there was run on the same request (files of the simulator likelihood
    are named apart, so both kinds can share a directory); the others run as Ray tasks,
    one galaxy per CPU (local Ray, or the cluster at ``address``: one galaxy takes about a
    minute) and each is written to ``chain_dir`` as it finishes. The chains do not depend on the
    flow, so an interrupted report resumes, and another model is validated against the same chains
    (importance sampling: ``galaxy_options`` {galaxy: {"proposal": ...}} adds each galaxy's proposal,
    fitted to the flow's draws, so there another flow reruns the galaxies)."""
    import ray
    from tqdm.auto import tqdm

    from sedflow.importance import run_importance
    from sedflow.mcmc import read_samples, run_mcmc, write_samples
    from sedflow.nested import run_nested
    from sedflow.ray_utils import ray_session

    if reference not in REFERENCES:
        raise ValueError(f"unknown reference sampler {reference!r}; choose from {REFERENCES}")
    run = {"nautilus": run_nested, "zeus": run_mcmc, "importance": run_importance}[reference]
    options = {i: {**(mcmc_options or {}), **(galaxy_options or {}).get(i, {})} for i in galaxies}
    chain_dir = Path(chain_dir)
    chain_dir.mkdir(parents=True, exist_ok=True)
    requests = {i: _mcmc_request(sed, prior, sims, i, seed, reference, options[i]) for i in galaxies}
    tag = "" if likelihood == "catalog" else f"-{likelihood}-likelihood"
    paths = {i: chain_dir / f"galaxy-{i:04d}{tag}.parquet" for i in galaxies}
    chains, todo = {}, []
    for i in galaxies:
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
            task = ray.remote(run).options(num_cpus=1)        # one galaxy per CPU
            sed_ref, prior_ref = ray.put(sed), ray.put(prior)
            refs = {task.remote(sims["flux"][i], sims["flux_err"][i], requests[i]["z"], model=sed_ref, prior=prior_ref,
                                seed=int(seed + i), **options[i]): i for i in todo}
            pending = list(refs)
            with tqdm(total=len(galaxies), initial=len(galaxies) - len(todo), desc=reference, unit="galaxy") as bar:
                while pending:
                    done, pending = ray.wait(pending, num_returns=1)
                    i = refs[done[0]]
                    write_samples(ray.get(done[0]), paths[i], extra={"request": requests[i]})
                    chains[i] = read_samples(paths[i])     # as a later report will see it
                    bar.update(1)
    return [chains[i] for i in galaxies]


def _reference_noise(m, meta) -> np.ndarray:
    """The reference's own noise on its medians, in units of its sigma, per parameter. zeus: the
    offset between the two halves (in iterations) of the kept chain (samples walker-major; with
    independent halves the full chain's median scatters by about half of it). nautilus: the
    standard error of a median from its effective sample size, sqrt(pi / 2) / sqrt(n_eff); the same
    for importance sampling, with Kish's effective sample size."""
    if meta.get("sampler") in WEIGHTED_REFERENCES:
        return np.full(m.shape[1], np.sqrt(np.pi / 2) / np.sqrt(max(meta["n_eff"], 1.0)))
    sig = np.maximum(np.std(m, axis=0), 1e-12)
    per_walker = m.reshape(meta["n_walkers"], -1, m.shape[1])
    half = per_walker.shape[1] // 2
    return np.abs(np.median(per_walker[:, :half].reshape(-1, m.shape[1]), 0)
                  - np.median(per_walker[:, half:].reshape(-1, m.shape[1]), 0)) / sig


def _mcmc_comparison(post, sed, sims, n_mcmc, n_samples, seed, reference, mcmc_options, out, chain_dir, address=None,
                     likelihood: str = "catalog"):
    """ANPE (drawn here) vs the reference samples of `_mcmc_chains`, per galaxy and parameter, with the
    ``likelihood`` of `LIKELIHOODS`."""
    from sedflow.importance import fit_proposal

    options = dict(mcmc_options or {})
    if likelihood == "simulator":
        options["sky_flux"] = reference_sky_flux(post.config)
    galaxies = reference_galaxies(sims, n_mcmc)
    anpe, t_anpe = [], []
    for i in galaxies:
        t0 = time.perf_counter()
        anpe.append(post.sample(sims["x"][i:i + 1], n_samples, seed=int(seed + i))[0])
        t_anpe.append(time.perf_counter() - t0)
    proposals = ({i: {"proposal": fit_proposal(post.prior, a)} for i, a in zip(galaxies, anpe)}
                 if reference == "importance" else None)
    chains = _mcmc_chains(sed, post.prior, sims, galaxies, seed, reference, options, chain_dir, address, likelihood,
                          proposals)

    rows = []
    for i, a, (m, meta) in zip(galaxies, anpe, chains):
        sig = np.maximum(np.std(m, axis=0), 1e-12)
        if reference in WEIGHTED_REFERENCES:
            diagnostics = {"n_eff": meta["n_eff"], "n_evaluations": meta["n_evaluations"]}
        else:
            diagnostics = {"max_autocorr_time": max(p["autocorr_time"] for p in meta["parameters"].values()),
                           "max_rhat": max(p["rhat"] for p in meta["parameters"].values())}
        rows.append({"galaxy": int(i), "hard": bool(_hard(sims["flux"][i])),
                     "offset": (np.abs(np.median(a, 0) - np.median(m, 0)) / sig).tolist(),
                     "reference_noise": _reference_noise(m, meta).tolist(),
                     "width_ratio": (np.std(a, 0) / sig).tolist(), "converged": bool(meta["converged"]),
                     "seconds": float(meta["seconds"]), **diagnostics})
    offset = np.array([r["offset"] for r in rows])
    ratio = np.array([r["width_ratio"] for r in rows])
    noise = np.array([r["reference_noise"] for r in rows])
    hard = np.array([r["hard"] for r in rows])
    m0, meta0 = chains[0]
    names = post.names
    keep = {"galaxy": int(galaxies[0]), "anpe": anpe[0], "mcmc": m0,
            "mcmc_best": np.array([meta0["parameters"][n]["best"] for n in names])}
    _plot_overlay(post, sed, sims, keep, reference, out / "anpe_vs_mcmc.png")
    return {"reference": reference, "options": dict(mcmc_options or {}), "likelihood": likelihood,
            "n": len(rows), "n_hard": int(hard.sum()),
            "converged": int(sum(r["converged"] for r in rows)), "chain_dir": str(chain_dir),
            **({"min_n_eff": float(min(r["n_eff"] for r in rows))} if reference in WEIGHTED_REFERENCES else {}),
            "median_abs_offset_over_sigma": dict(zip(names, np.median(offset, 0).tolist())),
            "median_abs_offset_over_sigma_hard": (dict(zip(names, np.median(offset[hard], 0).tolist()))
                                                  if hard.any() else None),
            "median_width_ratio": dict(zip(names, np.median(ratio, 0).tolist())),
            "median_reference_noise_over_sigma": dict(zip(names, np.median(noise, 0).tolist())),
            "anpe_seconds_per_galaxy": float(np.mean(t_anpe)),
            "reference_seconds_per_galaxy": float(np.mean([r["seconds"] for r in rows])),
            "galaxies": rows}


def _plot_overlay(post, sed, sims, keep, reference, path):
    """Corner overlay (ANPE vs the reference) for one galaxy, with its photometry and best-fit SEDs."""
    import corner
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    idx = [0, 5, 6, 10, 11] + ([12] if post.infers_redshift else [])
    names = [post.names[i] for i in idx]
    g = keep["galaxy"]
    fig = corner.corner(keep["mcmc"][:, idx], labels=names, color="k", truths=sims["theta"][g, idx],
                        hist_kwargs={"density": True}, plot_datapoints=False)
    corner.corner(keep["anpe"][:, idx], fig=fig, color="C0", hist_kwargs={"density": True}, plot_datapoints=False)
    ax = fig.add_axes([0.62, 0.68, 0.34, 0.28])
    sl = slice(g, g + 1)
    _, best = best_fit(sed, keep["anpe"][None, :500], sims["flux"][sl], sims["flux_err"][sl],
                       None if post.infers_redshift else sims["z"][sl])
    plot_sed_fits(ax, sed, sims["z"][g], sims["flux"][g], sims["flux_err"][g],
                  [(best[0], "C0", "ANPE best fit"), (keep["mcmc_best"], "k", f"{reference} best fit")])
    fig.savefig(path, dpi=90)
    plt.close(fig)


def width_comparison(post, baseline, n: int = 1000, n_samples: int = 1000, seed: int = 7) -> dict:
    """The price of a broader training set (Hahn & Melchior 2022, Appendix A): median posterior
    widths (std) of ``post`` over those of ``baseline`` on the same held-out typical galaxies,
    simulated as the baseline's training set was (its noise model without an envelope, every band
    detected, its redshift range within both models'). Both models must share bands and filters."""
    from sedflow.simulate import simulate_rows

    if post.filters != baseline.filters:
        raise ValueError(f"the models' filters differ: {list(post.filters)} vs {list(baseline.filters)}")
    sed = baseline.sed_model()
    z_max = min((m.config.get("simulation") or {}).get("z_max", 0.2) for m in (post, baseline))
    cols, _ = simulate_rows(sed, NoiseModel.from_dict(baseline.config["noise_model"]), baseline.prior.sed_prior, n,
                            np.random.default_rng(seed), z_min=0.0, z_max=z_max)
    flux = np.column_stack([cols[f"flux_{b}"] for b in post.bands])
    err = np.column_stack([cols[f"flux_err_{b}"] for b in post.bands])
    widths = {}
    for label, model in (("model", post), ("baseline", baseline)):
        draws = model.sample(model.inputs.observables(flux, err, cols["z"]), n_samples, seed=seed)
        widths[label] = np.median(np.std(draws[..., :len(PARAM_NAMES)], axis=1), axis=0)
    return {"n": n, "z_max": z_max, "redshift_inferred": post.infers_redshift and not baseline.infers_redshift,
            "median_std": {k: dict(zip(PARAM_NAMES, v.tolist())) for k, v in widths.items()},
            "ratio": dict(zip(PARAM_NAMES, (widths["model"] / widths["baseline"]).tolist()))}


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
    chi2, _ = best_fit(sed, theta[:, :min(n_samples, 200)], flux, err,
                       None if post.infers_redshift else frame["z"].to_numpy(dtype=float)[good])
    return {"catalog": str(catalog), "rows": int(len(frame)),
            "flagged_fraction": {f: float(np.mean(flags[f] != 0)) for f in COUNTED if f in flags},
            "any_ood_fraction": float(np.mean(flags["flag_sigma_ood"] | flags["flag_color_ood"]
                                              | flags["flag_posterior_ood"])),
            "best_fit_chi2_percentiles_16_50_84": np.percentile(chi2, [16, 50, 84]).tolist(),
            "n_bands": len(post.bands), "best_fit_chi2_p95_n_bands_dof": _chi2_p95(len(post.bands))}, chi2


def photoz_real_data(post, specz, catalog, spec, n_samples: int = 1000, seed: int = 0, out=None,
                     specz_name: str = "sdss", max_rows: int | None = None) -> dict:
    """A photo-z model on real galaxies with spectroscopic redshifts (the catalog's z, never an input):
    `sedflow.diagnostics.photoz_metrics` on the rows it sampled whose z_spec lies in its redshift
    range (and on those of them without an OOD flag), and log M*_surv from it against the spec-z
    model ``specz`` on the same rows (offset, NMAD and std of the difference). Both through
    `sedflow.infer.infer_frame`, as ``sedflow infer`` runs them. A model with a population prior
    (`sedflow.population`) is measured with it, on the rows its fit did not use when it was fitted
    to this catalog, and the same rows with its training prior go under ``training_prior``.
    ``out``: also ``photoz_{name}.png``; ``max_rows``: the catalog's first rows only."""
    from sedflow.catalog import CatalogSpec, read_catalog
    from sedflow.diagnostics import nmad, photoz_metrics, plot_photoz
    from sedflow.infer import check_filters, infer_frame

    spec = CatalogSpec.load(spec)
    for model in (post, specz):
        check_filters(model, spec.bands, spec.filters, f"the description {spec.name!r}")
    frame, _ = read_catalog(catalog, spec, max_rows=max_rows)
    pop = post.population_prior
    held_out = ~pop.fitted_rows(len(frame), spec.name) if pop is not None else np.ones(len(frame), bool)
    frame = frame[held_out].reset_index(drop=True)
    sz = infer_frame(frame, specz, specz.sed_model(), n_samples=n_samples, seed=seed).to_pandas()
    z_spec = frame["z"].to_numpy(dtype=float)
    lo, hi = post.prior.z_range

    def measure(population_prior: bool):
        """-> (metrics, photo-z table, z draws of the valid rows when a figure is wanted, valid rows)"""
        table, draws = infer_frame(frame, post, post.sed_model(), n_samples=n_samples, keep_samples=n_samples,
                                   seed=seed, return_draws=True, population_prior=population_prior)
        pz = table.to_pandas()
        with np.errstate(invalid="ignore"):
            valid = (pz["method"] == "anpe").to_numpy() & np.isfinite(z_spec) & (z_spec > lo) & (z_spec <= hi)
        ood = (pz["flag_sigma_ood"] | pz["flag_color_ood"] | pz["flag_posterior_ood"]).to_numpy()
        z_draws = draws[:, :, post.names.index("z")].astype(float)
        both = valid & (sz["method"] == "anpe").to_numpy()
        dm = (pz["logmstar_surv_p50"] - sz["logmstar_surv_p50"]).to_numpy()[both]
        res = {"valid_rows": int(valid.sum()),
               "all": photoz_metrics(z_draws[valid], z_spec[valid]),
               "no_ood_flag": photoz_metrics(z_draws[valid & ~ood], z_spec[valid & ~ood]) if (valid & ~ood).any() else None,
               "logmstar_surv_photoz_minus_specz": {
                   "n": int(both.sum()), "median": float(np.median(dm)), "nmad": nmad(dm), "std": float(np.std(dm))}}
        if population_prior and pop is not None:
            ess = pz["population_ess"].to_numpy()[valid]
            res["population_ess"] = {"median": float(np.median(ess)), "p5": float(np.percentile(ess, 5)),
                                     "low_ess_fraction": float(pz["flag_low_ess"].to_numpy()[valid].mean())}
        return res, pz, z_draws[valid] if out is not None else None, valid

    main, pz, zd, valid = measure(True)
    result = {"catalog": Path(catalog).name, "spec": spec.name, "rows": int(held_out.size),
              "held_out_rows": int(held_out.sum()), "z_range": [lo, hi], "n_samples": n_samples,
              "specz_model": str(specz_name), "prior": "population" if pop is not None else "training", **main}
    if pop is not None:
        result["population_prior_fitted_on"] = pop.fitted_on
        result["training_prior"] = measure(False)[0]
    if out is not None:
        pit = np.mean(zd < z_spec[valid, None], axis=1)
        plot_photoz(pz["z_p50"].to_numpy()[valid], z_spec[valid], pit, Path(out) / f"photoz_{spec.name}.png",
                    title=f"{spec.name}: {int(valid.sum())} galaxies ({result['prior']} prior)")
        result["figure"] = f"photoz_{spec.name}.png"
    return result


def _photoz_catalogs() -> list[tuple]:
    """(catalog, description) pairs with spectroscopic redshifts for a photo-z model of SDSS ugriz:
    the kcorrect sample (in the kcorrect wheel) and the NSA rows beside the repository, when there."""
    from sedflow.catalog import kcorrect_sample_path

    out = [(kcorrect_sample_path(), "sdss_kcorrect")]
    return out + ([(NSA_BESIDE_REPO, "nsa")] if NSA_BESIDE_REPO.exists() else [])


def _chi2_p95(dof: int) -> float:
    """95th percentile of chi^2 with ``dof`` degrees of freedom (one per band: the reference for a
    best-fit chi^2, which the fit's free parameters only lower)."""
    from scipy.stats import chi2

    return float(chi2.ppf(0.95, dof))


def validate(out_dir, model_path=None, n_test: int = 1000, n_samples: int = 10000, n_mcmc: int = 50,
             catalog=None, catalog_spec: str = "nsa", seed: int = 20260101, reference: str = "importance",
             mcmc_options: dict | None = None, address: str | None = None, mcmc_dir=None, baseline=None,
             specz_model="sdss", photoz_samples: int = 1000, precision: str = "auto", repeat_sets: int = 0,
             likelihood: str = "catalog") -> dict:
    """Write the validation report to ``out_dir``; returns the metrics dict. ``reference``: the
    sampler ANPE is compared with (`REFERENCES`), ``mcmc_options`` its keyword arguments
    (`sedflow.nested.run_nested`, `sedflow.importance.run_importance` or `sedflow.mcmc.run_mcmc`).
    The reference runs go to the Ray cluster at ``address`` (default: a local Ray on this machine's
    CPUs); their chains are kept in ``mcmc_dir`` (default ``out_dir/mcmc``) and reused by any later
    report on the same galaxies and settings, whatever the flow (importance sampling: the same flow,
    whose draws its proposal is fitted to). The held-out galaxies are a function of ``n_test``
    (`simulate_rows` sizes its batches by it), ``seed`` and the model's simulation settings, so
    a report with another ``n_test`` draws other galaxies (new redshifts and noise; some parameter
    vectors repeat, 1,094 of 3,000 between n_test 3,000 and 6,500) and runs new chains. ``baseline`` (a
    model name or directory) adds `width_comparison` against it. For a photo-z model the
    calibration includes z, the reference samples z too, and `photoz_real_data` runs on the SDSS
    catalogs with spectroscopic redshifts (`_photoz_catalogs`, when the model has their filters) with
    ``photoz_samples`` draws per galaxy, the masses compared with ``specz_model``'s. ``precision``: the
    flows' sampling arithmetic (`PosteriorModel.precision`), recorded in the report. ``repeat_sets``:
    `repeated_calibration` on that many more held-out sets of ``n_test`` (2,000 draws each).
    ``likelihood``: the reference's, ``"catalog"`` (Eq. 1, sigma = the reported error) or ``"simulator"``
    (that of the training simulations, `reference_sky_flux`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if likelihood not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood {likelihood!r}; choose from {LIKELIHOODS}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    post = load_model(model_path, precision)
    if likelihood == "simulator" and n_mcmc > 0:
        reference_sky_flux(post.config)          # refused now, not after the calibration
    sed = post.sed_model()                   # the physics the model was trained on
    metrics = {"model": str(model_path or "shipped"), "architecture": post.config["architecture"],
               "precision": post.precision, "n_test": n_test, "n_samples": n_samples, "seed": seed, "thresholds": THRESHOLDS}

    sims = held_out_simulations(post, sed, n_test, seed)
    t0 = time.perf_counter()
    samples = post.sample(sims["x"], n_samples, seed=seed)
    metrics["anpe_sampling_seconds"] = time.perf_counter() - t0
    names = post.names                       # with z for a photo-z model
    cal = _calibration(samples, sims["theta"], names)
    cal["truths"] = truth_draw(post, sed, sims["theta"], samples, seed)
    cal["derived"] = _calibration(derived_properties(sed, samples, sims["z"][:, None], post.infers_redshift),
                                  derived_properties(sed, sims["theta"], sims["z"], post.infers_redshift), PROPERTY_NAMES)
    # the galaxies real catalogs are hardest on, when the model was trained on them
    subsets = {"non_detection": np.any(sims["flux"] <= 0, axis=1),
               "missing_band": np.any(~np.isfinite(sims["flux"]), axis=1)}
    subsets = {name: rows for name, rows in subsets.items() if rows.sum() >= MIN_SUBSET}
    cal["subsets"] = {name: {"n": int(rows.sum()), **_calibration(samples[rows], sims["theta"][rows], names)}
                      for name, rows in subsets.items()}
    cal["calibrated_pass_rates"] = calibrated_pass_rates(
        samples, {"all": np.ones(n_test, bool), **subsets}, min(NULL_REPLICATES, n_samples))
    metrics["calibration"] = cal
    plot_pp(samples, sims["theta"], list(names), out / "pp.png")
    plot_rank_histograms(sbc_ranks(samples, sims["theta"]), n_samples, list(names), out / "sbc_ranks.png")
    plot_tarp(tarp(samples, sims["theta"], seed=seed), out / "tarp.png")
    if repeat_sets > 0:
        metrics["calibration_repeated"] = repeated_calibration(post, sed, n_test, repeat_sets, min(n_samples, 2000), seed)
    if post.population_prior is not None:
        metrics["calibration_population_prior"] = _population_calibration(post, sed, n_test, n_samples, seed, out)

    if n_mcmc > 0:
        mc = _mcmc_comparison(post, sed, sims, n_mcmc, n_samples, seed, reference, mcmc_options, out,
                              Path(mcmc_dir) if mcmc_dir else out / "mcmc", address, likelihood)
        mc["passes"] = all(v < THRESHOLDS["mcmc_median_offset_max"] for v in mc["median_abs_offset_over_sigma"].values())
        metrics["mcmc"] = mc

    if catalog is None:           # the NSA rows beside the repository, for a model of NSA's filters
        from sedflow.catalog import CatalogSpec

        nsa_filters = CatalogSpec.load(catalog_spec).filters == post.filters
        catalog = NSA_BESIDE_REPO if NSA_BESIDE_REPO.exists() and nsa_filters else None
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

    if post.infers_redshift:
        from sedflow.catalog import CatalogSpec

        specz = load_model(specz_model, precision)
        metrics["photoz_real_data"] = [photoz_real_data(post, specz, cat, spec, photoz_samples, seed, out,
                                                        specz_name=str(specz_model))
                                       for cat, spec in _photoz_catalogs()
                                       if CatalogSpec.load(spec).filters == post.filters]

    if baseline is not None:
        metrics["width_comparison"] = {"baseline": str(baseline),
                                       **width_comparison(post, load_model(baseline, precision), seed=seed)}

    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    (out / "report.md").write_text(_report_md(metrics))
    return metrics


def _lowest_per_set(sets: list) -> str:
    """`repeated_calibration`'s sets as "0.123 beta3 [0.456]" (lowest SBC KS p, its parameter, the truths
    KS p of that parameter; reports made before the truths test have none)."""
    return ", ".join(f"{s['lowest_ks_pvalue']:.3f} {s['lowest_parameter']}"
                     + (f" [{s['truths_ks_pvalue']:.3f}]" if "truths_ks_pvalue" in s else "") for s in sets)


def _calibration_table(parameters: dict, truths: dict | None = None) -> list[str]:
    """Markdown rows of a calibration report's per-parameter numbers (with `truth_draw`'s, if given)."""
    head, rows = "| parameter | SBC KS p | max p-p dev | coverage 68% | coverage 95% | variance ratio (<= 1) |", []
    for name, p in parameters.items():
        rows.append(f"| {name} | {p['sbc_ks_pvalue']:.3f} | {p['max_pp_deviation']:.3f} | {p['coverage_68']:.3f} | "
                    f"{p['coverage_95']:.3f} | {p['variance_ratio']:.3f} +- {p['variance_ratio_se']:.3f} |")
        if truths:
            t = truths["parameters"][name]
            rows[-1] += f" {t['truths_ks_pvalue']:.3f} | {t['width_over_prior']:.2f} |"
    if truths:
        head += " truths KS p | width / prior |"
    return [head, "|" + "---|" * (head.count("|") - 1)] + rows


def _report_md(m: dict) -> str:
    cal = m["calibration"]
    lines = ["# sedflow validation report", "",
             f"Model: `{m['model']}` ({m['architecture']['name']}, {m['architecture'].get('parameters', '?')} "
             f"parameters, sampled in {m.get('precision', 'float32')}). {m['n_test']} held-out simulations x "
             f"{m['n_samples']} draws, seed {m['seed']}.", "",
             "## Calibration", "",
             f"SBC (every KS p > {m['thresholds']['sbc_ks_pvalue_min']}): **{'pass' if cal['passes']['sbc'] else 'FAIL'}**; "
             f"p-p (max deviation < {m['thresholds']['max_pp_deviation_max']}): **{'pass' if cal['passes']['pp'] else 'FAIL'}**; "
             f"TARP ATC {cal['tarp_atc']:+.3f} (KS p {cal['tarp_ks_pvalue']:.2f}).", "",
             *_calibration_table(cal["parameters"], cal.get("truths")), ""]
    if "truths" in cal:
        lines += [f"Truths KS p: this set's own true parameters against {cal['truths']['n_reference']} more drawn the "
                  "same way (`sedflow.validate.truth_draw`); width / prior: median posterior std over the prior's. "
                  "Where the width ratio is near 1 a rank is nearly the truth's prior quantile, so an unusual "
                  "draw of truths fails that parameter's SBC test for any posterior, the exact one included.", ""]
    for name, sub in cal.get("subsets", {}).items():
        worst = min(p["sbc_ks_pvalue"] for p in sub["parameters"].values())
        dev = max(p["max_pp_deviation"] for p in sub["parameters"].values())
        lines.append(f"- {name.replace('_', ' ')} ({sub['n']} simulations): SBC "
                     f"**{'pass' if sub['passes']['sbc'] else 'FAIL'}** (lowest KS p {worst:.3f}), p-p "
                     f"**{'pass' if sub['passes']['pp'] else 'FAIL'}** (largest deviation {dev:.3f})")
    if "calibrated_pass_rates" in cal:
        null = cal["calibrated_pass_rates"]
        lines += ["", "How often a calibrated posterior passes these tests on these galaxies (each galaxy's own draws "
                  f"as its truth, {null['n_replicates']} times; `sedflow.validate.calibrated_pass_rates`): "
                  + "; ".join(f"{name.replace('_', ' ')}: SBC {v['sbc']:.0%}, p-p {v['pp']:.0%}" for name, v in null["sets"].items())
                  + f"; every test at once {null['every']:.0%}."]
    lines += ["", "![p-p](pp.png) ![ranks](sbc_ranks.png) ![tarp](tarp.png)", ""]
    if "derived" in cal:
        d = cal["derived"]
        lines += ["### Derived properties", "",
                  "What `sedflow infer` reports besides the parameters (`SEDModel.properties` of each draw and of the "
                  f"truth): SBC **{'pass' if d['passes']['sbc'] else 'FAIL'}**, p-p "
                  f"**{'pass' if d['passes']['pp'] else 'FAIL'}**.", "", *_calibration_table(d["parameters"]), ""]
    if "calibration_repeated" in m:
        rc = m["calibration_repeated"]
        pooled = rc["pooled"]["parameters"]
        lines += ["## Calibration on more held-out sets", "",
                  f"The SBC test on {rc['n_sets']} more independent sets of {rc['n_per_set']} held-out simulations "
                  f"({rc['n_samples']} draws each): **{rc['sets_passing']} of {rc['n_sets']} pass** (lowest KS p per set, "
                  "and in brackets the truths KS p of that set's truths of it: " + _lowest_per_set(rc["sets"])
                  + f"). A calibrated model fails a set now and then; pooled over the {rc['pooled']['n']} galaxies a "
                  "bias too small for one set shows as a low KS p and a mean rank away from 0.5.", "",
                  "| parameter | pooled SBC KS p | pooled mean rank |", "|---|---|---|"]
        lines += [f"| {name} | {v['ks_pvalue']:.4f} | {v['mean_rank']:.4f} |" for name, v in pooled.items()]
        lines += [""]
        if "derived" in rc:
            dr = rc["derived"]
            lines += [f"Derived properties on the same sets: **{dr['sets_passing']} of {rc['n_sets']} pass** (lowest KS p "
                      "per set [truths KS p]: " + _lowest_per_set(dr["sets"]) + ").", "",
                      "| derived property | pooled SBC KS p | pooled mean rank |", "|---|---|---|"]
            lines += [f"| {name} | {v['ks_pvalue']:.4f} | {v['mean_rank']:.4f} |"
                      for name, v in dr["pooled"]["parameters"].items()]
            lines += [""]
    if "calibration_population_prior" in m:
        pc = m["calibration_population_prior"]
        lines += ["## Calibration with the population prior", "",
                  f"{pc['n']} simulations drawn from the model's population prior (`population_prior.json`), "
                  f"each galaxy's flow draws importance-resampled to it as `sedflow infer` does (effective "
                  f"sample size median {pc['population_ess']['median']:.0f}, 5th percentile "
                  f"{pc['population_ess']['p5']:.0f}). SBC **{'pass' if pc['passes']['sbc'] else 'FAIL'}**, "
                  f"p-p **{'pass' if pc['passes']['pp'] else 'FAIL'}**.", "",
                  *_calibration_table(pc["parameters"]), "", "![p-p population prior](pp_population_prior.png)", ""]
    if "mcmc" in m:
        mc = m["mcmc"]
        noise = ("the standard error of its medians from its effective sample size" if mc["reference"] in WEIGHTED_REFERENCES
                 else "the same offset between the two halves (in iterations) of each kept chain; with independent "
                      "halves the full chain's median scatters by about half of it")
        likelihood = {"catalog": "the catalog likelihood (Eq. 1: sigma = the reported error)",
                      "simulator": "the simulations' likelihood (sigma follows the model flux, as the training "
                                   "simulations drew it)"}[mc.get("likelihood", "catalog")]
        lines += [f"## ANPE vs {mc['reference']}", "",
                  f"{mc['n']} galaxies, {mc['n_hard']} of them with a non-detection or a missing band; the reference "
                  f"samples {likelihood} "
                  f"({mc['converged']} reference runs converged"
                  + (f", smallest effective sample size {mc['min_n_eff']:.0f}" if "min_n_eff" in mc else "")
                  + f"; settings {mc['options']}); ANPE "
                  f"{mc['anpe_seconds_per_galaxy']:.3f} s vs {mc['reference']} "
                  f"{mc['reference_seconds_per_galaxy']:.1f} s "
                  f"per galaxy. Median |d median| / sigma < {m['thresholds']['mcmc_median_offset_max']}: "
                  f"**{'pass' if mc['passes'] else 'FAIL'}**.", "",
                  f"The last column is the reference's own noise: {noise}; offsets near it cannot be told from "
                  "the reference's noise.", "",
                  "| parameter | median abs offset / sigma | same, hard galaxies | median width ratio | "
                  "reference noise / sigma |", "|---|---|---|---|---|"]
        hard = mc.get("median_abs_offset_over_sigma_hard") or {}
        for name in mc["median_abs_offset_over_sigma"]:
            lines.append(f"| {name} | {mc['median_abs_offset_over_sigma'][name]:.3f} | "
                         + (f"{hard[name]:.3f}" if name in hard else "-")
                         + f" | {mc['median_width_ratio'][name]:.2f} | "
                         f"{mc['median_reference_noise_over_sigma'][name]:.3f} |")
        lines += ["", "![overlay](anpe_vs_mcmc.png)", ""]
    if "width_comparison" in m:
        w = m["width_comparison"]
        price = ("the price of not knowing the redshift (this model infers it; the baseline is given it)"
                 if w.get("redshift_inferred") else
                 "the price of training on a broader set of errors, bands and redshifts (Hahn & Melchior 2022, "
                 "Appendix A)")
        lines += ["## Posterior widths against a baseline model", "",
                  f"Median posterior std on {w['n']} typical galaxies (the baseline's noise model, no envelope, every "
                  f"band detected, z <= {w['z_max']}), this model over `{w['baseline']}`: {price}.", "",
                  "| parameter | this model | baseline | ratio |", "|---|---|---|---|"]
        lines += [f"| {k} | {w['median_std']['model'][k]:.4g} | {w['median_std']['baseline'][k]:.4g} | {r:.2f} |"
                  for k, r in w["ratio"].items()]
        lines += [""]
    for r in m.get("photoz_real_data", []):
        held = (f"{r['held_out_rows']} of {r['rows']} rows held out of the population prior's fit"
                if r.get("held_out_rows", r["rows"]) < r["rows"] else f"{r['rows']} rows")
        lines += [f"## Photometric redshifts: {r['spec']}", "",
                  f"`{r['catalog']}`: {held}; {r['valid_rows']} of them sampled with a spectroscopic z in "
                  f"({r['z_range'][0]:g}, {r['z_range'][1]:g}]; z_phot = posterior median of {r['n_samples']} draws, "
                  f"dz = (z_phot - z_spec) / (1 + z_spec).", "",
                  "| prior | rows | n | sigma_NMAD | bias (median dz) | outliers (abs dz > 0.15) | PIT KS p | "
                  "PIT < 0.01 or > 0.99 | log M* photo-z - spec-z: median, NMAD |", "|---|---|---|---|---|---|---|---|---|"]
        for prior, res in ((r.get("prior", "training"), r), ("training", r.get("training_prior"))):
            if not res:
                continue
            dm = res["logmstar_surv_photoz_minus_specz"]
            for label, x in (("all", res["all"]), ("no OOD flag", res["no_ood_flag"])):
                if x:
                    lines.append(f"| {prior} | {label} | {x['n']} | {x['sigma_nmad']:.4f} | {x['bias']:+.4f} | "
                                 f"{x['outlier_fraction']:.4f} | {x['pit_ks_pvalue']:.2g} | "
                                 f"{x['pit_below_0p01_or_above_0p99']:.3f} | "
                                 + (f"{dm['median']:+.3f}, {dm['nmad']:.3f} |" if label == "all" else "|"))
        if "population_ess" in r:
            e = r["population_ess"]
            lines += ["", f"Population-prior effective sample size: median {e['median']:.0f}, 5th percentile "
                      f"{e['p5']:.0f}; flag_low_ess on {e['low_ess_fraction']:.1%} of the rows."]
        lines += ["", f"log M*_surv is compared with the spec-z model `{r['specz_model']}` on the same rows (dex).", ""]
        if r.get("figure"):
            lines += [f"![photo-z]({r['figure']})", ""]
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
