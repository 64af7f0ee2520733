"""Empirical noise model: fit/apply round trip, floors, bad catalog input, and the shipped model vs NSA."""

import json

import numpy as np
import pandas as pd
import pytest

from conftest import shared_path
from sedflow.catalog import CatalogSpec
from sedflow.noise import NSA_MAG_ERR_FLOOR, NoiseModel, compare_with_catalog, fit_noise_model

BANDS = ("u", "g", "r", "i", "z")


def true_median(m):
    return 0.01 * np.exp(0.5 * (m - 15.0))   # sigma_mag grows with magnitude


def write_catalog(tmp_path, n=20000, seed=0):
    """A CSV catalog with per-band columns and a known sigma_mag(m) law, and its description."""
    rng = np.random.default_rng(seed)
    cols = {"objid": np.arange(n) + 1000, "zspec": rng.uniform(0.01, 0.2, n)}
    for b in BANDS:
        m = rng.uniform(14, 20, n)
        sig_m = true_median(m) * np.exp(0.1 * rng.standard_normal(n))
        f = 10 ** (-0.4 * (m - 22.5))
        cols[f"f_{b}"] = f
        cols[f"ivar_{b}"] = (sig_m * f / 1.0857362) ** -2
    path = tmp_path / "cat.csv"
    pd.DataFrame(cols).to_csv(path, index=False)
    spec = tmp_path / "toy.yaml"
    spec.write_text(json.dumps({
        "name": "toy", "id": "objid", "redshift": "zspec", "bands": list(BANDS),
        "filters": [f"sdss2010-{b}" for b in BANDS],
        "flux": {"columns": [f"f_{b}" for b in BANDS], "units": "nanomaggies"},
        "flux_error": {"columns": [f"ivar_{b}" for b in BANDS], "kind": "ivar"},
    }))  # JSON is YAML
    return path, spec


def test_fit_recovers_known_sigma_law_and_round_trips(tmp_path):
    path, spec = write_catalog(tmp_path)
    model, report = fit_noise_model(path, spec)
    assert report["rows_used"] == 20000 and report["rows_excluded"] == 0
    for j, b in enumerate(BANDS):
        c = model.mag_centres[j]
        assert c[0] < 14.3 and c[-1] > 19.7
        np.testing.assert_allclose(model.median[j], true_median(c), rtol=0.05)
    out = tmp_path / "noise.json"
    model.save(out)
    again = NoiseModel.load(out)
    assert again == model
    # sampling: the median of the draws follows mu(m), scatter follows s(m)
    mag = np.full((50000, 5), 17.0)
    sigma, ok = again.sample_mag_err(mag, rng=1)
    assert ok.all()
    np.testing.assert_allclose(np.median(sigma, axis=0), true_median(17.0), rtol=0.03)
    np.testing.assert_array_equal(sigma, again.sample_mag_err(mag, rng=1)[0])  # seeded


def test_floors_and_nonpositive_draws():
    m = NoiseModel(BANDS, [[10, 20]] * 5, [[0.001, 0.001]] * 5, [[0.002, 0.002]] * 5, floors=NSA_MAG_ERR_FLOOR,
                   flux_range={b: [1, 1e4] for b in BANDS})
    sigma, ok = m.sample_mag_err(np.full((20000, 5), 15.0), rng=0)
    floors = np.array([NSA_MAG_ERR_FLOOR[b] for b in BANDS])
    assert np.all(sigma >= floors - 1e-15)
    # N(0.001, 0.002) is <= 0 with probability 0.31 per band: P(all five > 0) = 0.69^5
    assert ok.mean() == pytest.approx(0.6915**5, abs=0.02)


def test_bad_rows_are_excluded_and_counted(tmp_path):
    path, spec = write_catalog(tmp_path, n=2000)
    df = pd.read_csv(path)
    df.loc[0, "f_u"] = -1.0          # non-positive flux
    df.loc[1, "ivar_g"] = 0.0         # ivar 0
    df.loc[2, "f_r"] = np.nan         # NaN
    df.loc[3, "ivar_z"] = np.inf      # inf
    df.loc[4, "zspec"] = np.nan       # missing redshift
    df.to_csv(path, index=False)
    model, report = fit_noise_model(path, spec)
    assert report["rows_excluded"] == 5 and report["rows_used"] == 1995
    reasons = report["excluded_by_reason"]
    assert reasons["nonfinite_or_nonpositive_flux"] == 2
    assert reasons["bad_flux_error"] == 2
    assert reasons["nonfinite_redshift"] == 1


def test_missing_columns_and_bad_files_are_refused(tmp_path):
    path, spec = write_catalog(tmp_path, n=100)
    pd.read_csv(path).drop(columns=["ivar_r"]).to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"lacks columns \['ivar_r'\]"):
        fit_noise_model(path, spec)
    with pytest.raises(FileNotFoundError, match="not found"):
        fit_noise_model(tmp_path / "nope.fits", spec)
    with pytest.raises(ValueError, match="shipped names"):
        CatalogSpec.load("no_such_survey")
    (tmp_path / "x.txt").write_text("1 2 3")
    with pytest.raises(ValueError, match="unsupported"):
        fit_noise_model(tmp_path / "x.txt", spec)
    bad = tmp_path / "noise.json"
    bad.write_text(json.dumps({**NoiseModel.default().to_dict(), "format": 99}))
    with pytest.raises(ValueError, match="format 99"):
        NoiseModel.load(bad)


def test_shipped_model_is_the_documented_fit():
    m = NoiseModel.default()
    assert m.source["catalog"] == "gst_tests_small.fits" and m.source["spec"] == "sdss_kcorrect"
    assert dict(zip(m.bands, m.floors)) == NSA_MAG_ERR_FLOOR
    assert m.source["rows_used"] == 9988


def test_shipped_model_matches_nsa_errors():
    """NSA's NMGY_IVAR errors vs the shipped model (SDSS MODELFLUX errors + NSA floors)."""
    nsa = shared_path("nsa_lcs", "nsa_v0_1_2_lcs_subset.fits")
    table = compare_with_catalog(NoiseModel.default(), nsa, "nsa")
    for b, row in table.items():
        assert 0.9 < row["median_ratio"] < 1.1, (b, row)


def test_cli_fit(tmp_path):
    from sedflow.cli import main

    path, spec = write_catalog(tmp_path, n=500)
    assert main(["noise", "fit", str(path), "--spec", str(spec), "--out", str(tmp_path / "n.json"),
                 "--floor", "u=0.05", "--min-count", "5"]) == 0
    assert NoiseModel.load(tmp_path / "n.json").floors[0] == 0.05
    assert main(["noise", "fit", str(path), "--spec", str(spec), "--out", str(tmp_path / "m.json"),
                 "--floor", "u"]) == 2
