"""The main job on embedded defaults: real SDSS galaxies -> posteriors -> Parquet + figures.

``sedflow run``: ingest the 10,000 SDSS galaxies of the ``kcorrect`` wheel
(``kcorrect/data/test/gst_tests_small.fits``, the shipped description ``sdss_kcorrect``),
infer with the shipped model on a local Dask cluster, then print a summary and save
``mass_vs_redshift.png`` (flagged galaxies marked) and ``galaxy_corner.png`` (one galaxy's
posterior with its photometry and best-fit SED).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

__all__ = ["run_main_job"]


def run_main_job(out="sedflow_run", n_samples: int = 1000, keep_samples: int = 200, address=None,
                 workers: int = 2, seed: int = 0, progress: bool = True, max_rows: int | None = None,
                 precision: str = "auto") -> dict:
    """Ingest, infer, summarise and plot; rerun to resume. ``max_rows``: only the first rows of the
    sample (a quick trial); a rerun with another ``max_rows`` starts the outputs afresh.
    ``precision``: the flow's sampling arithmetic (`sedflow.PosteriorModel.precision`)."""
    import pyarrow.dataset as ds

    from sedflow.catalog import kcorrect_sample_path
    from sedflow.infer import run_inference
    from sedflow.ingest import ingest_catalog

    out = Path(out)
    catalog = out / "catalog"
    manifest = catalog / "_ingest.json"
    if not manifest.exists() or json.loads(manifest.read_text()).get("max_rows") != max_rows:
        for stale in (catalog, out / "posteriors"):      # posteriors of another catalog are not kept
            if stale.exists():
                shutil.rmtree(stale)
        s = ingest_catalog(kcorrect_sample_path(), "sdss_kcorrect", catalog, partition_rows=2000,
                           max_rows=max_rows)
        print(f"ingested {s['rows_in']:,} SDSS galaxies -> {catalog}")
    summary = run_inference(catalog, out / "posteriors", n_samples=n_samples, keep_samples=min(keep_samples, n_samples),
                            address=address, workers=workers, seed=seed, progress=progress, precision=precision)
    table = ds.dataset(str(out / "posteriors"), format="parquet").to_table().to_pandas()
    cat = ds.dataset(str(catalog), format="parquet").to_table().to_pandas()
    table = table.merge(cat, on="id", suffixes=("", "_in"))
    _figures(table, out)
    ok = table["method"] == "anpe"
    print(f"{summary['galaxies']:,} galaxies, {summary['galaxies_per_s']:.1f} galaxies/s; "
          f"median log M*_surv {np.median(table.loc[ok, 'logmstar_surv_p50']):.2f}; "
          f"flagged: " + ", ".join(f"{k[5:]} {100 * v:.1f}%" for k, v in summary["flagged_fraction"].items()))
    print(f"posteriors: {out / 'posteriors'}; figures: {out / 'mass_vs_redshift.png'}, {out / 'galaxy_corner.png'}")
    return summary


def _figures(table, out: Path) -> None:
    import corner
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sedflow.figures import best_fit, plot_sed_fits
    from sedflow.infer import load_models
    from sedflow.prior import PARAM_NAMES

    ok = table["method"] == "anpe"
    ood = ok & (table["flag_sigma_ood"] | table["flag_color_ood"] | table["flag_posterior_ood"])
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.errorbar(table.loc[ok & ~ood, "z"], table.loc[ok & ~ood, "logmstar_surv_p50"],
                yerr=0.5 * (table.loc[ok & ~ood, "logmstar_surv_p84"] - table.loc[ok & ~ood, "logmstar_surv_p16"]),
                fmt=".", ms=2, lw=0.3, alpha=0.5, label="ANPE posterior median (16-84%)")
    ax.plot(table.loc[ood, "z"], table.loc[ood, "logmstar_surv_p50"], "x", ms=3, color="C3",
            label="flagged out of distribution")
    ax.set(xlabel="redshift", ylabel="log10 M*_surv [Msun]", title="SDSS (kcorrect sample), sedflow")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "mass_vs_redshift.png", dpi=110)
    plt.close(fig)

    if not (ok & ~ood).any():
        return
    row = table[ok & ~ood].iloc[0]
    post, sed = load_models(None)
    flux = np.array([row[f"flux_{b}"] for b in post.bands])
    err = np.array([row[f"flux_err_{b}"] for b in post.bands])
    theta = post.sample(post.inputs.observables(flux, err, row["z"]), 5000, seed=0)[0]  # more draws than kept: smooth contours
    idx = [0, 5, 6, 10, 11]
    fig = corner.corner(theta[:, idx], labels=[PARAM_NAMES[i] for i in idx], plot_datapoints=False)
    _, best = best_fit(sed, theta[None], flux[None], err[None], np.array([row["z"]]))
    ax = fig.add_axes([0.6, 0.68, 0.36, 0.28])
    plot_sed_fits(ax, sed, row["z"], flux, err, [(best[0], "C0", "best posterior draw")])
    ax.set_title(f"id {row['id']}, z={row['z']:.3f}", fontsize=8)
    fig.savefig(out / "galaxy_corner.png", dpi=90)
    plt.close(fig)
