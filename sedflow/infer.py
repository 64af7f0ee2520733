"""Catalog-scale inference: posteriors, derived properties and quality flags for every galaxy.

`infer_frame` does the work for one table in-process (checks -> batched sampling ->
summaries -> derived properties); `run_inference` fans it over the partitions of an ingested
catalog with Dask (``dask.dataframe.read_parquet`` + ``map_partitions``; a local cluster
when no scheduler address is given), writing one Parquet file per input partition
atomically, skipping partitions already finished. The output has the input's layout:
``part-NNNNN.parquet`` for row partitions; for a HATS input a HATS catalog (`sedflow.hats_io`):
each partition at its input pixel's path ``dataset/Norder=k/Dir=d/Npix=n.parquet`` with
``_healpix_29``, ``ra``, ``dec`` first, and the HATS metadata (``_metadata``, ``_common_metadata``,
``partition_info.csv``, ``hats.properties``) written by ``hats`` at the end, so that
``lsdb.read_hats(out)`` opens it.

Flags: ``flag_bad_input`` (not sampled, summaries null, row kept: for spec-z models z non-finite or outside the
training range; for log-magnitude models any non-finite or non-positive flux or error, ivar <= 0;
for asinh-input models fewer than 3 measured bands), ``flag_quality`` (failed a quality cut of the
catalog description, carried from ingest), ``flag_missing_bands`` (bitmask of bands without a
measurement), and the out-of-distribution flags ``flag_sigma_ood``, ``flag_color_ood``,
``flag_posterior_ood`` of `sedflow.ood` (thresholds stored in the model). The catalog must have
the model's bands and filters (`check_filters`). Derived properties and the MCMC fallback use the
SED model the artifact was trained with.

``method`` is ``anpe``, ``mcmc`` (with ``--fallback mcmc``, for OOD-flagged, valid rows) or
``none`` (bad input).

A photo-z model (``post.infers_redshift``) needs no redshift: it writes ``z_{mean,std,p2p5,...}``
beside the parameters, the derived properties are marginalised over z (each draw's properties at
its own z), and the catalog's redshift, where it has one, is kept as ``z_spec`` (NaN where none).
A spectroscopic-redshift model refuses a catalog without redshifts.

A model with a population prior (`sedflow.population`; the shipped photo-z model has one) gives
posteriors under it unless ``population_prior=False`` (``--no-population-prior``), with the
columns ``population_ess`` and ``flag_low_ess``.
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from sedflow import hats_io, ood
from sedflow.population import LOW_ESS, OVERSAMPLE, resample_draws, sample_population
from sedflow.posterior import MIN_VALID_BANDS, PosteriorModel, load_model
from sedflow.posterior import model_path as model_path_of
from sedflow.prior import PARAM_NAMES
from sedflow.sps.model import PROPERTY_NAMES
from sedflow.storage import claim_output, write_parquet

__all__ = ["FLAGS", "SUMMARY_NAMES", "STATS", "sampled_names", "summary_names", "derived_properties", "output_schema",
           "check_filters", "check_sampling_options", "trained_redshift_range",
           "require_redshifts", "galaxy_checks", "infer_frame", "load_models", "partition_seed", "run_inference"]

FLAGS = ("flag_bad_input", "flag_quality", "flag_sigma_ood", "flag_color_ood", "flag_posterior_ood")
MISSING_BANDS = "flag_missing_bands"     # int32 bitmask: bit j set when the model's band j has no measurement
POPULATION_ESS, LOW_ESS_FLAG = "population_ess", "flag_low_ess"   # with a population prior only
COUNTED = FLAGS + (MISSING_BANDS, LOW_ESS_FLAG)   # summaries count the rows where each is set (0 when absent)
SUMMARY_NAMES = tuple(PARAM_NAMES) + tuple(PROPERTY_NAMES)          # a spec-z model's; `summary_names`
QUANTILES = {"p2p5": 2.5, "p16": 16.0, "p50": 50.0, "p84": 84.0, "p97p5": 97.5}
STATS = ("mean", "std") + tuple(QUANTILES)
MANIFEST = "_inference.json"


def sampled_names(photoz: bool = False) -> tuple:
    """The parameters drawn per galaxy: PARAM_NAMES, and z for a photo-z model."""
    return tuple(PARAM_NAMES) + (("z",) if photoz else ())


def summary_names(photoz: bool = False) -> tuple:
    """The quantities summarised per galaxy: `sampled_names`, then the derived properties."""
    return sampled_names(photoz) + tuple(PROPERTY_NAMES)


def derived_properties(sed, theta, z, photoz: bool = False) -> np.ndarray:
    """The derived properties reported per galaxy (`SEDModel.properties`, in `PROPERTY_NAMES` order) of
    parameter vectors ``theta`` (..., `sampled_names`) at redshifts ``z`` (broadcast to theta's leading
    shape). ``photoz``: each vector carries its own z last (a photo-z model's draws: the properties
    are then marginalised over z) and ``z`` is not used."""
    lead = theta.shape[:-1]
    flat = np.asarray(theta, dtype=float).reshape(-1, theta.shape[-1])
    z_flat = flat[:, -1] if photoz else np.broadcast_to(z, lead).reshape(-1)
    props = sed.properties(flat[:, :len(PARAM_NAMES)], z_flat)
    return np.stack([props[k] for k in PROPERTY_NAMES], axis=-1).reshape(*lead, len(PROPERTY_NAMES))


def output_schema(id_type: pa.DataType = pa.int64(), keep_samples: int = 0, mcmc: bool = False,
                  photoz: bool = False, population: bool = False, precision: str = "float32") -> pa.Schema:
    fields = [pa.field("id", id_type)]
    fields += [pa.field(f"{n}_{s}", pa.float64()) for n in summary_names(photoz) for s in STATS]
    if photoz:
        fields += [pa.field("z_spec", pa.float64(), metadata={"description": "the catalog's redshift (NaN: none)"})]
    if population:
        fields += [pa.field(POPULATION_ESS, pa.float64(), metadata={
            "description": "effective sample size of the draws re-weighted to the population prior"})]
    fields += [pa.field(f, pa.bool_()) for f in FLAGS + ((LOW_ESS_FLAG,) if population else ())]
    fields += [pa.field(MISSING_BANDS, pa.int32())]
    fields += [pa.field("method", pa.string())]
    if mcmc:
        fields += [pa.field("mcmc_converged", pa.bool_())]
    if keep_samples:
        fields += [pa.field("samples", pa.struct([pa.field(n, pa.list_(pa.float32())) for n in sampled_names(photoz)]))]
    return pa.schema(fields, metadata={"sedflow": "posterior catalog", "keep_samples": str(keep_samples),
                                       "redshift": "inferred" if photoz else "given",
                                       "prior": "population" if population else "training",
                                       "sampling_precision": precision})


def require_redshifts(post: PosteriorModel, has_redshift: bool, what="the catalog") -> None:
    """ValueError when a spectroscopic-redshift model is given a catalog without redshifts."""
    if not has_redshift and not post.infers_redshift:
        raise ValueError(f"{what} has no redshifts and this model conditions "
                         "on a spectroscopic redshift: use a photometric-redshift model (--model photoz, "
                         "model='photoz')")


def check_filters(post: PosteriorModel, bands, filters=None, what="the catalog") -> None:
    """ValueError unless ``what`` has the model's bands (and, when it records them, its filters)."""
    if filters and tuple(filters) != post.filters:
        raise ValueError(f"{what} was measured through filters {list(filters)}, the model was trained on "
                         f"{list(post.filters)}: use a model trained for these filters")
    if tuple(bands) != post.bands:
        raise ValueError(f"{what} has bands {list(bands)}, the model {list(post.bands)}")


def trained_redshift_range(post: PosteriorModel) -> tuple[float, float]:
    """(lo, hi): a spec-z model takes lo < z <= hi, the range its simulations drew z on, (z_min, z_max]
    (a hair wider at hi for float32 rounding); older artifacts without it: the training set's min/max."""
    sim = post.config.get("simulation", {})
    if "z_min" in sim and "z_max" in sim:
        return float(sim["z_min"]), float(sim["z_max"]) * (1 + 1e-6)
    lo, hi = post.config["ood"]["z_range"]
    return float(np.nextafter(lo, -np.inf)), float(hi)


def galaxy_checks(frame: pd.DataFrame, post: PosteriorModel) -> tuple[np.ndarray, dict]:
    """x in the model's input layout (`PosteriorModel.inputs`) and the flags of a standard-form frame."""
    absent = [c for b in post.bands for c in (f"flux_{b}", f"flux_err_{b}") if c not in frame]
    if absent:
        raise ValueError(f"the catalog lacks the model's columns {absent} (bands {list(post.bands)})")
    flux = frame[[f"flux_{b}" for b in post.bands]].to_numpy(dtype=float)
    err = frame[[f"flux_err_{b}" for b in post.bands]].to_numpy(dtype=float)
    if post.infers_redshift:            # the catalog's z, if any, is not an input
        x, bad = post.inputs.observables(flux, err), np.zeros(len(frame), bool)
    else:
        z = frame["z"].to_numpy(dtype=float)
        x = post.inputs.observables(flux, err, z)
        zlo, zhi = trained_redshift_range(post)
        with np.errstate(invalid="ignore"):
            bad = ~((z > zlo) & (z <= zhi))
    missing = post.inputs.missing(flux, err)
    with np.errstate(invalid="ignore"):
        if post.inputs.kind == "mag":       # log magnitudes: every band measured and positive
            bad |= ~np.all(np.isfinite(x), axis=1) | np.any(flux <= 0, axis=1) | np.any(err <= 0, axis=1)
            if "flag_bad_input" in frame and not post.infers_redshift:    # ingest's flag counts a NaN z
                bad |= frame["flag_bad_input"].to_numpy(dtype=bool)
        else:                               # asinh: f <= 0 is a measurement; enough bands must remain
            bad |= (len(post.bands) - missing.sum(axis=1)) < MIN_VALID_BANDS
            if not post.config.get("missing_fraction"):     # never trained with a band missing
                bad |= missing.any(axis=1)
    flags = {"flag_bad_input": bad,
             "flag_quality": frame["flag_quality"].to_numpy(dtype=bool) if "flag_quality" in frame
             else np.zeros(len(frame), bool),
             MISSING_BANDS: (missing * (1 << np.arange(len(post.bands)))).sum(axis=1).astype(np.int32)}
    flags.update(ood.flags(x, ~bad, post))
    return x, flags


def _summaries(values: np.ndarray) -> dict:
    """values (n_gal, n_draws) -> {stat: (n_gal,)}: mean, std and the QUANTILES.

    The quantiles are np.percentile's default ("linear") ones, the same numbers, read off one sort
    of each row: numpy's sort is vectorised, its multi-quantile selection is not (~6x slower on
    (1,000, 1,000) draws); a row with a NaN draw gets NaN, as from np.percentile.
    """
    ordered = np.sort(values, axis=1)          # NaN last
    n = ordered.shape[1]
    out = {"mean": ordered.mean(axis=1), "std": ordered.std(axis=1)}
    has_nan = np.isnan(ordered[:, -1])
    for name, q in QUANTILES.items():
        position = (n - 1) * (q / 100)
        lo = int(np.floor(position))
        below, above, t = ordered[:, lo], ordered[:, min(lo + 1, n - 1)], position - lo
        diff = above - below                   # numpy's _lerp, exact at both ends
        v = above - diff * (1 - t) if t >= 0.5 else below + diff * t
        out[name] = np.where(has_nan, np.nan, v) if has_nan.any() else v
    return out


def check_sampling_options(n_samples, keep_samples, seed, property_samples, fallback) -> None:
    """ValueError naming the first bad option of `run_inference` / `sedflow.fit`, before any work."""
    def whole(v) -> bool:
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    if not (whole(n_samples) and n_samples >= 1):
        raise ValueError(f"n_samples must be an integer >= 1, got {n_samples!r}")
    if not (whole(keep_samples) and 0 <= keep_samples <= n_samples):
        raise ValueError(f"keep_samples must be an integer in 0..n_samples ({n_samples}), got {keep_samples!r}")
    if not (whole(seed) and seed >= 0):
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    if not (whole(property_samples) and property_samples >= 1):
        raise ValueError(f"property_samples must be an integer >= 1, got {property_samples!r}")
    if fallback not in (None, "mcmc"):
        raise ValueError(f"fallback must be 'mcmc' or None, got {fallback!r}")


def partition_seed(seed: int, number: int) -> list[int]:
    """The seed `run_inference` gives row partition ``number`` (`sedflow.fit` treats its rows as
    partition 0, so both give the same draws for the same rows and seed). A partition's draws come
    from one stream, so a galaxy's draws depend on the rows before it in its partition."""
    return [seed, number]


def infer_frame(frame: pd.DataFrame, post: PosteriorModel, sed, n_samples: int = 10000, keep_samples: int = 0,
                seed=0, property_samples: int = 1000, fallback: str | None = None,
                mcmc_options: dict | None = None, chunk_draws: int = 2_000_000, return_draws: bool = False,
                population_prior: bool = True):
    """Posterior summaries for every row of a standard-form frame, as a Table of `output_schema`.

    Galaxies are sampled in chunks of about ``chunk_draws`` draws in all, so memory does not
    grow with the partition size. With ``population_prior`` and a model that has one
    (`sedflow.population`), each galaxy's draws under the training prior are importance-resampled
    to ``n_samples`` under the population prior (`sedflow.population.sample_population`; the MCMC
    fallback's chains too); the output gains
    ``population_ess`` and ``flag_low_ess`` (ESS still below LOW_ESS: the photometry and the
    population prior disagree).
    ``return_draws``: return ``(table, draws)`` instead, the table without its ``samples`` column
    and ``draws`` the first ``keep_samples`` draws of each galaxy as an (n, keep_samples, 12)
    float32 array (NaN for rows not sampled).
    """
    n = len(frame)
    if frame["id"].duplicated().any():
        raise ValueError("duplicated ids in the input partition: ids must be unique")
    x, flags = galaxy_checks(frame, post)
    photoz = post.infers_redshift
    z = frame["z"].to_numpy(dtype=float) if "z" in frame else np.full(n, np.nan)
    names = post.names                   # PARAM_NAMES (+ "z")
    pop = post.population_prior if population_prior else None
    ess = np.full(n, np.nan)
    good = ~flags["flag_bad_input"]
    method = np.where(good, "anpe", "none").astype(object)
    out_of_dist = flags["flag_sigma_ood"] | flags["flag_color_ood"] | flags["flag_posterior_ood"]
    use_mcmc = good & out_of_dist if fallback == "mcmc" else np.zeros(n, bool)
    method[use_mcmc] = "mcmc"
    anpe_seq, mcmc_seed, prop_seed = np.random.SeedSequence(seed).spawn(3)
    anpe_seed = int(anpe_seq.generate_state(1)[0])

    cols = {"id": frame["id"].to_numpy()}
    summ = {f"{name}_{s}": np.full(n, np.nan) for name in summary_names(photoz) for s in STATS}
    draws = np.full((n, max(keep_samples, 0), len(names)), np.nan, dtype=np.float32)
    converged = np.full(n, None, dtype=object)

    def record(rows, theta, z):
        """theta (k, n_draws, 12; 13 with z) for rows (k,) -> summaries, derived properties, kept draws."""
        for j, name in enumerate(names):
            for s, v in _summaries(theta[:, :, j]).items():
                summ[f"{name}_{s}"][rows] = v
        m = min(property_samples, theta.shape[1])
        sub = theta if m == theta.shape[1] else \
            theta[:, np.random.default_rng(prop_seed).choice(theta.shape[1], size=m, replace=False)]
        props = derived_properties(sed, sub, z[:, None], photoz)
        for i, name in enumerate(PROPERTY_NAMES):
            for s, v in _summaries(props[:, :, i]).items():
                summ[f"{name}_{s}"][rows] = v
        if keep_samples:
            draws[rows] = theta[:, :keep_samples].astype(np.float32)

    rows = np.flatnonzero(good & ~use_mcmc)
    n_draw = n_samples * (OVERSAMPLE if pop is not None else 1)
    per_chunk = max(1, chunk_draws // n_draw)             # bound memory: galaxies x draws per chunk
    for k, start in enumerate(range(0, rows.size, per_chunk)):
        r = rows[start:start + per_chunk]
        if pop is None:
            theta = post.sample(x[r], n_samples, seed=[anpe_seed, k])
        else:
            theta, ess[r] = sample_population(post, x[r], n_samples, [anpe_seed, k], chunk_draws)
        record(r, theta, z[r])
    if use_mcmc.any():
        from sedflow.mcmc import run_mcmc

        flux = frame[[f"flux_{b}" for b in post.bands]].to_numpy(dtype=float)
        err = frame[[f"flux_err_{b}" for b in post.bands]].to_numpy(dtype=float)
        for i, child in zip(np.flatnonzero(use_mcmc), mcmc_seed.spawn(int(use_mcmc.sum()))):
            res = run_mcmc(flux[i], err[i], None if photoz else z[i], model=sed, prior=post.prior,
                           seed=int(child.generate_state(1)[0]), **(mcmc_options or {}))
            s = res.samples
            if pop is not None:           # the chain is drawn under the training prior too
                theta, ess[i:i + 1] = resample_draws(s[None], pop, post.prior, n_samples, seed=child)
                record(np.array([i]), theta, z[i:i + 1])
            else:
                k = np.random.default_rng(child).choice(len(s), size=min(n_samples, len(s)), replace=False)
                record(np.array([i]), s[k][None], z[i:i + 1])
            converged[i] = bool(res.converged)

    cols.update(summ)
    if photoz:
        cols["z_spec"] = z
    if pop is not None:
        cols[POPULATION_ESS] = ess
        with np.errstate(invalid="ignore"):
            flags[LOW_ESS_FLAG] = ess < LOW_ESS
    cols.update(flags)
    cols["method"] = method
    ids = frame["id"]
    id_type = pa.string() if ids.dtype == object or pd.api.types.is_string_dtype(ids) else pa.int64()
    schema = output_schema(id_type, 0 if return_draws else keep_samples, mcmc=fallback == "mcmc", photoz=photoz,
                           population=pop is not None, precision=post.precision)
    if fallback == "mcmc":
        cols["mcmc_converged"] = converged
    arrays = [pa.array(cols[f.name], type=f.type, from_pandas=True) for f in schema if f.name != "samples"]
    if return_draws:
        return pa.Table.from_arrays(arrays, schema=schema), draws
    if keep_samples:
        lists = [pa.ListArray.from_arrays(np.arange(0, n * keep_samples + 1, keep_samples, dtype=np.int32),
                                          pa.array(draws[:, :, j].ravel(), pa.float32()))
                 for j in range(len(names))]
        struct = pa.StructArray.from_arrays(lists, fields=list(schema.field("samples").type),
                                            mask=pa.array(~good))
        arrays.append(struct)
    return pa.Table.from_arrays(arrays, schema=schema)


# ---------------------------------------------------------------------- the Dask edge
def _keep_freed_memory_in_heap():
    """Undo, in this process, the ``MALLOC_TRIM_THRESHOLD_=65536`` that Dask's nanny gives its
    workers: with it glibc hands every freed block over 64 kB back to the OS, so each of our
    large short-lived numpy temporaries is page-faulted in again. Measured on one partition
    (500 galaxies x 1,000 draws, 1 thread): 62 galaxies/s with sys time > user time, 145-154
    after this call. Freed memory is reused by the next partition instead; the price is a
    higher worker peak RSS (0.94 -> 1.41 GB at 500-row partitions and 1,000 draws). glibc
    only; elsewhere nothing happens."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-1, 1 << 28)   # M_TRIM_THRESHOLD: keep up to 256 MB of free heap
        libc.mallopt(-3, 1 << 25)   # M_MMAP_THRESHOLD: heap (not mmap) up to 32 MB, glibc's maximum
    except (OSError, AttributeError):
        pass


@functools.lru_cache(maxsize=4)
def load_models(model=None):
    """The posterior (`load_model`) and the SED model it was trained with (its derived properties
    and MCMC fallback use it), loaded once per process."""
    post = load_model(model)
    return post, post.sed_model()


def _worker_models(model_path: str | None):
    """`load_models` in a Dask worker: one torch thread per worker process, freed memory kept."""
    import torch

    _keep_freed_memory_in_heap()
    torch.set_num_threads(1)
    return load_models(model_path)


def _part_path(out_dir: Path, number: int) -> Path:
    return out_dir / f"part-{number:05d}.parquet"


def _complete(path: Path, n_rows: int) -> bool:
    try:
        return path.is_file() and pq.read_metadata(path).num_rows == n_rows
    except Exception:
        return False


def _infer_partition(frame: pd.DataFrame, cfg: dict, layout: dict | None = None,
                     partition_info=None) -> pd.DataFrame:
    """map_partitions body: infer one input partition, write it atomically, return its counts.

    ``layout`` is None for row partitions (output ``part-{number}``), else `hats_io.input_layout`
    of the HATS input (output at the partition's own pixel, found from its spatial index).
    """
    number = partition_info["number"] if partition_info else 0
    counts = {"partition": number, "rows": len(frame), "seconds": 0.0, "skipped": True, "Norder": -1, "Npix": -1}
    if layout is None:
        path, seed = _part_path(Path(cfg["out"]), number), partition_seed(cfg["seed"], number)
    elif len(frame) == 0:           # no pixel, nothing to write (hats-import writes no empty pixels)
        return pd.DataFrame([counts | {f: 0 for f in COUNTED} | {f"method_{m}": 0 for m in ("anpe", "mcmc", "none")}])
    else:
        order, pixel = hats_io.partition_pixel(frame[layout["healpix"]].to_numpy(), layout["pixels"],
                                                   layout["healpix_order"])
        path, seed = hats_io.pixel_path(cfg["out"], order, pixel), [cfg["seed"], order, pixel]
        counts.update(Norder=order, Npix=pixel)
    if not _complete(path, len(frame)):
        t0 = time.perf_counter()
        post, sed = _worker_models(cfg["model"])
        post.precision = cfg["precision"]
        frame = frame.reset_index(drop=True)
        table = infer_frame(frame, post, sed, n_samples=cfg["n_samples"],
                            keep_samples=cfg["keep_samples"], seed=seed,
                            property_samples=cfg["property_samples"], fallback=cfg["fallback"],
                            mcmc_options=cfg["mcmc_options"], population_prior=cfg.get("population_prior", False))
        if layout is not None:
            table = hats_io.with_position_columns(table, frame, layout)
            path.parent.mkdir(parents=True, exist_ok=True)
        write_parquet(table, path)
        counts.update(seconds=time.perf_counter() - t0, skipped=False)
    present = [f for f in COUNTED if f in pq.read_schema(path).names]     # flag_low_ess: population prior only
    t = pq.read_table(path, columns=present + ["method"])
    for f in COUNTED:
        counts[f] = int(np.sum(t.column(f).to_numpy() != 0)) if f in present else 0
    for m in ("anpe", "mcmc", "none"):
        counts[f"method_{m}"] = int(np.sum(t.column("method").to_numpy(zero_copy_only=False) == m))
    return pd.DataFrame([counts])


def _ingested_input(catalog_dir) -> dict:
    """What an ingested catalog was made from (its ``_ingest.json``), so that a rerun into the same
    output over a re-ingested, different catalog is refused rather than mixed with it."""
    from sedflow.ingest import MANIFEST as INGEST_MANIFEST

    if not Path(catalog_dir).is_dir():
        raise FileNotFoundError(f"no catalog folder {catalog_dir}")
    path = Path(catalog_dir) / INGEST_MANIFEST
    if not path.is_file():
        raise ValueError(f"{catalog_dir} is not an ingested catalog (no {INGEST_MANIFEST}): run `sedflow ingest` "
                         f"on the catalog file first")
    m = json.loads(path.read_text())
    keys = ("spec", "bands", "filters", "input", "max_rows", "rows_in", "layout", "partition_rows", "healpix_order")
    return {k: m.get(k) for k in keys + (("has_redshift",) if "has_redshift" in m else ())}


def _population_digest(post: PosteriorModel) -> str | None:
    """sha256 of the model's population prior, so that a resume after it was refitted is refused."""
    import hashlib

    if post.population_prior is None:
        return None
    return hashlib.sha256(json.dumps(post.population_prior.to_dict(), sort_keys=True).encode()).hexdigest()


def run_inference(catalog_dir, out_dir, model_path=None, n_samples: int = 10000, keep_samples: int = 0,
                  address: str | None = None, seed: int = 0, property_samples: int = 1000,
                  fallback: str | None = None, mcmc_options: dict | None = None, workers: int = 2,
                  progress: bool = True, population_prior: bool = True, precision: str = "auto") -> dict:
    """Infer every galaxy of an ingested catalog; returns a summary dict (also ``_summary.json``).
    ``population_prior``: re-weight to the model's population prior when it has one (`infer_frame`).
    ``precision``: the flow's sampling arithmetic (`PosteriorModel.precision`), resolved here, on the
    machine that starts the run, and used by every worker."""
    import dask
    from distributed import Client, as_completed
    from tqdm.auto import tqdm

    from sedflow.dask_utils import local_cluster
    from sedflow.ingest import read_ingested

    check_sampling_options(n_samples, keep_samples, seed, property_samples, fallback)
    if address is None and not (isinstance(workers, (int, np.integer)) and workers >= 1):
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    # check the model, the catalog and the output folder before writing anything or starting a cluster
    post = load_model(model_path, precision)
    catalog_input = _ingested_input(catalog_dir)
    if catalog_input.get("bands"):
        check_filters(post, catalog_input["bands"], catalog_input.get("filters"), f"the catalog {catalog_dir}")
    require_redshifts(post, catalog_input.get("has_redshift") is not False,
                      f"the catalog {catalog_dir} (its description says redshift: null)")
    out = Path(out_dir).resolve()
    if out == Path(catalog_dir).resolve():
        raise ValueError(f"the output folder {out_dir} is the catalog folder: give another --out")
    if out.exists() and not out.is_dir():
        raise ValueError(f"the output {out_dir} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    cfg = {"model": str(model_path_of(model_path).resolve()) if model_path else None,
           "model_sha256": post.config["weights_sha256"], "catalog": str(Path(catalog_dir).resolve()),
           "catalog_input": catalog_input,
           "n_samples": n_samples, "keep_samples": keep_samples, "seed": seed,
           "property_samples": property_samples, "fallback": fallback, "mcmc_options": mcmc_options or {},
           "population_prior": bool(population_prior and post.population_prior is not None),
           "population_prior_sha256": _population_digest(post) if population_prior else None,
           "precision": post.precision, "out": str(out)}
    claim_output(out / MANIFEST, cfg, "inference", ignore=("out",))
    for pattern in (".part-*.tmp*", "dataset/Norder=*/Dir=*/.Npix=*.tmp*"):
        for stale in out.glob(pattern):
            stale.unlink()

    if (Path(catalog_dir) / "hats.properties").is_file():     # HATS in, HATS out
        layout = hats_io.input_layout(catalog_dir)
        ddf = read_ingested(catalog_dir, split_row_groups=False)  # one Dask partition per pixel file
    else:
        layout, ddf = None, read_ingested(catalog_dir)
    meta = pd.DataFrame({"partition": pd.Series(dtype="int64"), "rows": pd.Series(dtype="int64"),
                         "seconds": pd.Series(dtype="float64"), "skipped": pd.Series(dtype="bool"),
                         "Norder": pd.Series(dtype="int64"), "Npix": pd.Series(dtype="int64"),
                         **{f: pd.Series(dtype="int64") for f in COUNTED},
                         **{f"method_{m}": pd.Series(dtype="int64") for m in ("anpe", "mcmc", "none")}})
    counts = ddf.map_partitions(_infer_partition, cfg, layout, meta=meta)
    t0 = time.perf_counter()
    own = None
    if address:
        client = Client(address)
    else:
        with dask.config.set({"distributed.worker.daemon": False}):
            own = local_cluster(workers, processes=True)
        client = Client(own)
    try:
        futures = client.compute(counts.to_delayed())
        parts = []
        with tqdm(total=len(futures), desc="infer", unit="partition", disable=not progress) as bar:
            for fut in as_completed(futures):
                try:
                    parts.append(fut.result())
                except Exception as e:  # e.g. KilledWorker: the task was lost too many times
                    raise RuntimeError(
                        f"a partition failed on the Dask cluster ({type(e).__name__}: {e}); the finished "
                        f"partitions are kept in {out}: rerun the same command to resume") from e
                bar.update(1)
    finally:
        client.close()
        if own is not None:
            own.close()
    table = pd.concat(parts).sort_values("partition")
    elapsed = time.perf_counter() - t0
    if layout is not None:
        written = table[table["rows"] > 0]
        pixels = list(zip(written["Norder"].tolist(), written["Npix"].tolist()))
        if len(set(pixels)) != len(pixels):
            raise RuntimeError("two input partitions wrote the same HATS pixel")
        hats_io.write_hats_metadata(out, pixels, layout, rows=int(table["rows"].sum()),
                                        max_rows=int(written["rows"].max()) if len(written) else 0,
                                        obs_title="sedflow posterior catalog")
    done = table[~table["skipped"]]
    rows = int(table["rows"].sum())
    counted = [f for f in COUNTED if f != LOW_ESS_FLAG or cfg["population_prior"]]
    summary = {"galaxies": rows, "partitions": int(len(table)), "partitions_skipped": int(table["skipped"].sum()),
               "seconds": elapsed, "galaxies_per_s": float(done["rows"].sum() / elapsed) if elapsed else 0.0,
               **{f: int(table[f].sum()) for f in counted},
               **{f"method_{m}": int(table[f"method_{m}"].sum()) for m in ("anpe", "mcmc", "none")},
               "flagged_fraction": {f: float(table[f].sum() / rows) if rows else 0.0 for f in counted},
               "prior": "population" if cfg["population_prior"] else "training", "precision": cfg["precision"],
               "out": str(out)}
    (out / "_summary.json").write_text(json.dumps(summary, indent=1))
    return summary
