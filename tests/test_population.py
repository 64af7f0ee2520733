"""Population priors (`sedflow.population`): the mixture density, importance resampling to it,
the hierarchical (deconvolving) fit, the artifact file, and inference with the shipped photo-z
model's population prior."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from scipy import stats
from astropy.table import Table

from sedflow.catalog import kcorrect_sample_path
from sedflow.posterior import ArtifactError, load_model, model_path
from sedflow.population import LOW_ESS, POPULATION_FILE, PopulationPrior, fit_to_catalog, resample_draws
from sedflow.prior import Prior


def two_component(d=3):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2, d, d))
    cov = a @ a.transpose(0, 2, 1) + 0.5 * np.eye(d)
    return PopulationPrior([0.3, 0.7], rng.normal(size=(2, d)), cov)


def test_mixture_density_matches_scipy_and_round_trips():
    pop = two_component()
    u = np.random.default_rng(1).normal(size=(500, 3)) * 2
    expected = np.log(0.3 * stats.multivariate_normal(pop.means[0], pop.covariances[0]).pdf(u)
                      + 0.7 * stats.multivariate_normal(pop.means[1], pop.covariances[1]).pdf(u))
    np.testing.assert_allclose(pop.log_prob_unconstrained(u), expected, rtol=1e-10)
    again = PopulationPrior.from_dict(json.loads(json.dumps(pop.to_dict())))
    np.testing.assert_allclose(again.log_prob_unconstrained(u), expected, rtol=1e-10)
    draws = pop.sample_unconstrained(200_000, seed=2)
    mean = 0.3 * pop.means[0] + 0.7 * pop.means[1]
    np.testing.assert_allclose(draws.mean(axis=0), mean, atol=0.02)
    with pytest.raises(ValueError, match="sum to one"):
        PopulationPrior([0.3, 0.3], pop.means, pop.covariances)
    with pytest.raises(ValueError, match="not a sedflow population prior"):
        PopulationPrior.from_dict({"kind": "flow"})


def test_resampling_turns_prior_draws_into_population_draws():
    """Draws from the training prior (an uninformative posterior) re-weighted by p_pop / p0 follow
    p_pop: the importance-sampling identity `sedflow.infer` relies on."""
    prior = Prior()
    pop = PopulationPrior([1.0], [np.linspace(-0.5, 0.5, 11)], [np.eye(11)])
    theta = prior.sample(400_000, seed=3)[None]
    out, ess = resample_draws(theta, pop, prior, 20_000, seed=4)
    u = prior.to_unconstrained(out[0])
    assert 5_000 < ess[0] < 400_000
    np.testing.assert_allclose(u.mean(axis=0), pop.means[0], atol=0.04)
    np.testing.assert_allclose(u.std(axis=0), 1.0, rtol=0.04)     # the prior's own std is pi / sqrt(3)
    # a draw outside the prior gets no weight; a galaxy with none inside keeps its draws, ESS 0
    bad = theta[:, :3].copy()
    bad[0, 0, 0] = 99.0                      # log M* outside U(7, 12.5)
    out, ess = resample_draws(np.concatenate([bad, np.full_like(bad, 99.0)]), pop, prior, 50, seed=5)
    assert not np.any(out[0, :, 0] == 99.0) and ess[1] == 0 and np.all(out[1] == 99.0)


def test_fit_deconvolves_the_posterior_widths():
    """Galaxies u_i ~ N(0, 1) in 2-d, observed with unit Gaussian noise; their posteriors under a flat
    prior are N(obs_i, 1). Pooled draws have variance 3; the population is N(0, 1), which the
    stochastic-EM rounds recover (the maximum-likelihood variance, var(obs) - 1)."""
    rng = np.random.default_rng(6)
    obs = rng.normal(size=(3000, 2)) + rng.normal(size=(3000, 2))
    draws = obs[:, None] + rng.normal(size=(3000, 300, 2))
    flat = lambda u: np.zeros(len(u))
    pooled = PopulationPrior.fit(draws, flat, n_components=1, iterations=0, per_galaxy=40, seed=0)
    deconv = PopulationPrior.fit(draws, flat, n_components=1, iterations=6, per_galaxy=40, seed=0)
    ml = np.var(obs, axis=0).mean() - 1.0
    assert np.diag(pooled.covariances[0]).mean() == pytest.approx(3.0, rel=0.08)
    assert np.diag(deconv.covariances[0]).mean() == pytest.approx(ml, abs=0.2)
    assert deconv.fitted_on["iterations"] == 6 and deconv.fitted_on["n_galaxies"] == 3000


def test_shipped_photoz_has_a_population_prior_held_out_rows_recorded():
    post = load_model("photoz")
    pop = post.population_prior
    assert pop is not None and pop.ndim == post.prior.ndim_unconstrained == 12
    assert pop.fitted_on["spec"] == "sdss_kcorrect" and pop.fitted_on["row_every"] == 2
    assert load_model("sdss").population_prior is None


def test_bad_population_file_is_an_artifact_error(tmp_path):
    for f in ("config.json", "weights.safetensors"):
        shutil.copy(model_path("photoz") / f, tmp_path / f)
    assert load_model(tmp_path).population_prior is None
    (tmp_path / POPULATION_FILE).write_text("{not json")
    with pytest.raises(ArtifactError, match="population prior"):
        load_model(tmp_path)
    (tmp_path / POPULATION_FILE).write_text(json.dumps(two_component(3).to_dict()))
    with pytest.raises(ArtifactError, match="3 dimensions"):
        load_model(tmp_path)
    other = load_model("photoz").population_prior.to_dict()       # fitted in the model's logit coordinates
    other["fitted_on"]["unconstrained"] = "probit"
    (tmp_path / POPULATION_FILE).write_text(json.dumps(other))
    with pytest.raises(ArtifactError, match="refit it"):
        load_model(tmp_path)


def test_inference_with_the_population_prior(tmp_path):
    """The first 200 kcorrect galaxies, redshifts withheld: with the population prior the rows are the
    same, z posteriors are narrower and population_ess / flag_low_ess are written; without it the
    output has neither."""
    import sedflow

    t = Table.read(kcorrect_sample_path())[:200]
    args = (t["MODELFLUX"], 1 / np.sqrt(t["MODELFLUX_IVAR"]), None)
    kw = dict(spec="sdss_kcorrect", extinction=t["EXTINCTION"], n_samples=500, keep_samples=0, model="photoz")
    pop = sedflow.fit(*args, **kw).summary
    flat = sedflow.fit(*args, **kw, population_prior=False).summary
    assert len(pop) == len(flat) == 200 and (pop["id"] == flat["id"]).all()
    assert "population_ess" not in flat and "flag_low_ess" not in flat
    ess = pop["population_ess"].to_numpy()
    assert np.all(ess > 0) and np.all(ess <= 1000)
    assert (pop["flag_low_ess"] == (ess < LOW_ESS)).all()
    ratio = np.median(pop["z_std"] / flat["z_std"])
    dz = lambda s: np.abs(s["z_p50"] - t["Z"]) / (1 + t["Z"])
    print(f"\n200 kcorrect galaxies: z std ratio population/training prior {ratio:.2f}, "
          f"median |dz| {np.median(dz(pop)):.4f} vs {np.median(dz(flat)):.4f}, ESS median {np.median(ess):.0f}")
    assert ratio < 0.8                        # measured on 5,000 held-out rows: 0.026 / 0.052
    assert np.median(dz(pop)) < 1.2 * np.median(dz(flat))


def test_fit_to_catalog_writes_the_file_and_validation_holds_its_rows_out(tmp_path, capsys):
    """`sedflow population-prior` writes the file `load_model` picks up; `photoz_real_data` then
    measures on the other rows only."""
    from sedflow.cli import main
    from sedflow.validate import photoz_real_data

    for f in ("config.json", "weights.safetensors"):
        shutil.copy(model_path("photoz") / f, tmp_path / f)
    assert main(["population-prior", str(tmp_path), "--catalog", str(kcorrect_sample_path()), "--spec",
                 "sdss_kcorrect", "--max-rows", "400", "--components", "2", "--draws", "50", "--row-every", "4",
                 "--row-offset", "1"]) == 0
    assert POPULATION_FILE in capsys.readouterr().out
    post = load_model(tmp_path)
    pop = post.population_prior
    assert pop.fitted_on["n_galaxies"] >= 95 and pop.fitted_on["row_every"] == 4 and len(pop.weights) == 2
    r = photoz_real_data(post, load_model("sdss"), kcorrect_sample_path(), "sdss_kcorrect", n_samples=100,
                         max_rows=400)
    assert r["held_out_rows"] == 300 and r["prior"] == "population" and "training_prior" in r
    assert r["all"]["n"] == r["valid_rows"] <= 300
    with pytest.raises(ValueError, match="spec-z model"):
        fit_to_catalog(tmp_path, kcorrect_sample_path(), "sdss_kcorrect", specz_model="photoz", max_rows=50)


def test_mcmc_fallback_draws_are_reweighted_too():
    """`--fallback mcmc` with a population prior: an out-of-distribution row is sampled by zeus with
    z free, and its chain, drawn under the training prior, is re-weighted like the flow's draws."""
    from sedflow.catalog import CatalogSpec, read_catalog
    from sedflow.infer import infer_frame, load_models

    post, sed = load_models("photoz")
    frame = read_catalog(kcorrect_sample_path(), CatalogSpec.load("sdss_kcorrect"), max_rows=3)[0]
    frame.loc[1, "flux_u"] *= 30.0            # u - g 3.7 mag bluer: outside every training colour
    t = infer_frame(frame, post, sed, n_samples=200, seed=0, property_samples=20, fallback="mcmc",
                    mcmc_options={"n_walkers": 26, "n_steps": 300, "burn_in": 100}).to_pandas()
    assert t["method"].tolist() == ["anpe", "mcmc", "anpe"] and t.loc[1, "flag_color_ood"]
    assert t["population_ess"].gt(0).all() and t["z_std"].gt(0).all()
    assert t.loc[1, "mcmc_converged"] in (True, False) and np.isfinite(t.loc[1, "logmstar_surv_p50"])


def test_a_population_prior_unlike_the_galaxies_flags_every_row(tmp_path):
    """A population prior far from every galaxy's posterior: each galaxy is drawn again with
    RETRY_OVERSAMPLE x the draws, still comes out below LOW_ESS, and is flagged, not dropped."""
    from sedflow.catalog import CatalogSpec, read_catalog
    from sedflow.infer import infer_frame
    from sedflow.sps.model import PROPERTY_NAMES

    for f in ("config.json", "weights.safetensors"):
        shutil.copy(model_path("photoz") / f, tmp_path / f)
    corner = PopulationPrior([1.0], [np.full(12, 4.0)], [0.01 * np.eye(12)])     # every parameter at its edge
    (tmp_path / POPULATION_FILE).write_text(json.dumps(corner.to_dict()))
    post = load_model(tmp_path)
    frame = read_catalog(kcorrect_sample_path(), CatalogSpec.load("sdss_kcorrect"), max_rows=6)[0]
    t = infer_frame(frame, post, post.sed_model(), n_samples=100, seed=0, property_samples=20,
                    chunk_draws=900).to_pandas()        # small blocks: the retry runs in several
    assert len(t) == 6 and (t["method"] == "anpe").all() and t["flag_low_ess"].all()
    assert (t["population_ess"] < LOW_ESS).all() and t[[f"{p}_p50" for p in PROPERTY_NAMES]].notna().all().all()
