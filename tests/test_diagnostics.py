"""Calibration diagnostics on a toy with an exact posterior, calibrated and broken.

Toy: theta ~ N(0, 1) in 3 dimensions, x = theta + N(0, s^2), exact posterior
N(x / (1 + s^2), s^2 / (1 + s^2)). 2000 simulations x 500 samples: over 100 seeds the
calibrated case never breaks the p-p (< 0.05) or coverage (+-0.04) thresholds (at 1000
simulations each did once); the SBC KS test at p > 0.01 on 3 parameters has its nominal
~3% false-alarm rate per seed, so the seed is fixed. The broken cases fail by > 10 sigma.
"""

import json

import numpy as np
import pytest
import torch

from sedflow import diagnostics as d
from sedflow.prior import PARAM_NAMES

N_SIMS, N_SAMPLES = 2000, 500
NOISE = np.array([0.3, 0.5, 1.0])


def toy(mode: str = "calibrated", n_sims: int = N_SIMS, n_samples: int = N_SAMPLES, seed: int = 0):
    rng = np.random.default_rng(seed)
    theta = rng.normal(size=(n_sims, 3))
    x = theta + NOISE * rng.normal(size=theta.shape)
    mu, sd = x / (1 + NOISE**2), np.sqrt(NOISE**2 / (1 + NOISE**2))
    if mode == "overconfident":
        sd = sd / 2
    elif mode == "underconfident":
        sd = sd * 2
    elif mode == "biased":
        mu = mu + 0.5 * sd
    samples = mu[:, None, :] + sd * rng.normal(size=(n_sims, n_samples, 3))
    return samples, theta


@pytest.fixture(scope="module")
def reports():
    out = {}
    for mode in ("calibrated", "overconfident", "underconfident", "biased"):
        samples, truths = toy(mode)
        out[mode] = d.calibration_report(samples, truths, names=["a", "b", "c"])
    return out


def _col(report, key):
    return np.array([p[key] for p in report["parameters"].values()])


def test_ranks_known_values_and_match_sbi():
    from sbi.diagnostics.sbc import _run_sbc

    samples = np.arange(4.0)[None, :, None] * np.ones((2, 1, 1))  # 0, 1, 2, 3
    assert d.sbc_ranks(samples, np.array([[2.5], [-1.0]])).tolist() == [[3], [0]]
    assert d.sbc_ranks(samples, np.array([[2.0], [9.0]])).tolist() == [[2], [4]]  # strictly below

    s, t = toy(n_sims=200, n_samples=100, seed=1)
    ranks = d.sbc_ranks(s, t)
    assert ranks.dtype == np.int64 and ranks.shape == (200, 3)
    st, tt = torch.as_tensor(s), torch.as_tensor(t)
    sbi_ranks = _run_sbc(tt, tt, st.permute(1, 0, 2), "marginals", show_progress_bar=False)
    np.testing.assert_array_equal(ranks, sbi_ranks.numpy().astype(np.int64))
    np.testing.assert_array_equal(d.sbc_ranks(st, tt), ranks)  # torch in, same answer


def test_calibrated_posterior_passes(reports):
    r = reports["calibrated"]
    assert r["n_sims"] == N_SIMS and r["n_samples"] == N_SAMPLES
    assert (_col(r, "sbc_ks_pvalue") > 0.01).all()
    assert (_col(r, "sbc_chi2_pvalue") > 0.01).all()
    assert (_col(r, "max_pp_deviation") < 0.05).all()
    np.testing.assert_allclose(_col(r, "coverage_68"), 0.68, atol=0.04)
    np.testing.assert_allclose(_col(r, "coverage_95"), 0.95, atol=0.04)
    assert abs(r["tarp_atc"]) < 0.03 and r["tarp_ks_pvalue"] > 0.01


@pytest.mark.parametrize("mode", ["overconfident", "underconfident", "biased"])
def test_miscalibrated_posteriors_fail_sbc_and_pp(reports, mode):
    r = reports[mode]
    assert (_col(r, "sbc_ks_pvalue") < 1e-3).all()
    assert (_col(r, "sbc_chi2_pvalue") < 1e-3).all()
    assert (_col(r, "max_pp_deviation") > 0.05).all()


def test_coverage_of_broken_posteriors(reports):
    # expected: P(|Z| < 1/2) = 0.38, P(|Z| < 2) = 0.95, P(|Z - 1/2| < 1) = 0.62
    assert (_col(reports["overconfident"], "coverage_68") < 0.5).all()
    assert (_col(reports["underconfident"], "coverage_68") > 0.85).all()
    cov = _col(reports["biased"], "coverage_68")
    assert (cov < 0.68).all() and cov.mean() < 0.65


def test_tarp_sign_follows_dispersion(reports):
    assert reports["overconfident"]["tarp_atc"] < -0.04
    assert reports["underconfident"]["tarp_atc"] > 0.04
    # (TARP with random references does not see the 0.5-sigma bias; SBC does.)


def test_tarp_is_seeded_and_leaves_global_rng_alone():
    s, t = toy(n_sims=300, n_samples=200)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a, b = d.tarp(s, t, seed=5), d.tarp(torch.as_tensor(s), torch.as_tensor(t), seed=5)
    assert torch.equal(state, torch.get_rng_state())
    np.testing.assert_array_equal(a.ecp, b.ecp)
    assert a.atc == b.atc
    assert a.ecp[0] == 0 and a.ecp[-1] == pytest.approx(1) and (np.diff(a.ecp) >= 0).all()
    assert len(a.alpha) == len(a.ecp) == 300 // 10 + 1


def test_pp_curve_and_coverage_known_answers():
    # percentiles of the truths are exactly 0.1, 0.3, 0.5, 0.7, 0.9 (samples 0..9, truth k + 0.5)
    samples = np.broadcast_to(np.arange(10.0)[None, :, None], (5, 10, 1))
    truths = np.array([[0.5], [2.5], [4.5], [6.5], [8.5]])
    levels, cdf = d.pp_curve(samples, truths, levels=[0.0, 0.1, 0.2, 0.5, 1.0])
    np.testing.assert_allclose(cdf[:, 0], [0.0, 0.2, 0.2, 0.6, 1.0])
    np.testing.assert_allclose(d.max_pp_deviation(samples, truths, levels), [0.1])
    # central 68% interval of 0..9 is [q0.16, q0.84] = [1.44, 7.56]: covers 2.5, 4.5, 6.5
    np.testing.assert_allclose(d.coverage(samples, truths, levels=(0.68,)), [[0.6]])


def test_sbc_metrics_agree_with_sbi_ks():
    s, t = toy("overconfident", n_sims=500, n_samples=200)
    m = d.sbc_metrics(d.sbc_ranks(s, t), 200, n_bins=10)
    assert set(m) == {"ks_stat", "ks_pvalue", "ks_pvalue_sbi", "chi2_stat", "chi2_pvalue"}
    assert (m["ks_pvalue"] < 1e-6).all() and (m["ks_pvalue_sbi"] < 1e-6).all()
    with pytest.raises(ValueError):
        d.sbc_metrics(np.full((5, 1), 201), 200)


def test_variance_ratio_is_one_minus_r2_when_calibrated_and_above_one_when_too_wide(reports):
    """Law of total variance: the toy's exact posterior has mean variance s^2 / (1 + s^2) of the truths'
    unit variance; twice as wide is 4 s^2 / (1 + s^2), above 1 for s = 1 (the third parameter)."""
    exact = NOISE**2 / (1 + NOISE**2)
    r, se = _col(reports["calibrated"], "variance_ratio"), _col(reports["calibrated"], "variance_ratio_se")
    assert (se > 0).all() and (se < 0.05).all()
    assert (np.abs(r - exact) < 4 * se).all()
    wide = _col(reports["underconfident"], "variance_ratio")
    np.testing.assert_allclose(wide, 4 * exact, rtol=0.1)
    assert wide[2] - 4 * _col(reports["underconfident"], "variance_ratio_se")[2] > 1
    rng = np.random.default_rng(3)                       # no data: the posterior is the prior, ratio 1
    ratio, se = d.variance_ratio(rng.normal(size=(1000, 200, 2)), rng.normal(size=(1000, 2)))
    assert (np.abs(ratio - 1) < 4 * se).all()


def test_report_is_json_and_names_default_to_prior():
    rng = np.random.default_rng(2)
    truths = rng.normal(size=(150, 12))
    samples = rng.normal(size=(150, 100, 12))
    r = json.loads(json.dumps(d.calibration_report(samples, truths)))
    assert list(r["parameters"]) == list(PARAM_NAMES)
    assert set(r["parameters"]["logmstar"]) == {
        "sbc_ks_stat", "sbc_ks_pvalue", "sbc_chi2_pvalue", "max_pp_deviation", "coverage_68", "coverage_95",
        "variance_ratio", "variance_ratio_se",
    }
    assert {"tarp_atc", "tarp_ks_pvalue", "n_sims", "n_samples", "pp_deviation_95"} <= set(r)


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        d.sbc_ranks(np.zeros((10, 5, 3)), np.zeros((10, 2)))
    bad = np.zeros((10, 5, 3))
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError):
        d.coverage(bad, np.zeros((10, 3)))


def test_plots_are_written(tmp_path):
    s, t = toy("overconfident", n_sims=300, n_samples=100)
    names = ["a", "b", "c"]
    paths = [
        d.plot_pp(s, t, names, tmp_path / "pp.png"),
        d.plot_rank_histograms(d.sbc_ranks(s, t), 100, names, tmp_path / "sub" / "ranks.png"),
        d.plot_tarp(d.tarp(s, t), tmp_path / "tarp.pdf"),
    ]
    for p in paths:
        assert p.exists() and p.stat().st_size > 1000


def test_null_ranks_known_values():
    samples = np.array([3.0, 1.0, 2.0, 0.0, 1.0])[None, :, None]
    # draw k ranked among the other draws, strictly below (the tie 1.0 == 1.0 does not count)
    assert d.null_ranks(samples, 5)[:, 0, 0].tolist() == [4, 1, 3, 0, 1]
    with pytest.raises(ValueError):
        d.null_ranks(samples, 6)


def test_null_ranks_are_calibrated_whatever_the_posterior():
    """The null does not look at the truths: on the overconfident toy, whose real ranks fail
    every test, the null's KS p-values are uniform over replicates and its p-p deviations
    follow the Kolmogorov distribution (95th percentile 1.36 / sqrt(n_sims))."""
    s, t = toy("overconfident", n_sims=400, n_samples=300)
    assert (d.sbc_metrics(d.sbc_ranks(s, t), 300)["ks_pvalue"] < 1e-6).all()
    null = d.null_ranks(s, 200)
    assert null.shape == (200, 400, 3) and null.min() == 0 and null.max() <= 299
    p = np.array([d.sbc_metrics(r, 299, seed=k)["ks_pvalue"] for k, r in enumerate(null)])
    # 600 p-values, nearly independent: their fraction below 0.1 is 0.1 +- 0.012
    assert abs((p < 0.1).mean() - 0.1) < 0.045 and abs(np.median(p) - 0.5) < 0.1
    dev = np.array([d.max_pp_deviation_of_ranks(r, 299) for r in null])
    assert np.percentile(dev, 95) == pytest.approx(1.358 / np.sqrt(400), rel=0.2)
    # the p-p deviation from ranks is the one from samples
    np.testing.assert_array_equal(d.max_pp_deviation_of_ranks(d.sbc_ranks(s, t), 300), d.max_pp_deviation(s, t))
