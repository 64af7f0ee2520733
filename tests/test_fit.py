"""`sedflow.fit`, the one-call Python API: the same posteriors as `sedflow infer`, every row back,
clear errors for programming mistakes, runnable docstring examples."""

from __future__ import annotations

import doctest

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pytest
from astropy.table import Table

import sedflow
from sedflow.catalog import kcorrect_sample_path
from sedflow.infer import STATS, SUMMARY_NAMES, run_inference
from sedflow.ingest import ingest_catalog

N_ROWS = 30


@pytest.fixture(scope="module")
def sdss_rows():
    """The first rows of the kcorrect SDSS sample, as raw catalog values (not dereddened, ivar)."""
    return Table.read(kcorrect_sample_path(), hdu=1)[:N_ROWS]


def _raw_arrays(t):
    return dict(flux=np.asarray(t["MODELFLUX"], float), flux_err=1.0 / np.sqrt(np.asarray(t["MODELFLUX_IVAR"], float)),
                z=np.asarray(t["Z"], float), extinction=np.asarray(t["EXTINCTION"], float))


def test_fit_gives_what_infer_gives_on_the_same_rows(sdss_rows, tmp_path):
    """fit(arrays) == fit(DataFrame) exactly, and == `sedflow infer` on a catalog ingested from the rows."""
    sdss_rows.write(tmp_path / "rows.fits")
    ingest_catalog(tmp_path / "rows.fits", "sdss_kcorrect", tmp_path / "in")        # one partition
    run_inference(tmp_path / "in", tmp_path / "out", n_samples=300, property_samples=100, seed=3, workers=1,
                  progress=False)
    via_infer = ds.dataset(str(tmp_path / "out"), format="parquet").to_table().to_pandas()

    res = sedflow.fit(**_raw_arrays(sdss_rows), spec="sdss_kcorrect", n_samples=300, property_samples=100, seed=3)
    assert len(res) == N_ROWS and list(res.summary.columns) == list(via_infer.columns)
    assert list(res.summary["id"]) == list(via_infer["id"]) == list(range(N_ROWS))
    for c in ("method",) + tuple(c for c in via_infer if c.startswith("flag_")):
        assert list(res.summary[c]) == list(via_infer[c]), c
    stats = [f"{n}_{s}" for n in SUMMARY_NAMES for s in STATS]
    # one torch thread in the Dask worker, several here: float32 sums may round differently
    np.testing.assert_allclose(res.summary[stats].to_numpy(float), via_infer[stats].to_numpy(float),
                               rtol=1e-5, atol=1e-5)

    frame = pd.DataFrame({"Z": sdss_rows["Z"], "RA": sdss_rows["RA"], "DEC": sdss_rows["DEC"],
                          **{c: list(np.asarray(sdss_rows[c], float)) for c in ("MODELFLUX", "MODELFLUX_IVAR", "EXTINCTION")}})
    from_frame = sedflow.fit(frame, spec="sdss_kcorrect", n_samples=300, property_samples=100, seed=3)
    pd.testing.assert_frame_equal(from_frame.summary, res.summary)
    # the draws are named, inside the prior, and the summaries are theirs
    assert set(res.samples) == set(sedflow.PARAM_NAMES) and res.samples["logmstar"].shape == (N_ROWS, 300)
    ok = (res.summary["method"] == "anpe").to_numpy()
    assert ok.sum() > 20
    np.testing.assert_allclose(np.median(res.samples["logmstar"][ok], axis=1), res.summary["logmstar_p50"][ok],
                               rtol=1e-6)
    assert np.isnan(res.samples["logmstar"][~ok]).all()
    assert np.all((res.samples["logmstar"][ok] >= 7) & (res.samples["logmstar"][ok] <= 12.5))


def test_bad_rows_come_back_flagged_among_good_ones(sdss_rows):
    a = _raw_arrays(sdss_rows[:6])
    a["flux"][1, 2] = np.nan          # NaN flux: r missing, marginalised over
    a["flux"][2, 0] = -3.0            # non-positive flux: a measurement (a non-detection)
    a["flux_err"][3, [0, 1, 4]] = np.inf   # ivar 0 in three bands: too few left
    a["z"][4] = np.nan                # no redshift
    res = sedflow.fit(**a, spec="sdss_kcorrect", n_samples=100, keep_samples=0, ids=[10, 11, 12, 13, 14, 15])
    s = res.summary
    assert list(s["id"]) == [10, 11, 12, 13, 14, 15] and res.samples == {}
    assert list(s["flag_bad_input"]) == [False, False, False, True, True, False]
    assert list(s["method"]) == ["anpe", "anpe", "anpe", "none", "none", "anpe"]
    assert list(s["flag_missing_bands"]) == [0, 4, 0, 1 | 2 | 16, 0, 0]
    assert s.loc[s["flag_bad_input"], "logmstar_p50"].isna().all()
    assert s.loc[~s["flag_bad_input"], "logmstar_p50"].notna().all()
    assert res.counts["nonfinite_or_nonpositive_flux"] == 2 and res.counts["nonfinite_redshift"] == 1


def test_one_galaxy_and_programming_errors(sdss_rows):
    a = _raw_arrays(sdss_rows[:1])
    one = sedflow.fit(a["flux"][0], a["flux_err"][0], float(a["z"][0]), extinction=a["extinction"][0],
                      spec="sdss_kcorrect", n_samples=50)
    assert len(one) == 1 and one.samples["tau_ism"].shape == (1, 50)
    good = dict(flux=a["flux"][0], flux_err=a["flux_err"][0], z=0.1, extinction=a["extinction"][0], n_samples=10)
    cases = [
        (dict(good, flux=a["flux"][0][:4]), "shape"),                 # 4 fluxes for 5 bands
        (dict(good, flux_err=np.ones((2, 5))), "rows"),
        (dict(good, z=[0.1, 0.2]), "one value per row"),
        (dict(good, spec="no_such_survey"), "no_such_survey"),
        (dict(good, model="no_such_model"), "no_such_model"),
        (dict(good, n_samples=0), "n_samples"),
        (dict(good, flux=np.ones((2, 5)), flux_err=np.ones((2, 5)), ids=[7, 7]), "duplicated ids"),
    ]
    for kwargs, match in cases:
        kwargs.setdefault("spec", "sdss_kcorrect")
        with pytest.raises(ValueError, match=match):
            sedflow.fit(**kwargs)
    with pytest.warns(UserWarning, match="not corrected for Galactic extinction"):   # used as given, loudly
        sedflow.fit(a["flux"][0], a["flux_err"][0], 0.1, spec="sdss_kcorrect", n_samples=10)
    with pytest.raises(ValueError, match="extinction"):            # NSA fluxes are already dereddened
        sedflow.fit(a["flux"], a["flux_err"], 0.1, extinction=a["extinction"], spec="nsa")


@pytest.mark.parametrize("module", ["sedflow", "sedflow.fitting", "sedflow.posterior", "sedflow.flows",
                                    "sedflow.population", "sedflow.dask_utils"])
def test_docstring_examples_run(module):
    import importlib

    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_string_ids_and_other_extinction_kinds(sdss_rows):
    """String ids survive into the summary; array input follows the description's extinction kind
    (transmissions for the Legacy Surveys, E(B-V) for LSST)."""
    a = _raw_arrays(sdss_rows[:3])
    res = sedflow.fit(**a, spec="sdss_kcorrect", n_samples=20, keep_samples=0, ids=["gal-a", "gal-b", "gal-c"])
    assert list(res.summary["id"]) == ["gal-a", "gal-b", "gal-c"]
    from sedflow.catalog import standard_form
    from sedflow.fitting import _array_columns
    from sedflow.catalog import CatalogSpec

    for name, extinction, factor in (("legacysurveys_south", [0.8] * 5, 1 / 0.8), ("lsst", 0.0, 1.0)):
        spec = CatalogSpec.load(name)
        nb = len(spec.bands)
        cols, as_arrays = _array_columns(spec, np.full(nb, 10.0), np.ones(nb), 0.1, extinction, None)
        frame, _ = standard_form(cols, as_arrays)
        unit = 1.0 if name != "lsst" else 1 / 3631.0          # lsst fluxes are nJy
        np.testing.assert_allclose(frame[[f"flux_{b}" for b in spec.bands]].to_numpy(), 10 * unit * factor, rtol=1e-9)


def test_masked_null_and_empty_input(sdss_rows):
    """Masked entries and null rows are missing measurements (flagged, not a crash); an empty table
    gives an empty result; malformed options and ids raise before any work."""
    a = _raw_arrays(sdss_rows[:3])
    flux, z = np.ma.masked_array(a["flux"]), np.ma.masked_array(a["z"])
    flux[0, 1] = np.ma.masked                    # g missing: marginalised over
    z[2] = np.ma.masked                          # no redshift: no posterior
    s = sedflow.fit(flux, a["flux_err"], z, extinction=a["extinction"], spec="sdss_kcorrect", n_samples=20).summary
    assert list(s["method"]) == ["anpe", "anpe", "none"] and list(s["flag_missing_bands"]) == [2, 0, 0]
    assert list(s["flag_bad_input"]) == [False, False, True]

    frame = pd.DataFrame({c: sdss_rows[c][:3] for c in ("Z", "RA", "DEC")} | {
                          **{c: list(np.asarray(sdss_rows[c][:3], float)) for c in ("MODELFLUX", "MODELFLUX_IVAR", "EXTINCTION")}})
    frame.loc[1, "MODELFLUX"] = None             # a null list cell (Parquet null): no fluxes at all
    s = sedflow.fit(frame, spec="sdss_kcorrect", n_samples=20).summary
    assert list(s["method"]) == ["anpe", "none", "anpe"] and s["flag_missing_bands"][1] == 31
    assert len(sedflow.fit(frame.iloc[:0], spec="sdss_kcorrect", n_samples=20)) == 0
    frame["MODELFLUX"] = [v[:4] for v in frame["MODELFLUX_IVAR"]]
    with pytest.raises(ValueError, match="MODELFLUX"):
        sedflow.fit(frame, spec="sdss_kcorrect", n_samples=20)

    good = dict(flux=a["flux"][:2], flux_err=a["flux_err"][:2], z=0.1, extinction=a["extinction"][0],
                spec="sdss_kcorrect", n_samples=10)
    for kwargs, match in [(dict(seed=-1), "seed"), (dict(fallback="nested"), "fallback"),
                          (dict(property_samples=0), "property_samples"), (dict(keep_samples=11), "keep_samples"),
                          (dict(ids=np.ma.masked_array([1, 2], [0, 1])), "masked"),
                          (dict(ids=np.array([2**63, 1], dtype=np.uint64)), "int64")]:
        with pytest.raises(ValueError, match=match):
            sedflow.fit(**{**good, **kwargs})


def test_redshift_range_is_the_trained_one(sdss_rows):
    """The shipped model takes 0 < z <= 0.6, the range its simulations drew z on, edges included as
    documented; outside it there is no posterior."""
    a = _raw_arrays(sdss_rows[:1])
    z = np.array([0.6, 0.3, 0.0, 0.61, -0.01])
    s = sedflow.fit(np.repeat(a["flux"], 5, 0), np.repeat(a["flux_err"], 5, 0), z, extinction=a["extinction"][0],
                    spec="sdss_kcorrect", n_samples=20).summary
    assert list(s["flag_bad_input"]) == [False, False, True, True, True]
    assert list(s["method"]) == ["anpe", "anpe", "none", "none", "none"]
