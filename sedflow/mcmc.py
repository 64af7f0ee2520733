"""MCMC posterior of one galaxy with zeus: the reference method of SEDflow (Hahn & Melchior 2022, Sec. 5).

The paper compares its amortized posteriors with, and falls back on, the MCMC that PROVABGS ran
(Hahn et al. 2022): the ensemble slice sampler ``zeus`` (Karamanis & Beutler 2020, arXiv:2002.06212;
Karamanis, Beutler & Peacock 2021, arXiv:2105.03468) with 30 walkers, 10,000 iterations and
2,000 burn-in iterations [paper]. Those are the defaults here.

Target (paper Eq. 1): a Gaussian likelihood in flux,

    log L(theta) = -1/2 sum_b ((f_b(theta, z) - f_obs_b) / sigma_b)^2,   f in nanomaggies,

with f_b from `SEDModel.photometry`, times the `Prior`. ``sky_flux`` gives instead the likelihood of
the simulations (`simulator_flux_error`): sigma_b follows the model flux as the simulated noise
did, with the Gaussian's normalisation. The walkers move in the prior's
11-dimensional unconstrained space u (`Prior.to_unconstrained`: stick-breaking warp of the
Dirichlet betas, log gamma, logit or probit of every bounded coordinate), where the posterior is smooth,
unbounded and has no hard walls:

    log p(u | f_obs) = log L(theta(u)) + Prior.log_prob_unconstrained(u) + const.

The sampler runs with ``vectorize=True``: each call evaluates a whole batch of walker positions
with one batched `SEDModel.photometry` call. Samples are returned in the physical 12-dimensional
theta (`PARAM_NAMES` order).

Diagnostics, all on the post-burn-in chain (n_steps - burn_in iterations, every walker):

* ``autocorr_time``: integrated autocorrelation time per physical parameter in iterations,
  ``zeus.AutoCorrTime`` (its default "mk" estimator with Sokal's window, c = 5).
* ``rhat``: split-R-hat per physical parameter (Gelman et al. 2013, BDA3 Sec. 11.4): every
  walker's chain is cut in two halves, and the 2 n_walkers half-chains go into the Gelman-Rubin
  statistic. zeus has no R-hat function; its ``callbacks.SplitRCallback`` splits the pooled
  ensemble in time and averages over parameters, so it is not used. Ensemble walkers are not
  independent chains, so R-hat here is a check of mixing across walkers, not a proof.
* ``converged``: ``n_steps - burn_in > tau_factor * max(autocorr_time)`` (default 50, zeus's
  and emcee's rule of thumb) and ``max(rhat) < rhat_max`` (default 1.1).

Stuck walkers. Started at the best prior draws, an occasional walker lands in a poor region
(chi^2 ~ 100-200 where the ensemble sits at ~5) and crawls out over >10^4 iterations: ensemble
moves along differences of walkers in the posterior bulk rarely pass through its way out (one
such walker raised logM*'s R-hat from 1.45 to 2.37 in a 30 x 10,000 test run). During burn-in only, at
1/4 and 1/2 of it, walkers whose mean log posterior is an interquartile outlier of the
ensemble's are therefore moved to jittered copies of other walkers; the remaining burn-in lets
the ensemble re-equilibrate, and the kept chain is an unmodified zeus chain
(``reset_stragglers=False`` turns this off; ``n_reset`` reports how many were moved).

Mixing. With five fluxes and eleven free parameters the posterior is a thin, curved ridge, and
zeus's differential moves cross it slowly: for a bright simulated galaxy (logM* = 10.5, z = 0.1,
2% errors) the paper's 30 x 10,000 run measured autocorrelation times of 1,000-7,000 iterations
and R-hat 1.2-2.4, so ``converged`` is False there; the criterion is meant to say so. The logM*
medians of runs of 900-10,000 iterations still agreed to 0.12 dex (16-84% width ~0.3 dex).

Slice sampling accepts every move, so there is no acceptance fraction; zeus's cost figures are
reported instead: number of log-probability evaluations, effective sample size per parameter
(kept samples / tau) and efficiency (mean ESS per evaluation, zeus's definition).

Example
-------
>>> from sedflow import Prior, SEDModel
>>> from sedflow.mcmc import run_mcmc
>>> model = SEDModel.default()
>>> theta = Prior().sample(1, seed=3); theta[0, 0] = 10.5
>>> flux = model.photometry(theta, 0.1)[0]
>>> res = run_mcmc(flux, 0.02 * flux, 0.1, model=model, n_steps=600, burn_in=200, seed=1)
>>> res.samples.shape
(12000, 12)
"""

from __future__ import annotations

import contextlib
import json
import logging
import operator
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sedflow.posterior import MIN_VALID_BANDS
from sedflow.prior import PARAM_NAMES, Prior, PriorWithRedshift
from sedflow.storage import write_parquet

if TYPE_CHECKING:
    from sedflow.sps.model import SEDModel

__all__ = ["McmcResult", "run_mcmc", "log_likelihood", "simulator_flux_error", "check_measurements", "check_prior",
           "check_sky_flux", "free_redshift_prior", "split_rhat", "write_samples", "read_samples",
           "PAPER_WALKERS", "PAPER_STEPS", "PAPER_BURN_IN"]

PAPER_WALKERS = 30       # [paper] Sec. 5 / PROVABGS
PAPER_STEPS = 10_000
PAPER_BURN_IN = 2_000
STRAGGLER_IQR = 3.0       # walkers below Q1 - 3 IQR of the ensemble's mean log posterior are moved


# ----------------------------------------------------------------------------------------------
# result
# ----------------------------------------------------------------------------------------------

@dataclass
class McmcResult:
    """Posterior of one galaxy from `run_mcmc`.

    Attributes
    ----------
    samples : (n, 12) physical theta after burn-in (and thinning), walkers flattened.
    log_prob : (n,) unnormalised log posterior in theta space, log L + `Prior.log_prob`.
    log_likelihood : (n,) log L (Eq. 1); chi^2 = -2 log L.
    autocorr_time : (12,) integrated autocorrelation time per parameter [iterations].
    rhat : (12,) split-R-hat per parameter over the walkers' half-chains.
    ess : (12,) effective sample size per parameter, walkers * kept iterations / tau.
    converged : the criterion of the module docstring.
    n_evaluations : log-probability evaluations made by zeus (all iterations).
    n_reset : walkers moved during burn-in by ``reset_stragglers``.
    efficiency : mean(ess) / n_evaluations.
    best_theta : (12,) sample of largest `log_prob` (maximum-posterior sample).
    best_chi2 : chi^2 of `best_theta`.
    seconds : wall time of the run.
    scale_factor : zeus's tuned slice scale factor mu at the end.
    n_walkers, n_steps, burn_in, thin, seed, z, tau_factor, rhat_max : the settings.
    names : parameter names (`PARAM_NAMES`).
    """

    samples: np.ndarray
    log_prob: np.ndarray
    log_likelihood: np.ndarray
    autocorr_time: np.ndarray
    rhat: np.ndarray
    ess: np.ndarray
    converged: bool
    n_evaluations: int
    n_reset: int
    efficiency: float
    best_theta: np.ndarray
    best_chi2: float
    seconds: float
    scale_factor: float
    n_walkers: int
    n_steps: int
    burn_in: int
    thin: int
    seed: int | None
    z: float | None
    tau_factor: float
    rhat_max: float
    names: tuple = PARAM_NAMES

    @property
    def n_kept_steps(self) -> int:
        """Post-burn-in iterations per walker (before thinning)."""
        return self.n_steps - self.burn_in

    def percentiles(self, q=(16, 50, 84)) -> np.ndarray:
        """Per-parameter percentiles of the samples, shape (len(q), 12)."""
        return np.percentile(self.samples, q, axis=0)

    def summary(self) -> dict:
        """JSON-serialisable summary (medians, 16/84 percentiles, diagnostics, settings)."""
        p16, p50, p84 = self.percentiles()
        return {
            "parameters": {n: {"median": float(p50[i]), "p16": float(p16[i]), "p84": float(p84[i]),
                               "autocorr_time": float(self.autocorr_time[i]), "rhat": float(self.rhat[i]),
                               "ess": float(self.ess[i]), "best": float(self.best_theta[i])}
                           for i, n in enumerate(self.names)},
            "converged": bool(self.converged), "best_chi2": float(self.best_chi2),
            "n_evaluations": int(self.n_evaluations), "n_reset": int(self.n_reset),
            "efficiency": float(self.efficiency),
            "seconds": float(self.seconds), "n_walkers": self.n_walkers, "n_steps": self.n_steps,
            "burn_in": self.burn_in, "thin": self.thin, "seed": self.seed, "z": self.z,
            "tau_factor": self.tau_factor, "rhat_max": self.rhat_max, "n_samples": int(len(self.samples)),
        }


# ----------------------------------------------------------------------------------------------
# likelihood and diagnostics
# ----------------------------------------------------------------------------------------------

def log_likelihood(model, theta, z, flux, flux_err, sky_flux=None) -> np.ndarray:
    """Gaussian log-likelihood in flux (Hahn & Melchior 2022, Eq. 1), shape (n,).

    theta (n, 12) inside the prior; with ``z=None`` theta (n, 13), z its last column (a free
    redshift, `PriorWithRedshift`). flux, flux_err (n_bands,) in nanomaggies (an unmeasured band:
    infinite error, `check_measurements`). ``sky_flux`` None: sigma_b = flux_err_b, fixed (Eq. 1).
    ``sky_flux`` (n_bands,): the simulations' likelihood, sigma_b = `simulator_flux_error` at the
    model flux, normalisation included. Non-finite model fluxes give ``-inf``.
    """
    if z is None:
        theta, z = theta[:, :-1], theta[:, -1]
    f = model.photometry(theta, z)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        if sky_flux is None:
            ll = -0.5 * np.sum(((f - flux) / flux_err) ** 2, axis=1)
        else:
            measured = np.isfinite(flux_err)
            sigma = simulator_flux_error(f[:, measured], flux[measured], flux_err[measured],
                                         np.asarray(sky_flux, float)[measured])
            ll = -np.sum(0.5 * ((f[:, measured] - flux[measured]) / sigma) ** 2 + np.log(sigma), axis=1)
    return np.where(np.isfinite(ll), ll, -np.inf)


def simulator_flux_error(model_flux, flux, flux_err, sky_flux) -> np.ndarray:
    """The 1-sigma noise a simulated galaxy of noiseless flux ``model_flux`` had, given its reported
    ``flux`` and ``flux_err`` (`sedflow.simulate.observe` with ``min_detected``, errors reported
    from the observed flux): there sigma = s max(f_true, sky_flux) / 1.0857 and the reported error
    s max(|f_obs|, sky_flux) / 1.0857, with s the galaxy's sigma_mag in that band (noise model and
    envelope), so sigma = flux_err max(model_flux, sky_flux) / max(|flux|, sky_flux). ``sky_flux``:
    `sedflow.noise.NoiseModel.sky_limited_flux`. Shapes broadcast (model_flux (n, n_bands))."""
    return flux_err * np.maximum(model_flux, sky_flux) / np.maximum(np.abs(flux), sky_flux)


def split_rhat(chain) -> np.ndarray:
    """Split-R-hat (Gelman et al. 2013, BDA3 Sec. 11.4) per parameter.

    chain : (n_steps, n_chains, n_params). Each chain is cut into two halves (an odd middle step
    is dropped), giving 2 n_chains sequences of length m = n_steps // 2;
    R-hat = sqrt(((m - 1)/m W + B/m) / W), W the mean within-sequence variance and B/m the
    variance of the sequence means. Parameters constant across all sequences get 1.0 (nothing to
    mix); a parameter constant within each sequence but differing between them gets inf.
    """
    chain = np.asarray(chain, dtype=float)
    if chain.ndim != 3:
        raise ValueError(f"chain must have shape (n_steps, n_chains, n_params), got {chain.shape}")
    m = chain.shape[0] // 2
    if m < 2:
        return np.full(chain.shape[2], np.nan)
    seqs = np.concatenate([chain[:m], chain[chain.shape[0] - m:]], axis=1)      # (m, 2k, p)
    means = seqs.mean(axis=0)
    W = seqs.var(axis=0, ddof=1).mean(axis=0)
    B_over_m = means.var(axis=0, ddof=1)
    var_plus = (m - 1) / m * W + B_over_m
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.sqrt(var_plus / W)
    r = np.where((W == 0) & (B_over_m == 0), 1.0, r)
    return np.where((W == 0) & (B_over_m > 0), np.inf, r)


# ----------------------------------------------------------------------------------------------
# global state zeus touches
# ----------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _seeded_global_rngs(seed_seq: np.random.SeedSequence):
    """Seed numpy's global RNG and Python's ``random`` (zeus draws from both: ``np.random.*`` in
    the slice steps, ``random.sample`` in ``DifferentialMove``), restoring both on exit."""
    np_state, py_state = np.random.get_state(), random.getstate()
    np_seed, py_seed = seed_seq.generate_state(2)
    np.random.seed(int(np_seed))
    random.seed(int(py_seed))
    try:
        yield
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)


@contextlib.contextmanager
def _preserve_root_logger():
    """zeus.EnsembleSampler replaces the root logger's handlers and level; undo that on exit."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        for h in root.handlers[:]:
            root.removeHandler(h)
        for h in handlers:
            root.addHandler(h)
        root.setLevel(level)


def _blas_threads(n):
    """Limit BLAS threads: the walker batches are small (<= n_walkers rows), and a multi-threaded
    BLAS on them is far slower (measured 20 ms vs 2 ms per 15-row call on 2 busy cores)."""
    if n is None:
        return contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:                      # optional; without it BLAS keeps its own setting
        return contextlib.nullcontext()
    return threadpool_limits(limits=int(n), user_api="blas")


def _reset_checkpoints(burn_in: int) -> list[int]:
    """Iterations after which stragglers are looked for: 1/4 and 1/2 of the burn-in (if >= 40)."""
    return sorted({burn_in // 4, burn_in // 2}) if burn_in >= 40 else []


def _stragglers(walker_mean_logp: np.ndarray, k: float = STRAGGLER_IQR) -> np.ndarray:
    """Walkers whose mean log posterior lies below Q1 - k max(Q3 - Q1, 1) of the ensemble's
    (an interquartile outlier rule; the floor keeps a tight ensemble from flagging anyone)."""
    q1, q3 = np.percentile(walker_mean_logp, [25, 75])
    bad = walker_mean_logp < q1 - k * max(q3 - q1, 1.0)
    if bad.sum() > len(bad) // 2:           # never move the majority
        return np.zeros_like(bad)
    return bad


def _move_stragglers(X: np.ndarray, bad: np.ndarray, rng) -> np.ndarray:
    """New positions for the stragglers: copies of randomly chosen good walkers, jittered by
    1e-3 of the good walkers' spread per dimension (no two walkers coincide)."""
    good = np.flatnonzero(~bad)
    donors = X[rng.choice(good, size=int(bad.sum()))]
    scale = 1e-3 * np.maximum(X[good].std(axis=0), 1e-6)
    return donors + scale * rng.standard_normal(donors.shape)


# ----------------------------------------------------------------------------------------------
# input checks
# ----------------------------------------------------------------------------------------------

def check_measurements(model, flux, flux_err, z):
    """(flux, flux_err, z) for the likelihood of one galaxy, checked: a band without a measurement
    (NaN flux, non-finite or non-positive error) drops out (its error becomes infinite, its flux
    0); fluxes <= 0 with an error are measurements; >= `MIN_VALID_BANDS` must remain and z must
    lie in the model's range (None: z is free, inferred)."""
    nb = len(model.band_names)
    flux = np.asarray(flux, dtype=float)
    flux_err = np.asarray(flux_err, dtype=float)
    for name, a in (("flux", flux), ("flux_err", flux_err)):
        if a.shape != (nb,):
            raise ValueError(f"{name} must have shape ({nb},) (bands {', '.join(model.band_names)}), got {a.shape}")
    with np.errstate(invalid="ignore"):
        measured = np.isfinite(flux) & np.isfinite(flux_err) & (flux_err > 0)
    if measured.sum() < MIN_VALID_BANDS:
        raise ValueError(f"need >= {MIN_VALID_BANDS} bands with a finite flux and an error > 0, got "
                         f"flux {flux.tolist()}, flux_err {flux_err.tolist()}")
    flux, flux_err = np.where(measured, flux, 0.0), np.where(measured, flux_err, np.inf)
    if z is None:
        return flux, flux_err, None
    try:
        z = float(z)
    except (TypeError, ValueError):
        raise ValueError(f"z must be a number, got {z!r}") from None
    if not (np.isfinite(z) and 0 < z <= model.phot.z_max):
        raise ValueError(f"z must lie in the model's range (0, {model.phot.z_max}], got {z}")
    return flux, flux_err, z


def check_sky_flux(model, sky_flux):
    """``sky_flux`` as a float array of one positive flux per band of ``model`` (None stays None)."""
    if sky_flux is None:
        return None
    nb = len(model.band_names)
    sky = np.asarray(sky_flux, dtype=float)
    if sky.shape != (nb,) or not np.all(np.isfinite(sky) & (sky > 0)):
        raise ValueError(f"sky_flux must be {nb} positive fluxes (bands {', '.join(model.band_names)}), "
                         f"got {sky_flux!r}")
    return sky


def check_prior(model, prior):
    """Refuse a prior that reaches outside the SED model's (parameters, and a free z's range)."""
    if isinstance(prior, PriorWithRedshift):
        lo, hi = prior.z_range
        if hi > model.phot.z_max or lo < model.phot.z_min:
            raise ValueError(f"the redshift prior {prior.z_range} reaches outside the model's range "
                             f"({model.phot.z_min}, {model.phot.z_max}]")
        prior = prior.sed_prior
    if prior != model.prior:
        for k, (lo, hi) in prior.bounds.items():
            mlo, mhi = model.prior.bounds[k]
            if lo < mlo or hi > mhi:
                raise ValueError(f"prior bounds for {k} {(lo, hi)} reach outside the model's prior {(mlo, mhi)}")


def free_redshift_prior(model, prior, z):
    """The prior to sample: ``prior`` (default the model's); with ``z=None`` (redshift free) a
    `PriorWithRedshift`, z uniform on the model's redshift range unless ``prior`` already is one."""
    prior = model.prior if prior is None else prior
    if z is None and not isinstance(prior, PriorWithRedshift):
        return PriorWithRedshift(prior, (max(model.phot.z_min, 0.0), model.phot.z_max))
    if z is not None and isinstance(prior, PriorWithRedshift):
        raise ValueError("a prior with a redshift samples z: pass z=None, or a Prior to condition on z")
    return prior


def _check_inputs(model, prior, flux, flux_err, z, n_walkers, n_steps, burn_in, thin, tau_factor, rhat_max):
    flux, flux_err, z = check_measurements(model, flux, flux_err, z)
    ints = {"n_walkers": n_walkers, "n_steps": n_steps, "burn_in": burn_in, "thin": thin}
    for name, v in ints.items():
        try:
            ok = not isinstance(v, bool) and int(v) == v
        except (TypeError, ValueError, OverflowError):
            ok = False
        if not ok:
            raise ValueError(f"{name} must be an integer, got {v!r}")
    ndim = prior.ndim_unconstrained
    if n_walkers < 2 * ndim or n_walkers % 2:
        raise ValueError(f"n_walkers must be even and >= {2 * ndim} (2 x {ndim} dimensions), got {n_walkers}")
    if burn_in < 0 or thin < 1:
        raise ValueError(f"need burn_in >= 0 and thin >= 1, got burn_in={burn_in}, thin={thin}")
    if n_steps - burn_in < 4:
        raise ValueError(f"n_steps ({n_steps}) must exceed burn_in ({burn_in}) by at least 4 iterations")
    if not (tau_factor > 0 and rhat_max > 1):
        raise ValueError(f"need tau_factor > 0 and rhat_max > 1, got {tau_factor}, {rhat_max}")
    check_prior(model, prior)
    return flux, flux_err, z


def _initial_positions(prior, init, n_walkers, init_scale, rng, log_post_u, init_draws):
    """Walker starts in u: the best of ``init_draws`` prior draws, a ball around one theta, or
    explicit (n_walkers, 12) thetas."""
    ndim = prior.ndim_unconstrained
    if init is None:
        u = prior.to_unconstrained(prior.sample(max(init_draws, n_walkers), seed=rng))
        lp = np.concatenate([log_post_u(u[i:i + 4096]) for i in range(0, len(u), 4096)])
        return u[np.argsort(-lp, kind="stable")[:n_walkers]]
    init = np.asarray(init, dtype=float)
    if init.shape == (prior.ndim,):
        try:
            u0 = prior.to_unconstrained(init[None, :])
        except ValueError as e:
            raise ValueError(f"init lies outside the prior: {e}") from None
        return u0 + init_scale * rng.standard_normal((n_walkers, ndim))
    if init.shape == (n_walkers, prior.ndim):
        try:
            return prior.to_unconstrained(init)
        except ValueError as e:
            raise ValueError(f"init lies outside the prior: {e}") from None
    raise ValueError(f"init must have shape ({prior.ndim},) or (n_walkers={n_walkers}, {prior.ndim}), "
                     f"got {init.shape}")


# ----------------------------------------------------------------------------------------------
# the sampler
# ----------------------------------------------------------------------------------------------

def run_mcmc(flux, flux_err, z, model: SEDModel | None = None, prior: Prior | None = None,
             n_walkers: int = PAPER_WALKERS, n_steps: int = PAPER_STEPS, burn_in: int = PAPER_BURN_IN,
             thin: int = 1, seed=None, progress: bool = False, init=None, *, init_draws: int = 10_000,
             init_scale: float = 1e-2, tau_factor: float = 50.0, rhat_max: float = 1.1, max_expansions: int = 100,
             reset_stragglers: bool = True, blas_threads: int | None = 1,
             light_mode: bool = False, sky_flux=None) -> McmcResult:
    """Sample the posterior of one galaxy with zeus (module docstring). Defaults are the paper's.

    Parameters
    ----------
    flux, flux_err : (5,) observed fluxes and 1-sigma uncertainties [nanomaggies]; fluxes may be
        negative (noise), uncertainties must be > 0, all finite.
    z : redshift, in the model's range (0, z_max]; conditioning, not inferred. None: z is free
        (photometric redshift), a 13th parameter with `PriorWithRedshift` (uniform on the model's
        range unless ``prior`` is one); samples then have z as their last column.
    model : `SEDModel` (default `SEDModel.default()`, ~2-4 s to build: pass one when running many).
    prior : `Prior` (default ``model.prior``); must lie inside the model's prior.
    n_walkers, n_steps, burn_in : zeus walkers, total iterations, iterations discarded.
    thin : keep every ``thin``-th post-burn-in iteration in ``samples`` (diagnostics use all).
    seed : int or None. Deterministic for a given seed: the walker starts come from a generator
        seeded by ``numpy.random.SeedSequence(seed)``, and numpy's global RNG and Python's
        ``random`` (which zeus draws from) are seeded from it too and restored afterwards. That
        global state makes concurrent runs in threads of one process unsafe (use processes).
    progress : show zeus's progress bar.
    init : where the walkers start.
        None: prior draws. ``init_draws`` draws are made, evaluated in batches, and the walkers
        start at the ``n_walkers`` with the highest posterior (``init_draws <= n_walkers``: plain
        prior draws). Raw prior draws sit at chi^2 ~ 1e3-1e6 and take most of a burn-in to
        reach the posterior; PROVABGS instead started a tiny ball at a Nelder-Mead optimum.
        A theta (12,): a Gaussian ball of radius ``init_scale`` around it in u space.
        (n_walkers, 12) thetas: those positions.
    tau_factor, rhat_max : convergence thresholds (module docstring).
    reset_stragglers : after 1/4 and 1/2 of the burn-in, move walkers whose mean log posterior
        over the latest iterations lies below Q1 - 3 IQR of the ensemble's (IQR floored at 1) to
        jittered copies of other walkers (module docstring). Only burn-in is affected.
    max_expansions : zeus ``maxsteps``, the stepping-out limit per walker and iteration (Neal
        2003's m; any m leaves the target invariant). zeus's default 10^4 lets walkers far below
        the posterior's scale step out thousands of times along the unconstrained space's
        linear log-prior tails, and then zeus stops with "Number of expansions exceeded".
    blas_threads : BLAS threads during the run (needs ``threadpoolctl``); None leaves BLAS alone.
    light_mode : zeus's light mode (no stepping-out after tuning; cheaper, for near-Gaussian targets).
    sky_flux : None: the likelihood of Eq. 1 (sigma = flux_err). Per band, the noise model's
        `sky_limited_flux`: the simulations' likelihood (`log_likelihood`, `simulator_flux_error`).

    Returns
    -------
    `McmcResult`
    """
    import zeus

    if model is None:
        from sedflow.sps.model import SEDModel

        model = SEDModel.default()
    prior = free_redshift_prior(model, prior, z)
    flux, flux_err, z = _check_inputs(model, prior, flux, flux_err, z, n_walkers, n_steps, burn_in, thin,
                                      tau_factor, rhat_max)
    sky_flux = check_sky_flux(model, sky_flux)
    n_walkers, n_steps, burn_in, thin = int(n_walkers), int(n_steps), int(burn_in), int(thin)
    ndim = prior.ndim_unconstrained
    if seed is not None:
        try:
            seed = operator.index(seed)
        except TypeError:
            raise ValueError(f"seed must be an integer or None, got {seed!r}") from None
    seed_seq = np.random.SeedSequence(seed)
    init_rng = np.random.default_rng(seed_seq.spawn(1)[0])

    def log_post_u(u):
        u = np.atleast_2d(u)
        if u.shape[0] == 0:
            return np.empty(0)
        theta = prior.from_unconstrained(u)
        return log_likelihood(model, theta, z, flux, flux_err, sky_flux) + prior.log_prob_unconstrained(u)

    t0 = time.perf_counter()
    with _blas_threads(blas_threads), _seeded_global_rngs(seed_seq), _preserve_root_logger():
        start = _initial_positions(prior, init, n_walkers, init_scale, init_rng, log_post_u, init_draws)
        lp0 = log_post_u(start)
        if not np.all(np.isfinite(lp0)):
            raise ValueError(f"{np.sum(~np.isfinite(lp0))} initial walker positions have a non-finite "
                             "log posterior (model fluxes not finite there)")
        sampler = zeus.EnsembleSampler(n_walkers, ndim, log_post_u, vectorize=True, verbose=False,
                                       maxsteps=max_expansions, light_mode=light_mode)
        # Burn-in in segments; at each checkpoint walkers stuck far below the ensemble are moved.
        checkpoints = _reset_checkpoints(burn_in) if reset_stragglers else []
        X, Z, done, ncall, n_reset = start, lp0, 0, 0, 0
        for stop in [*checkpoints, n_steps]:
            sampler.run_mcmc(X, stop - done, progress=progress, log_prob0=Z)
            ncall += int(sampler.ncall)            # zeus's count restarts with every run_mcmc call
            X, Z = sampler.get_last_sample().copy(), sampler.get_last_log_prob().copy()
            if stop < n_steps:
                window = sampler.get_log_prob()[-max((stop - done) // 2, 1):]
                bad = _stragglers(window.mean(axis=0))
                if bad.any():
                    X[bad] = _move_stragglers(X, bad, rng=np.random)
                    Z[bad] = log_post_u(X[bad])
                    n_reset += int(bad.sum())
            done = stop
        seconds = time.perf_counter() - t0

    # Post-burn-in chain, (steps, walkers, 11) in u -> physical theta (steps, walkers, 12).
    # (zeus reads a discard below 1 as a fraction of the chain, so 0 is passed as no discard.)
    chain_u = sampler.get_chain(discard=burn_in) if burn_in >= 1 else sampler.get_chain()
    logp_u = sampler.get_log_prob(discard=burn_in) if burn_in >= 1 else sampler.get_log_prob()
    n_kept, nw = chain_u.shape[:2]
    theta = prior.from_unconstrained(chain_u.reshape(-1, ndim)).reshape(n_kept, nw, prior.ndim)
    loglike = logp_u - prior.log_prob_unconstrained(chain_u.reshape(-1, ndim)).reshape(n_kept, nw)
    logpost = loglike + prior.log_prob(theta.reshape(-1, prior.ndim)).reshape(n_kept, nw)

    tau = np.asarray(zeus.AutoCorrTime(theta), dtype=float)
    rhat = split_rhat(theta)
    with np.errstate(divide="ignore", invalid="ignore"):
        ess = n_kept * nw / tau
    converged = bool(np.all(np.isfinite(tau)) and np.all(np.isfinite(rhat))
                     and n_kept > tau_factor * np.max(tau) and np.max(rhat) < rhat_max)

    # Flatten walker-major (as zeus's get_chain(flat=True)), then thin along iterations.
    def flat(a):
        a = a[::thin]
        return np.ascontiguousarray(np.swapaxes(a, 0, 1).reshape(-1, *a.shape[2:]))

    samples, log_prob, log_like = flat(theta), flat(logpost), flat(loglike)
    ibest = int(np.argmax(log_prob))
    return McmcResult(
        samples=samples, log_prob=log_prob, log_likelihood=log_like, autocorr_time=tau, rhat=rhat, ess=ess,
        converged=converged, n_evaluations=ncall, n_reset=n_reset,
        efficiency=float(np.mean(ess[np.isfinite(ess)]) / ncall) if ncall and np.isfinite(ess).any() else float("nan"),
        best_theta=samples[ibest].copy(), best_chi2=float(-2.0 * log_like[ibest]), seconds=seconds,
        scale_factor=float(sampler.mu), n_walkers=n_walkers, n_steps=n_steps, burn_in=burn_in, thin=thin,
        seed=seed, z=z, tau_factor=float(tau_factor), rhat_max=float(rhat_max), names=tuple(prior.names),
    )


# ----------------------------------------------------------------------------------------------
# output
# ----------------------------------------------------------------------------------------------

def write_samples(result: McmcResult, path, flux=None, flux_err=None, extra: dict | None = None) -> Path:
    """Write ``result.samples`` as Parquet, one float64 column per parameter, atomically.

    The run's summary (settings, diagnostics, the input fluxes if given, and ``extra``) goes
    into the schema metadata under ``b"sedflow.mcmc"`` as JSON; `read_samples` reads both back.
    """
    import pyarrow as pa

    path = Path(path)
    meta = result.summary()
    if flux is not None:
        meta["flux"] = [float(v) for v in flux]
    if flux_err is not None:
        meta["flux_err"] = [float(v) for v in flux_err]
    meta.update(extra or {})
    schema = pa.schema([pa.field(n, pa.float64(), nullable=False) for n in result.names],
                       metadata={b"sedflow.mcmc": json.dumps(meta).encode()})
    table = pa.Table.from_arrays([pa.array(result.samples[:, i]) for i in range(len(result.names))], schema=schema)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_parquet(table, path, compression="zstd")


def read_samples(path) -> tuple[np.ndarray, dict]:
    """Samples (n, 12), (n, 13) with a free z, and the metadata dict of a file written by `write_samples`."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    meta = (table.schema.metadata or {}).get(b"sedflow.mcmc")
    if meta is None or table.column_names not in (list(PARAM_NAMES), list(PARAM_NAMES) + ["z"]):
        raise ValueError(f"{path} is not an MCMC sample file written by sedflow (columns {PARAM_NAMES} [+ z])")
    samples = np.column_stack([table.column(n).to_numpy() for n in table.column_names])
    return samples, json.loads(meta)
