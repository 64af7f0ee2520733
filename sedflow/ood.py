"""Out-of-distribution checks: where a galaxy's x lies outside the training set (Hahn & Melchior
2022, Appendix A, generalised to any bands).

`fit_thresholds` measures them on the training set's x features when a model is trained (they are
stored in the artifact's ``ood``); `flags` applies them to catalog rows at inference:

``flag_sigma_ood``      some band's mag error above the 99.9th percentile of the training set's at
                        that magnitude (the paper's mu + 3 s of the noise model, measured on the
                        simulated x, floors and flux noise included), or, for models that store
                        it, below its 0.1th percentile (deeper photometry than the training set's:
                        the flow conditions on the errors and would extrapolate)
``flag_color_ood``      a colour of adjacent bands outside the training set's 0.1-99.9 percentiles,
                        both measured to better than `COLOUR_MAX_MAG_ERR` (a colour of a
                        non-detection is noise, not a colour; such pairs are neither used
                        for the percentiles nor flagged)
``flag_posterior_ood``  x outside the training support: Mahalanobis distance of the standardised
                        features above the training set's 99.9th percentile

Posterior samples always land inside the prior, so a flow extrapolating cannot be seen in them;
these checks are what tells.
"""

from __future__ import annotations

import numpy as np

__all__ = ["fit_thresholds", "flags", "colour_names", "COLOUR_MAX_MAG_ERR"]

COLOUR_MAX_MAG_ERR = 0.1     # mag: both bands of a colour at S/N >~ 10


def colour_names(bands) -> tuple:
    """Colours of adjacent bands, in band order: ``("u-g", "g-r", ...)``."""
    return tuple(f"{a}-{b}" for a, b in zip(bands[:-1], bands[1:]))


def fit_thresholds(features: np.ndarray, x_mean, x_std, layout, bin_width: float = 0.25,
                   min_count: int = 100) -> dict:
    """Thresholds from training x features (`sedflow.posterior.InputLayout.features`: log10 mag errors;
    NaN where a band is missing) in the `InputLayout` ``layout``; ``x_mean``, ``x_std`` their
    standardisation."""
    bands = layout.bands
    nb = len(bands)
    mags, log_err = features[:, :nb], features[:, nb:2 * nb]
    sigma = {}
    for j, b in enumerate(bands):
        m, e_all = mags[:, j], log_err[:, j]
        ok = np.isfinite(m) & np.isfinite(e_all)
        m, e_all = m[ok], e_all[ok]
        edges = np.arange(np.floor(m.min() / bin_width) * bin_width, m.max() + bin_width, bin_width)
        idx = np.digitize(m, edges) - 1
        centres, p001, p999 = [], [], []
        for k in range(edges.size - 1):
            e = e_all[idx == k]
            if e.size >= min_count:
                centres.append(0.5 * (edges[k] + edges[k + 1]))
                lo, hi = np.percentile(e, [0.1, 99.9])
                p001.append(float(lo))
                p999.append(float(hi))
        if not centres:                     # too few rows for any bin: one threshold for all magnitudes
            if e_all.size == 0:
                raise ValueError(f"band {b}: no training row measures it; cannot set its OOD threshold")
            centres = [float(np.median(m))]
            p001, p999 = ([float(v)] for v in np.percentile(e_all, [0.1, 99.9]))
        sigma[b] = {"mag": centres, "log10_mag_err_p99p9": p999, "log10_mag_err_p0p1": p001}
    f = layout.standardise(features, np.asarray(x_mean), np.asarray(x_std))
    prec = np.linalg.pinv(np.cov(f, rowvar=False))     # pinv: a constant column (no masks) has no variance
    d2 = np.einsum("ij,jk,ik->i", f, prec, f)
    measured = np.isfinite(mags) & (log_err < np.log10(COLOUR_MAX_MAG_ERR))
    colours = {}
    for i, c in enumerate(colour_names(bands)):
        both = measured[:, i] & measured[:, i + 1]
        if not both.any():
            raise ValueError(f"colour {c}: no training row measures both bands to {COLOUR_MAX_MAG_ERR} mag")
        colours[c] = np.percentile(mags[both, i] - mags[both, i + 1], [0.1, 99.9]).tolist()
    out = {"sigma_mag_p99p9": sigma, "colour_percentiles_0p1_99p9": colours,
           "colour_max_mag_err": COLOUR_MAX_MAG_ERR,
           "mahalanobis_precision": prec.tolist(),
           "mahalanobis_d2_99p9": float(np.percentile(d2, 99.9))}
    if layout.redshift:      # a photo-z model's x has no z: its range is the prior's
        out["z_range"] = [float(features[:, 2 * nb].min()), float(features[:, 2 * nb].max())]
    return out


def flags(x: np.ndarray, good: np.ndarray, post) -> dict:
    """The three OOD flags (n,) of x rows (``post.x_names`` order) for a `PosteriorModel`; rows not
    ``good`` (bad input) are never flagged, nor are missing bands."""
    nb, ood, n = len(post.bands), post.config["ood"], len(x)
    mag, mag_err = x[:, :nb], x[:, nb:2 * nb]
    sigma_ood = np.zeros(n, bool)
    with np.errstate(invalid="ignore"):
        for j, b in enumerate(post.bands):
            t = ood["sigma_mag_p99p9"][b]
            limit = 10.0 ** np.interp(mag[good, j], t["mag"], t["log10_mag_err_p99p9"])
            sigma_ood[good] |= mag_err[good, j] > limit          # NaN (missing) compares False
            if "log10_mag_err_p0p1" in t:         # models trained before it: errors above only
                floor = 10.0 ** np.interp(mag[good, j], t["mag"], t["log10_mag_err_p0p1"])
                sigma_ood[good] |= mag_err[good, j] < floor
        colour_ood = np.zeros(n, bool)
        # models trained before colour_max_mag_err existed: every pair (their training sets had no
        # non-detections)
        limit = ood.get("colour_max_mag_err", np.inf)
        for i, (lo, hi) in enumerate(ood["colour_percentiles_0p1_99p9"].values()):
            c = mag[good, i] - mag[good, i + 1]
            both = (mag_err[good, i] < limit) & (mag_err[good, i + 1] < limit)
            colour_ood[good] |= both & ((c < lo) | (c > hi))
    post_ood = np.zeros(n, bool)
    if good.any():
        f = post.inputs.standardise(post.inputs.features(x[good]), post.x_mean, post.x_std)
        d2 = np.einsum("ij,jk,ik->i", f, np.asarray(ood["mahalanobis_precision"]), f)
        post_ood[good] = d2 > ood["mahalanobis_d2_99p9"]
    return {"flag_sigma_ood": sigma_ood, "flag_color_ood": colour_ood, "flag_posterior_ood": post_ood}
