"""zeus MCMC posterior of one galaxy (sedflow.mcmc): recovery, diagnostics, determinism, inputs, CLI.

Runs are far shorter than the paper's (30 walkers x 10,000 iterations) to keep the suite fast, so
only loose recovery is asserted and short runs are expected to be flagged as not converged.
"""

import json
import logging
import random

import numpy as np
import pyarrow.parquet as pq
import pytest

from sedflow import PARAM_NAMES, Prior
from sedflow.mcmc import run_mcmc, split_rhat

Z = 0.1


@pytest.fixture(scope="module")
def galaxy(sed_model, prior):
    """A bright simulated galaxy: prior draw with logM* = 10.5, 2% flux errors, noise added."""
    theta = prior.sample(1, seed=7)
    theta[0, 0] = 10.5
    flux_true = sed_model.photometry(theta, Z)[0]
    flux_err = 0.02 * flux_true
    flux = flux_true + flux_err * np.random.default_rng(1).standard_normal(flux_true.size)
    return theta[0], flux, flux_err


@pytest.fixture(scope="module")
def recovery(sed_model, galaxy):
    _, flux, flux_err = galaxy
    return run_mcmc(flux, flux_err, Z, model=sed_model, n_walkers=24, n_steps=900, burn_in=450, seed=2)


def test_recovers_simulated_galaxy(recovery, galaxy, prior):
    truth = galaxy[0]
    r = recovery
    assert r.samples.shape == (24 * 450, 12)
    assert r.log_prob.shape == r.log_likelihood.shape == (24 * 450,)
    assert prior.in_support(r.samples).all()
    q = np.percentile(r.samples, [2.5, 16, 50, 84, 97.5], axis=0)
    assert q[0, 0] < truth[0] < q[4, 0], f"logM* {truth[0]} outside 95% interval {q[[0, 4], 0]}"
    for i in (0, PARAM_NAMES.index("tau_ism")):
        sigma = 0.5 * (q[3, i] - q[1, i])
        assert abs(q[2, i] - truth[i]) < 3 * sigma, (PARAM_NAMES[i], truth[i], q[:, i])
    # the best sample fits 5 bands with 11 free parameters
    assert 0 <= r.best_chi2 < 20
    assert r.best_chi2 >= -2 * r.log_likelihood.max() - 1e-9     # max posterior, not min chi2
    np.testing.assert_array_equal(r.best_theta, r.samples[np.argmax(r.log_prob)])


def test_diagnostics_reported(recovery):
    r = recovery
    for a in (r.autocorr_time, r.rhat, r.ess):
        assert a.shape == (12,) and np.all(np.isfinite(a)) and np.all(a > 0)
    assert r.n_evaluations > 24 * 900 and 0 < r.efficiency < 1
    assert r.seconds > 0 and np.isfinite(r.scale_factor)
    expected = (r.n_kept_steps > r.tau_factor * r.autocorr_time.max()) and (r.rhat.max() < r.rhat_max)
    assert r.converged == expected
    s = r.summary()
    json.dumps(s)
    assert set(s["parameters"]) == set(PARAM_NAMES)


def test_uninformative_data_return_the_prior(sed_model, prior):
    """Checks the target density in u space: with flux errors 1e7 nanomaggies the likelihood is
    flat, so the chain must sample the prior; under it expit(u) is U(0, 1) in every coordinate."""
    from scipy.special import expit

    r = run_mcmc(np.full(5, 10.0), np.full(5, 1e7), Z, model=sed_model, n_walkers=24, n_steps=300,
                 burn_in=100, seed=0, init_draws=0)
    s = expit(prior.to_unconstrained(r.samples))
    assert np.all(np.abs(s.mean(axis=0) - 0.5) < 0.08), s.mean(axis=0)
    q = np.percentile(s, [10, 90], axis=0)
    assert np.all(np.abs(q[0] - 0.1) < 0.08) and np.all(np.abs(q[1] - 0.9) < 0.08), q


def test_tiny_run_not_converged_deterministic_and_restores_global_state(sed_model, galaxy):
    _, flux, flux_err = galaxy
    np.random.seed(123)
    random.seed(456)
    np_state, py_state = np.random.get_state(), random.getstate()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level

    kw = dict(model=sed_model, n_walkers=24, n_steps=50, burn_in=10, seed=11)
    a = run_mcmc(flux, flux_err, Z, **kw)
    assert not a.converged
    assert np.all(np.isfinite(a.autocorr_time)) and np.all(np.isfinite(a.rhat))
    b = run_mcmc(flux, flux_err, Z, **kw)
    np.testing.assert_array_equal(a.samples, b.samples)
    np.testing.assert_array_equal(a.log_prob, b.log_prob)
    c = run_mcmc(flux, flux_err, Z, **{**kw, "seed": 12})
    assert not np.array_equal(a.samples, c.samples)

    # zeus draws from numpy's and Python's global RNGs and rewires the root logger: all restored
    after = np.random.get_state()
    assert after[0] == np_state[0] and np.array_equal(after[1], np_state[1]) and after[2:] == np_state[2:]
    assert random.getstate() == py_state
    assert root.handlers == handlers and root.level == level


def test_thinning_and_init_ball(sed_model, galaxy, prior):
    truth, flux, flux_err = galaxy
    r = run_mcmc(flux, flux_err, Z, model=sed_model, n_walkers=24, n_steps=30, burn_in=10, thin=4, seed=3,
                 init=truth, init_scale=1e-3)
    assert r.samples.shape == (24 * 5, 12)
    # walkers started in a tiny ball at the truth stay near it over 30 iterations
    assert np.abs(np.median(r.samples[:, 0]) - truth[0]) < 0.3
    start = prior.sample(24, seed=0)
    r2 = run_mcmc(flux, flux_err, Z, model=sed_model, n_walkers=24, n_steps=8, burn_in=2, seed=3, init=start)
    assert r2.samples.shape == (24 * 6, 12)


@pytest.mark.parametrize("change, match", [
    (dict(flux=np.ones(4)), "flux must have shape"),
    (dict(flux=np.array([1, np.nan, np.nan, np.nan, 5.0])), "need >= 3 bands"),      # 2 measured bands
    (dict(flux_err=np.array([1, 0, -1, np.inf, 1.0])), "need >= 3 bands"),
    (dict(z=0.0), "z must lie in"),
    (dict(z=5.0), "z must lie in"),
    (dict(z=float("nan")), "z must lie in"),
    (dict(n_walkers=23), "n_walkers must be even"),
    (dict(n_walkers=12), "n_walkers must be even"),
    (dict(n_steps=100, burn_in=100), "must exceed burn_in"),
    (dict(thin=0), "thin >= 1"),
    (dict(init=np.zeros(12)), "init lies outside the prior"),
    (dict(init=np.zeros(5)), "init must have shape"),
    (dict(rhat_max=1.0), "rhat_max > 1"),
])
def test_bad_inputs_raise(sed_model, change, match):
    kw = dict(flux=np.full(5, 10.0), flux_err=np.ones(5), z=Z, model=sed_model, n_walkers=24, n_steps=20,
              burn_in=5, seed=0)
    kw.update(change)
    with pytest.raises(ValueError, match=match):
        run_mcmc(**kw)


def test_missing_bands_and_non_detections_enter_the_likelihood_as_measured(sed_model, galaxy):
    """A NaN flux (or an error of 0 / inf) drops that band from the likelihood; a negative flux with
    an error is a measurement. The chain without a band equals a chain on the model of the other bands."""
    from sedflow.mcmc import log_likelihood

    truth, flux, flux_err = galaxy
    theta = Prior().sample(50, seed=8)
    full = log_likelihood(sed_model, theta, Z, flux, flux_err)
    missing_u = log_likelihood(sed_model, theta, Z, np.r_[0.0, flux[1:]], np.r_[np.inf, flux_err[1:]])
    model = sed_model.photometry(theta, Z)
    np.testing.assert_allclose(missing_u, full + 0.5 * ((model[:, 0] - flux[0]) / flux_err[0]) ** 2, rtol=1e-12)
    kw = dict(model=sed_model, n_walkers=24, n_steps=12, burn_in=4, seed=5)
    a = run_mcmc(np.r_[np.nan, flux[1:]], flux_err, Z, **kw)
    b = run_mcmc(np.r_[flux[0], flux[1:]], np.r_[0.0, flux_err[1:]], Z, **kw)
    np.testing.assert_array_equal(a.samples, b.samples)               # NaN flux and error 0: the same
    neg = run_mcmc(np.r_[-0.5 * flux_err[0], flux[1:]], flux_err, Z, **kw)
    assert np.isfinite(neg.best_chi2)


def test_simulator_flux_error_is_the_noise_the_simulation_drew():
    """Given a simulated galaxy's reported flux and error, `simulator_flux_error` at its noiseless flux
    recovers the sigma its noise was drawn with (`sedflow.simulate.observe`: noise model, envelope,
    sky-limited floor): the residuals over it are standard normal, those over the reported error
    are not (the reported error follows the noisy flux)."""
    from scipy import stats

    from sedflow.mcmc import simulator_flux_error
    from sedflow.noise import NoiseModel
    from sedflow.simulate import observe

    noise = NoiseModel.default()
    rng = np.random.default_rng(1)
    # from sky- to source-limited in every band
    flux_true = 10 ** rng.uniform(-1.5, 2.0, (20_000, 1)) * np.array([0.3, 1.0, 2.0, 2.5, 3.0])
    flux, err, _, _ = observe(flux_true, noise, np.random.default_rng(2), "observed", (0.5, 20.0), 3)
    resid = (flux - flux_true) / simulator_flux_error(flux_true, flux, err, noise.sky_limited_flux())
    assert abs(resid.mean()) < 0.02 and abs(resid.std() - 1) < 0.01
    assert stats.kstest(resid.ravel(), "norm").pvalue > 1e-3
    catalog = (flux - flux_true) / err
    assert stats.kstest(catalog.ravel(), "norm").pvalue < 1e-20 and catalog.std() > 1.05


def test_simulator_likelihood_drops_missing_bands_and_carries_its_normalisation(sed_model, galaxy):
    """With ``sky_flux`` the likelihood is a Gaussian whose sigma follows the model flux: a missing
    band (infinite error) drops out, and at sky_flux far above every flux (sigma fixed at the reported
    error) it is Eq. 1 minus the constant sum(log sigma)."""
    from sedflow.mcmc import log_likelihood, simulator_flux_error

    _, flux, flux_err = galaxy
    theta = Prior().sample(50, seed=8)
    sky = np.full(5, 1e9)
    np.testing.assert_allclose(log_likelihood(sed_model, theta, Z, flux, flux_err, sky),
                               log_likelihood(sed_model, theta, Z, flux, flux_err) - np.log(flux_err).sum(), rtol=1e-10)
    sky = 0.5 * flux
    model = sed_model.photometry(theta, Z)
    sigma = simulator_flux_error(model, flux, flux_err, sky)
    full = log_likelihood(sed_model, theta, Z, flux, flux_err, sky)
    np.testing.assert_allclose(full, -np.sum(0.5 * ((model - flux) / sigma) ** 2 + np.log(sigma), axis=1), rtol=1e-12)
    missing_u = log_likelihood(sed_model, theta, Z, np.r_[0.0, flux[1:]], np.r_[np.inf, flux_err[1:]], sky)
    np.testing.assert_allclose(missing_u, full + 0.5 * ((model[:, 0] - flux[0]) / sigma[:, 0]) ** 2
                               + np.log(sigma[:, 0]), rtol=1e-12)
    with pytest.raises(ValueError, match="sky_flux"):
        run_mcmc(flux, flux_err, Z, model=sed_model, n_walkers=24, n_steps=12, burn_in=4, sky_flux=[1.0, 2.0])


def test_split_rhat():
    rng = np.random.default_rng(0)
    iid = rng.standard_normal((2000, 20, 3))
    assert np.all(np.abs(split_rhat(iid) - 1) < 0.01)
    stuck = iid + np.arange(20)[None, :, None]          # walkers that never meet
    assert np.all(split_rhat(stuck) > 2)
    drifting = iid + np.linspace(0, 5, 2000)[:, None, None]   # trend within each chain: split catches it
    assert np.all(split_rhat(drifting) > 1.1)
    const = np.ones((100, 4, 1))
    assert split_rhat(const)[0] == 1.0


def _parser():
    from sedflow.cli import build_parser

    return build_parser()


def test_cli_writes_parquet(galaxy, tmp_path, capsys):
    """`sedflow mcmc` with the shipped model's SED model and prior; exit 0/1 by convergence, 2 on bad input."""
    from sedflow.cli import main

    _, flux, flux_err = galaxy
    out = tmp_path / "post" / "galaxy.parquet"
    argv = ["mcmc", "--flux", *map(str, flux), "--flux-err", *map(str, flux_err), "--z", str(Z),
            "--walkers", "24", "--steps", "40", "--burn-in", "10", "--seed", "4", "--out", str(out)]
    args = _parser().parse_args(argv)
    assert args.func(args) == 1                      # 40 iterations cannot pass the convergence test
    text = capsys.readouterr().out
    assert "converged: NO" in text and "logmstar" in text and "R-hat" in text
    table = pq.read_table(out)
    assert table.column_names == list(PARAM_NAMES) and table.num_rows == 24 * 30
    meta = json.loads(table.schema.metadata[b"sedflow.mcmc"])
    assert meta["converged"] is False and meta["n_walkers"] == 24 and len(meta["flux"]) == 5
    assert not [p for p in out.parent.iterdir() if p.name != out.name]      # no temp file left

    assert main(argv[:-2] + ["--z", "-1"]) == 2
    assert "z must lie in" in capsys.readouterr().err
    assert main(argv[:-2] + ["--flux", "1", "2", "3"]) == 2             # 3 fluxes for a 5-band model
    assert "5 bands" in capsys.readouterr().err
