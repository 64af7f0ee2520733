"""Nested-sampling posterior of one galaxy with nautilus: the converged reference for validation.

zeus chains of the paper's length do not converge on SEDflow's posteriors (autocorrelation times
of 10^3-10^4 iterations on a thin curved ridge: `sedflow.mcmc`). Nested sampling does not mix
along the ridge; it shrinks the prior volume from the outside in. nautilus (Lange 2023,
arXiv:2306.16923) learns the likelihood contours with neural-network regressors, and stops when
the live set holds less than ``f_live`` of the evidence and the weighted posterior sample has an
effective size >= ``n_eff``. Those two are the convergence criterion reported (``converged``),
with the effective sample size and the evidence.

Same target as `sedflow.mcmc.run_mcmc` (Hahn & Melchior 2022, Eq. 1): the Gaussian likelihood in
flux of `sedflow.mcmc.log_likelihood` (with ``sky_flux``, the simulations' likelihood, whose sigma
follows the model flux), unmeasured bands dropped (`check_measurements`), times the
`Prior`, sampled in its unit cube (`Prior.from_unit_cube`: every box coordinate is uniform under
the prior). Returns equal-weight posterior draws in the physical 12-dim theta.

Example
-------
>>> from sedflow import Prior, SEDModel
>>> from sedflow.nested import run_nested
>>> model = SEDModel.default()
>>> theta = Prior().sample(1, seed=3); theta[0, 0] = 10.5
>>> flux = model.photometry(theta, 0.1)[0]
>>> res = run_nested(flux, 0.05 * flux, 0.1, model=model, n_live=500, n_eff=2000, seed=1)
>>> res.samples.shape[1], res.converged
(12, True)
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from sedflow.mcmc import (_blas_threads, check_measurements, check_prior, check_sky_flux, free_redshift_prior,
                           log_likelihood)
from sedflow.prior import PARAM_NAMES

__all__ = ["NestedResult", "WeightedRun", "run_nested"]


@dataclass
class WeightedRun:
    """A posterior of one galaxy as equal-weight draws resampled from a weighted sample (nested or
    importance sampling). samples : (n, 12 or 13) draws of theta; log_likelihood : (n,) their log L;
    n_eff : effective sample size of the weighted sample; log_evidence : log Z; converged : the
    run met its criteria; n_evaluations : likelihood calls; best_theta, best_chi2 : the largest-L
    point; seconds, seed, z, n_eff_target : the run."""

    samples: np.ndarray
    log_likelihood: np.ndarray
    n_eff: float
    log_evidence: float
    converged: bool
    n_evaluations: int
    best_theta: np.ndarray
    best_chi2: float
    seconds: float
    seed: int | None
    z: float | None
    n_eff_target: int

    sampler = "weighted"

    def settings(self) -> dict:
        """The sampler's own settings, for the summary."""
        return {}

    def summary(self) -> dict:
        """JSON-serialisable summary (`sedflow.mcmc.write_samples` stores it with the draws)."""
        p16, p50, p84 = np.percentile(self.samples, (16, 50, 84), axis=0)
        return {"sampler": self.sampler,
                "parameters": {n: {"median": float(p50[i]), "p16": float(p16[i]), "p84": float(p84[i]),
                                   "best": float(self.best_theta[i])} for i, n in enumerate(self.names)},
                "converged": bool(self.converged), "n_eff": float(self.n_eff), "log_evidence": float(self.log_evidence),
                "best_chi2": float(self.best_chi2), "n_evaluations": int(self.n_evaluations),
                "seconds": float(self.seconds), "seed": self.seed, "z": self.z, "n_eff_target": self.n_eff_target,
                **self.settings(), "n_samples": int(len(self.samples))}


@dataclass
class NestedResult(WeightedRun):
    """Posterior of one galaxy from `run_nested` (`WeightedRun`): draws from nautilus's
    ``equal_weight`` resampling, its effective sample size; converged : the run stopped on its
    criteria (``f_live`` reached and ``n_eff`` met), not on ``n_like_max``. n_live, f_live : the run.
    """

    n_live: int = 500
    f_live: float = 0.01
    names: tuple = PARAM_NAMES
    sampler = "nautilus"

    def settings(self) -> dict:
        return {"n_live": self.n_live, "f_live": self.f_live}


def run_nested(flux, flux_err, z, model=None, prior=None, n_live: int = 500, n_eff: int = 2000,
               f_live: float = 0.01, n_networks: int = 1, n_like_max: int = 5_000_000, seed: int | None = None,
               blas_threads: int | None = 1, sky_flux=None) -> NestedResult:
    """Sample the posterior of one galaxy with nautilus (module docstring).

    flux, flux_err : (n_bands,) nanomaggies (NaN flux or error <= 0: band not measured).
    z : redshift; None: z free (a 13th parameter, `sedflow.mcmc.free_redshift_prior`).
    model : `SEDModel` (default `SEDModel.default()`); prior : its prior by default.
    n_live, n_eff, f_live, n_networks : nautilus's live points, target effective sample size,
    stopping fraction of the evidence in the live set and networks per bound (its default 4
    costs ~4x the time; the likelihood is cheap, the networks' training is most of a run).
    n_like_max : likelihood calls after which it stops unconverged. seed : nautilus's seed.
    sky_flux : None: Eq. 1's likelihood (sigma = flux_err); per band, the noise model's
    `sky_limited_flux`: the simulations' likelihood (`sedflow.mcmc.simulator_flux_error`).
    """
    from nautilus import Sampler

    if model is None:
        from sedflow.sps.model import SEDModel

        model = SEDModel.default()
    prior = free_redshift_prior(model, prior, z)
    flux, flux_err, z = check_measurements(model, flux, flux_err, z)
    check_prior(model, prior)
    sky_flux = check_sky_flux(model, sky_flux)

    def log_like(s):
        return log_likelihood(model, prior.from_unit_cube(np.atleast_2d(s)), z, flux, flux_err, sky_flux)

    t0 = time.perf_counter()
    with _blas_threads(blas_threads):
        sampler = Sampler(lambda s: s, log_like, n_dim=prior.ndim_unconstrained, n_live=n_live,
                          n_networks=n_networks, vectorized=True, pass_dict=False, seed=seed)
        converged = sampler.run(f_live=f_live, n_eff=n_eff, n_like_max=n_like_max, verbose=False)
        points, _, log_l = sampler.posterior()
        # equal-weight draws, points repeated in proportion to their weight (boost 10: a good
        # approximation of the weighted posterior, nautilus's docs)
        draws, _, draws_log_l = sampler.posterior(equal_weight=True, equal_weight_boost=10)
    best = int(np.argmax(log_l))
    theta_best = prior.from_unit_cube(points[best:best + 1])[0]
    return NestedResult(samples=prior.from_unit_cube(draws), log_likelihood=draws_log_l, n_eff=float(sampler.n_eff),
                        log_evidence=float(sampler.log_z), converged=bool(converged),
                        n_evaluations=int(sampler.n_like), best_theta=theta_best, best_chi2=float(-2 * log_l[best]),
                        seconds=time.perf_counter() - t0, seed=None if seed is None else int(seed), z=z,
                        n_live=int(n_live), n_eff_target=int(n_eff), f_live=float(f_live), names=tuple(prior.names))
