"""Re-weight a training set drawn from one prior to follow another (Hahn & Melchior 2022, Sec. 6.2).

The likelihood p(x | theta) is the same for any prior, so simulations drawn from p_old can
be importance-weighted by w = p_new(theta) / p_old(theta) and resampled to follow p_new
without re-simulating. The effective sample size ESS = (sum w)^2 / sum w^2 says how many
independent draws the re-weighted set is worth; the new prior's support must lie inside
the old one's (rows where p_old = 0 cannot be re-weighted).

Example
-------
>>> from scipy import stats
>>> # a density over all 12 parameters: the paper prior with log M* ~ N(10.5, 0.5)
>>> narrow = lambda th: Prior().log_prob(th) + stats.norm(10.5, 0.5).logpdf(th[:, 0])
>>> idx, w, ess = importance_resample(theta, narrow, Prior(), seed=0)
"""

from __future__ import annotations

import numpy as np

from sedflow.prior import Prior

__all__ = ["importance_weights", "importance_resample", "effective_sample_size"]


def importance_weights(theta, new_log_prob, old_prior: Prior | None = None) -> np.ndarray:
    """Normalised weights p_new / p_old over the rows of theta (n, 12); they sum to one.

    ``new_log_prob(theta) -> (n,)`` is the new prior's log density over all 12 parameters
    (up to a constant), on the same 11 free coordinates as `Prior.log_prob`.
    """
    old_prior = old_prior or Prior()
    theta = old_prior.check(theta)
    log_old = old_prior.log_prob(theta)
    if not np.all(np.isfinite(log_old)):
        raise ValueError(f"{int((~np.isfinite(log_old)).sum())} rows lie outside the prior they were drawn from")
    log_new = np.asarray(new_log_prob(theta), dtype=float)
    if log_new.shape != (theta.shape[0],):
        raise ValueError(f"new_log_prob must return shape ({theta.shape[0]},), got {log_new.shape}")
    if np.any(np.isnan(log_new)):
        raise ValueError("new_log_prob returned NaN")
    log_w = log_new - log_old
    if not np.any(np.isfinite(log_w)):
        raise ValueError("the new prior gives zero density to every row: its support lies outside the old one")
    w = np.exp(log_w - np.max(log_w))
    return w / w.sum()


def effective_sample_size(weights) -> float:
    w = np.asarray(weights, dtype=float)
    return float(w.sum() ** 2 / np.sum(w**2))


def importance_resample(theta, new_log_prob, old_prior: Prior | None = None, n: int | None = None, seed=None):
    """Indices of a multinomial resample of theta following the new prior.

    Returns (indices (n,), normalised weights, ESS). ``n`` defaults to round(ESS), the number
    of rows the re-weighted set supports without heavy duplication.
    """
    w = importance_weights(theta, new_log_prob, old_prior)
    ess = effective_sample_size(w)
    n = int(round(ess)) if n is None else int(n)
    idx = np.random.default_rng(seed).choice(w.size, size=n, replace=True, p=w)
    return np.sort(idx), w, ess
