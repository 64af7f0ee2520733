"""The flow's input layouts (`sedflow.posterior.InputLayout`): asinh magnitudes for non-detections,
missing-band flags learned with random band masks, and simulations that reach the faint end."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sedflow.noise import NoiseModel
from sedflow.posterior import InputLayout
from sedflow.train import mask_bands

BANDS = ("u", "g", "r", "i", "z")


def test_asinh_magnitudes():
    """Lupton et al. (1999): AB magnitudes where f >> s, finite and monotonic through f <= 0."""
    s = np.array([0.3, 0.1, 0.1, 0.15, 0.5])
    layout = InputLayout(BANDS, "asinh", tuple(s))
    flux = np.array([[1000.0, 300.0, 500.0, 700.0, 800.0], [-0.2, 0.0, 0.05, 1.0, 2.0]])
    err = np.full((2, 5), 0.1)
    x = layout.observables(flux, err, [0.1, 0.1])
    assert x.shape == (2, 16) and np.all(np.isfinite(x))
    np.testing.assert_allclose(x[0, :5], 22.5 - 2.5 * np.log10(flux[0]), atol=1e-6)     # bright: AB mags
    np.testing.assert_allclose(x[1, :2], 22.5 - 2.5 / np.log(10) * (np.arcsinh(flux[1, :2] / (2 * s[:2]))
                                                                    + np.log(s[:2])))
    np.testing.assert_allclose(x[1, 5:10], 1.0857362 * err[1] / np.sqrt(flux[1] ** 2 + 4 * s**2), rtol=1e-6)
    fine = np.linspace(-1, 1, 201)
    mu = layout.observables(np.tile(fine[:, None], 5), np.full((201, 5), 0.1), np.full(201, 0.1))[:, 0]
    assert np.all(np.diff(mu) < 0)                                         # brighter flux, smaller mag
    with pytest.raises(ValueError, match="softening"):
        InputLayout(BANDS, "asinh", (0.1, 0.1))
    for bad_flux, bad_err, bad_z in ((flux[:, :4], err[:, :4], [0.1, 0.1]), (flux, err[:1], [0.1, 0.1]),
                                     (flux, err, [0.1, 0.1, 0.1])):
        with pytest.raises(ValueError, match="shape|one value per row"):
            layout.observables(bad_flux, bad_err, bad_z)


def test_missing_bands_are_flagged_and_set_to_the_training_mean():
    layout = InputLayout(BANDS, "asinh", (0.1,) * 5)
    flux = np.array([[10.0, np.nan, 10.0, 10.0, 10.0], [10.0, 10.0, 10.0, 10.0, 10.0]])
    err = np.array([[1.0, 1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0, 1.0]])      # ivar 0 in z: missing too
    x = layout.observables(flux, err, [0.1, 0.1])
    np.testing.assert_array_equal(x[:, -5:], [[0, 1, 0, 0, 1], [0, 0, 0, 0, 0]])
    f = layout.features(x)
    mean, std = np.full(16, 2.0), np.full(16, 3.0)
    z = layout.standardise(f, mean, std)
    assert z[0, 1] == 0 and z[0, 6] == 0 and z[0, 4] == 0 and z[0, 9] == 0 and np.all(np.isfinite(z))
    np.testing.assert_allclose(z[1, :5], (f[1, :5] - 2) / 3)
    assert InputLayout(BANDS).names[0] == "mag_u" and InputLayout.from_dict(layout.to_dict(), BANDS) == layout


def test_band_masks_keep_three_bands_and_are_reproducible():
    flux = np.ones((20000, 5))
    a = mask_bands(flux, 0.2, np.random.default_rng(1))
    b = mask_bands(flux, 0.2, np.random.default_rng(1))
    np.testing.assert_array_equal(a, b)
    lost = np.isnan(a).sum(axis=1)
    assert lost.max() == 2 and 0.18 < np.mean(lost > 0) < 0.22
    assert np.allclose(np.isnan(a).mean(axis=0), np.isnan(a).mean(), atol=0.01)    # every band alike
    assert not np.isnan(mask_bands(np.ones((100, 3)), 1.0, np.random.default_rng(0))).any()   # 3 bands: none


def test_faint_end_simulations_reach_non_detections(sed_model, prior):
    """min_detected: bands may fall below the catalog's faintest flux, with sky-limited errors; the
    noise envelope spreads the errors around the noise model."""
    from sedflow.simulate import simulate_rows

    noise = NoiseModel.default()
    cols, counts = simulate_rows(sed_model, noise, prior, 4000, np.random.default_rng(3), min_detected=3,
                                 noise_envelope=(0.5, 5.0))
    flux = np.column_stack([cols[f"flux_{b}"] for b in BANDS])
    err = np.column_stack([cols[f"flux_err_{b}"] for b in BANDS])
    assert (flux[:, 0] <= 0).mean() > 0.01                                 # u non-detections
    assert np.all(err > 0)
    sky = noise.faint_flux_error()[0]                                      # u's faint-end flux error
    assert 0.3 * sky < np.median(err[flux[:, 0] <= 0, 0]) < 10 * sky      # errors of non-detections: sky-like
    inside = (flux >= noise.flux_range[:, 0]) & (flux <= noise.flux_range[:, 1])
    assert np.all(inside.sum(axis=1) >= 3) and np.all(flux <= noise.flux_range[:, 1])
    plain, _ = simulate_rows(sed_model, noise, prior, 4000, np.random.default_rng(3))
    spread = np.std(np.log(cols["mag_err_r"][cols["flux_r"] > 0])), np.std(np.log(plain["mag_err_r"]))
    assert spread[0] > 1.5 * spread[1]
    with pytest.raises(ValueError, match="min_detected"):
        simulate_rows(sed_model, noise, prior, 10, 0, min_detected=9)


@pytest.fixture(scope="module")
def asinh_model(tmp_path_factory, ray_local):
    """A toy asinh-input model trained on faint-end simulations with band masks."""
    from sedflow.simulate import SimulationConfig, run_simulation
    from sedflow.train import train

    d = tmp_path_factory.mktemp("asinh")
    run_simulation(d / "sims", SimulationConfig(n=4000, shards=2, seed=2, min_detected=3, noise_envelope=(0.5, 5)),
                   progress=False)
    with pytest.raises(ValueError, match="asinh"):
        train(d / "sims", d / "mag_model", workers=1, max_epochs=1)
    train(d / "sims", d / "model", workers=1, max_epochs=2, batch_size=256, inputs="asinh")
    return d / "model"


def test_non_detections_and_missing_bands_get_posteriors(asinh_model, sed_model):
    """Negative u flux and a missing g band: sampled (method anpe) by an asinh model, with the
    missing bands in flag_missing_bands; so does the shipped model (asinh inputs too)."""
    from sedflow.infer import infer_frame, load_models
    from sedflow.posterior import load_model

    post, sed = load_models(asinh_model)
    assert post.inputs.kind == "asinh" and post.config["missing_fraction"] == 0.2
    flux = np.array([40.0, 92.0, 130.0, 157.0, 177.0])
    err = 0.03 * flux
    rows = np.tile(flux, (6, 1)), np.tile(err, (6, 1))
    rows[0][1, 0] = -2.0                  # u scattered negative: a measurement with an error
    rows[0][2, 1] = np.nan                # g missing
    rows[1][3, [0, 1, 4]] = 0.0           # three bands with ivar 0: too few left
    z = np.array([0.05, 0.05, 0.05, 0.05, np.nan, 0.05])
    frame = pd.DataFrame({"id": np.arange(6), "z": z, "flag_quality": False,
                          **{f"flux_{b}": rows[0][:, j] for j, b in enumerate(BANDS)},
                          **{f"flux_err_{b}": rows[1][:, j] for j, b in enumerate(BANDS)}})
    t = infer_frame(frame, post, sed, n_samples=100, property_samples=20, seed=0).to_pandas()
    assert list(t["method"]) == ["anpe", "anpe", "anpe", "none", "none", "anpe"]
    assert list(t["flag_missing_bands"]) == [0, 0, 2, 1 | 2 | 16, 0, 0]
    assert t.loc[[0, 1, 2, 5], "logmstar_p50"].notna().all()
    shipped = load_model()
    t2 = infer_frame(frame, shipped, shipped.sed_model(), n_samples=50, property_samples=10, seed=0).to_pandas()
    assert shipped.inputs.kind == "asinh"
    assert list(t2["method"]) == ["anpe", "anpe", "anpe", "none", "none", "anpe"]
    assert list(t2["flag_missing_bands"]) == [0, 0, 2, 1 | 2 | 16, 0, 0]
    assert t2.loc[[0, 1, 2, 5], "logmstar_p50"].notna().all()


def test_validation_reports_the_hard_subsets(asinh_model, tmp_path):
    """Held-out simulations drawn as the training set (faint end, envelope, band masks); calibration
    reported on the whole set and on the galaxies with a non-detection and with a missing band."""
    from sedflow.validate import validate

    m = validate(tmp_path / "r", model_path=asinh_model, n_test=800, n_samples=50, n_mcmc=0, catalog=None)
    subsets = m["calibration"]["subsets"]
    assert set(subsets) == {"non_detection", "missing_band"}
    assert 110 <= subsets["missing_band"]["n"] <= 210 and subsets["non_detection"]["n"] >= 50
    assert "missing band (" in (tmp_path / "r" / "report.md").read_text()

