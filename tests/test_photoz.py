"""Photometric redshifts: the joint prior with z, the shipped photo-z model (`--model photoz`) on
catalogs without redshifts, the spec-z model's refusal, MCMC with z free, the photo-z metrics."""

from __future__ import annotations

import numpy as np
import pyarrow.dataset as ds
import pytest
import yaml
from astropy.table import Table

import sedflow
from sedflow.catalog import CatalogSpec, catalog_spec_dir, kcorrect_sample_path
from sedflow.diagnostics import photoz_metrics
from sedflow.posterior import load_model
from sedflow.prior import Prior, PriorWithRedshift


def read_out(path):
    return ds.dataset(str(path), format="parquet").to_table().to_pandas().sort_values("id").reset_index(drop=True)


@pytest.fixture(scope="module")
def photoz():
    return load_model("photoz")


@pytest.fixture(scope="module")
def kcorrect_rows():
    """The first 60 rows of the kcorrect SDSS sample (in the kcorrect wheel), with ids."""
    t = Table.read(kcorrect_sample_path())[:60]
    t["ID"] = np.arange(60, dtype=np.int64) + 1000
    return t


@pytest.fixture(scope="module")
def photometric_spec(tmp_path_factory):
    """The kcorrect description without redshifts: a photometric catalog."""
    d = yaml.safe_load((catalog_spec_dir() / "sdss_kcorrect.yaml").read_text())
    d.update(name="sdss_photometric", redshift=None, id="ID", cuts={})
    path = tmp_path_factory.mktemp("spec") / "sdss_photometric.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


def test_joint_prior_round_trip_density_and_floor():
    joint = PriorWithRedshift(Prior(), (0.0, 0.6))
    theta = joint.sample(500, seed=2)
    assert theta.shape == (500, 13) and joint.names[-1] == "z" and joint.ndim_unconstrained == 12
    assert 0 < theta[:, -1].min() and theta[:, -1].max() <= 0.6
    u = joint.to_unconstrained(theta)
    np.testing.assert_allclose(joint.from_unconstrained(u), theta, atol=1e-10)
    # log p(theta) = log p_u(u) + log |du/dtheta|: z adds logit's Jacobian to the SED parameters'
    np.testing.assert_allclose(joint.log_prob(theta),
                               joint.log_prob_unconstrained(u) + joint.log_abs_det_jacobian(theta), rtol=1e-8)
    np.testing.assert_allclose(joint.log_prob(theta), Prior().log_prob(theta[:, :12]) - np.log(0.6))
    # the whole real line maps inside, never to z = 0 (fluxes diverge there)
    far = joint.from_unconstrained(np.full((2, 12), [-800.0], dtype=float) * np.array([[1], [-1]]))
    assert far[0, -1] > 0 and far[1, -1] == 0.6 and joint.in_support(far).all()
    bad = theta[:2].copy()
    bad[:, -1] = [0.7, np.nan]
    assert not joint.in_support(bad).any() and np.all(joint.log_prob(bad) == -np.inf)
    from sedflow.prior import prior_from_dict

    assert prior_from_dict(joint.to_dict()) == joint and prior_from_dict(Prior().to_dict()) == Prior()
    with pytest.raises(ValueError, match="z_min < z_max"):
        PriorWithRedshift(Prior(), (0.5, 0.2))


def test_the_shipped_photoz_model_is_found_by_name(photoz):
    assert photoz.kind == "photoz" and photoz.infers_redshift and photoz.names[-1] == "z"
    assert "z" not in photoz.x_names and photoz.prior.z_range == (0.0, 0.6)
    assert load_model("sdss").kind == "specz" and "photoz" in sedflow.posterior.shipped_models()
    assert photoz.config["prior"]["redshift"] == {"kind": "uniform", "range": [0.0, 0.6]}


def test_photoz_catalog_without_redshifts_end_to_end(photoz, kcorrect_rows, photometric_spec, tmp_path):
    """ingest a photometric catalog (redshift: null) -> infer with the photo-z model: every row once,
    z summaries, z_spec NaN; the spec-z model refuses the same catalog before starting anything."""
    from sedflow.infer import run_inference
    from sedflow.ingest import ingest_catalog

    t = kcorrect_rows.copy()
    t["MODELFLUX"][3, 0] = -2.0                  # a u non-detection: sampled
    t["MODELFLUX_IVAR"][4, 1] = 0.0              # g missing: sampled
    t["MODELFLUX_IVAR"][5, [0, 1, 2]] = 0.0      # three bands missing: bad input
    src = tmp_path / "phot.fits"
    t.write(src)
    ingest_catalog(src, photometric_spec, tmp_path / "in", partition_rows=25)
    with pytest.raises(ValueError, match="no redshifts.*photoz"):
        run_inference(tmp_path / "in", tmp_path / "specz_out", model_path="sdss", n_samples=50, progress=False)
    s = run_inference(tmp_path / "in", tmp_path / "out", model_path="photoz", n_samples=300, keep_samples=10,
                      property_samples=50, workers=2, progress=False)
    d = read_out(tmp_path / "out")
    assert len(d) == 60 and s["galaxies"] == 60 and d["id"].tolist() == list(range(1000, 1060))
    assert d["method"].tolist() == ["anpe"] * 5 + ["none"] + ["anpe"] * 54
    assert d["z_spec"].isna().all() and d.loc[5, ["z_p50", "logmstar_surv_p50"]].isna().all()
    ok = d["method"] == "anpe"
    assert (d.loc[ok, "z_p2p5"] <= d.loc[ok, "z_p50"]).all() and (d.loc[ok, "z_p50"] <= d.loc[ok, "z_p97p5"]).all()
    assert d.loc[ok, "z_p50"].between(0, 0.6).all() and (d.loc[ok, "z_std"] > 0).all()
    assert len(d.loc[0, "samples"]["z"]) == 10
    # re-weighted to the shipped population prior: an ESS per sampled row, counted in the summary
    assert (d.loc[ok, "population_ess"] > 0).all() and np.isnan(d.loc[5, "population_ess"])
    assert not d.loc[5, "flag_low_ess"] and s["flag_low_ess"] == int(d["flag_low_ess"].sum())
    # SDSS main-sample galaxies: the photo-z posteriors track the withheld spectroscopic redshifts
    dz = (d.loc[ok, "z_p50"].to_numpy() - np.asarray(kcorrect_rows["Z"])[ok.to_numpy()])
    assert np.median(np.abs(dz)) < 0.05


def test_fit_with_and_without_redshift(photoz, kcorrect_rows):
    """fit(z=None) with the photo-z model; a given z is kept as z_spec and not used; the spec-z model
    refuses z=None."""
    t = kcorrect_rows[:5]
    args = (t["MODELFLUX"], 1 / np.sqrt(t["MODELFLUX_IVAR"]))
    kw = dict(spec="sdss_kcorrect", extinction=t["EXTINCTION"], n_samples=400, seed=1)
    res = sedflow.fit(*args, None, model="photoz", **kw)
    assert res.samples["z"].shape == (5, 400) and res.summary["z_spec"].isna().all()
    given = sedflow.fit(*args, t["Z"], model="photoz", **kw)
    np.testing.assert_allclose(given.summary["z_spec"], t["Z"])
    cols = [c for c in res.summary.columns if c != "z_spec"]
    assert res.summary[cols].equals(given.summary[cols])           # the input z is not an input of the flow
    with pytest.raises(ValueError, match="no redshifts"):
        sedflow.fit(*args, None, **kw)


def test_mcmc_with_free_redshift(photoz):
    """zeus with z as a 13th parameter: started at the truth, a bright galaxy's walkers stay within a
    narrow z range around it (a likelihood blind to z would let them spread over the prior's)."""
    from sedflow.mcmc import run_mcmc

    sed = photoz.sed_model()
    theta = photoz.prior.sample(1, seed=11)
    theta[0, 0], theta[0, -1] = 11.0, 0.15
    flux = sed.photometry(theta[:, :12], theta[:, 12])[0]
    res = run_mcmc(flux, 0.02 * flux, None, model=sed, prior=photoz.prior, n_walkers=26, n_steps=400,
                   burn_in=200, seed=3, init=theta[0], init_scale=0.05)
    assert res.samples.shape[1] == 13 and res.names[-1] == "z" and res.z is None
    lo, hi = np.percentile(res.samples[:, -1], [1, 99])
    assert lo < 0.15 < hi and np.std(res.samples[:, -1]) < 0.08         # the prior's std is 0.17
    with pytest.raises(ValueError, match="samples z"):
        run_mcmc(flux, 0.02 * flux, 0.15, model=sed, prior=photoz.prior, n_steps=10, burn_in=0)


def test_photoz_validation_on_real_sdss_rows(photoz, tmp_path):
    """`sedflow validate`'s real-data photo-z section on the first 300 kcorrect galaxies: the rows the
    population prior was fitted on (the even ones) are held out, the metrics are wired to the
    withheld redshifts, both priors are reported and the figure is written."""
    from sedflow.validate import photoz_real_data

    r = photoz_real_data(photoz, load_model("sdss"), kcorrect_sample_path(), "sdss_kcorrect", n_samples=200,
                         out=tmp_path, max_rows=300)
    a, flat = r["all"], r["training_prior"]["all"]
    assert r["rows"] == 300 and r["held_out_rows"] == 150 and r["prior"] == "population"
    assert a["n"] == r["valid_rows"] >= 145 and sum(a["pit_histogram"]) == a["n"] == flat["n"]
    print(f"\n150 held-out kcorrect galaxies: sigma_NMAD {a['sigma_nmad']:.4f} (training prior "
          f"{flat['sigma_nmad']:.4f}), bias {a['bias']:+.4f}, outliers {a['outlier_fraction']:.3f}, "
          f"dlogM* NMAD {r['logmstar_surv_photoz_minus_specz']['nmad']:.3f}")
    # measured on the 5,000 held-out rows (MODEL_CARD.md): 0.0180, -0.0034, 0.04%; loose for 150
    assert a["sigma_nmad"] < 0.035 and abs(a["bias"]) < 0.015 and a["outlier_fraction"] < 0.03
    assert r["logmstar_surv_photoz_minus_specz"]["nmad"] < 0.4
    assert (tmp_path / r["figure"]).stat().st_size > 0


def test_photoz_metrics_known_values():
    z = np.linspace(0.05, 0.5, 1000)
    exact = photoz_metrics(np.repeat(z[:, None], 10, axis=1), z)
    assert exact["sigma_nmad"] == 0 and exact["outlier_fraction"] == 0 and exact["bias"] == 0
    shifted = photoz_metrics((z + 0.2 * (1 + z))[:, None] + np.zeros((1, 10)), z)
    assert shifted["outlier_fraction"] == 1 and shifted["bias"] == pytest.approx(0.2)
    rng = np.random.default_rng(0)
    wide = photoz_metrics(z[:, None] + 0.05 * rng.normal(size=(1000, 300)), z)   # too wide: PIT piles in the middle
    assert wide["pit_ks_pvalue"] < 1e-3 and wide["pit_histogram"][10] > wide["pit_histogram"][0]


def test_redshift_null_descriptions():
    d = yaml.safe_load((catalog_spec_dir() / "sdss_kcorrect.yaml").read_text())
    spec = CatalogSpec.from_dict({**d, "redshift": None, "cuts": {}})
    assert spec.redshift is None and "Z" not in spec.required_columns()
    with pytest.raises(ValueError, match="redshift_range cut needs a redshift"):
        CatalogSpec.from_dict({**d, "redshift": None})
