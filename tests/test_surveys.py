"""Any survey: bands, filters, units and the SED model travel with descriptions and artifacts.

An LSST ugrizy pipeline end to end at toy sizes (a catalog in Rubin's Object-table columns made
with the forward model and photerr's LSST error model), the shipped descriptions of other surveys,
unit conversions, refused descriptions, and an artifact trained with a non-default SED model.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from conftest import shared_path
from sedflow.catalog import CatalogSpec, extinction_coefficients, read_catalog
from sedflow.prior import PARAM_NAMES, Prior
from sedflow.sps.model import SEDModel
from sedflow.sps.photometry import nanomaggies_to_mag

LSST = tuple(f"lsst2023-{b}" for b in "ugrizy")
EBV = 0.03


def lsst_object_table(path, n=6000, seed=0):
    """A toy Rubin Object table: prior draws at 0.02 < z < 0.5 through the LSST filters, reddened by
    E(B-V) = 0.03, with photerr's 10-year LSST errors; galaxies with true i < 24 kept; nJy."""
    photerr = pytest.importorskip("photerr")
    rng = np.random.default_rng(seed)
    sed = SEDModel(filters=LSST, z_min=0.0, z_max=0.6)
    theta = Prior().sample(n, seed=seed)
    z = rng.uniform(0.02, 0.5, n)
    mag = nanomaggies_to_mag(sed.photometry(theta, z))
    keep = mag[:, 3] < 24.0
    a = extinction_coefficients(LSST) * 0.86 * EBV            # as the lsst description dereddens
    obs = photerr.LsstErrorModel()(pd.DataFrame(mag[keep] + a, columns=list("ugrizy")), random_state=seed)
    t = {"objectId": np.arange(keep.sum(), dtype=np.int64) * 7 + 1000,
         "coord_ra": rng.uniform(50, 60, keep.sum()), "coord_dec": rng.uniform(-40, -30, keep.sum()),
         "redshift": z[keep], "ebv": np.full(keep.sum(), EBV)}
    for b in "ugrizy":
        flux_njy = 10 ** (-0.4 * (obs[b].to_numpy() - 31.4))      # AB: 0 mag = 3631 Jy, so 31.4 mag = 1 nJy
        t[f"{b}_cModelFlux"] = flux_njy
        t[f"{b}_cModelFluxErr"] = flux_njy * obs[f"{b}_err"].to_numpy() / 1.0857362
    pq.write_table(pa.table(t), path)
    return path, theta[keep]


def test_lsst_pipeline_end_to_end(tmp_path, ray_local, capsys):
    """noise fit -> simulate -> train -> ingest -> infer -> mcmc on six LSST bands."""
    from sedflow.cli import main
    from sedflow.infer import run_inference
    from sedflow.ingest import ingest_catalog
    from sedflow.noise import fit_noise_model
    from sedflow.posterior import load_model
    from sedflow.simulate import SimulationConfig, run_simulation
    from sedflow.train import train

    cat, _ = lsst_object_table(tmp_path / "objects.parquet")
    n_rows = pq.read_metadata(cat).num_rows
    noise, report = fit_noise_model(cat, "lsst")
    assert noise.bands == tuple("ugrizy") and noise.filters == LSST and report["rows_used"] > 1000
    noise.save(tmp_path / "noise.json")

    sims = tmp_path / "sims"
    s = run_simulation(sims, SimulationConfig(n=4000, shards=2, seed=1, z_min=0.0, z_max=0.5),
                       noise=noise, progress=False)
    assert s["complete"] and s["rows"] == 4000
    manifest = json.loads((sims / "_simulation.json").read_text())
    assert manifest["bands"] == list("ugrizy") and manifest["sed_model"]["z_range"] == [0.0, 0.5]
    assert {"flux_y", "mag_err_y"} <= set(pq.read_schema(sims / "shard-00000-of-00002.parquet").names)

    model_dir = tmp_path / "model"
    train(sims, model_dir, workers=1, max_epochs=2, batch_size=256)
    post = load_model(model_dir)                                  # the 6-band artifact round-trips
    assert post.bands == tuple("ugrizy") and post.filters == LSST and len(post.x_names) == 13
    assert post.sed_model().band_names == LSST and post.sed_model().z_range == (0.0, 0.5)
    assert post.sample(np.full((1, 13), 0.05) + np.r_[[22.0] * 6, [0.0] * 6, 0.2], 10, seed=0).shape == (1, 10, 12)

    ingest_catalog(cat, "lsst", tmp_path / "in", partition_rows=1000)
    meta = pq.read_schema(tmp_path / "in" / "part-00000.parquet").metadata
    assert json.loads(meta[b"filters"]) == list(LSST) and meta[b"bands"] == b"u,g,r,i,z,y"
    summary = run_inference(tmp_path / "in", tmp_path / "out", model_path=model_dir, n_samples=100,
                            property_samples=20, workers=1, progress=False)
    out = ds.dataset(str(tmp_path / "out"), format="parquet").to_table().to_pandas()
    ids = pq.read_table(cat, columns=["objectId"]).column(0).to_pylist()
    assert summary["galaxies"] == len(out) == n_rows and sorted(out["id"]) == sorted(ids)
    assert {"logmstar_p50", "logmstar_surv_p50", "tau_ism_std", "flag_color_ood"} <= set(out.columns)
    anpe = out[out["method"] == "anpe"]
    assert len(anpe) > 0.8 * n_rows and anpe["logmstar_p50"].between(7, 12.5).all()
    # ... and refused by the SDSS model, naming both filter sets
    with pytest.raises(ValueError, match="lsst2023-u.*sdss2010-u"):
        run_inference(tmp_path / "in", tmp_path / "out_sdss", n_samples=10, workers=1, progress=False)

    import sedflow

    with pytest.raises(ValueError, match="filters"):
        sedflow.fit(pd.read_parquet(cat).head(3), spec="lsst", n_samples=10)       # the default model is SDSS's

    # a 6-band MCMC with the artifact's SED model and prior
    row = pd.read_parquet(tmp_path / "in").iloc[0]
    flux = [f"{row[f'flux_{b}']:.6g}" for b in "ugrizy"]
    err = [f"{row[f'flux_err_{b}']:.6g}" for b in "ugrizy"]
    rc = main(["mcmc", "--flux", *flux, "--flux-err", *err, "--z", f"{row['z']:.5f}", "--model", str(model_dir),
               "--walkers", "24", "--steps", "30", "--burn-in", "10", "--seed", "1"])
    assert rc in (0, 1) and "tau_ism" in capsys.readouterr().out


def test_same_galaxies_in_nanomaggies_njy_and_ab_mag_give_one_standard_form(tmp_path):
    rng = np.random.default_rng(2)
    nmgy = 10 ** rng.uniform(-0.5, 3, (50, 3))
    sigma = nmgy * rng.uniform(0.01, 0.2, (50, 3))
    njy = 3631e-9 * 1e9 * nmgy                                    # 1 nanomaggy = 3631e-9 Jy
    mag, mag_err = 22.5 - 2.5 * np.log10(nmgy), 1.0857362047581294 * sigma / nmgy
    frames = {}
    for units, f, e in (("nanomaggies", nmgy, sigma), ("nJy", njy, 3631 * sigma), ("mag", mag, mag_err)):
        cols = {"z": np.full(50, 0.1), **{f"f{j}": f[:, j] for j in range(3)}, **{f"e{j}": e[:, j] for j in range(3)}}
        pd.DataFrame(cols).to_csv(tmp_path / f"{units}.csv", index=False)
        spec = CatalogSpec.from_dict({"name": units, "redshift": "z", "bands": ["g", "r", "i"],
                                      "filters": ["sdss2010-g", "sdss2010-r", "sdss2010-i"],
                                      "flux": {"columns": ["f0", "f1", "f2"], "units": units},
                                      "flux_error": {"columns": ["e0", "e1", "e2"], "kind": "sigma"}})
        frames[units], _ = read_catalog(tmp_path / f"{units}.csv", spec)
    for units in ("nJy", "mag"):
        for c in ("flux_g", "flux_r", "flux_i", "flux_err_g", "flux_err_i"):
            np.testing.assert_allclose(frames[units][c], frames["nanomaggies"][c], rtol=1e-10, err_msg=(units, c))
    np.testing.assert_allclose(frames["nanomaggies"]["flux_r"], nmgy[:, 1], rtol=0)


@pytest.mark.parametrize("change, match", [
    ({"filters": ["sdss2010-g", "no-such-filter", "sdss2010-i"]}, "no-such-filter"),
    ({"filters": ["sdss2010-g", "sdss2010-r"]}, "2 filters for 3 bands"),
    ({"filters": None}, "filter"),
    ({"flux": {"columns": ["f0", "f1", "f2"], "units": "furlongs"}}, "furlongs"),
    ({"flux": {"columns": ["f0", "f1"], "units": "nJy"}}, "2 columns/indices for 3 bands"),
    ({"flux": {"columns": ["f0", "f1", "f2"], "units": "mag"}, "flux_error": {"columns": ["e0", "e1", "e2"]}},
     "magnitude errors"),
    ({"extinction": {"kind": "reddening", "column": "x"}}, "extinction.kind"),
    ({"mag_err_floor": {"q": 0.1}}, "'q'"),
    ({"filters": ["wise2010-W3", "sdss2010-r", "sdss2010-i"]}, None),   # loads; refused by the SED model
])
def test_bad_descriptions_are_refused_naming_the_problem(tmp_path, change, match):
    base = {"name": "bad", "redshift": "z", "bands": ["g", "r", "i"],
            "filters": ["sdss2010-g", "sdss2010-r", "sdss2010-i"],
            "flux": {"columns": ["f0", "f1", "f2"], "units": "nJy"},
            "flux_error": {"columns": ["e0", "e1", "e2"], "kind": "sigma"}}
    d = {**base, **change}
    (tmp_path / "bad.yaml").write_text(json.dumps(d))               # JSON is YAML
    if match is None:
        spec = CatalogSpec.load(tmp_path / "bad.yaml")
        with pytest.raises(ValueError, match="dust emission"):
            SEDModel(filters=spec.filters, z_max=0.2)
        return
    with pytest.raises(ValueError, match=match):
        CatalogSpec.load(tmp_path / "bad.yaml")


@pytest.mark.parametrize("name", ["legacysurveys_south", "legacysurveys_north"])
def test_legacy_surveys_description(tmp_path, name):
    """DESI's Legacy Surveys columns: nanomaggies with FLUX_IVAR, dereddened by 1 / MW_TRANSMISSION;
    the forward model serves g r z + W1 W2 (its rest-frame grid widened to 5 um)."""
    spec = CatalogSpec.load(name)
    rng = np.random.default_rng(3)
    n = 20
    flux = 10 ** rng.uniform(0, 2.5, (n, 5))
    ivar = 1 / (0.03 * flux) ** 2
    trans = rng.uniform(0.8, 1.0, (n, 5))
    t = {"TARGETID": np.arange(n, dtype=np.int64) + 39627000000000000, "TARGET_RA": rng.uniform(0, 360, n),
         "TARGET_DEC": rng.uniform(-10, 60, n), "Z": rng.uniform(0.05, 0.5, n)}
    for j, b in enumerate(["G", "R", "Z", "W1", "W2"]):
        t[f"FLUX_{b}"], t[f"FLUX_IVAR_{b}"], t[f"MW_TRANSMISSION_{b}"] = flux[:, j] * trans[:, j], ivar[:, j], trans[:, j]
    pq.write_table(pa.table(t), tmp_path / "desi.parquet")
    frame, counts = read_catalog(tmp_path / "desi.parquet", spec)
    assert counts["flag_bad_input"] == 0 and list(frame["id"]) == list(t["TARGETID"])
    np.testing.assert_allclose(frame[[f"flux_{b}" for b in spec.bands]].to_numpy(), flux, rtol=1e-12)
    np.testing.assert_allclose(frame["flux_err_W2"], 0.03 * flux[:, 4] / trans[:, 4], rtol=1e-12)
    model = SEDModel(filters=spec.filters, z_max=0.6)
    assert model.wave[-1] > 45_000
    phot = model.photometry(Prior().sample(50, seed=1), 0.3)
    assert phot.shape == (50, 5) and np.all(phot > 0)


def test_nsa_with_galex_bands():
    """Seven NSA bands (GALEX FUV, NUV + ugriz): read, and served by the forward model to 1100 A rest."""
    src = shared_path("nsa_lcs", "nsa_v0_1_2_lcs_subset.fits")
    spec = CatalogSpec.load("nsa_galex")
    frame, counts = read_catalog(src, spec)
    assert len(frame) == 3418 and {"flux_FUV", "flux_NUV", "flux_z"} <= set(frame.columns)
    ok = ~frame["flag_bad_input"]
    assert ok.mean() > 0.5                            # most NSA galaxies have GALEX detections
    model = SEDModel(filters=spec.filters, z_max=0.2)
    assert model.wave[0] < 1150
    phot = model.photometry(Prior().sample(100, seed=2), 0.03)
    assert np.all(phot > 0) and np.median(phot[:, 0] / phot[:, 2]) < 1      # FUV fainter than u, typically


@pytest.fixture(scope="module")
def non_default_model(tmp_path_factory, ray_local):
    """An artifact trained on simulations of PROVABGS's bases with a 30 Myr birth-cloud escape time."""
    from sedflow.simulate import SimulationConfig, run_simulation
    from sedflow.sps.history import NMFBases
    from sedflow.train import train

    bases = NMFBases.from_provabgs_dir(shared_path("provabgs"))
    sed = SEDModel(bases=bases, t_esc=0.03, z_max=0.2)
    d = tmp_path_factory.mktemp("t_esc30")
    run_simulation(d / "sims", SimulationConfig(n=3000, shards=2, seed=4), model=sed, progress=False)
    train(d / "sims", d / "model", workers=1, max_epochs=1, batch_size=256)
    return d / "model", sed


def test_an_artifact_is_inferred_and_validated_with_its_own_sed_model(non_default_model, tmp_path):
    from sedflow.infer import load_models
    from sedflow.validate import held_out_simulations, validate

    model_dir, trained_with = non_default_model
    post, sed = load_models(model_dir)
    assert sed.t_esc == 0.03 and sed.bases.source == trained_with.bases.source
    np.testing.assert_array_equal(sed.bases.sfh, trained_with.bases.sfh)
    theta, z = Prior().sample(500, seed=5), np.full(500, 0.08)
    # derived properties: those of the bases it was trained with, not of the default bases
    props, default = sed.properties(theta, z), SEDModel.default().properties(theta, z)
    np.testing.assert_allclose(props["logsfr_1gyr"], trained_with.properties(theta, z)["logsfr_1gyr"], rtol=1e-12)
    assert np.mean(np.abs(props["tage_mw"] - default["tage_mw"]) > 0.05) > 0.5
    # held-out simulations: photometry with birth clouds around 10-30 Myr populations too, so the
    # u band (young stars) is fainter than with 10 Myr, never brighter
    sims = held_out_simulations(post, sed, 300, seed=6)
    ten_myr = SEDModel(bases=trained_with.bases, t_esc=0.01, z_max=0.2)
    ratio = sed.photometry(sims["theta"], sims["z"]) / ten_myr.photometry(sims["theta"], sims["z"])
    assert np.all(ratio[:, 0] <= 1 + 1e-12) and np.mean(ratio[:, 0] < 0.99) > 0.1
    assert np.all(ratio[:, 4] >= ratio[:, 0] - 1e-12)              # z band less affected than u
    m = validate(tmp_path / "report", model_path=model_dir, n_test=100, n_samples=50, n_mcmc=0)
    assert set(m["calibration"]["parameters"]) == set(PARAM_NAMES)
    assert (tmp_path / "report" / "report.md").is_file()


def test_magnitude_sentinels_partial_floors_and_redshifts_below_the_grid(tmp_path):
    from sedflow.catalog import to_nanomaggies

    flux, sigma = to_nanomaggies(np.array([20.0, 99.0, -99.0, np.nan]), "mag", np.full(4, 0.1))
    assert np.isfinite(flux[0]) and np.isnan(flux[1:]).all()              # 99 / -99 sentinels: no measurement
    spec = CatalogSpec.from_dict({"name": "p", "redshift": "z", "bands": ["g", "r"],
                                  "filters": ["sdss2010-g", "sdss2010-r"],
                                  "flux": {"columns": ["fg", "fr"], "units": "nanomaggies"},
                                  "flux_error": {"columns": ["eg", "er"], "kind": "sigma"},
                                  "mag_err_floor": {"g": 0.05}})          # r has none: no floor
    pd.DataFrame({"z": [0.1], "fg": [100.0], "fr": [100.0], "eg": [1.0], "er": [1.0]}).to_csv(tmp_path / "p.csv")
    frame, _ = read_catalog(tmp_path / "p.csv", spec)
    assert frame["flux_err_r"][0] == 1.0 and frame["flux_err_g"][0] > 1.0
    model = SEDModel(filters=["sdss2010-r", "wise2010-W2"], z_min=0.1, z_max=0.2)
    with pytest.raises(ValueError, match="outside"):                     # below z_min W2 leaves the grid
        model.photometry(Prior().sample(2, seed=0), 0.02)

