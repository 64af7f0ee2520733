"""A population prior: the joint distribution of SED parameters (and redshift) of a galaxy sample.

A flow trained on simulations from a broad prior p0(theta) returns p0-posteriors. Galaxies of
one survey occupy a small part of that prior; a prior fitted to the population, p_pop, gives
tighter and better-calibrated posteriors, above all for a photo-z model, where the broad SED
prior lets colours be explained at many redshifts. Because the likelihood does not depend on
the prior, a p0-posterior becomes a p_pop-posterior by importance weights p_pop / p0 per draw
(Hahn & Melchior 2022, Sec. 6.2; `sedflow.reweight` applies the same idea to training sets).

p_pop is a Gaussian mixture over the prior's unconstrained coordinates (`Prior.to_unconstrained`;
for a photo-z model the 12th is z's), fitted to a spectroscopic sample by hierarchical
importance sampling (Hogg, Myers & Bovy 2010, ApJ 725, 2166): the galaxies' posterior draws
under p0 (from the spec-z model, z fixed at the spectroscopic value) are pooled, a mixture is
fitted (scikit-learn's EM), and each round re-draws every galaxy's points with weights
p_pop / p0 before refitting (stochastic EM), which removes the posterior widths the pooled
draws carry (deconvolution). The fitted p_pop includes the sample's selection, so it is the
prior for galaxies selected like the spectroscopic sample.

Example
-------
>>> import numpy as np
>>> from sedflow.prior import Prior
>>> prior = Prior()
>>> u = prior.to_unconstrained(prior.sample(2000, seed=0))[:, None]   # one "draw" per galaxy
>>> pop = PopulationPrior.fit(u, prior.log_prob_unconstrained, n_components=2, iterations=0)
>>> pop.log_prob_unconstrained(u[:3, 0]).shape
(3,)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.special import logsumexp

__all__ = ["PopulationPrior", "fit_to_catalog", "resample_draws", "sample_population", "POPULATION_FILE", "LOW_ESS", "OVERSAMPLE",
           "RETRY_OVERSAMPLE"]

POPULATION_FILE = "population_prior.json"   # beside a model's config.json
_CHUNK = 4096          # rows per block of the mixture density (stays in cache)
LOW_ESS = 50            # flag_low_ess below this effective sample size
OVERSAMPLE = 2          # flow draws per kept draw when re-weighting to a population prior
RETRY_OVERSAMPLE = 8    # the same for a galaxy whose ESS came out below LOW_ESS (drawn once more)


class PopulationPrior:
    """A Gaussian mixture density over a model prior's unconstrained coordinates.

    ``weights`` (K,), ``means`` (K, d), ``covariances`` (K, d, d); ``fitted_on`` records where it
    came from (catalog, rows, galaxies, settings), so that validation can hold those rows out.
    """

    def __init__(self, weights, means, covariances, fitted_on: dict | None = None):
        self.weights = np.asarray(weights, dtype=float)
        self.means = np.asarray(means, dtype=float)
        self.covariances = np.asarray(covariances, dtype=float)
        k, d = self.means.shape
        if self.weights.shape != (k,) or self.covariances.shape != (k, d, d):
            raise ValueError(f"a mixture of {k} components in {d} dimensions needs weights ({k},) and "
                             f"covariances ({k}, {d}, {d}); got {self.weights.shape}, {self.covariances.shape}")
        if not (np.all(self.weights > 0) and np.isclose(self.weights.sum(), 1.0)):
            raise ValueError("mixture weights must be positive and sum to one")
        self._chol = np.linalg.cholesky(self.covariances)      # raises if one is not positive definite
        self._log_norm = (np.log(self.weights) - 0.5 * d * np.log(2 * np.pi)
                          - np.sum(np.log(np.diagonal(self._chol, axis1=1, axis2=2)), axis=1))
        # whitening: y_k = (u - mu_k) L_k^-T for all components in one matrix product
        white = np.linalg.inv(self._chol).transpose(0, 2, 1)              # (K, d, d)
        self._white = white.transpose(1, 0, 2).reshape(d, k * d)
        self._white_shift = np.einsum("kd,kde->ke", self.means, white)
        self.ndim = d
        self.fitted_on = dict(fitted_on or {})

    # ------------------------------------------------------------------ density
    def log_prob_unconstrained(self, u) -> np.ndarray:
        """log p_pop(u) per row of u (n, d), normalised over R^d."""
        u = np.asarray(u, dtype=float)
        if u.ndim != 2 or u.shape[1] != self.ndim:
            raise ValueError(f"u must have shape (n, {self.ndim}), got {u.shape}")
        k, out = len(self.weights), np.empty(u.shape[0])
        for s in range(0, u.shape[0], _CHUNK):          # chunks that stay in cache
            y = (u[s:s + _CHUNK] @ self._white).reshape(-1, k, self.ndim) - self._white_shift
            out[s:s + _CHUNK] = logsumexp(self._log_norm - 0.5 * np.einsum("nkd,nkd->nk", y, y), axis=1)
        return out

    def log_weights(self, theta, prior) -> np.ndarray:
        """log p_pop / p0 for draws theta (n, prior.ndim) of a posterior under ``prior`` (p0); -inf for
        draws outside p0's support. Both densities are taken in p0's unconstrained coordinates, so the
        Jacobians cancel."""
        theta = prior.check(theta)
        out = np.full(theta.shape[0], -np.inf)
        ok = prior.in_support(theta)
        if ok.any():
            u = prior.to_unconstrained(theta[ok])
            out[ok] = self.log_prob_unconstrained(u) - prior.log_prob_unconstrained(u)
        return out

    def sample_unconstrained(self, n: int, seed=None) -> np.ndarray:
        """n draws (n, d) from the mixture (map them with the model prior's `from_unconstrained`)."""
        rng = np.random.default_rng(seed)
        k = rng.choice(len(self.weights), size=n, p=self.weights)
        eps = rng.standard_normal((n, self.ndim))
        return self.means[k] + np.einsum("nij,nj->ni", self._chol[k], eps)

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(cls, draws_u, prior_log_prob_u, n_components: int = 16, iterations: int = 1,
            per_galaxy: int = 40, seed=0, fitted_on: dict | None = None) -> "PopulationPrior":
        """Fit to posterior draws of a sample: ``draws_u`` (n_gal, n_draws, d) in unconstrained
        coordinates, drawn under the prior whose log density over them ``prior_log_prob_u`` gives.

        A mixture fitted to ``per_galaxy`` draws of each galaxy, then ``iterations`` rounds of
        stochastic EM (each galaxy's draws re-drawn with weights p_pop / p0, mixture refitted from
        the last one): hierarchical importance sampling (Hogg, Myers & Bovy 2010).
        """
        from sklearn.mixture import GaussianMixture

        draws_u = np.asarray(draws_u, dtype=float)
        if draws_u.ndim != 3 or not np.all(np.isfinite(draws_u)):
            raise ValueError("draws_u must be a finite (n_gal, n_draws, d) array")
        n_gal, n_draws, d = draws_u.shape
        if n_gal * min(per_galaxy, n_draws) < 10 * n_components * d:
            raise ValueError(f"{n_gal} galaxies x {min(per_galaxy, n_draws)} draws are too few for "
                             f"{n_components} components in {d} dimensions")
        rng = np.random.default_rng(seed)
        flat = draws_u.reshape(-1, d)
        log_p0 = np.asarray(prior_log_prob_u(flat), dtype=float).reshape(n_gal, n_draws)
        pick = min(per_galaxy, n_draws)
        points = draws_u[:, rng.choice(n_draws, pick, replace=False)].reshape(-1, d)
        gmm = GaussianMixture(n_components, covariance_type="full", reg_covar=1e-4, max_iter=300,
                              random_state=int(rng.integers(2**31))).fit(points)
        for _ in range(iterations):
            pop = cls(gmm.weights_, gmm.means_, gmm.covariances_)
            log_w = pop.log_prob_unconstrained(flat).reshape(n_gal, n_draws) - log_p0
            idx, _ = _resample_index(log_w, pick, rng)
            points = np.take_along_axis(draws_u, idx[:, :, None], axis=1).reshape(-1, d)
            gmm = GaussianMixture(n_components, covariance_type="full", reg_covar=1e-4, max_iter=300,
                                  weights_init=gmm.weights_, means_init=gmm.means_,
                                  precisions_init=gmm.precisions_, random_state=int(rng.integers(2**31))).fit(points)
        settings = {"n_galaxies": int(n_gal), "draws_per_galaxy": int(n_draws), "n_components": int(n_components),
                    "iterations": int(iterations), "per_galaxy": int(pick)}
        return cls(gmm.weights_, gmm.means_, gmm.covariances_, {**settings, **(fitted_on or {})})

    def fitted_rows(self, n_rows: int, spec_name: str) -> np.ndarray:
        """Boolean (n_rows,): the rows of a catalog read through description ``spec_name`` that this
        prior was fitted on (`fit_to_catalog`); none when it was fitted on another catalog."""
        if self.fitted_on.get("spec") != spec_name:
            return np.zeros(n_rows, bool)
        return _every(n_rows, self.fitted_on["row_every"], self.fitted_on["row_offset"])

    # ------------------------------------------------------------------ I/O
    def to_dict(self) -> dict:
        return {"kind": "gaussian_mixture", "space": "unconstrained", "weights": self.weights.tolist(),
                "means": self.means.tolist(), "covariances": self.covariances.tolist(), "fitted_on": self.fitted_on}

    @classmethod
    def from_dict(cls, d: dict) -> "PopulationPrior":
        if d.get("kind") != "gaussian_mixture" or d.get("space") != "unconstrained":
            raise ValueError(f"not a sedflow population prior (kind {d.get('kind')!r}, space {d.get('space')!r})")
        return cls(d["weights"], d["means"], d["covariances"], d.get("fitted_on"))


def _every(n_rows: int, every: int, offset: int) -> np.ndarray:
    """The rows with index % every == offset."""
    return np.arange(n_rows) % every == offset


def _resample_index(log_w, n_out: int, rng):
    """Per-row multinomial resampling: indices (n_gal, n_out) and effective sample sizes (n_gal,);
    a row whose weights are all zero is resampled uniformly and gets ESS 0."""
    log_w = np.asarray(log_w, dtype=float)
    top = np.max(log_w, axis=1, keepdims=True)
    dead = ~np.isfinite(top[:, 0])
    w = np.exp(log_w - np.where(dead[:, None], 0.0, top))
    w[dead] = 1.0
    w /= w.sum(axis=1, keepdims=True)
    ess = np.where(dead, 0.0, 1.0 / np.sum(w * w, axis=1))
    # inverse-CDF multinomial draws for all rows at once
    n_gal, n_draws = w.shape
    cdf = np.cumsum(w, axis=1)
    cdf[:, -1] = 1.0
    row = np.arange(n_gal)[:, None]
    u = rng.uniform(size=(n_gal, n_out))
    idx = np.searchsorted((cdf + row).ravel(), (u + row).ravel(), side="right").reshape(n_gal, n_out) - row * n_draws
    return np.minimum(idx, n_draws - 1), ess


def resample_draws(theta, pop: PopulationPrior, prior, n_out: int, seed=None):
    """Posterior draws under ``prior`` -> draws under the population prior, by importance resampling.

    ``theta`` (n_gal, n_draws, prior.ndim); returns (n_gal, n_out, prior.ndim) draws and the
    effective sample size per galaxy (Kish's, of the normalised weights p_pop / p0); a galaxy
    whose draws all fall outside p0's support keeps uniform weights and gets ESS 0.
    """
    theta = np.asarray(theta, dtype=float)
    n_gal, n_draws, d = theta.shape
    log_w = pop.log_weights(theta.reshape(-1, d), prior).reshape(n_gal, n_draws)
    idx, ess = _resample_index(log_w, n_out, np.random.default_rng(seed))
    return np.take_along_axis(theta, idx[:, :, None], axis=1), ess


def sample_population(post, x, n_samples: int, seed, chunk_draws: int = 2_000_000):
    """Posterior draws under a model's population prior: (n_gal, n_samples, d) draws and the ESS per galaxy.

    ``OVERSAMPLE`` x ``n_samples`` flow draws per galaxy (``post.sample(x, ...)``) importance-resampled
    to ``n_samples`` (`resample_draws`); the galaxies whose ESS comes out below ``LOW_ESS`` are drawn
    again with ``RETRY_OVERSAMPLE`` x, in blocks of about ``chunk_draws`` draws. ``seed``: an int or a
    list of ints (`numpy.random.SeedSequence` entropy).
    """
    pop, seed = post.population_prior, [int(s) for s in np.atleast_1d(seed)]
    if pop is None:
        raise ValueError("this model has no population prior")

    def draw(rows, oversample, seed_draws, seed_resample):
        # the flow's draws are already in the prior's unconstrained coordinates: weigh them there
        u = post.sample_unconstrained(x[rows], oversample * n_samples, seed=seed_draws)
        n_gal, n_draws, d = u.shape
        flat = u.reshape(-1, d)
        log_w = (pop.log_prob_unconstrained(flat) - post.prior.log_prob_unconstrained(flat)).reshape(n_gal, n_draws)
        idx, ess = _resample_index(log_w, n_samples, np.random.default_rng(seed_resample))
        kept = np.take_along_axis(u, idx[:, :, None], axis=1).reshape(-1, d)
        return post.prior.from_unconstrained(kept).reshape(n_gal, n_samples, -1), ess

    theta, ess = draw(np.arange(len(x)), OVERSAMPLE, seed, seed + [1])
    low = np.flatnonzero(ess < LOW_ESS)
    step = max(1, chunk_draws // (RETRY_OVERSAMPLE * n_samples))
    for j, s in enumerate(range(0, low.size, step)):
        p = low[s:s + step]
        theta[p], ess[p] = draw(p, RETRY_OVERSAMPLE, seed + [2, j], seed + [3, j])
    return theta, ess


def fit_to_catalog(model, catalog, spec, specz_model="sdss", row_every: int = 2, row_offset: int = 0,
                   n_components: int = 16, iterations: int = 1, draws: int = 200, seed: int = 0,
                   max_rows: int | None = None, write: bool = False) -> PopulationPrior:
    """Fit the population prior of ``model`` to a catalog with spectroscopic redshifts.

    The rows with ``index % row_every == row_offset`` (so the others stay held out for validation)
    get ``draws`` posterior draws from the spec-z model ``specz_model`` at their catalog z
    (`sedflow.infer.infer_frame`); for a photo-z ``model`` the joint density includes the
    unconstrained z. ``write``: also save it as the model directory's ``population_prior.json``,
    which `sedflow.load_model` then loads. Both models must share the SED prior.

    Example
    -------
    >>> from sedflow.catalog import kcorrect_sample_path
    >>> pop = fit_to_catalog("photoz", kcorrect_sample_path(), "sdss_kcorrect", max_rows=400, n_components=2,
    ...                      draws=50)                                                    # doctest: +SKIP
    """
    from sedflow.catalog import CatalogSpec, read_catalog
    from sedflow.infer import check_filters, infer_frame
    from sedflow.posterior import load_model, model_path
    from sedflow.storage import write_json

    post, specz = load_model(model), load_model(specz_model)
    if specz.infers_redshift:
        raise ValueError("the population is fitted from spectroscopic-redshift posteriors: specz_model must be a "
                         "spec-z model")
    if specz.prior != post.prior.sed_prior:
        raise ValueError(f"the two models have different SED priors ({post.prior!r} vs {specz.prior!r})")
    if not (row_every >= 1 and 0 <= row_offset < row_every):
        raise ValueError(f"need row_every >= 1 and 0 <= row_offset < row_every, got {row_every}, {row_offset}")
    spec = CatalogSpec.load(spec)
    for m in (post, specz):
        check_filters(m, spec.bands, spec.filters, f"the description {spec.name!r}")
    frame, _ = read_catalog(catalog, spec, max_rows=max_rows)
    frame = frame[_every(len(frame), row_every, row_offset)].reset_index(drop=True)
    summary, specz_draws = infer_frame(frame, specz, specz.sed_model(), n_samples=draws, keep_samples=draws,
                                       seed=seed, property_samples=1, return_draws=True, population_prior=False)
    ok = summary.column("method").to_numpy(zero_copy_only=False) == "anpe"
    theta = specz_draws[ok].astype(float)
    if post.infers_redshift:       # z in the photo-z model's range; the spec-z model's may be narrower
        lo, hi = post.prior.z_range
        z = frame["z"].to_numpy(dtype=float)[ok]
        inside = (z > lo) & (z <= hi)
        theta, z = theta[inside], z[inside]
    n_gal = theta.shape[0]
    if n_gal == 0:
        raise ValueError(f"{catalog}: no row with a valid spec-z posterior to fit a population to")
    theta = theta.reshape(-1, theta.shape[-1])
    if post.infers_redshift:
        theta = np.column_stack([theta, np.repeat(z, draws)])
    u = post.prior.to_unconstrained(theta).reshape(n_gal, draws, -1)     # in the coordinates of the model's own prior
    pop = PopulationPrior.fit(u, post.prior.log_prob_unconstrained, n_components=n_components, iterations=iterations,
                              seed=seed, fitted_on={"catalog": Path(catalog).name, "spec": spec.name,
                                                    "row_every": int(row_every), "row_offset": int(row_offset),
                                                    "max_rows": max_rows, "specz_model": str(specz_model),
                                                    "unconstrained": post.prior.unconstrained})
    if write:
        write_json(model_path(model) / POPULATION_FILE, pop.to_dict())
    return pop
