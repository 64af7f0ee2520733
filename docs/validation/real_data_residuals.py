"""Per-band residuals of the best posterior draw (`sedflow.figures.best_fit`, 200 draws, the shipped `sdss`) on NSA and
the kcorrect sample: systematic offsets between the SED model and real photometry, and the chi^2 of the
colour-OOD rows. Run from the repository root with ../shared present: `python docs/validation/real_data_residuals.py`."""
from pathlib import Path

import numpy as np
from sedflow.catalog import CatalogSpec, read_catalog
from sedflow.infer import galaxy_checks
from sedflow.posterior import load_model
from sedflow.figures import best_fit

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
post = load_model("sdss")
sed = post.sed_model()


def per_band(values, digits):
    return {b: round(float(v), digits) for b, v in zip(post.bands, values)}


for cat, spec in ((SHARED / "nsa_lcs" / "nsa_v0_1_2_lcs_subset.fits", "nsa"),
                  (SHARED / "sdss_kcorrect" / "gst_tests_small.fits", "sdss_kcorrect")):
    frame, _ = read_catalog(cat, CatalogSpec.load(spec))
    x, flags = galaxy_checks(frame, post)
    good = ~flags["flag_bad_input"]
    theta = post.sample(x[good], 200, seed=1)
    flux = frame[[f"flux_{b}" for b in post.bands]].to_numpy()[good]
    err = frame[[f"flux_err_{b}" for b in post.bands]].to_numpy()[good]
    z = frame["z"].to_numpy(dtype=float)[good]
    chi2, best = best_fit(sed, theta, flux, err, z)
    model = sed.photometry(best, z)
    with np.errstate(invalid="ignore", divide="ignore"):
        dmag = -2.5 * np.log10(flux / model)       # observed - model, mag
        pull = (flux - model) / err
    hi = (flux / err > 20).all(axis=1)
    print(spec, "rows", good.sum(), "S/N>20 all bands", hi.sum())
    print("  median obs-model mag (S/N>20):", per_band(np.nanmedian(dmag[hi], axis=0), 4))
    print("  median pull:", per_band(np.nanmedian(pull, axis=0), 3))
    col = flags["flag_color_ood"][good].astype(bool)
    print("  colour-OOD rows", col.sum(), "median pull there:", per_band(np.nanmedian(pull[col], axis=0), 2),
          "median chi2", round(float(np.median(chi2[col])), 1), "vs all", round(float(np.median(chi2)), 1))
