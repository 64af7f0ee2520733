"""Prior over the 12 PROVABGS SED parameters and its unconstrained reparameterisation.

The priors are those of SEDflow (Hahn & Melchior 2022, arXiv:2203.07391, Sec. 2.2)
and PROVABGS (Hahn et al. 2022, arXiv:2202.01809, Table 1):

====  =========  =====================================================
 #    name       prior
====  =========  =====================================================
 0    logmstar   U(7, 12.5)      log10 total formed mass [Msun]
 1-4  beta1..4   flat Dirichlet(1,1,1,1)  SFH NMF coefficients
 5    fburst     U(0, 1)         mass fraction formed in the burst
 6    tburst     U(0.01, 13.27)  burst lookback time [Gyr]
 7-8  gamma1..2  log-uniform(4.5e-5, 1.5e-2)  ZH NMF coefficients
 9    tau_bc     U(0, 3)         birth-cloud optical depth
 10   tau_ism    U(0, 3)         diffuse-dust optical depth
 11   n_dust     U(-2, 1)        attenuation-curve slope offset
====  =========  =====================================================

The flow works in an 11-dimensional unconstrained space (all of R^11) so that every
sample maps back inside the prior: the four betas become three stick-breaking
fractions warped to be i.i.d. uniform under the flat Dirichlet (Betancourt 2012,
arXiv:1010.3436), gamma becomes log10 gamma, and every bounded coordinate is then
sent to the real line: by a logit (``unconstrained="logit"``, the default of `Prior` and the
map of the shipped ``photoz`` and older models; under the prior each coordinate is then
standard logistic) or by the probit, the inverse normal CDF (``"probit"``, what `sedflow
train` uses by default; each coordinate is then standard normal under the prior, the flow's
base distribution, so a parameter the photometry does not constrain, whose posterior is its
prior, is the identity for the flow: an affine coupling flow hardly turns its Gaussian base
into the logistic's heavier tails, which is what the logit asked of it).

Example
-------
>>> prior = Prior()
>>> theta = prior.sample(4, seed=0)
>>> u = prior.to_unconstrained(theta)
>>> np.allclose(prior.from_unconstrained(u), theta)
True
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit, gammaln, logit, ndtr, ndtri

__all__ = ["PARAM_NAMES", "UNCONSTRAINED_NAMES", "Prior", "PriorWithRedshift", "prior_from_dict",
           "redshift_to_unconstrained"]

PARAM_NAMES = (
    "logmstar", "beta1", "beta2", "beta3", "beta4", "fburst", "tburst",
    "gamma1", "gamma2", "tau_bc", "tau_ism", "n_dust",
)
UNCONSTRAINED_NAMES = tuple(f"u{i}" for i in range(11))
UNCONSTRAINED_MAPS = ("logit", "probit")   # [0, 1] -> R of each box coordinate (module docstring)

_SIMPLEX_ATOL = 1e-6  # tolerance on sum(beta) == 1
# log density of the flat Dirichlet(1, 1, 1, 1) on the 3-simplex: log Gamma(4) = log 6
_LOG_FLAT_DIRICHLET = gammaln(4.0)
Z_FLOOR = 1e-6        # the smallest redshift `PriorWithRedshift` draws (4 pc: finite fluxes)


class _RowChecks:
    """`check` and `require_support` for a prior with ``names``, ``ndim`` and ``in_support``."""

    def check(self, theta) -> np.ndarray:
        """Return ``theta`` as a float64 (n, ndim) array or raise ``ValueError``."""
        theta = np.asarray(theta, dtype=float)
        if theta.ndim == 1:
            theta = theta[None, :]
        if theta.ndim != 2 or theta.shape[1] != self.ndim:
            raise ValueError(f"theta must have shape (n, {self.ndim}) in order {self.names}, "
                             f"got {theta.shape}")
        return theta

    def require_support(self, theta) -> np.ndarray:
        """Like `check`, and raise ``ValueError`` naming the bad rows if any lie outside."""
        theta = self.check(theta)
        ok = self.in_support(theta)
        if not ok.all():
            bad = np.flatnonzero(~ok)
            nonfinite = bad[~np.all(np.isfinite(theta[bad]), axis=1)]
            msg = f"{bad.size} of {len(theta)} theta rows are outside the prior (rows {bad[:10].tolist()}"
            msg += ", ...)" if bad.size > 10 else ")"
            if nonfinite.size:
                msg += f"; {nonfinite.size} contain NaN/inf"
            raise ValueError(msg)
        return theta


class Prior(_RowChecks):
    """The SEDflow/PROVABGS prior (module docstring), batched over rows.

    Parameters
    ----------
    logmstar, fburst, tburst, tau_bc, tau_ism, n_dust : (low, high)
        Bounds of the uniform priors.
    gamma : (low, high)
        Bounds of the log-uniform prior on both ZH coefficients.
    """

    names = PARAM_NAMES
    ndim = 12
    ndim_unconstrained = 11

    def __init__(
        self,
        logmstar=(7.0, 12.5),
        fburst=(0.0, 1.0),
        tburst=(1e-2, 13.27),
        gamma=(4.5e-5, 1.5e-2),
        tau_bc=(0.0, 3.0),
        tau_ism=(0.0, 3.0),
        n_dust=(-2.0, 1.0),
        unconstrained: str = "logit",
    ):
        if unconstrained not in UNCONSTRAINED_MAPS:
            raise ValueError(f"unconstrained must be one of {UNCONSTRAINED_MAPS}, got {unconstrained!r}")
        self.unconstrained = unconstrained
        self.bounds = {
            "logmstar": tuple(map(float, logmstar)),
            "fburst": tuple(map(float, fburst)),
            "tburst": tuple(map(float, tburst)),
            "gamma": tuple(map(float, gamma)),
            "tau_bc": tuple(map(float, tau_bc)),
            "tau_ism": tuple(map(float, tau_ism)),
            "n_dust": tuple(map(float, n_dust)),
        }
        for name, (lo, hi) in self.bounds.items():
            if not lo < hi:
                raise ValueError(f"prior bounds for {name} must satisfy low < high, got {(lo, hi)}")
        if self.bounds["gamma"][0] <= 0:
            raise ValueError("log-uniform gamma prior needs a positive lower bound")
        # Box bounds of the coordinates mapped to R (logit or probit), in unconstrained order
        # [logmstar, z1, z2, z3, fburst, tburst, log10 g1, log10 g2, tau_bc, tau_ism, n_dust].
        lg = np.log10(self.bounds["gamma"])
        b = self.bounds
        self._lo = np.array([b["logmstar"][0], 0, 0, 0, b["fburst"][0], b["tburst"][0],
                             lg[0], lg[0], b["tau_bc"][0], b["tau_ism"][0], b["n_dust"][0]])
        self._hi = np.array([b["logmstar"][1], 1, 1, 1, b["fburst"][1], b["tburst"][1],
                             lg[1], lg[1], b["tau_bc"][1], b["tau_ism"][1], b["n_dust"][1]])
        # Bounds of theta's 12 columns for `in_support` (betas: >= 0 here, their sum is checked apart).
        g = b["gamma"]
        self._theta_lo = np.array([b["logmstar"][0], 0, 0, 0, 0, b["fburst"][0], b["tburst"][0],
                                   g[0], g[0], b["tau_bc"][0], b["tau_ism"][0], b["n_dust"][0]], dtype=float)
        self._theta_hi = np.array([b["logmstar"][1], np.inf, np.inf, np.inf, np.inf, b["fburst"][1],
                                   b["tburst"][1], g[1], g[1], b["tau_bc"][1], b["tau_ism"][1], b["n_dust"][1]])

    def to_dict(self) -> dict:
        """JSON-serialisable description (stored in model artifacts); ``unconstrained`` only when it
        is not the logit, which descriptions without it imply."""
        return {"names": list(self.names), "dirichlet_alpha": [1, 1, 1, 1],
                **{k: list(v) for k, v in self.bounds.items()},
                **({"unconstrained": self.unconstrained} if self.unconstrained != "logit" else {})}

    @classmethod
    def from_dict(cls, d: dict) -> "Prior":
        keys = ("logmstar", "fburst", "tburst", "gamma", "tau_bc", "tau_ism", "n_dust")
        return cls(**{k: tuple(d[k]) for k in keys}, unconstrained=d.get("unconstrained", "logit"))

    def with_unconstrained(self, unconstrained: str) -> "Prior":
        """The same prior over theta with another map to the unconstrained coordinates."""
        return Prior(**self.bounds, unconstrained=unconstrained)

    def __eq__(self, other):
        """The same distribution over theta (the unconstrained map aside)."""
        return type(other) is Prior and self.bounds == other.bounds

    @property
    def sed_prior(self) -> "Prior":
        """The prior over the SED model's 12 parameters (itself; `PriorWithRedshift` has one inside)."""
        return self

    def __repr__(self):
        return (f"Prior({', '.join(f'{k}={v}' for k, v in self.bounds.items())}"
                + (f", unconstrained={self.unconstrained!r})" if self.unconstrained != "logit" else ")"))

    # ------------------------------------------------------------------ sampling
    def sample(self, n: int, seed=None) -> np.ndarray:
        """Draw ``n`` parameter vectors, shape (n, 12), float64, in `PARAM_NAMES` order."""
        rng = np.random.default_rng(seed)
        u = rng.uniform(size=(int(n), 11))
        return self._from_box(self._lo + u * (self._hi - self._lo))

    # ------------------------------------------------------------------ support
    def in_support(self, theta) -> np.ndarray:
        """Boolean (n,): finite and inside the prior (NaN/inf rows are False)."""
        theta = self.check(theta)
        with np.errstate(invalid="ignore"):
            inside = (theta >= self._theta_lo) & (theta <= self._theta_hi)    # NaN compares False
            ok = np.all(inside & np.isfinite(theta), axis=1)
            ok &= np.abs(theta[:, 1:5].sum(axis=1) - 1) < _SIMPLEX_ATOL
        return ok

    def log_prob(self, theta) -> np.ndarray:
        """Log prior density of the 11 free coordinates (beta4 = 1 - beta1 - beta2 - beta3).

        Rows outside the support get ``-inf``.
        """
        theta = self.check(theta)
        ok = self.in_support(theta)
        lp = np.full(len(theta), -np.inf)
        b = self.bounds
        const = sum(-np.log(b[k][1] - b[k][0]) for k in
                    ("logmstar", "fburst", "tburst", "tau_bc", "tau_ism", "n_dust"))
        const += _LOG_FLAT_DIRICHLET
        glo, ghi = b["gamma"]
        g = theta[ok, 7:9]
        lp[ok] = const - np.sum(np.log(g * np.log(ghi / glo)), axis=1)
        return lp

    # ------------------------------------------------------------------ reparameterisation
    def _to_box(self, theta: np.ndarray) -> np.ndarray:
        """theta (n, 12) -> box coordinates (n, 11), each in [lo, hi]."""
        b1, b2, b3 = theta[:, 1], theta[:, 2], theta[:, 3]
        with np.errstate(divide="ignore", invalid="ignore"):
            f1 = b1
            f2 = np.where(1 - b1 > 0, b2 / (1 - b1), 0.0)
            f3 = np.where(1 - b1 - b2 > 0, b3 / (1 - b1 - b2), 0.0)
        # Betancourt (2012) warp: stick fractions f_k ~ Beta(1, 4-k) under the flat
        # Dirichlet, so z_k = 1 - (1 - f_k)^(4-k) is uniform on [0, 1].
        z = np.stack([1 - (1 - f1) ** 3, 1 - (1 - f2) ** 2, f3], axis=1)
        return np.column_stack([theta[:, 0], np.clip(z, 0, 1), theta[:, 5], theta[:, 6],
                                np.log10(theta[:, 7:9]), theta[:, 9:12]])

    def _from_box(self, box, xp=np):
        """Box coordinates (n, 11) -> theta (n, 12); ``xp``: numpy, or torch for `from_unconstrained_torch`."""
        z1, z2, z3 = box[:, 1], box[:, 2], box[:, 3]
        f1 = 1 - (1 - z1) ** (1 / 3)
        f2 = 1 - xp.sqrt(1 - z2)
        f3 = z3
        b1 = f1
        b2 = (1 - b1) * f2
        b3 = (1 - b1 - b2) * f3
        b4 = xp.clip(1 - b1 - b2 - b3, 0.0, None)
        glo, ghi = self.bounds["gamma"]
        # clip away floating-point round-off at the bounds (e.g. 10**log10(lo) < lo)
        return xp.column_stack([box[:, 0], b1, b2, b3, b4, box[:, 4], box[:, 5],
                                xp.clip(10.0 ** box[:, 6:8], glo, ghi), box[:, 8:11]])

    def to_unconstrained(self, theta) -> np.ndarray:
        """Map theta (n, 12) inside the prior to u in R^11. Raises for rows outside."""
        theta = self.require_support(theta)
        s = (self._to_box(theta) - self._lo) / (self._hi - self._lo)
        return _unit_to_real(np.clip(s, 1e-15, 1 - 1e-15), self.unconstrained)

    def from_unconstrained(self, u) -> np.ndarray:
        """Map u (n, 11) in R^11 to theta (n, 12); always inside the prior."""
        u = np.asarray(u, dtype=float)
        if u.ndim != 2 or u.shape[1] != self.ndim_unconstrained:
            raise ValueError(f"u must have shape (n, {self.ndim_unconstrained}), got {u.shape}")
        if not np.all(np.isfinite(u)):
            raise ValueError("u contains NaN/inf")
        box = np.clip(self._lo + _real_to_unit(u, self.unconstrained) * (self._hi - self._lo), self._lo, self._hi)
        return self._from_box(box)

    def from_unconstrained_torch(self, u):
        """`from_unconstrained` for a torch tensor u (n, 11), differentiable: for training losses on
        theta (`sedflow.train.calibration_moments`). The box coordinates stay 1e-6 inside their
        bounds, where the stick-breaking map's derivative is finite."""
        import torch

        lo, hi = (torch.as_tensor(a, dtype=u.dtype) for a in (self._lo, self._hi))
        s = _real_to_unit_torch(u, self.unconstrained).clamp(1e-6, 1 - 1e-6)
        return self._from_box(lo + s * (hi - lo), xp=torch)

    def from_unit_cube(self, s) -> np.ndarray:
        """Map s (n, 11) in [0, 1]^11, uniform, to theta (n, 12) distributed as the prior (the prior
        transform of nested samplers: the box coordinates are uniform under the prior)."""
        s = np.asarray(s, dtype=float)
        if s.ndim != 2 or s.shape[1] != self.ndim_unconstrained:
            raise ValueError(f"s must have shape (n, {self.ndim_unconstrained}), got {s.shape}")
        return self._from_box(np.clip(self._lo + s * (self._hi - self._lo), self._lo, self._hi))

    def to_unit_cube(self, theta) -> np.ndarray:
        """Map theta (n, 12) inside the prior to s (n, 11) in [0, 1]^11: the inverse of `from_unit_cube`."""
        theta = self.require_support(theta)
        return np.clip((self._to_box(theta) - self._lo) / (self._hi - self._lo), 0.0, 1.0)

    def log_abs_det_jacobian(self, theta) -> np.ndarray:
        """log |det du/dtheta| over the 11 free coordinates, shape (n,).

        So that log p(theta) = log p_u(u) + log_abs_det_jacobian(theta).
        """
        theta = self.require_support(theta)
        box = self._to_box(theta)
        s = np.clip((box - self._lo) / (self._hi - self._lo), 1e-300, 1 - 1e-16)
        # s -> u (`_log_du_ds`); box -> s: 1 / (hi - lo)
        lj = np.sum(_log_du_ds(s, self.unconstrained) - np.log(self._hi - self._lo), axis=1)
        # Triangular map (b1, b2, b3) -> (z1, z2, z3), z1 = 1 - (1 - b1)^3, z2 = 1 - (1 - b2/(1 - b1))^2,
        # z3 = b3 / (1 - b1 - b2): its diagonal terms 3 r1^2, 2 r2 / r1^2 and 1 / r2 (r1 = 1 - b1,
        # r2 = 1 - b1 - b2) multiply to 6, the density of the flat Dirichlet that this map sends to
        # the uniform cube; constant, so also on the simplex's faces (beta1 = 1).
        lj += _LOG_FLAT_DIRICHLET
        # log10 gamma: d/dg = 1 / (g ln 10)
        lj += np.sum(-np.log(theta[:, 7:9] * np.log(10)), axis=1)
        return lj

    def log_prob_unconstrained(self, u) -> np.ndarray:
        """Log density of u under the prior pushed to R^11 (standard logistic or normal per axis)."""
        return _unconstrained_log_prob(u, self.unconstrained)


class PriorWithRedshift(_RowChecks):
    """The joint prior of the 12 SED parameters and the redshift, for models and samplers that infer z
    (photometric redshifts; Hahn & Melchior 2022, Sec. 6): ``sed_prior`` times z ~ U(z_min, z_max],
    independent. Column 12 of theta is z; the 12th unconstrained coordinate is
    logit((z - z_min) / (z_max - z_min)) (probit for a ``sed_prior`` with ``unconstrained="probit"``),
    distributed under the prior like the other eleven.
    Draws never fall below `Z_FLOOR` (fluxes diverge as z -> 0). Same interface as `Prior`.

    Example
    -------
    >>> joint = PriorWithRedshift(Prior(), (0.0, 0.6))
    >>> theta = joint.sample(3, seed=0)
    >>> theta.shape, joint.names[-1]
    ((3, 13), 'z')
    >>> np.allclose(joint.from_unconstrained(joint.to_unconstrained(theta)), theta)
    True
    """

    def __init__(self, sed_prior: Prior, z_range):
        lo, hi = map(float, z_range)
        if not 0 <= lo < hi:
            raise ValueError(f"the redshift prior needs 0 <= z_min < z_max, got {(lo, hi)}")
        self.sed_prior, self.z_range = sed_prior, (lo, hi)
        self._z_floor = max(lo, Z_FLOOR)
        self.names = tuple(sed_prior.names) + ("z",)
        self.ndim, self.ndim_unconstrained = sed_prior.ndim + 1, sed_prior.ndim_unconstrained + 1

    def to_dict(self) -> dict:
        return {**self.sed_prior.to_dict(), "names": list(self.names),
                "redshift": {"kind": "uniform", "range": list(self.z_range)}}

    def __eq__(self, other):
        return isinstance(other, PriorWithRedshift) and (self.sed_prior, self.z_range) == (other.sed_prior, other.z_range)

    def __repr__(self):
        return f"PriorWithRedshift({self.sed_prior!r}, z_range={self.z_range})"

    def _s(self, z):
        lo, hi = self.z_range
        return (z - lo) / (hi - lo)

    def sample(self, n: int, seed=None) -> np.ndarray:
        rng = np.random.default_rng(seed)
        theta = self.sed_prior.sample(n, seed=rng)
        lo, hi = self.z_range
        z = hi - (hi - lo) * rng.uniform(size=len(theta))           # on (lo, hi]
        return np.column_stack([theta, np.maximum(z, self._z_floor)])

    def in_support(self, theta) -> np.ndarray:
        theta = self.check(theta)
        with np.errstate(invalid="ignore"):
            z_ok = np.isfinite(theta[:, -1]) & (theta[:, -1] >= self.z_range[0]) & (theta[:, -1] <= self.z_range[1])
        return self.sed_prior.in_support(theta[:, :-1]) & z_ok

    def log_prob(self, theta) -> np.ndarray:
        theta = self.check(theta)
        lp = self.sed_prior.log_prob(theta[:, :-1]) - np.log(self.z_range[1] - self.z_range[0])
        return np.where(self.in_support(theta), lp, -np.inf)

    def to_unconstrained(self, theta) -> np.ndarray:
        theta = self.require_support(theta)
        return np.column_stack([self.sed_prior.to_unconstrained(theta[:, :-1]),
                                redshift_to_unconstrained(theta[:, -1], self.z_range, self.unconstrained)])

    def from_unconstrained(self, u) -> np.ndarray:
        u = np.asarray(u, dtype=float)
        if u.ndim != 2 or u.shape[1] != self.ndim_unconstrained:
            raise ValueError(f"u must have shape (n, {self.ndim_unconstrained}), got {u.shape}")
        lo, hi = self.z_range
        z = np.clip(lo + _real_to_unit(u[:, -1], self.unconstrained) * (hi - lo), self._z_floor, hi)
        return np.column_stack([self.sed_prior.from_unconstrained(u[:, :-1]), z])

    def from_unconstrained_torch(self, u):
        """`Prior.from_unconstrained_torch` with z (u's last column) last."""
        import torch

        lo, hi = self.z_range
        z = (lo + _real_to_unit_torch(u[:, -1], self.unconstrained) * (hi - lo)).clamp(self._z_floor, hi)
        return torch.column_stack([self.sed_prior.from_unconstrained_torch(u[:, :-1]), z])

    def from_unit_cube(self, s) -> np.ndarray:
        s = np.asarray(s, dtype=float)
        if s.ndim != 2 or s.shape[1] != self.ndim_unconstrained:
            raise ValueError(f"s must have shape (n, {self.ndim_unconstrained}), got {s.shape}")
        lo, hi = self.z_range
        z = np.clip(lo + s[:, -1] * (hi - lo), self._z_floor, hi)
        return np.column_stack([self.sed_prior.from_unit_cube(s[:, :-1]), z])

    def to_unit_cube(self, theta) -> np.ndarray:
        theta = self.require_support(theta)
        return np.column_stack([self.sed_prior.to_unit_cube(theta[:, :-1]), np.clip(self._s(theta[:, -1]), 0.0, 1.0)])

    def log_abs_det_jacobian(self, theta) -> np.ndarray:
        theta = self.require_support(theta)
        s = np.clip(self._s(theta[:, -1]), 1e-300, 1 - 1e-16)
        lj_z = _log_du_ds(s, self.unconstrained) - np.log(self.z_range[1] - self.z_range[0])
        return self.sed_prior.log_abs_det_jacobian(theta[:, :-1]) + lj_z

    def log_prob_unconstrained(self, u) -> np.ndarray:
        """Log density of u under the joint prior pushed to R^12 (standard logistic or normal per axis)."""
        return _unconstrained_log_prob(u, self.unconstrained)

    @property
    def unconstrained(self) -> str:
        return self.sed_prior.unconstrained


def _unit_to_real(s, kind: str) -> np.ndarray:
    """[0, 1] -> R: the logit, or the probit (inverse standard normal CDF)."""
    return logit(s) if kind == "logit" else ndtri(s)


def _real_to_unit(u, kind: str) -> np.ndarray:
    return expit(u) if kind == "logit" else ndtr(u)


def _real_to_unit_torch(u, kind: str):
    """`_real_to_unit` for torch tensors."""
    import torch

    return torch.sigmoid(u) if kind == "logit" else torch.special.ndtr(u)


def _log_du_ds(s, kind: str) -> np.ndarray:
    """log |du/ds| of `_unit_to_real`: logit 1 / (s (1 - s)); probit 1 / phi(u), phi the normal density."""
    if kind == "logit":
        return -np.log(s) - np.log1p(-s)
    return 0.5 * ndtri(s) ** 2 + 0.5 * np.log(2 * np.pi)


def _unconstrained_log_prob(u, kind: str) -> np.ndarray:
    """Sum over columns of the density of u when s is uniform: standard logistic (logit) or normal (probit)."""
    u = np.asarray(u, dtype=float)
    if kind == "logit":
        return np.sum(-u - 2 * np.logaddexp(0.0, -u), axis=1)
    return np.sum(-0.5 * u**2, axis=1) - 0.5 * u.shape[1] * np.log(2 * np.pi)


def redshift_to_unconstrained(z, z_range, unconstrained: str = "logit") -> np.ndarray:
    """The unconstrained coordinate of z in `PriorWithRedshift`: logit (or probit) of its place in ``z_range``."""
    lo, hi = z_range
    return _unit_to_real(np.clip((np.asarray(z, dtype=float) - lo) / (hi - lo), 1e-15, 1 - 1e-15), unconstrained)


def prior_from_dict(d: dict) -> Prior | PriorWithRedshift:
    """The prior an artifact or manifest records (`Prior.to_dict` / `PriorWithRedshift.to_dict`)."""
    base = Prior.from_dict(d)
    return PriorWithRedshift(base, d["redshift"]["range"]) if d.get("redshift") else base
