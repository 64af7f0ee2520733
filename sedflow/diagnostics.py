"""Calibration diagnostics over posterior samples (validation stage, Hahn & Melchior 2022, Sec. 5).

Pure functions of ``samples`` (n_sims, n_samples, n_params) drawn from the posteriors of
held-out simulations and their ``truths`` (n_sims, n_params), numpy arrays or torch
tensors; how the samples were made does not matter (as in ``sbi.diagnostics``).

- Simulation-based calibration, SBC (Talts et al. 2018, arXiv:1804.06788): the rank of
  each true value among its posterior samples is uniform on {0, ..., n_samples} for a
  calibrated posterior. :func:`sbc_ranks`, :func:`sbc_metrics`, :func:`plot_rank_histograms`.
- p-p plot (the paper's Fig. 3): the CDF over simulations of the percentile of the true
  value within its marginal posterior lies on the diagonal. :func:`pp_curve`,
  :func:`max_pp_deviation`, :func:`plot_pp`.
- How often a calibrated posterior passes those tests on the same simulations: :func:`null_ranks`
  (each posterior's own draws as truths), :func:`max_pp_deviation_of_ranks`.
- Empirical coverage of central credible intervals: :func:`coverage`.
- Mean posterior variance over the truths' variance, <= 1 for a calibrated posterior by the law of
  total variance: :func:`variance_ratio`.
- TARP expected coverage (Lemos et al. 2023, arXiv:2302.03026), a joint test, through
  sbi's own implementation: :func:`tarp`, :func:`plot_tarp`.
- :func:`calibration_report` gathers the numbers in a JSON-serialisable dict.
- Photometric redshifts against spectroscopic ones: :func:`photoz_metrics` (sigma_NMAD,
  outlier fraction, bias, PIT and its KS test), :func:`plot_photoz`.

Example
-------
>>> rng = np.random.default_rng(0)
>>> truths = rng.normal(size=(1000, 2))
>>> samples = rng.normal(size=(1000, 200, 2))  # the prior is the posterior of no data
>>> report = calibration_report(samples, truths, names=["a", "b"])
>>> report["parameters"]["a"]["sbc_ks_pvalue"] > 1e-3
True
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import stats

from sedflow.prior import PARAM_NAMES, UNCONSTRAINED_NAMES

__all__ = [
    "sbc_ranks",
    "sbc_metrics",
    "pp_curve",
    "max_pp_deviation",
    "max_pp_deviation_of_ranks",
    "null_ranks",
    "coverage",
    "variance_ratio",
    "TarpResult",
    "tarp",
    "calibration_report",
    "plot_pp",
    "plot_rank_histograms",
    "plot_tarp",
    "nmad",
    "photoz_metrics",
    "plot_photoz",
]

_PP_LEVELS = np.linspace(0.0, 1.0, 1001)


PHOTOZ_OUTLIER = 0.15     # |dz| / (1 + z) beyond which a photo-z is an outlier (e.g. Beck et al. 2016, MNRAS 460, 1371)


# --------------------------------------------------------------------------- inputs
def _numpy(a: Any) -> np.ndarray:
    if hasattr(a, "detach"):  # torch.Tensor
        a = a.detach().cpu().numpy()
    return np.asarray(a)


def _check(samples: Any, truths: Any) -> tuple[np.ndarray, np.ndarray]:
    s, t = _numpy(samples), _numpy(truths)
    if s.ndim != 3 or t.ndim != 2 or s.shape[0] != t.shape[0] or s.shape[2] != t.shape[1]:
        raise ValueError(
            f"expected samples (n_sims, n_samples, n_params) and truths (n_sims, n_params), "
            f"got {s.shape} and {t.shape}"
        )
    if not (np.isfinite(s).all() and np.isfinite(t).all()):
        raise ValueError("samples and truths must be finite (drop or flag failed posteriors first)")
    return s, t


def _names(names: Sequence[str] | None, n_params: int) -> list[str]:
    if names is not None:
        if len(names) != n_params:
            raise ValueError(f"{len(names)} names for {n_params} parameters")
        return [str(n) for n in names]
    if n_params == len(PARAM_NAMES):
        return list(PARAM_NAMES)
    if n_params == len(UNCONSTRAINED_NAMES):
        return list(UNCONSTRAINED_NAMES)
    return [f"theta{i}" for i in range(n_params)]


# --------------------------------------------------------------------------- SBC
def sbc_ranks(samples: Any, truths: Any) -> np.ndarray:
    """SBC ranks: the number of posterior samples strictly below the true value.

    Same convention as sbi's ``run_sbc(..., reduce_fns="marginals")`` (``<``, per marginal);
    computed vectorised here because sbi's rank code (``sbi.diagnostics.sbc._run_sbc``) is
    private and loops over simulations in Python.

    Parameters
    ----------
    samples : (n_sims, n_samples, n_params) array or tensor
    truths : (n_sims, n_params) array or tensor

    Returns
    -------
    ranks : (n_sims, n_params) int64 array, values in {0, ..., n_samples}
    """
    s, t = _check(samples, truths)
    return (s < t[:, None, :]).sum(axis=1, dtype=np.int64)


def _rank_bins(n_samples: int, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Bin index of every rank value 0..n_samples, and each bin's share under uniformity."""
    if not 1 <= n_bins <= n_samples + 1:
        raise ValueError(f"n_bins must be in [1, n_samples + 1], got {n_bins}")
    idx = (np.arange(n_samples + 1) * n_bins) // (n_samples + 1)
    share = np.bincount(idx, minlength=n_bins) / (n_samples + 1)
    return idx, share


def sbc_metrics(ranks: Any, n_samples: int, n_bins: int = 20, seed: int = 0) -> dict[str, np.ndarray]:
    """Uniformity tests of SBC ranks, per parameter (Talts et al. 2018, Sec. 4).

    KS test: ranks are discrete, uniform on {0, ..., n_samples} for a calibrated posterior.
    We test the randomised PIT ``u = (rank + V) / (n_samples + 1)``, ``V ~ U(0, 1)``, which
    is then exactly U(0, 1), with ``scipy.stats.kstest`` (``seed`` fixes V). sbi's
    ``check_uniformity_frequentist`` (``ks_pvalue_sbi``) compares the raw ranks with a
    continuous U(0, n_samples), which is off by up to ~1/n_samples in the CDF; the two
    agree for n_samples >> sqrt(n_sims).

    chi^2 test: the ranks in ``n_bins`` equal-width bins of {0, ..., n_samples}, expected
    counts proportional to the number of rank values in each bin (exact when
    n_bins does not divide n_samples + 1). Keep n_sims / n_bins >~ 20.

    Parameters
    ----------
    ranks : (n_sims, n_params) array or tensor
        From :func:`sbc_ranks`.
    n_samples : int
        Posterior samples per simulation used for the ranks.
    n_bins : int
        Histogram bins of the chi^2 test.
    seed : int
        Seed of the randomisation V.

    Returns
    -------
    dict of (n_params,) arrays
        ``ks_stat``, ``ks_pvalue``, ``ks_pvalue_sbi``, ``chi2_stat``, ``chi2_pvalue``.
    """
    from sbi.diagnostics.sbc import check_uniformity_frequentist

    r = _numpy(ranks).astype(np.int64)
    if r.ndim != 2 or r.min() < 0 or r.max() > n_samples:
        raise ValueError(f"ranks must be (n_sims, n_params) in [0, {n_samples}]")
    u = (r + np.random.default_rng(seed).random(r.shape)) / (n_samples + 1)
    ks = [stats.kstest(col, "uniform") for col in u.T]
    idx, share = _rank_bins(n_samples, n_bins)
    counts = np.stack([np.bincount(idx[col], minlength=n_bins) for col in r.T])
    chi2 = [stats.chisquare(c, share * r.shape[0]) for c in counts]
    import torch

    sbi_p = check_uniformity_frequentist(torch.as_tensor(r, dtype=torch.float32), n_samples)
    return {
        "ks_stat": np.array([k.statistic for k in ks]),
        "ks_pvalue": np.array([k.pvalue for k in ks]),
        "ks_pvalue_sbi": sbi_p.numpy().astype(np.float64),
        "chi2_stat": np.array([c.statistic for c in chi2]),
        "chi2_pvalue": np.array([c.pvalue for c in chi2]),
    }


# --------------------------------------------------------------------------- p-p and coverage
def pp_curve(samples: Any, truths: Any, levels: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """The p-p curve per parameter (the paper's Fig. 3).

    The percentile of each true value within its marginal posterior is the fraction of
    samples below it (``rank / n_samples``); the curve is the empirical CDF of those
    percentiles over simulations, evaluated at nominal ``levels``. A calibrated posterior
    gives the diagonal; over-confident posteriors an S-shape below it at low levels,
    biased ones a curve above or below the diagonal everywhere.

    Parameters
    ----------
    samples : (n_sims, n_samples, n_params) array or tensor
    truths : (n_sims, n_params) array or tensor
    levels : (n_levels,) array, optional
        Nominal levels in [0, 1]; default 1001 points.

    Returns
    -------
    levels : (n_levels,) array
    cdf : (n_levels, n_params) array
    """
    s, t = _check(samples, truths)
    return _pp_of_ranks(sbc_ranks(s, t), s.shape[1], levels)


def _pp_of_ranks(ranks: np.ndarray, n_samples: int, levels: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """The p-p curve of SBC ranks: the CDF over simulations of ``rank / n_samples`` at ``levels``."""
    levels = _PP_LEVELS if levels is None else np.asarray(levels, dtype=float)
    pct = np.sort(ranks / n_samples, axis=0)
    cdf = np.stack([np.searchsorted(p, levels, side="right") for p in pct.T], axis=1) / len(pct)
    return levels, cdf


def max_pp_deviation(samples: Any, truths: Any, levels: Any = None) -> np.ndarray:
    """Largest distance of the p-p curve from the diagonal, per parameter.

    ``max |CDF(level) - level|`` over the levels of :func:`pp_curve` (a KS statistic on a
    grid). For a calibrated posterior ``sqrt(n_sims) * deviation`` follows the Kolmogorov
    distribution: median 0.83 / sqrt(n_sims), 95th percentile 1.36 / sqrt(n_sims)
    (0.027 and 0.043 at 1000 simulations), plus up to ~1 / n_samples from discreteness.

    Returns
    -------
    (n_params,) array
    """
    s, t = _check(samples, truths)
    return max_pp_deviation_of_ranks(sbc_ranks(s, t), s.shape[1], levels)


def max_pp_deviation_of_ranks(ranks: Any, n_samples: int, levels: Any = None) -> np.ndarray:
    """:func:`max_pp_deviation` from SBC ranks (``(n_sims, n_params)`` in {0, ..., n_samples}),
    e.g. those of :func:`null_ranks`.

    Returns
    -------
    (n_params,) array
    """
    levels, cdf = _pp_of_ranks(_numpy(ranks), n_samples, levels)
    return np.abs(cdf - levels[:, None]).max(axis=0)


def null_ranks(samples: Any, n_replicates: int) -> np.ndarray:
    """SBC ranks that a calibrated posterior gives on the same simulations: the null of every
    rank-based calibration test, with these simulations' number, draws and the dependence
    between their parameters.

    Replicate k takes draw k of each simulation's posterior as its truth and ranks it among the
    other ``n_samples - 1`` draws (``<``, as :func:`sbc_ranks`). Truth and draws are then
    independent draws of one distribution, whatever that distribution is, so the ranks are
    uniform on {0, ..., n_samples - 1} (Talts et al. 2018, Sec. 4, with the posterior as its
    own prior). :func:`sbc_metrics` and :func:`max_pp_deviation_of_ranks` over the replicates
    give how often a calibrated posterior passes a threshold on these simulations, e.g. a p-p
    deviation < 0.05 on 600 simulations, which a calibrated posterior misses for one parameter
    about 1 time in 10 (Kolmogorov distribution at ``sqrt(600) * 0.05 = 1.22``) and for the
    largest of 12 parameters about 2 times in 3.

    Parameters
    ----------
    samples : (n_sims, n_samples, n_params) array or tensor
        Exchangeable draws (the order of the draws must not depend on their values).
    n_replicates : int
        Draws used as truths, ``1 <= n_replicates <= n_samples``; replicates share the other
        draws, so they are not independent, only each exactly uniform.

    Returns
    -------
    (n_replicates, n_sims, n_params) int64 array, values in {0, ..., n_samples - 1}

    Example
    -------
    >>> samples = np.random.default_rng(0).normal(size=(300, 500, 2))
    >>> ranks = null_ranks(samples, 20)
    >>> p = np.array([sbc_metrics(r, 499)["ks_pvalue"] for r in ranks])
    >>> p.shape
    (20, 2)
    """
    s = _numpy(samples)
    if s.ndim != 3:
        raise ValueError(f"expected samples (n_sims, n_samples, n_params), got {s.shape}")
    if not 1 <= n_replicates <= s.shape[1]:
        raise ValueError(f"n_replicates must be in [1, {s.shape[1]}], got {n_replicates}")
    ranks = np.empty((n_replicates, s.shape[0], s.shape[2]), dtype=np.int64)
    for j in range(s.shape[2]):
        col = np.sort(s[:, :, j], axis=1)
        for i in range(s.shape[0]):
            # a draw is not below itself, so the count among all draws is the count among the others
            ranks[:, i, j] = np.searchsorted(col[i], s[i, :n_replicates, j], side="left")
    return ranks


def coverage(samples: Any, truths: Any, levels: Sequence[float] = (0.68, 0.95)) -> np.ndarray:
    """Empirical coverage of central credible intervals, per parameter.

    The fraction of simulations whose true value lies in the central ``level`` interval
    ``[q_(1-level)/2, q_(1+level)/2]`` of its marginal posterior samples. Calibrated:
    ``level`` +- sqrt(level (1 - level) / n_sims).

    Parameters
    ----------
    samples : (n_sims, n_samples, n_params) array or tensor
    truths : (n_sims, n_params) array or tensor
    levels : sequence of float in (0, 1)

    Returns
    -------
    (len(levels), n_params) array
    """
    s, t = _check(samples, truths)
    out = []
    for lev in levels:
        lo, hi = np.quantile(s, [(1 - lev) / 2, (1 + lev) / 2], axis=1)
        out.append(((t >= lo) & (t <= hi)).mean(axis=0))
    return np.array(out)


def variance_ratio(samples: Any, truths: Any, n_boot: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean posterior variance over the variance of the truths, per parameter, and its bootstrap SE.

    By the law of total variance, E_x[Var(theta | x)] = Var(theta) - Var(E[theta | x]) <= Var(theta):
    averaged over the simulations, a calibrated posterior is never wider than the distribution the
    truths were drawn from, so the ratio is <= 1 (1 where the data say nothing, 1 - R^2 of the
    posterior mean in general). A ratio above 1 by several SE is a posterior too wide on average,
    which rank tests see only in the tails. SE: ``n_boot`` resamplings of the simulations.

    Returns
    -------
    (ratio, se) : two (n_params,) arrays
    """
    s, t = _check(samples, truths)
    # (n_sims, n_params) posterior variances, in chunks of ~16M draws: no temporary as large as all of them
    v = np.concatenate([c.var(axis=1) for c in np.array_split(s, max(1, s.size // 2**24))])

    def ratio(rows):
        return v[rows].mean(axis=0) / t[rows].var(axis=0)

    rng = np.random.default_rng(seed)
    boot = np.array([ratio(rng.integers(0, len(t), len(t))) for _ in range(n_boot)])
    return ratio(slice(None)), boot.std(axis=0)


# --------------------------------------------------------------------------- TARP
@dataclass(frozen=True)
class TarpResult:
    """TARP expected coverage probability ``ecp`` at credibility levels ``alpha``.

    ``atc``: area between the curve and the diagonal for alpha above the grid's middle
    (~0 calibrated, > 0 under-confident, < 0 over-confident); ``ks_pvalue``: sbi's
    two-sample KS test between the ``ecp`` and ``alpha`` values (small = miscalibrated).
    """

    ecp: np.ndarray
    alpha: np.ndarray
    atc: float
    ks_pvalue: float


def tarp(
    samples: Any,
    truths: Any,
    seed: int = 0,
    num_bins: int | None = None,
    z_score_theta: bool = True,
) -> TarpResult:
    """TARP expected-coverage test of the joint posterior (Lemos et al. 2023).

    Runs sbi's implementation on the given samples:
    ``sbi.diagnostics.tarp.get_tarp_references`` (one reference point per simulation,
    uniform in the bounding box of the truths; drawn under ``torch.manual_seed(seed)``
    inside ``torch.random.fork_rng`` so the global RNG is untouched),
    ``sbi.diagnostics.tarp._run_tarp`` (the sample-based core of ``run_tarp``, with
    ``z_score_theta=True`` as ``run_tarp`` defaults: despite the name it rescales every
    parameter to [0, 1] by the truths' min and max, so that the L2 distance weighs them
    alike) and ``sbi.diagnostics.check_tarp``.

    Caveats: sbi's ``alpha`` grid spans [min, max] of the per-simulation coverage
    values, not [0, 1] (it falls short for under-confident posteriors); TARP with random
    references is blind to some failures that SBC catches (a 0.5 sigma bias in every
    parameter passes it), so use it beside SBC, not instead.

    Parameters
    ----------
    samples : (n_sims, n_samples, n_params) array or tensor
    truths : (n_sims, n_params) array or tensor
    seed : int
        Seed of the reference points.
    num_bins : int, optional
        Credibility-level bins; sbi's default n_sims // 10.
    z_score_theta : bool
        Rescale parameters to [0, 1] first (recommended).

    Returns
    -------
    TarpResult
    """
    import torch
    from sbi.diagnostics import check_tarp
    from sbi.diagnostics.tarp import _run_tarp, get_tarp_references

    s, t = _check(samples, truths)
    dtype = torch.float32 if s.dtype == np.float32 else torch.float64
    post = torch.as_tensor(s, dtype=dtype).permute(1, 0, 2)  # sbi: (n_samples, n_sims, n_params)
    thetas = torch.as_tensor(t, dtype=dtype)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        refs = get_tarp_references(thetas)
    ecp, alpha = _run_tarp(post, thetas, refs, num_bins=num_bins, z_score_theta=z_score_theta)
    atc, ks_p = check_tarp(ecp, alpha)
    return TarpResult(ecp.numpy().astype(float), alpha.numpy().astype(float), float(atc), float(ks_p))


# --------------------------------------------------------------------------- report
def calibration_report(
    samples: Any,
    truths: Any,
    names: Sequence[str] | None = None,
    levels: Sequence[float] = (0.68, 0.95),
    seed: int = 0,
) -> dict[str, Any]:
    """All calibration numbers as a JSON-serialisable dict.

    Returns
    -------
    dict
        ``n_sims``, ``n_samples``, ``pp_deviation_95`` (1.36 / sqrt(n_sims), the
        calibrated 95th percentile of ``max_pp_deviation``), ``tarp_atc``,
        ``tarp_ks_pvalue`` and ``parameters``: ``{name: {sbc_ks_stat, sbc_ks_pvalue,
        sbc_chi2_pvalue, max_pp_deviation, coverage_68, coverage_95, variance_ratio,
        variance_ratio_se}}`` (coverage keys follow ``levels``; `variance_ratio`: <= 1 calibrated).
    """
    s, t = _check(samples, truths)
    n_sims, n_samples, n_params = s.shape
    names = _names(names, n_params)
    sbc = sbc_metrics(sbc_ranks(s, t), n_samples, seed=seed)
    dev = max_pp_deviation(s, t)
    cov = coverage(s, t, levels)
    var_ratio, var_ratio_se = variance_ratio(s, t, seed=seed)
    tr = tarp(s, t, seed=seed)
    params = {}
    for j, name in enumerate(names):
        params[name] = {
            "sbc_ks_stat": float(sbc["ks_stat"][j]),
            "sbc_ks_pvalue": float(sbc["ks_pvalue"][j]),
            "sbc_chi2_pvalue": float(sbc["chi2_pvalue"][j]),
            "max_pp_deviation": float(dev[j]),
            **{f"coverage_{round(100 * lev)}": float(cov[i, j]) for i, lev in enumerate(levels)},
            "variance_ratio": float(var_ratio[j]),
            "variance_ratio_se": float(var_ratio_se[j]),
        }
    return {
        "n_sims": int(n_sims),
        "n_samples": int(n_samples),
        "pp_deviation_95": float(1.358 / np.sqrt(n_sims)),
        "tarp_atc": tr.atc,
        "tarp_ks_pvalue": tr.ks_pvalue,
        "parameters": params,
    }


# --------------------------------------------------------------------------- photo-z
def nmad(values: Any) -> float:
    """Normalised median absolute deviation, 1.4826 median|v - median v| (the std for Gaussian v)."""
    v = _numpy(values).reshape(-1)
    return float(1.4826 * np.median(np.abs(v - np.median(v))))


def photoz_metrics(z_samples: Any, z_spec: Any, outlier: float = PHOTOZ_OUTLIER) -> dict[str, Any]:
    """Photometric redshifts (posterior draws ``z_samples`` (n, k)) against spectroscopic ones (n,).

    With dz = (z_phot - z_spec) / (1 + z_spec), z_phot the posterior median: ``sigma_nmad`` =
    1.4826 median|dz - median dz|, ``bias`` = median dz, ``outlier_fraction`` (|dz| > ``outlier``),
    and the PIT, the fraction of each galaxy's draws below its z_spec (uniform for calibrated
    posteriors): 20-bin ``pit_histogram`` and ``pit_ks_pvalue`` against U(0, 1).

    Example
    -------
    >>> rng = np.random.default_rng(1)
    >>> z = rng.uniform(0.05, 0.5, 2000)
    >>> draws = z[:, None] + 0.02 * (1 + z[:, None]) * rng.normal(size=(2000, 1)) \\
    ...     + 0.02 * (1 + z[:, None]) * rng.normal(size=(2000, 400))   # calibrated posteriors
    >>> m = photoz_metrics(draws, z)
    >>> round(m["sigma_nmad"], 2), m["pit_ks_pvalue"] > 0.01
    (0.02, True)
    """
    zs, zt = _numpy(z_samples), _numpy(z_spec).reshape(-1)
    if zs.ndim != 2 or zs.shape[0] != zt.size:
        raise ValueError(f"z_samples must be (n, k) for {zt.size} spectroscopic redshifts, got {zs.shape}")
    z_phot = np.median(zs, axis=1)
    dz = (z_phot - zt) / (1 + zt)
    pit = np.mean(zs < zt[:, None], axis=1)
    hist, _ = np.histogram(pit, bins=20, range=(0, 1))
    return {"n": int(zt.size), "sigma_nmad": nmad(dz),
            "bias": float(np.median(dz)), "mean_dz": float(np.mean(dz)), "std_dz": float(np.std(dz)),
            "outlier_fraction": float(np.mean(np.abs(dz) > outlier)), "outlier_threshold": outlier,
            "pit_ks_pvalue": float(stats.kstest(pit, "uniform").pvalue), "pit_histogram": hist.tolist(),
            "pit_below_0p01_or_above_0p99": float(np.mean((pit < 0.01) | (pit > 0.99)))}


def plot_photoz(z_phot: Any, z_spec: Any, pit: Any, path: str | Path, title: str | None = None) -> Path:
    """z_phot vs z_spec (with the +-0.15 (1 + z) outlier lines) and the PIT histogram, side by side."""
    zp, zt, pit = _numpy(z_phot), _numpy(z_spec), _numpy(pit)
    fig = _figure(figsize=(9, 4))
    ax, bx = fig.subplots(1, 2)
    hi = float(max(zt.max(), zp.max()) * 1.05)
    ax.plot(zt, zp, ".", ms=1.5, alpha=0.4)
    grid = np.linspace(0, hi, 2)
    ax.plot(grid, grid, "k-", lw=0.8)
    for sgn in (-1, 1):
        ax.plot(grid, grid + sgn * PHOTOZ_OUTLIER * (1 + grid), "k:", lw=0.8)
    ax.set(xlim=(0, hi), ylim=(0, hi), xlabel="z_spec", ylabel="z_phot (posterior median)", title=title)
    bx.hist(pit, bins=20, range=(0, 1), histtype="step", density=True)
    bx.axhline(1.0, color="k", ls=":")
    bx.set(xlabel="PIT (fraction of draws below z_spec)", ylabel="density", title="PIT")
    return _save(fig, path)


# --------------------------------------------------------------------------- plots
def _figure(**kw):
    # A bare Figure draws with Agg on savefig and never touches pyplot's global backend.
    from matplotlib.figure import Figure

    return Figure(**kw)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def plot_pp(
    samples: Any, truths: Any, names: Sequence[str] | None, path: str | Path, levels: Any = None
) -> Path:
    """p-p plot of all parameters in one panel, with the diagonal and a 95% band.

    The band is the pointwise central 95% of a uniform empirical CDF at n_sims
    (binomial quantiles of ``n_sims * level``). Returns the written path.
    """
    levels, cdf = pp_curve(samples, truths, np.linspace(0, 1, 201) if levels is None else levels)
    n_sims = _numpy(truths).shape[0]
    names = _names(names, cdf.shape[1])
    fig = _figure(figsize=(5, 5))
    ax = fig.add_subplot()
    lo = stats.binom.ppf(0.025, n_sims, levels) / n_sims
    hi = stats.binom.ppf(0.975, n_sims, levels) / n_sims
    ax.fill_between(levels, lo, hi, color="0.8", label="95% band, calibrated")
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    for j, name in enumerate(names):
        ax.plot(levels, cdf[:, j], lw=1.2, label=name)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="nominal percentile", ylabel="empirical CDF of true-value percentile")
    ax.legend(fontsize=7, ncol=2, loc="upper left")
    return _save(fig, path)


def plot_rank_histograms(
    ranks: Any, n_samples: int, names: Sequence[str] | None, path: str | Path, n_bins: int = 20
) -> Path:
    """Grid of SBC rank histograms (the bins of :func:`sbc_metrics`) with the central 95%
    band of each bin's count under uniformity. Returns the written path."""
    r = _numpy(ranks).astype(np.int64)
    n_sims, n_params = r.shape
    names = _names(names, n_params)
    idx, share = _rank_bins(n_samples, n_bins)
    edges = np.arange(n_bins + 1)
    lo = np.append(stats.binom.ppf(0.025, n_sims, share), 0)
    hi = np.append(stats.binom.ppf(0.975, n_sims, share), 0)
    ncol = min(4, n_params)
    nrow = -(-n_params // ncol)
    fig = _figure(figsize=(3 * ncol, 2.4 * nrow))
    for j, name in enumerate(names):
        ax = fig.add_subplot(nrow, ncol, j + 1)
        ax.fill_between(edges, lo, hi, step="post", color="0.8")
        ax.stairs(np.bincount(idx[r[:, j]], minlength=n_bins), edges, color="C0")
        ax.set_title(name, fontsize=9)
        ax.set_xticks([0, n_bins], ["0", str(n_samples)])
        ax.set_xlabel("rank", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_tarp(result: TarpResult, path: str | Path, title: str | None = None) -> Path:
    """TARP expected coverage against credibility level, with the diagonal. Returns the path."""
    fig = _figure(figsize=(4.5, 4.5))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="calibrated")
    ax.plot(result.alpha, result.ecp, lw=1.5, label=f"TARP (ATC {result.atc:+.3f}, KS p {result.ks_pvalue:.2g})")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel=r"credibility level $\alpha$", ylabel="expected coverage")
    ax.set_title(title or "")
    ax.legend(fontsize=8, loc="upper left")
    return _save(fig, path)
