"""Star-formation and metallicity histories of the PROVABGS "NMF + burst" model.

Hahn et al. (2022, arXiv:2202.01809, Sec. 3.1; code ``provabgs.models.NMF``):

* Lookback time is cut into 42 bins with edges ``0, 10**(6.05 + 0.1 k - 9)`` Gyr for
  k = 0..40, and 13.8 Gyr, truncated at the age of the universe t_age(z).
* SFH(t) = sum_i beta_i B_i(t): each NMF basis is averaged over each (truncated) bin, and
  the sum is normalised to one unit of formed mass over 0..t_age.
* Burst: a fraction f_burst of the mass is formed at lookback time t_burst (an SSP of
  that age, PROVABGS ``_fsps_burst``); the NMF part is scaled by (1 - f_burst). If
  t_burst >= t_age there is no burst and f_burst is ignored.
* ZH(t) = gamma1 Z1(t) + gamma2 Z2(t) evaluated at bin mid-points, clipped to the MIST
  range [4.49e-5, 4.49e-2]; the burst has the metallicity ZH(t_burst).

The galaxy is therefore 43 stellar populations (42 bins + burst) with a formed mass,
an age and a metallicity each: `populations` returns them batched over galaxies.
`split_populations` gives the same populations in a compact form for mass-weighted sums
(the derived properties): the full bins have fixed ages, so only their masses and
metallicities are per galaxy, and the two free-age populations are kept apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

__all__ = ["LOOKBACK_EDGES", "BIN_MID", "N_BINS", "Z_MIN", "Z_MAX", "NMFBases", "Populations", "populations",
           "SplitPopulations", "split_populations", "formed_mass_fraction"]

LOOKBACK_EDGES = np.concatenate([[0.0], 10 ** (6.05 + 0.1 * np.arange(41) - 9.0), [13.8]])  # Gyr
N_BINS = LOOKBACK_EDGES.size - 1  # 42
BIN_MID = 0.5 * (LOOKBACK_EDGES[1:] + LOOKBACK_EDGES[:-1])  # ages of the full bins [Gyr]
Z_MIN, Z_MAX = 4.49043431e-05, 4.49043431e-02  # MIST metallicity limits used by PROVABGS

PROVABGS_FILES = {
    "sfh": "NMF_2basis_SFH_components_nowgt_lin_Nc4.txt",
    "zh": "NMF_2basis_Z_components_nowgt_lin_Nc2.txt",
    "t": "sfh_t_int.txt",
}
_T_FINE = np.linspace(0.0, 13.8, 27601)  # 0.5 Myr steps for the cumulative SFH integrals


def _interp_extrap(x, xp, fp):
    """Piecewise-linear interpolation with linear extrapolation at both ends
    (scipy's ``InterpolatedUnivariateSpline(k=1)``, as PROVABGS evaluates its bases)."""
    x = np.asarray(x, dtype=float)
    y = np.interp(x, xp, fp)
    lo, hi = x < xp[0], x > xp[-1]
    if lo.any():                     # extrapolation is rare: skip the (n,) temporaries otherwise
        y = np.where(lo, fp[0] + (x - xp[0]) * (fp[1] - fp[0]) / (xp[1] - xp[0]), y)
    if hi.any():
        y = np.where(hi, fp[-1] + (x - xp[-1]) * (fp[-1] - fp[-2]) / (xp[-1] - xp[-2]), y)
    return y


class IntervalLocator:
    """``clip(searchsorted(nodes, x, side="right") - 1, 0, n - 2)`` for increasing nodes, without
    a binary search (about 50 ns a key in numpy): uniform buckets half as wide as the closest
    node spacing hold at most one node, so the index at a bucket's start and one comparison
    with the next node give the answer. Falls back to the search if that takes > 2**20 buckets."""

    def __init__(self, nodes):
        self.nodes = np.asarray(nodes, dtype=float)
        self.last = self.nodes.size - 2                       # largest index returned
        self.width = np.diff(self.nodes).min() / 2
        n_buckets = (self.nodes[-1] - self.nodes[0]) / self.width + 2
        self.start = None
        if n_buckets <= 2**20:
            starts = self.nodes[0] + self.width * np.arange(int(n_buckets))
            self.start = np.clip(np.searchsorted(self.nodes, starts, side="right") - 1, 0, self.last)

    def __call__(self, x) -> np.ndarray:
        if self.start is None:
            return np.clip(np.searchsorted(self.nodes, x, side="right") - 1, 0, self.last)
        bucket = np.clip((x - self.nodes[0]) / self.width, 0, self.start.size - 1).astype(np.intp)
        i = self.start.take(bucket)
        return np.minimum(i + (x >= self.nodes.take(i + 1)), self.last)


def _interp_extrap_rows(x, locate: IntervalLocator, fps):
    """`_interp_extrap` of several rows fps (k, n_t) at once, on the nodes of ``locate``: (k, *x.shape)."""
    xp = locate.nodes
    j = locate(x)
    w = (x - xp.take(j)) / (xp.take(j + 1) - xp.take(j))   # not clipped: linear extrapolation at both ends
    lo = fps.take(j, axis=1)
    return lo + w * (fps.take(j + 1, axis=1) - lo)


@dataclass(frozen=True)
class NMFBases:
    """NMF bases of the SFH (4) and ZH (2) as functions of lookback time.

    Attributes
    ----------
    t_lookback : (n_t,) increasing lookback times [Gyr] the bases are sampled on.
    sfh : (4, n_t) SFH bases (any normalisation; the model renormalises).
    zh : (2, n_t) metallicity-history bases (absolute Z per unit gamma).
    source : provenance string.

    Example
    -------
    >>> bases = NMFBases.default()
    >>> bases.sfh.shape, bases.zh.shape
    ((4, ...), (2, ...))
    """

    t_lookback: np.ndarray
    sfh: np.ndarray
    zh: np.ndarray
    source: str

    def __post_init__(self):
        n = self.t_lookback.size
        if self.sfh.shape != (4, n) or self.zh.shape != (2, n):
            raise ValueError(f"need 4 SFH and 2 ZH bases sampled on {n} times, got "
                             f"{self.sfh.shape} and {self.zh.shape}")
        if not np.all(np.diff(self.t_lookback) > 0):
            raise ValueError("basis lookback times must be strictly increasing")
        if not (np.all(np.isfinite(self.sfh)) and np.all(np.isfinite(self.zh))):
            raise ValueError("NMF bases contain NaN/inf")

    @classmethod
    def from_provabgs_dir(cls, path) -> "NMFBases":
        """Read PROVABGS-format tables from a directory (MIT-licensed PROVABGS files, or ours).

        File orientation as in ``provabgs.models.NMF._load_NMF_bases``: each row is a basis
        sampled on ``sfh_t_int.txt``; both are reversed to increasing lookback time, and the
        SFH rows are reordered [2, 0, 1, 3].
        """
        path = Path(path)
        missing = [f for f in PROVABGS_FILES.values() if not (path / f).is_file()]
        if missing:
            raise FileNotFoundError(f"{path} lacks the NMF basis files {missing}")
        sfh = np.loadtxt(path / PROVABGS_FILES["sfh"], ndmin=2)[:, ::-1]
        zh = np.loadtxt(path / PROVABGS_FILES["zh"], ndmin=2)[:, ::-1]
        t = np.loadtxt(path / PROVABGS_FILES["t"])[::-1]
        if sfh.shape[0] != 4:
            raise ValueError(f"{path / PROVABGS_FILES['sfh']}: expected 4 SFH bases, got {sfh.shape[0]}")
        return cls(t_lookback=t, sfh=sfh[[2, 0, 1, 3]], zh=zh, source=str(path))

    @classmethod
    def default(cls) -> "NMFBases":
        """The project's own bases (``sedflow/sps/data/make_default_bases.py`` builds them)."""
        with resources.as_file(resources.files("sedflow.sps") / "data" / "default_bases") as p:
            bases = cls.from_provabgs_dir(p)
        return cls(bases.t_lookback, bases.sfh, bases.zh, source="sedflow default NMF bases")

    def sfh_at(self, t) -> np.ndarray:
        """SFH bases at lookback times t (Gyr), shape (4, *t.shape); negative values clipped to 0."""
        return np.stack([np.maximum(_interp_extrap(t, self.t_lookback, b), 0.0) for b in self.sfh])

    def zh_at(self, t) -> np.ndarray:
        """ZH bases at lookback times t, shape (2, *t.shape)."""
        return np.stack([_interp_extrap(t, self.t_lookback, b) for b in self.zh])

    def _fine_cumulative(self) -> np.ndarray:
        """int_0^t B_i on the fine grid _T_FINE (trapezoids), (4, n_fine); computed once."""
        cum = getattr(self, "_cum", None)
        if cum is None:
            b = self.sfh_at(_T_FINE)
            cum = np.concatenate([np.zeros((4, 1)),
                                  np.cumsum(0.5 * (b[:, 1:] + b[:, :-1]) * np.diff(_T_FINE), axis=1)], axis=1)
            object.__setattr__(self, "_cum", cum)
        return cum

    def cumulative_sfh(self, t) -> np.ndarray:
        """int_0^t B_i(t') dt' for each SFH basis, shape (4, *t.shape)."""
        t = np.asarray(t, dtype=float)
        return np.stack([np.interp(t, _T_FINE, c) for c in self._fine_cumulative()])

    def formed_mass(self, betas, t) -> np.ndarray:
        """sum_i betas[:, i] int_0^t B_i for betas (n, 4) and t (n,): `cumulative_sfh` weighted by
        the betas, with one look-up on the uniform fine grid shared by the four bases."""
        table = getattr(self, "_cum_rows", None)
        if table is None:            # row j: the four integrals at _T_FINE[j] and their steps to j + 1
            cum = self._fine_cumulative().T
            table = np.ascontiguousarray(np.concatenate([cum[:-1], np.diff(cum, axis=0)], axis=1))
            object.__setattr__(self, "_cum_rows", table)
        t = np.clip(t, 0.0, _T_FINE[-1])
        j = np.minimum((t / _T_FINE[1]).astype(np.intp), _T_FINE.size - 2)   # uniform grid: no search
        rows = table.take(j, axis=0)
        w = (t - _T_FINE.take(j)) / (_T_FINE.take(j + 1) - _T_FINE.take(j))
        return np.einsum("nk,nk->n", betas, rows[:, :4] + w[:, None] * rows[:, 4:])


@dataclass
class Populations:
    """The 43 stellar populations of a batch of galaxies (42 lookback bins + burst).

    Attributes
    ----------
    mass : (n, 43) formed mass per unit total formed mass (rows sum to 1).
    age : (n, 43) population ages [Gyr] (bin mid-points; the burst's is t_burst).
    metallicity : (n, 43) absolute Z.
    truncated_bin : (n,) index of the bin that contains t_age. Bins above it are empty
        (mass 0, age t_age; their metallicity is not meaningful).
    """

    mass: np.ndarray
    age: np.ndarray
    metallicity: np.ndarray
    truncated_bin: np.ndarray

    BURST = N_BINS  # column of the burst population


def _zh(gamma: np.ndarray, basis_at_t: np.ndarray) -> np.ndarray:
    """gamma (n, 2) and bases (2, n, m) -> clipped Z (n, m)."""
    z = np.einsum("nk,knm->nm", gamma, basis_at_t)
    return np.minimum(np.maximum(z, Z_MIN, out=z), Z_MAX, out=z)     # np.clip, without its wrapper's overhead


def _nmf_mass_fraction(cum_edges: np.ndarray, betas: np.ndarray) -> np.ndarray:
    """(4, n, m) cumulative basis integrals at edges, betas (n, 4) -> mass per interval (n, m-1)."""
    per_basis = np.diff(cum_edges, axis=2)                     # (4, n, m-1)
    mass = np.einsum("nk,knm->nm", betas, per_basis)
    total = np.einsum("nk,kn->n", betas, cum_edges[:, :, -1] - cum_edges[:, :, 0])
    return mass / total[:, None]


def _truncated_bin(tage: np.ndarray) -> np.ndarray:
    """Index of the lookback bin holding t_age (np.minimum/maximum: np.clip's wrapper costs ~10 us a call)."""
    return np.minimum(np.maximum(np.searchsorted(LOOKBACK_EDGES, tage, side="left") - 1, 0), N_BINS - 1)


def _burst_fraction(fburst: np.ndarray, tburst: np.ndarray, tage: np.ndarray) -> np.ndarray:
    """f_burst where the burst happened after the big bang (t_burst < t_age), else 0."""
    return np.where(tburst < tage, fburst, 0.0)


def populations(theta: np.ndarray, tage: np.ndarray, bases: NMFBases) -> Populations:
    """Stellar populations of galaxies with parameters theta (n, 12) and ages tage (n,) [Gyr]."""
    n = theta.shape[0]
    betas, fburst, tburst, gamma = theta[:, 1:5], theta[:, 5], theta[:, 6], theta[:, 7:9]

    fixed = _fixed_edge_tables(bases)
    beyond = LOOKBACK_EDGES[None, :] >= tage[:, None]                   # edges truncated to t_age
    itrunc = _truncated_bin(tage)
    rows = np.arange(n)
    # cumulative basis integrals at the truncated edges: fixed values below t_age, C(t_age) above
    cum_edges = np.where(beyond[None], bases.cumulative_sfh(tage)[:, :, None], fixed["cum"][:, None, :])
    nmf_mass = _nmf_mass_fraction(cum_edges, betas)                     # (n, 42)
    fb = _burst_fraction(fburst, tburst, tage)

    mass = np.empty((n, N_BINS + 1))
    np.multiply((1.0 - fb)[:, None], nmf_mass, out=mass[:, :N_BINS])
    mass[:, N_BINS] = fb
    age = np.empty_like(mass)
    np.copyto(age[:, :N_BINS], fixed["mid"])
    np.copyto(age[:, :N_BINS], tage[:, None], where=beyond[:, 1:])
    trunc_age = 0.5 * (LOOKBACK_EDGES[itrunc] + tage)                   # mid-point of the truncated bin
    age[rows, itrunc] = trunc_age
    age[:, N_BINS] = tburst
    # ZH bases: tabulated at the fixed mid-points, evaluated only where the age is free
    zb = np.empty((2, n, N_BINS + 1))
    zb[:, :, :N_BINS] = fixed["zh_mid"][:, None, :]
    free = np.empty((n, 2))
    free[:, 0], free[:, 1] = trunc_age, tburst
    zfree = bases.zh_at(free)                                           # (2, n, 2)
    zb[:, rows, itrunc] = zfree[:, :, 0]
    zb[:, :, N_BINS] = zfree[:, :, 1]                                   # burst column
    metallicity = _zh(gamma, zb)
    return Populations(mass=mass, age=age, metallicity=metallicity, truncated_bin=itrunc)


def _fixed_edge_tables(bases: NMFBases) -> dict:
    """Basis values that do not depend on the galaxy: cumulative SFH at the 43 edges, ZH at the 42 mid-points,
    NMF mass of the full bins, and a locator on the basis times."""
    tables = getattr(bases, "_fixed", None)
    if tables is None:
        tables = {"cum": bases.cumulative_sfh(LOOKBACK_EDGES), "mid": BIN_MID, "zh_mid": bases.zh_at(BIN_MID)}
        tables["bin_mass"] = np.diff(tables["cum"], axis=1)           # (4, 42) int_bin B_i of the full bins
        tables["locate_t"] = IntervalLocator(bases.t_lookback)
        object.__setattr__(bases, "_fixed", tables)
    return tables


@dataclass
class SplitPopulations:
    """The populations of `populations` in a compact form for mass-weighted sums.

    The full bins (below the one that holds t_age) have the fixed ages ``BIN_MID``; the
    truncated bin and the burst have free ages.

    Attributes
    ----------
    full_mass : (n, 42) formed mass per unit total formed mass of the full bins; 0 in the
        truncated bin and beyond.
    full_metallicity : (n, 42) absolute Z at the bin mid-points (meaningful where full_mass > 0).
    free_mass, free_age, free_metallicity : (n, 2) the truncated bin and the burst.
    truncated_bin : (n,) as in `Populations`.
    """

    full_mass: np.ndarray
    full_metallicity: np.ndarray
    free_mass: np.ndarray
    free_age: np.ndarray
    free_metallicity: np.ndarray
    truncated_bin: np.ndarray

    def weighted_sum(self, full_value: np.ndarray, free_value: np.ndarray) -> np.ndarray:
        """sum over the 43 populations of mass x value: full_value (42,) or (n, 42), free_value (n, 2)."""
        if full_value.ndim == 1:
            full = self.full_mass @ full_value
        else:
            full = np.einsum("nk,nk->n", self.full_mass, full_value)
        return full + np.einsum("nk,nk->n", self.free_mass, free_value)


def split_populations(theta: np.ndarray, tage: np.ndarray, bases: NMFBases) -> SplitPopulations:
    """`populations` as `SplitPopulations`: the same masses, ages and metallicities without (n, 43) gathers."""
    betas, fburst, tburst, gamma = theta[:, 1:5], theta[:, 5], theta[:, 6], theta[:, 7:9]
    fixed = _fixed_edge_tables(bases)
    itrunc = _truncated_bin(tage)
    fb = _burst_fraction(fburst, tburst, tage)
    # NMF mass per unit total formed mass: betas scaled by (1 - f_burst) / sum_i beta_i int_0^t_age B_i
    total = bases.formed_mass(betas, tage)
    scaled = betas * ((1.0 - fb) / total)[:, None]
    full_mass = scaled @ fixed["bin_mass"]                               # (n, 42)
    k0 = itrunc.min(initial=N_BINS)                                      # bins below k0 are full in every row
    full_mass[:, k0:] *= np.arange(k0, N_BINS) < itrunc[:, None]
    trunc_mass = (1.0 - fb) - np.einsum("nk,kn->n", scaled, fixed["cum"][:, itrunc])
    full_metallicity = gamma @ fixed["zh_mid"]
    np.clip(full_metallicity, Z_MIN, Z_MAX, out=full_metallicity)
    free_age = np.stack([0.5 * (LOOKBACK_EDGES[itrunc] + tage), tburst], axis=1)
    return SplitPopulations(
        full_mass=full_mass,
        full_metallicity=full_metallicity,
        free_mass=np.stack([trunc_mass, fb], axis=1),
        free_age=free_age,
        free_metallicity=_zh(gamma, _interp_extrap_rows(free_age, fixed["locate_t"], bases.zh)),
        truncated_bin=itrunc)


def formed_mass_fraction(theta: np.ndarray, tage: np.ndarray, bases: NMFBases, dt) -> np.ndarray:
    """Fraction of the total formed mass formed within the last ``dt`` Gyr (PROVABGS ``avgSFR``):
    (n,) for a scalar dt, (n, k) for k windows dt."""
    betas, fburst, tburst = theta[:, 1:5], theta[:, 5], theta[:, 6]
    dt = np.asarray(dt, dtype=float)
    windows = dt.reshape(-1)
    total = bases.formed_mass(betas, tage)[:, None]
    # int_0^dt B_i is the same for every galaxy; a window longer than t_age holds all the mass
    formed = np.where(tage[:, None] > windows, betas @ bases.cumulative_sfh(windows), total)
    fb = _burst_fraction(fburst, tburst, tage)[:, None]
    frac = (1.0 - fb) * formed / total + np.where(tburst[:, None] < windows, fb, 0.0)
    return frac.reshape(tage.shape + dt.shape)
