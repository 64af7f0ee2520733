"""Catalog inference end to end: `sedflow ingest` + `sedflow infer` on N simulated galaxies.

N galaxies (default 100,000, quick 500) are simulated (`simulate_rows`, fluxes with noise),
written as a Parquet catalog, ingested to row partitions of 500 rows (`ingest_catalog`),
then `run_inference` runs with the shipped model (`load_model()`) on a local Dask cluster
(one single-threaded worker process per CPU) at 1,000 and at 10,000 samples per galaxy,
1,000 of them through the SED model for the derived properties (the CLI's defaults).
Measured: galaxies/s over the wall time of `run_inference` (cluster start, model loading,
sampling, summaries, properties, Parquet writes), and the largest peak RSS of a Dask
worker process (polled with psutil).

The shipped model samples in ``--precision auto`` (bfloat16 on CPUs with AMX); there it is
also run in float32, same pipeline, as the baseline of the speed-up.
Peer: the same pipeline, same catalog and settings, with an untrained ``realnvp`` network (the
architecture shipped before 2026-12-04, sampled in the same precision) in the shipped model's
configuration (`bench._common.untrained_artifact`; the cost does not depend on the weights).

Partitions are kept at 500 rows because `infer_frame` holds all draws of a partition in
memory: about n_rows x n_samples x 23 x 8 bytes (0.9 GB per 500 rows at 10,000 samples).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bench._common import CPUS, ChildPeakRSS, row, simulated, untrained_artifact

SAMPLES = (1000, 10000)
PARTITION_ROWS = 500
PEER = "realnvp"      # the architecture shipped before realnvp_deep


def make_catalog(n: int, path: Path):
    """A Parquet catalog of n simulated galaxies and its description (fluxes with 1-sigma errors)."""
    from sedflow.catalog import CatalogSpec
    from sedflow.sps.photometry import BANDS

    cols = simulated(n, seed=2)
    table = {"id": np.arange(n, dtype=np.int64), "z": cols["z"]}
    table.update({f"flux_{b}": cols[f"flux_{b}"] for b in BANDS})
    table.update({f"flux_err_{b}": cols[f"flux_err_{b}"] for b in BANDS})
    pq.write_table(pa.table(table), path)
    spec = CatalogSpec(name="bench_simulated", bands=tuple(BANDS), id="id", redshift="z",
                       flux={"columns": [f"flux_{b}" for b in BANDS], "units": "nanomaggies"},
                       flux_error={"columns": [f"flux_err_{b}" for b in BANDS], "kind": "sigma"},
                       cuts={"redshift_range": [0.0, 0.2]})
    return spec


def run(quick: bool = False, n: int | None = None, samples=None) -> dict:
    from sedflow.flows import resolve_precision
    from sedflow.infer import run_inference
    from sedflow.ingest import ingest_catalog

    n = n or (500 if quick else 100_000)
    part_rows = min(PARTITION_ROWS, max(1, -(-n // (2 * CPUS))))
    work = Path(tempfile.mkdtemp(prefix="sedflow-bench-infer-"))
    res, rows = {"n": n, "partition_rows": part_rows, "workers": CPUS, "runs": {}}, []
    try:
        spec = make_catalog(n, work / "catalog.parquet")
        t0 = time.perf_counter()
        ingest = ingest_catalog(work / "catalog.parquet", spec, work / "ingested", partition_rows=part_rows)
        res["ingest"] = {"seconds": time.perf_counter() - t0, "partitions": ingest["partitions"]}
        rows.append(row(f"ingest {n:,} rows ({ingest['partitions']} partitions)", n / res["ingest"]["seconds"],
                        "rows/s"))
        peer_model = untrained_artifact(PEER, work / "peer_model")
        for k in samples or SAMPLES:
            runs = {}
            for label, model_path, precision in (("shipped", None, "auto"), ("shipped float32", None, "float32"),
                                                 (PEER, peer_model, "auto")):
                if label == "shipped float32" and resolve_precision("auto") == "float32":
                    continue                 # the same run as "shipped" on this CPU
                with ChildPeakRSS(("spawn_main",)) as workers:
                    t0 = time.perf_counter()
                    s = run_inference(work / "ingested", work / f"out{k}-{label}", model_path=model_path, n_samples=k,
                                      workers=CPUS, progress=False, precision=precision)
                    wall = time.perf_counter() - t0
                runs[label] = {"wall_s": wall, "galaxies_per_s": n / wall, "summary": s,
                               "worker_peak_rss_mb": workers.max_mb, "worker_processes": workers.processes}
            res["runs"][str(k)] = runs
            label = f"infer {n:,} gal, {k} samples, {CPUS} Dask workers ({runs['shipped']['summary']['precision']})"
            rows.append(row(label, runs["shipped"]["galaxies_per_s"], "gal/s",
                            f"{PEER} (shipped before), same pipeline", runs[PEER]["galaxies_per_s"]))
            if "shipped float32" in runs:
                rows.append(row(label, runs["shipped"]["galaxies_per_s"], "gal/s", "shipped in float32, same pipeline",
                                runs["shipped float32"]["galaxies_per_s"]))
            if runs["shipped"]["worker_peak_rss_mb"] is not None:
                rows.append(row(f"infer {k} samples: max Dask worker peak RSS", runs["shipped"]["worker_peak_rss_mb"],
                                "MB"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    res["rows"] = rows
    return res
