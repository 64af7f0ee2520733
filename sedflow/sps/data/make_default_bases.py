"""Generate sedflow's default NMF star-formation- and metallicity-history bases.

Running ``python sedflow/sps/data/make_default_bases.py`` deterministically
rewrites the three files in ``default_bases/`` next to this script, in the
file format of the PROVABGS tables (Hahn et al. 2023, ApJ 945, 16):

``sfh_t_int.txt``
    Lookback-time grid in Gyr, one value per line, in *descending* order
    (24 log-spaced points from 5 Myr to 1 Gyr, then 56 linear points from
    1 Gyr to 13.7 Gyr, so that young-star light is resolved).
``NMF_2basis_SFH_components_nowgt_lin_Nc4.txt``
    4 rows, each an SFH basis (SFR per unit formed mass, Gyr^-1) sampled on
    the grid in the same descending column order.
``NMF_2basis_Z_components_nowgt_lin_Nc2.txt``
    2 rows, each a metallicity-history basis on the same grid.

Consumers load them like PROVABGS: ``sfh = np.loadtxt(f)[:, ::-1]``,
``t = np.loadtxt(ft)[::-1]`` (ascending lookback) and reorder the SFH rows as
``sfh[[2, 0, 1, 3]]``. With the physical order B1 (youngest mass-weighted
age) .. B4 (oldest), the file rows are therefore written as [B2, B3, B1, B4].
The ZH rows are: row 0 the basis that dominates at large lookback (early
enrichment), row 1 the one that dominates at recent times.

Physics
-------
SFH library. Star-formation histories are log-normal in cosmic time t,
``SFR(t) ∝ exp(-(ln t - T0)^2 / (2 tau^2)) / t`` (Gladders et al. 2013,
ApJ 770, 64; Abramson et al. 2016, ApJ 832, 7). Diemer, Sparre, Abramson &
Torrey (2017, ApJ 839, 26) showed that this form fits the SFHs of Illustris
galaxies, with peak times t_peak = exp(T0 - tau^2) from ~1 Gyr to beyond the
present day and widths tau ~ 0.2-1.5. We draw ``N_SFH`` histories with
tau ~ U(0.2, 1.5) and t_peak log-uniform in [1, 30] Gyr, so the library holds
early, narrow (quenched) histories as well as broad, still-rising ones.
Cosmic time is t = t0 - t_lb with t0 the age of the Universe in Planck13
(``astropy.cosmology.Planck13``, 13.8 Gyr). Each SFH is normalised
analytically to unit mass formed over 0..t0 (the log-normal integrates to a
normal CDF).

ZH library. Each galaxy gets the enrichment law of a box whose gas mass grows
through net inflow in proportion to the stars formed, M_gas = M_gas,0
(1 + k F), with F(t) the fraction of the final stellar mass formed by t. In
the Z << yield limit, dZ = y dM_*/M_gas integrates to
``Z(t) = Z_final ln(1 + k F(t)) / ln(1 + k)``: k -> 0 gives Z ∝ F, larger k
front-loads the enrichment. We draw k log-uniform in [1, 10] and Z_final
log-uniform in [0.002, 0.03] (0.1-1.6 Z_sun with Z_sun = 0.019 as in FSPS and
PROVABGS), which spans the stellar mass-metallicity relation of Gallazzi et
al. (2005, MNRAS 362, 41).

Bases. Both libraries, sampled on the grid without weights, are factorised
with ``sklearn.decomposition.NMF`` (4 and 2 components, ``init='nndsvda'``,
fixed ``random_state``, single-threaded), so all bases are non-negative. SFH bases are
normalised to unit integral over lookback time (``np.trapezoid`` on the
ascending grid) and sorted by mass-weighted lookback age. ZH bases are scaled
to a maximum of ``ZH_MAX`` = 5, so a PROVABGS-range coefficient
gamma ~ 0.004 gives Z ~ 0.02.
"""
from pathlib import Path

import numpy as np
from astropy.cosmology import Planck13
from scipy.special import ndtr
from sklearn.decomposition import NMF
from threadpoolctl import threadpool_limits

SEED = 20170326  # numpy seed for the (T0, tau, k, Z_final) draws
N_SFH = 5000  # size of the SFH/ZH library
NMF_KW = dict(init="nndsvda", random_state=0, max_iter=5000, tol=1e-8)
ZH_MAX = 5.0  # maximum of each ZH basis
OUT_DIR = Path(__file__).resolve().parent / "default_bases"


def lookback_grid():
    """Ascending lookback-time grid in Gyr: log-spaced below 1 Gyr, linear above."""
    return np.concatenate([np.geomspace(0.005, 1.0, 24, endpoint=False),
                           np.linspace(1.0, 13.7, 56)])


def draw_library(t_lb, t0, rng):
    """Draw log-normal SFHs and their metallicity histories on ``t_lb``.

    Parameters
    ----------
    t_lb : ndarray, shape (N,)
        Ascending lookback times in Gyr (all < ``t0``).
    t0 : float
        Age of the Universe at z = 0 in Gyr.
    rng : numpy.random.Generator
        Source of the random draws.

    Returns
    -------
    sfr : ndarray, shape (N_SFH, N)
        SFR per unit mass formed over 0..t0, in Gyr^-1.
    z : ndarray, shape (N_SFH, N)
        Absolute metallicity Z(t) of the gas forming stars at each lookback.
    """
    tau = rng.uniform(0.2, 1.5, N_SFH)[:, None]
    t_peak = np.exp(rng.uniform(np.log(1.0), np.log(30.0), N_SFH))[:, None]
    k = np.exp(rng.uniform(np.log(1.0), np.log(10.0), N_SFH))[:, None]
    z_final = np.exp(rng.uniform(np.log(0.002), np.log(0.03), N_SFH))[:, None]
    t0_ln = np.log(t_peak) + tau**2  # T0 of the log-normal
    x = (np.log(t0 - t_lb) - t0_ln) / tau
    norm = ndtr((np.log(t0) - t0_ln) / tau)  # mass formed by t0
    sfr = np.exp(-0.5 * x**2) / (np.sqrt(2 * np.pi) * tau * (t0 - t_lb)) / norm
    frac = ndtr(x) / norm  # F(t): cumulative fraction of mass formed
    z = z_final * np.log1p(k * frac) / np.log1p(k)
    return sfr, z


def nmf_bases(library, n_components):
    """Return the non-negative NMF components of ``library`` (rows = histories).

    BLAS/OpenMP run single-threaded so that the summation order, and hence the
    written digits, do not depend on the machine's thread count.
    """
    with threadpool_limits(limits=1):
        return NMF(n_components=n_components, **NMF_KW).fit(library).components_


def main(out_dir=OUT_DIR):
    """Build the SFH and ZH bases and write them in PROVABGS format to ``out_dir``."""
    t_lb = lookback_grid()
    sfr, z = draw_library(t_lb, Planck13.age(0).value, np.random.default_rng(SEED))

    sfh = nmf_bases(sfr, 4)
    sfh /= np.trapezoid(sfh, t_lb, axis=1)[:, None]
    age = np.trapezoid(sfh * t_lb, t_lb, axis=1)
    b1, b2, b3, b4 = sfh[np.argsort(age)]  # youngest .. oldest

    zh = nmf_bases(z, 2)
    zh *= ZH_MAX / zh.max(axis=1, keepdims=True)
    centroid = np.trapezoid(zh * t_lb, t_lb, axis=1) / np.trapezoid(zh, t_lb, axis=1)
    zh = zh[np.argsort(-centroid)]  # early-dominated basis first

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fmt = "%.10e"
    np.savetxt(out_dir / "sfh_t_int.txt", t_lb[::-1], fmt=fmt)
    np.savetxt(out_dir / "NMF_2basis_SFH_components_nowgt_lin_Nc4.txt",
               np.stack([b2, b3, b1, b4])[:, ::-1], fmt=fmt)
    np.savetxt(out_dir / "NMF_2basis_Z_components_nowgt_lin_Nc2.txt",
               zh[:, ::-1], fmt=fmt)


if __name__ == "__main__":
    main()
