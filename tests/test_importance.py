"""`sedflow.importance`: the defensive importance sampler is exact where its answer is known (a
flat likelihood gives the prior whatever the proposal; any proposal gives the same posterior and
evidence; posteriors of simulated galaxies are calibrated, and narrower than the prior)."""

import numpy as np
import pytest
from scipy import stats

from sedflow.importance import fit_proposal, run_importance
from sedflow.prior import PARAM_NAMES, Prior
from sedflow.sps.model import SEDModel


@pytest.fixture(scope="module")
def model():
    return SEDModel.default()


@pytest.fixture(scope="module")
def galaxy(model):
    """A noisy galaxy (30% errors: a broad posterior, cheap to sample)."""
    theta = Prior().sample(1, seed=3)
    theta[0, 0] = 10.5
    flux = model.photometry(theta, 0.1)[0]
    return flux, 0.3 * flux


def test_flat_likelihood_gives_the_prior_whatever_the_proposal(model):
    """With errors 10^9 times the flux every likelihood is equal: the weights must undo the
    proposal exactly, here a narrow t far from the prior's centre, and return the prior."""
    flux = model.photometry(Prior().sample(1, seed=4), 0.1)[0]
    off = {"mean": [2.0] * 11, "cov": (0.3 * np.eye(11)).tolist(), "df": 5.0}
    for proposal in (None, off):
        res = run_importance(flux, 1e9 * flux, 0.1, model=model, proposal=proposal, n_eff=3000, batch=20_000,
                             n_samples=5000, seed=0)
        assert res.converged and abs(res.log_evidence) < 1e-3        # L = 1 (to ~1e-4): Z = 1
        ref = Prior().sample(5000, seed=5)
        for k, name in enumerate(PARAM_NAMES):
            assert stats.ks_2samp(res.samples[:, k], ref[:, k]).pvalue > 1e-3, (name, proposal is None)
    assert res.n_eff < 0.5 * res.n_evaluations             # the poor proposal costs draws, not accuracy


def test_any_proposal_gives_the_same_posterior(model, galaxy):
    """The prior alone, a proposal fitted to the posterior and one fitted to a wrong (shifted,
    too narrow) pilot give the same medians within their effective-sample-size noise; the fitted
    one needs far fewer likelihood calls."""
    flux, err = galaxy
    plain = run_importance(flux, err, 0.1, model=model, n_eff=2000, batch=50_000, seed=1)
    good = fit_proposal(Prior(), plain.samples)
    u = np.array(good["mean"])
    bad = {"mean": (u + 1.0).tolist(), "cov": (0.2 * np.array(good["cov"])).tolist(), "df": 5.0}
    sd = plain.samples.std(0)
    for proposal, seed in ((good, 2), (bad, 3)):
        res = run_importance(flux, err, 0.1, model=model, proposal=proposal, n_eff=2000, batch=50_000, seed=seed)
        assert res.converged
        se = np.sqrt(np.pi / 2) * np.sqrt(1 / plain.n_eff + 1 / res.n_eff)     # of a difference of medians
        assert np.all(np.abs(np.median(res.samples, 0) - np.median(plain.samples, 0)) / sd < 5 * se)
        np.testing.assert_allclose(res.log_evidence, plain.log_evidence, atol=0.1)
    assert run_importance(flux, err, 0.1, model=model, proposal=good, n_eff=2000, batch=10_000,
                          seed=4).n_evaluations < 0.5 * plain.n_evaluations


def test_fit_proposal_describes_the_draws():
    prior = Prior()
    draws = prior.sample(4000, seed=6)
    draws[:, 0] = np.random.default_rng(7).normal(10.0, 0.05, 4000)
    prop = fit_proposal(prior, draws, scale=1.0)
    u0 = np.log((10.0 - 7.0) / (12.5 - 10.0))                     # logit of logM* = 10 in [7, 12.5]
    assert abs(prop["mean"][0] - u0) < 0.01 and len(prop["cov"]) == 11
    assert np.sqrt(prop["cov"][0][0]) == pytest.approx(0.05 / 5.5 / (0.5454 * 0.4545), rel=0.05)
    with pytest.raises(ValueError, match="coordinates"):
        run_importance(np.ones(5), np.ones(5), 0.1, proposal={"mean": [0.0] * 3, "cov": np.eye(3).tolist(), "df": 5})


def test_posteriors_of_simulated_galaxies_are_calibrated(model):
    """Simulation-based calibration of the sampler itself (Talts et al. 2018): galaxies drawn from
    the prior and Eq. 1's noise; the rank of each true parameter among its posterior draws is
    uniform for an exact sampler (KS over 60 galaxies), and the posterior of logM* is much narrower
    than its prior (a sampler returning the prior would pass the rank test too)."""
    prior = Prior()
    theta = prior.sample(60, seed=8)
    flux = model.photometry(theta, 0.1)
    err = 0.5 * flux
    rng = np.random.default_rng(9)
    ranks, widths = [], []
    for t, f, e in zip(theta, flux, err):
        res = run_importance(f + e * rng.normal(size=len(f)), e, 0.1, model=model, n_eff=200, batch=10_000,
                             max_draws=200_000, n_samples=1000, seed=int(rng.integers(2**31)))
        ranks.append(np.mean(res.samples < t, axis=0))
        widths.append(res.samples[:, 0].std())
    ranks = np.array(ranks)
    for k, name in enumerate(PARAM_NAMES):
        assert stats.kstest(ranks[:, k], "uniform").pvalue > 1e-3, name
    assert np.median(widths) < 0.3 * (5.5 / np.sqrt(12))
