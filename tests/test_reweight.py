"""Prior re-weighting (paper Sec. 6.2): resampled draws follow the new prior."""

import numpy as np
import pytest
from scipy import stats

from sedflow.reweight import effective_sample_size, importance_resample


def target_log_prob(theta):
    """The paper prior with log M* ~ N(10.5, 0.5) and tau_ISM ~ Exp(1), both truncated to the old box
    (a density over all parameters; the old uniform factors are constants)."""
    from sedflow import Prior

    return Prior().log_prob(theta) + stats.norm(10.5, 0.5).logpdf(theta[:, 0]) + stats.expon().logpdf(theta[:, 10])


def test_resample_reproduces_target_prior(prior):
    theta = prior.sample(60000, seed=0)
    idx, w, ess = importance_resample(theta, target_log_prob, prior, n=3000, seed=1)
    assert 0.15 * len(theta) < ess < 0.3 * len(theta)   # ~0.32 x ~0.67 of the draws
    resampled = theta[idx]
    # direct draws from the target (truncated to the old prior's box)
    rng = np.random.default_rng(2)
    logm = stats.truncnorm((7 - 10.5) / 0.5, (12.5 - 10.5) / 0.5, loc=10.5, scale=0.5).rvs(3000, random_state=rng)
    tau = stats.truncexpon(3.0).rvs(3000, random_state=rng)
    assert stats.ks_2samp(resampled[:, 0], logm).pvalue > 0.01
    assert stats.ks_2samp(resampled[:, 10], tau).pvalue > 0.01
    # parameters the new prior leaves alone keep their old marginal
    assert stats.ks_2samp(resampled[:, 9], rng.uniform(0, 3, 3000)).pvalue > 0.01
    # and the re-weighting is not a no-op: the old prior fails the same test
    assert stats.ks_2samp(theta[:3000, 0], logm).pvalue < 1e-6


def test_ess_and_errors(prior):
    assert effective_sample_size(np.ones(10)) == pytest.approx(10)
    assert effective_sample_size([1, 0, 0]) == pytest.approx(1)
    theta = prior.sample(100, seed=0)
    with pytest.raises(ValueError, match="outside"):
        importance_resample(theta, lambda t: np.full(len(t), -np.inf), prior)
    bad = theta.copy()
    bad[0, 0] = 20
    with pytest.raises(ValueError, match="outside the prior"):
        importance_resample(bad, target_log_prob, prior)
    with pytest.raises(ValueError, match="shape"):
        importance_resample(theta, lambda t: np.zeros(3), prior)
