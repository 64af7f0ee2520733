"""Catalog inference with Dask: rows conserved, flags, resume, the shipped model on real NSA rows."""

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pytest
from astropy.io import fits
from astropy.table import Table

from conftest import shared_path
from sedflow.infer import FLAGS, STATS, SUMMARY_NAMES, galaxy_checks, infer_frame, run_inference
from sedflow.ingest import ingest_catalog
from sedflow.posterior import load_model


def read_out(path):
    return ds.dataset(str(path), format="parquet").to_table().to_pandas().sort_values("id").reset_index(drop=True)


@pytest.fixture(scope="module")
def post():
    return load_model()


@pytest.fixture(scope="module")
def bad_catalog(tmp_path_factory):
    """40 real NSA rows plus one row of each kind of awkward or bad input, ingested in 10-row
    partitions. For the shipped model (asinh inputs) a NaN, inf or ivar-0 band is missing and a
    negative flux is a measurement: those rows are sampled; three bands missing, no z, or z
    beyond its range are bad input."""
    src = shared_path("nsa_lcs", "nsa_v0_1_2_lcs_subset.fits")
    t = Table.read(src, hdu=1)[:46]
    t = t[["NSAID", "RA", "DEC", "Z", "NMGY", "NMGY_IVAR", "EXTINCTION"]]
    t["NMGY"][40, 3] = np.nan          # NaN flux (g)
    t["NMGY"][41, 4] = np.inf          # inf flux (r)
    t["NMGY"][42, 2] = -5.0            # negative flux (u)
    t["NMGY_IVAR"][43, [2, 3, 5]] = 0.0   # ivar 0 in u, g and i: two bands left
    t["Z"][44] = np.nan                # missing z
    t["Z"][45] = 0.7                   # z outside the training range (0, 0.6]
    d = tmp_path_factory.mktemp("badcat")
    t.write(d / "bad.fits")
    out = d / "ingested"
    ingest_catalog(d / "bad.fits", "nsa", out, partition_rows=10)
    return out


@pytest.fixture(scope="module")
def reference_run(bad_catalog, tmp_path_factory):
    out = tmp_path_factory.mktemp("post_ref")
    summary = run_inference(bad_catalog, out, n_samples=300, keep_samples=20, property_samples=100,
                            seed=5, workers=2, progress=False)
    return out, summary


def test_every_row_once_with_flags(reference_run, bad_catalog):
    out, summary = reference_run
    d = read_out(out)
    assert len(d) == 46 and d["id"].is_unique and summary["galaxies"] == 46
    flagged = d[d["flag_bad_input"]]
    assert len(flagged) == 3 and (flagged["method"] == "none").all()
    ids = ds.dataset(str(bad_catalog), format="parquet").to_table(columns=["id"]).column("id").to_pylist()
    rows = d.set_index("id").loc[ids[40:]]                          # the planted rows, in input order
    assert list(rows["method"]) == ["anpe"] * 3 + ["none"] * 3
    assert list(rows["flag_missing_bands"]) == [2, 4, 0, 1 | 2 | 8, 0, 0]
    assert flagged[[f"logmstar_{s}" for s in STATS]].isna().all().all()
    assert flagged["samples"].isna().all()
    good = d[~d["flag_bad_input"]]
    assert (good["method"] == "anpe").all()
    cols = [f"{n}_{s}" for n in SUMMARY_NAMES for s in STATS]
    assert np.isfinite(good[cols].to_numpy()).all()
    # quantiles are ordered and the stored draws are inside the prior
    assert (good["logmstar_p2p5"] <= good["logmstar_p16"]).all() and (good["logmstar_p84"] <= good["logmstar_p97p5"]).all()
    first = good["samples"].iloc[0]
    assert set(first) == set(load_model().names) and len(first["logmstar"]) == 20
    assert summary["flag_bad_input"] == 3 and summary["method_none"] == 3
    # the sampling arithmetic ("auto": bfloat16 on CPUs with AMX) is recorded with the outputs
    assert summary["precision"] in ("float32", "bfloat16")
    assert ds.dataset(str(out), format="parquet").schema.metadata[b"sampling_precision"] == summary["precision"].encode()


def test_rerun_after_interruption_is_identical(reference_run, bad_catalog, tmp_path):
    ref_out, _ = reference_run
    out = tmp_path / "post"
    run_inference(bad_catalog, out, n_samples=300, keep_samples=20, property_samples=100, seed=5, workers=1,
                  progress=False)
    # an interrupted run: two partitions never written, one temp file left half-written
    (out / "part-00001.parquet").unlink()
    (out / "part-00003.parquet").unlink()
    (out / ".part-00003.parquet.tmp123").write_bytes(b"partial")
    s = run_inference(bad_catalog, out, n_samples=300, keep_samples=20, property_samples=100, seed=5, workers=2,
                      progress=False)
    assert s["partitions_skipped"] == 3 and s["galaxies"] == 46
    assert not list(out.glob(".part-*"))
    a, b = read_out(ref_out), read_out(out)
    summary_cols = [c for c in a.columns if c != "samples"]
    pd.testing.assert_frame_equal(a[summary_cols], b[summary_cols])
    with pytest.raises(ValueError, match=r"other settings \(n_samples, keep_samples, property_samples;"):
        run_inference(bad_catalog, out, n_samples=301, seed=5, progress=False)
    other = "float32" if s["precision"] == "bfloat16" else "bfloat16"     # not mixed with other arithmetic
    with pytest.raises(ValueError, match="other settings"):
        run_inference(bad_catalog, out, n_samples=300, keep_samples=20, property_samples=100, seed=5,
                      precision=other, progress=False)


def test_mistakes_are_refused_before_anything_is_written(bad_catalog, tmp_path):
    """A mistyped catalog, an output that is the catalog or a file, or no workers: a clear error, and
    the output folder is left unclaimed, so the corrected command runs."""
    import shutil

    from sedflow.cli import main

    out = tmp_path / "out"
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(next(bad_catalog.glob("part-*.parquet")), raw / "part-00000.parquet")
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    for catalog, target, kw, match in ((tmp_path / "no_such", out, {}, "no catalog folder"),
                                       (raw, out, {}, "not an ingested catalog"),
                                       (bad_catalog, bad_catalog, {}, "is the catalog folder"),
                                       (bad_catalog, a_file, {}, "not a folder"),
                                       (bad_catalog, out, {"workers": 0}, "workers")):
        with pytest.raises((ValueError, FileNotFoundError), match=match):
            run_inference(catalog, target, n_samples=10, progress=False, **kw)
    assert not out.exists() and sorted(p.name for p in bad_catalog.iterdir() if p.name.startswith("_")) == ["_ingest.json"]
    assert main(["infer", str(bad_catalog), "--out", str(a_file), "--samples", "10", "--quiet"]) == 2


def test_sigma_ood_is_two_sided():
    """Errors far below the training set's at a magnitude (deeper photometry) are as far outside it
    as errors far above: the flow conditions on them. Models stored before the lower bound: above only."""
    from types import SimpleNamespace

    from sedflow import ood
    from sedflow.posterior import InputLayout

    layout = InputLayout(tuple("ugriz"), "asinh", (0.1,) * 5)
    rng = np.random.default_rng(0)
    flux = 10 ** rng.uniform(1, 3, (40_000, 5))
    x = layout.observables(flux, 0.05 * flux * np.exp(rng.normal(0, 0.3, flux.shape)), np.full(len(flux), 0.1))
    f = layout.features(x)
    mean, std = f.mean(0), np.where(f.std(0) > 0, f.std(0), 1.0)
    post = SimpleNamespace(bands=layout.bands, inputs=layout, x_mean=mean, x_std=std,
                           config={"ood": ood.fit_thresholds(f, mean, std, layout)})
    rows = np.full((3, 5), 100.0)
    x = layout.observables(rows, 0.05 * rows * np.array([[1.0], [20.0], [0.02]]), np.full(3, 0.1))
    assert list(ood.flags(x, np.ones(3, bool), post)["flag_sigma_ood"]) == [False, True, True]
    for t in post.config["ood"]["sigma_mag_p99p9"].values():
        del t["log10_mag_err_p0p1"]
    assert list(ood.flags(x, np.ones(3, bool), post)["flag_sigma_ood"]) == [False, True, False]


def test_infer_frame_in_process_and_flags(post):
    """The in-process path (no Dask) on a hand-made frame; OOD checks fire where they should."""
    base = {"id": np.arange(4), "z": [0.03, 0.03, 0.03, 0.03], "flag_bad_input": False, "flag_quality": False}
    from sedflow.noise import NoiseModel

    flux = np.array([40.0, 92.0, 130.0, 157.0, 177.0])
    noise = NoiseModel.from_dict(post.config["noise_model"])
    mu, _ = noise.mu_s(22.5 - 2.5 * np.log10(flux[None]))
    err = np.sqrt(mu**2 + noise.floors**2)[0] * flux / 1.0857362     # typical errors at these magnitudes
    frame = pd.DataFrame({**base, **{f"flux_{b}": np.full(4, f) for b, f in zip("ugriz", flux)},
                          **{f"flux_err_{b}": np.full(4, e) for b, e in zip("ugriz", err)}})
    frame.loc[1, "flux_err_r"] = 2.0 * flux[2]          # a huge error: sigma far out of the noise envelope
    frame.loc[2, "flux_u"] = 1000.0                      # absurdly blue u-g
    frame.loc[3, ["flux_err_u", "flux_err_g", "flux_err_z"]] = -1.0    # invalid errors: two bands left
    x, flags = galaxy_checks(frame, post)
    assert list(flags["flag_bad_input"]) == [False, False, False, True]
    assert list(flags["flag_missing_bands"]) == [0, 0, 0, 1 | 2 | 16]
    assert flags["flag_sigma_ood"][1] and not flags["flag_sigma_ood"][0]
    assert flags["flag_color_ood"][2] and not flags["flag_color_ood"][0]
    # a u non-detection makes a wild u-g, but a colour of a non-detection is not a colour: not flagged
    faint = frame.iloc[[0]].assign(flux_u=-0.5, flux_err_u=1.0)
    _, faint_flags = galaxy_checks(faint, post)
    assert not faint_flags["flag_color_ood"][0] and not faint_flags["flag_bad_input"][0]
    sed_model = post.sed_model()
    table = infer_frame(frame, post, sed_model, n_samples=200, seed=0, property_samples=50)
    assert table.num_rows == 4 and table.column("method").to_pylist() == ["anpe", "anpe", "anpe", "none"]
    again = infer_frame(frame, post, sed_model, n_samples=200, seed=0, property_samples=50)
    assert table.equals(again)


def test_shipped_model_on_real_nsa_rows(tmp_path):
    """End to end on the 3,418 NSA rows; masses compared with NSA's own (kcorrect, h=1) MASS."""
    src = shared_path("nsa_lcs", "nsa_v0_1_2_lcs_subset.fits")
    ingest_catalog(src, "nsa", tmp_path / "in", partition_rows=1000)
    s = run_inference(tmp_path / "in", tmp_path / "out", n_samples=200, property_samples=50, workers=2,
                      progress=False)
    d = read_out(tmp_path / "out")
    assert len(d) == 3418 and d["id"].is_unique and s["galaxies"] == 3418
    nsa = fits.getdata(src, 1)
    mass = pd.Series(nsa["MASS"].astype(float), index=nsa["NSAID"].astype(np.int64))
    # galaxies the model vouches for: sampled, and inside the training distribution on every check
    clean = (d["method"] == "anpe") & ~(d["flag_sigma_ood"] | d["flag_color_ood"] | d["flag_posterior_ood"])
    good = d[clean].set_index("id")
    logm_nsa = np.log10(mass.loc[good.index] / 0.7**2)    # NSA masses are for h = 1
    ok = np.isfinite(logm_nsa)
    diff = good["logmstar_surv_p50"][ok] - logm_nsa[ok]
    corr = np.corrcoef(good["logmstar_surv_p50"][ok], logm_nsa[ok])[0, 1]
    print(f"\nNSA: flagged {s['flagged_fraction']}; {int(ok.sum())} unflagged galaxies: logM*_surv - "
          f"log MASS(h=0.7) median {diff.median():+.3f}, NMAD {1.4826 * (diff - diff.median()).abs().median():.3f}, "
          f"corr {corr:.3f}")
    assert ok.sum() > 0.5 * len(d)
    assert abs(diff.median()) < 0.3 and corr > 0.8


def test_hats_input_gives_a_hats_posterior_catalog(tmp_path):
    """HATS in, HATS out: each pixel of the input at the same path, and lsdb.read_hats opens the result."""
    lsdb = pytest.importorskip("lsdb")
    src = shared_path("nsa_lcs", "nsa_v0_1_2_lcs_subset.fits")
    t = Table.read(src, hdu=1)[::57]            # 60 rows over 6 pixels at order 2
    t[["NSAID", "RA", "DEC", "Z", "NMGY", "NMGY_IVAR", "EXTINCTION"]].write(tmp_path / "nsa60.fits")
    ingest_catalog(tmp_path / "nsa60.fits", "nsa", tmp_path / "in", healpix_order=2)
    out = tmp_path / "post"
    kw = dict(n_samples=100, property_samples=20, workers=1, progress=False)
    s = run_inference(tmp_path / "in", out, **kw)
    assert s["galaxies"] == 60 and s["partitions"] == 6 and s["partitions_skipped"] == 0

    def pixel_files(d):
        return sorted(p.relative_to(d) for p in (d / "dataset").glob("Norder=*/Dir=*/Npix=*.parquet"))

    assert pixel_files(out) == pixel_files(tmp_path / "in") and not list(out.glob("part-*"))
    cat = lsdb.read_hats(out)
    info = cat.hc_structure.catalog_info
    assert info.catalog_type == "object" and (info.ra_column, info.dec_column) == ("ra", "dec")
    assert info.total_rows == 60
    inp = lsdb.read_hats(tmp_path / "in")
    assert cat.get_healpix_pixels() == inp.get_healpix_pixels()
    d = cat.compute()
    assert len(d) == 60 and d["id"].is_unique and set(d["id"]) == set(t["NSAID"].astype(np.int64))
    summaries = [f"{n}_{st}" for n in SUMMARY_NAMES for st in STATS]
    assert set(summaries + list(FLAGS) + ["method", "ra", "dec"]) <= set(d.columns)
    good = d[d["method"] == "anpe"]
    assert len(good) > 50 and np.isfinite(good[summaries].to_numpy(dtype=float)).all()
    # every row keeps its input position and spatial index (the index lsdb reads)
    i = inp.compute().reset_index().set_index("id")
    o = d.reset_index().set_index("id").loc[i.index]
    np.testing.assert_array_equal(o["_healpix_29"], i["_healpix_29"])
    np.testing.assert_array_equal(o[["ra", "dec"]], i[["ra", "dec"]])
    # spatial operations work on the posterior catalog
    row = d.iloc[0]
    assert row["id"] in set(cat.cone_search(row["ra"], row["dec"], radius_arcsec=1.0).compute()["id"])
    # the README's join of the input and posterior catalogs: every galaxy once, with its fluxes
    joined = inp.join(cat, left_on="id", right_on="id", suffixes=("", "_post")).compute()
    assert len(joined) == 60 and joined["id"].is_unique and {"flux_r", "logmstar_p50_post"} <= set(joined.columns)
    # a rerun skips every partition and leaves the same catalog
    again = run_inference(tmp_path / "in", out, **kw)
    assert again["partitions_skipped"] == 6 and again["galaxies"] == 60
    pd.testing.assert_frame_equal(lsdb.read_hats(out).compute(), d)


def test_summaries_are_numpys_percentiles():
    """The output quantiles are np.percentile's default ones, bit for bit (any draw count, ties,
    strided input), mean and std agree to rounding, and a row with a NaN draw gets NaN quantiles."""
    from sedflow.infer import QUANTILES, _summaries

    rng = np.random.default_rng(0)
    for shape in [(40, 1000), (6, 10000), (9, 7), (5, 1), (4, 2)]:
        draws = rng.normal(size=shape + (3,))[:, :, 1]
        for values in (draws, np.round(draws, 1)):
            got, q = _summaries(values), np.percentile(values, list(QUANTILES.values()), axis=1)
            for i, name in enumerate(QUANTILES):
                np.testing.assert_array_equal(got[name], q[i])
            np.testing.assert_allclose(got["mean"], values.mean(axis=1), rtol=1e-13, atol=1e-15)
            np.testing.assert_allclose(got["std"], values.std(axis=1), rtol=1e-12, atol=1e-15)
    values = rng.normal(size=(3, 100))
    values[1, 40] = np.nan
    got = _summaries(values)
    assert all(np.isnan(got[name][1]) and np.isfinite(got[name][[0, 2]]).all() for name in got)
