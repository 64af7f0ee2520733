"""`sedflow run`, the README's first command: the 10,000 SDSS galaxies shipped in the kcorrect
wheel through the shipped model on a local Dask cluster (fewer draws than the default, to stay
quick)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as ds

# 40 of the 10,000 galaxies (every 250th by id) as the main job gave them with the 2026-12
# shipped model (these settings): later refactors must not change them.
REFERENCE = Path(__file__).parent / "data" / "main_job_reference.csv"


def test_main_job_gives_every_sdss_galaxy_one_posterior_and_resumes(tmp_path):
    from sedflow.main_job import run_main_job

    out = tmp_path / "run"
    # float32: the reference below was made so (bfloat16, the default on CPUs with AMX, differs by
    # ~1e-3 sigma: tests/test_flows.py)
    summary = run_main_job(out, n_samples=200, keep_samples=5, workers=2, progress=False, precision="float32")
    first = ds.dataset(str(out / "posteriors"), format="parquet").to_table().sort_by("id")
    posteriors = first.to_pandas()
    catalog = ds.dataset(str(out / "catalog"), format="parquet").to_table(columns=["id"]).to_pandas()

    # every ingested row once, nothing dropped or duplicated, each with a method
    assert len(catalog) == 10_000 and catalog["id"].is_unique
    assert summary["galaxies"] == len(posteriors) == len(catalog)
    assert posteriors["id"].is_unique and set(posteriors["id"]) == set(catalog["id"])
    assert posteriors["method"].notna().all()
    # the sample is SDSS main-sample galaxies at z ~ 0.1: stellar masses ~10^10-10^11 Msun
    anpe = posteriors[posteriors["method"] == "anpe"]
    assert len(anpe) > 0.995 * len(posteriors)          # z up to 0.58, u non-detections: all in range
    assert 10.0 < np.median(anpe["logmstar_surv_p50"]) < 11.3
    for name in ("mass_vs_redshift.png", "galaxy_corner.png"):
        assert (out / name).stat().st_size > 10_000
    # the same summaries as before for the same seed (to float tolerance across CPUs)
    ref = pd.read_csv(REFERENCE)
    got = posteriors.drop(columns=["samples"]).set_index("id").loc[ref["id"]].reset_index()
    assert set(got.columns) == set(ref.columns)
    got = got[list(ref.columns)]
    for c in ref.columns:
        if ref[c].dtype.kind == "f":
            np.testing.assert_allclose(got[c], ref[c], rtol=1e-5, atol=1e-5, err_msg=c)
        else:
            assert list(got[c]) == list(ref[c]), c

    # a second run finds the ingested catalog and every finished partition, and changes nothing
    again = run_main_job(out, n_samples=200, keep_samples=5, workers=2, progress=False, precision="float32")
    assert again["partitions_skipped"] == again["partitions"]
    assert ds.dataset(str(out / "posteriors"), format="parquet").to_table().sort_by("id").equals(first)
