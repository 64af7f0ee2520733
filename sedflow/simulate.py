"""Simulate the ANPE training set: (theta, x) pairs as Parquet shards, fanned out with Ray.

For each galaxy (Hahn & Melchior 2022, Sec. 3): theta ~ prior, z ~ U(z_min, z_max],
noiseless fluxes through the noise model's filters (the catalog it was fitted to named them;
``SimulationConfig.filters`` overrides) from an SED model whose rest-frame grid covers them over
the redshift range, sigma_mag from the empirical noise model at the
noiseless magnitude, flux noise n ~ N(0, sigma_f), then the paper's cuts: simulations whose
sigma draw is <= 0 in any band, and those whose noisy flux falls outside the reference
catalog's flux range in any band (with ``min_detected=k``: in fewer than k bands, or above it in
any), are removed (and counted). z is drawn on (0, 0.2] by
default; draws near z = 0 are far brighter than any catalog galaxy and fall to the
flux-range cut.

Shards: shard k of K holds ``n // K`` (+1 for the first ``n % K``) rows *after* cuts and
draws from its own seed ``SeedSequence(seed).spawn(K)[k]``, so the files are identical
whatever the number of workers, and a shard is all-or-nothing: it is written to a temp file
and renamed. Rerunning skips shards already complete; a run interrupted anywhere and rerun
gives exactly the rows of an uninterrupted run. The ``_simulation.json`` manifest records
the configuration and refuses a rerun into the same directory with a different one.

Schema (one row per kept simulation; float64 unless noted):
``logmstar .. n_dust`` (the 12 parameters), ``u0 .. u10`` (`Prior.to_unconstrained`, the logit
map; `sedflow train` maps theta to its model's own coordinates), ``z``, and per band b of the
noise model ``flux_true_{b}``, ``flux_{b}``, ``flux_err_{b}`` [nanomaggies],
``mag_{b}``, ``mag_err_{b}`` [AB mag; mag_err = 1.0857 flux_err / flux], then ``shard``
(int32) and ``row`` (int64, index within the shard).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sedflow.catalog import MAG_ERR_PER_FRAC
from sedflow.noise import NoiseModel
from sedflow.prior import PARAM_NAMES, UNCONSTRAINED_NAMES, Prior
from sedflow.sps.nebular import DEFAULT_LOGU
from sedflow.sps.photometry import nanomaggies_to_mag
from sedflow.storage import claim_output, write_parquet

__all__ = ["simulation_schema", "SimulationConfig", "simulate_rows", "observe", "run_simulation", "shard_path", "shard_counts", "PAPER_N"]

PAPER_N = 1_131_561  # size of the SEDflow training set
MANIFEST = "_simulation.json"
_FORMAT = 1

def simulation_schema(bands) -> pa.Schema:
    """The explicit schema of a simulation shard for ``bands`` (module docstring)."""
    return pa.schema(
        [pa.field(n, pa.float64()) for n in PARAM_NAMES]
        + [pa.field(n, pa.float64()) for n in UNCONSTRAINED_NAMES]
        + [pa.field("z", pa.float64())]
        + [pa.field(f"{q}_{b}", pa.float64()) for b in bands
           for q in ("flux_true", "flux", "flux_err", "mag", "mag_err")]
        + [pa.field("shard", pa.int32()), pa.field("row", pa.int64())],
        metadata={"sedflow": "simulation shard", "format": str(_FORMAT), "bands": ",".join(bands)},
    )


@dataclass(frozen=True)
class SimulationConfig:
    """What `run_simulation` draws. ``reported_errors`` is how the catalog-style flux error of each
    simulated galaxy is reported (`simulate_rows`): "observed" (default) or "true" (the noise's own
    sigma: with a ``noise_envelope`` the simulations' likelihood is then the catalog's, as for the
    shipped ``sdss``; without one it leaks the noise realisation, as simulations made before
    "observed" existed did). ``sedflow simulate`` picks "true" when given an envelope."""
    n: int = PAPER_N
    shards: int = 16
    seed: int = 0
    z_min: float = 0.0
    z_max: float = 0.2
    reported_errors: str = "observed"
    filters: tuple | None = None     # None: the noise model's (the catalog it was fitted to named them)
    # robustness to other error regimes: each band's sigma_mag x a per-galaxy factor ~ log-U(lo, hi)
    noise_envelope: tuple | None = None
    # None: every band's noisy flux inside the catalog's flux range (the paper's cut). k: at least k
    # bands inside it and none above it; the others may be faint, zero or negative (non-detections),
    # with sky-limited errors (`simulate_rows`)
    min_detected: int | None = None
    # log10 U of the nebular emission of populations younger than t_esc (`sedflow.sps.nebular`);
    # None: stellar light only (every simulation made before nebular emission existed)
    nebular_logu: float | None = DEFAULT_LOGU

    def shard_sizes(self) -> list[int]:
        base, extra = divmod(self.n, self.shards)
        return [base + (k < extra) for k in range(self.shards)]


def shard_path(out_dir, k: int, shards: int) -> Path:
    return Path(out_dir) / f"shard-{k:05d}-of-{shards:05d}.parquet"


class _Counts(dict):
    def add(self, other):
        for k, v in other.items():
            self[k] = self.get(k, 0) + v


REPORTED_ERRORS = ("observed", "true")


def simulate_rows(model, noise: NoiseModel, prior: Prior, n_rows: int, rng, z_min=0.0, z_max=0.2,
                  batch: int = 8192, reported_errors: str = "observed", noise_envelope=None,
                  min_detected: int | None = None, draw=None) -> tuple[dict, dict]:
    """Draw simulations until ``n_rows`` survive the cuts; deterministic given ``rng``.

    Parameters are drawn from ``prior`` and z uniformly on (z_min, z_max], or by ``draw(size, rng)
    -> (theta (size, 12), z (size,))`` when given (e.g. from a `sedflow.population.PopulationPrior`).

    Each galaxy gets sigma_mag from the noise model at its noiseless magnitudes, and Gaussian flux
    noise of sigma_f = sigma_mag f_true / 1.0857. Its reported error, what the flow and the MCMC
    likelihood see, is computed as a catalog computes it, from the *observed* flux:
    flux_err = sigma_mag f_obs / 1.0857, so mag_err = sigma_mag. ``reported_errors="true"`` reports
    sigma_f itself (the first simulations here did): then mag_err = sigma_mag f_true / f_obs, and
    because the error floors make sigma_mag nearly a function of magnitude, mag_err gives away the
    noise draw f_true / f_obs (r band, brightest 30%: correlation 0.99; the flow learned to undo
    most of the noise, and its posteriors came out narrower than the likelihood's, README
    "Validation results"). The noise draws are the same either way.

    ``noise_envelope=(lo, hi)`` multiplies each band's sigma_mag by a factor drawn log-uniformly in
    [lo, hi] per galaxy and band, so that errors around the fitted noise model are in distribution.
    ``min_detected=k`` replaces the paper's cut (every band inside the catalog's flux range) by: at
    least k bands inside it and none above it. Fainter bands then reach the sky noise: their flux
    error does not fall below the noise model's faint-end flux error (`NoiseModel.faint_flux_error`),
    so galaxies fade into non-detections (f_obs <= 0) as in a catalog, where errors are reported as
    max(sigma_mag |f_obs|, faint-end error) / 1.0857-style, never ~0 at f_obs ~ 0.

    With the envelope the reported error no longer gives the draw away in the "true" convention:
    flux_err = k sigma_0(theta), sigma_0 the noise before the envelope, and the log-uniform factor k
    gives p(flux_err | theta) = 1 / (flux_err ln(hi / lo)) wherever flux_err / sigma_0(theta) lies in
    [lo, hi], the same for every such theta. The simulations' likelihood is then Eq. 1 of Hahn &
    Melchior (2022), a Gaussian of sigma = flux_err, as catalogs and `sedflow.mcmc` assume; with
    "observed" it is not (where S/N is low the noise follows f_true, not the reported f_obs).

    Returns (columns dict of the schema's columns minus shard/row, counts) with
    ``drawn == kept + cut_sigma_nonpositive + cut_flux_range + unused``.
    """
    if len(model.band_names) != len(noise.bands):
        raise ValueError(f"the SED model has {len(model.band_names)} filters, the noise model {len(noise.bands)} "
                         f"bands {list(noise.bands)}")
    _check_observation(noise, reported_errors, noise_envelope, min_detected)
    rng = np.random.default_rng(rng)
    parts, counts, kept = [], _Counts(), 0
    while kept < n_rows:
        size = max(1024, min(batch, 2 * (n_rows - kept)))
        if draw is None:
            theta = prior.sample(size, seed=rng)
            z = z_max - (z_max - z_min) * rng.uniform(size=size)          # on (z_min, z_max]
        else:
            theta, z = draw(size, rng)
        flux_true = model.photometry(theta, z)
        flux, flux_err, ok_sigma, in_range = observe(flux_true, noise, rng, reported_errors, noise_envelope,
                                                     min_detected)
        keep = ok_sigma & in_range
        counts.add({"drawn": size, "cut_sigma_nonpositive": int((~ok_sigma).sum()),
                    "cut_flux_range": int((ok_sigma & ~in_range).sum())})
        passing = np.flatnonzero(keep)
        take = passing[: n_rows - kept]
        counts.add({"unused": int(passing.size - take.size)})  # surplus of the last batch
        kept += take.size
        parts.append((theta[take], z[take], flux_true[take], flux[take], flux_err[take]))
    theta, z, flux_true, flux, flux_err = (np.concatenate(p) for p in zip(*parts))
    cols = {name: theta[:, i] for i, name in enumerate(PARAM_NAMES)}
    u = prior.to_unconstrained(theta)
    cols.update({name: u[:, i] for i, name in enumerate(UNCONSTRAINED_NAMES)})
    cols["z"] = z
    mag = nanomaggies_to_mag(flux)
    for j, b in enumerate(noise.bands):
        cols[f"flux_true_{b}"] = flux_true[:, j]
        cols[f"flux_{b}"] = flux[:, j]
        cols[f"flux_err_{b}"] = flux_err[:, j]
        cols[f"mag_{b}"] = mag[:, j]
        cols[f"mag_err_{b}"] = MAG_ERR_PER_FRAC * flux_err[:, j] / flux[:, j]
    counts["kept"] = int(kept)
    return cols, dict(counts)


def _check_observation(noise: NoiseModel, reported_errors: str, noise_envelope, min_detected) -> None:
    if reported_errors not in REPORTED_ERRORS:
        raise ValueError(f"reported_errors must be one of {REPORTED_ERRORS}, got {reported_errors!r}")
    if min_detected is not None and not 1 <= min_detected <= len(noise.bands):
        raise ValueError(f"min_detected must be in 1..{len(noise.bands)}, got {min_detected}")
    if noise_envelope is not None and not 0 < noise_envelope[0] <= noise_envelope[1]:
        raise ValueError(f"noise_envelope must be (lo, hi) with 0 < lo <= hi, got {noise_envelope}")


def observe(flux_true: np.ndarray, noise: NoiseModel, rng, reported_errors: str = "observed", noise_envelope=None,
            min_detected: int | None = None) -> tuple:
    """One noisy observation of noiseless fluxes (n, n_bands), as `simulate_rows` makes it (its
    docstring: sigma_mag from the noise model, the envelope, the sky-limited floor, the reported
    error): ``(flux, flux_err, ok_sigma, in_range)``, the last two the row masks of its cuts
    (a noise draw with sigma_mag > 0; the flux-range cut). Same draws from ``rng`` as there."""
    _check_observation(noise, reported_errors, noise_envelope, min_detected)
    rng = np.random.default_rng(rng)
    lo_f, hi_f = noise.flux_range[:, 0], noise.flux_range[:, 1]
    sigma_mag, ok_sigma = noise.sample_mag_err(nanomaggies_to_mag(flux_true), rng)
    if noise_envelope is not None:
        lo, hi = np.log(noise_envelope[0]), np.log(noise_envelope[1])
        sigma_mag = sigma_mag * np.exp(rng.uniform(lo, hi, sigma_mag.shape))
    noise_sigma = sigma_mag * flux_true / MAG_ERR_PER_FRAC
    if min_detected is not None:          # sky-limited: no flux error below the faint end's
        sky = noise.faint_flux_error() * sigma_mag / noise.faint_mag_err()
        noise_sigma = np.maximum(noise_sigma, sky)
    flux = flux_true + noise_sigma * rng.standard_normal(flux_true.shape)
    if reported_errors == "true":
        flux_err = noise_sigma
    else:
        flux_err = sigma_mag * np.abs(flux) / MAG_ERR_PER_FRAC
        if min_detected is not None:
            flux_err = np.maximum(flux_err, sky)
    if min_detected is None:
        in_range = np.all((flux >= lo_f) & (flux <= hi_f), axis=1)
    else:
        in_range = (np.sum((flux >= lo_f) & (flux <= hi_f), axis=1) >= min_detected) & np.all(flux <= hi_f, axis=1)
    return flux, flux_err, ok_sigma, in_range


def _simulate_shard(model, noise, prior, config: SimulationConfig, k: int):
    """One shard as a pyarrow Table (runs in a Ray task)."""
    seq = np.random.SeedSequence(config.seed).spawn(config.shards)[k]
    n = config.shard_sizes()[k]
    t0 = time.perf_counter()
    cols, counts = simulate_rows(model, noise, prior, n, np.random.default_rng(seq), config.z_min, config.z_max,
                                 reported_errors=config.reported_errors, noise_envelope=config.noise_envelope,
                                 min_detected=config.min_detected)
    cols["shard"] = np.full(n, k, dtype=np.int32)
    cols["row"] = np.arange(n, dtype=np.int64)
    schema = simulation_schema(noise.bands)
    table = pa.Table.from_pydict(cols, schema=schema)
    # draw/cut counts travel in the file (deterministic), the time does not
    table = table.replace_schema_metadata({**schema.metadata, b"counts": json.dumps(counts).encode()})
    return table, {**counts, "seconds": time.perf_counter() - t0}


def shard_counts(path) -> dict:
    """Draw and cut counts stored in a shard's Parquet metadata."""
    md = pq.read_schema(path).metadata or {}
    return json.loads(md.get(b"counts", b"{}"))


def _shard_complete(path: Path, n_rows: int, schema: pa.Schema) -> bool:
    if not path.is_file():
        return False
    try:
        md = pq.read_metadata(path)
    except Exception:
        return False
    return md.num_rows == n_rows and md.schema.to_arrow_schema().remove_metadata().equals(schema.remove_metadata())


def _manifest(config: SimulationConfig, noise: NoiseModel, model, prior: Prior) -> dict:
    config = asdict(config)
    config["filters"] = list(model.band_names)
    return {"format": _FORMAT, "config": config, "bands": list(noise.bands), "prior": prior.to_dict(),
            "noise_model": noise.to_dict(), "sed_model": model.describe(),
            "schema": [f.name for f in simulation_schema(noise.bands)]}


def run_simulation(out_dir, config: SimulationConfig = SimulationConfig(), noise: NoiseModel | None = None,
                   model=None, prior: Prior | None = None, address: str | None = None,
                   workers: int | None = None, progress: bool = True, stop_after: int | None = None) -> dict:
    """Simulate ``config.n`` rows into ``config.shards`` Parquet shards under ``out_dir``.

    ``address``: Ray cluster address (``None`` starts a local Ray). ``workers``: most shard
    tasks in flight at once (default: all; Ray schedules them on the free CPUs).
    ``stop_after``: return after writing that many shards (to test interruption).
    Returns a summary dict.
    """
    import ray
    from tqdm.auto import tqdm

    from sedflow.ray_utils import ray_session
    from sedflow.sps.model import SEDModel

    if config.n < 1 or config.shards < 1 or config.shards > config.n:
        raise ValueError(f"need 1 <= shards <= n, got n={config.n}, shards={config.shards}")
    if config.reported_errors not in REPORTED_ERRORS:
        raise ValueError(f"reported_errors must be one of {REPORTED_ERRORS}, got {config.reported_errors!r}")
    if not 0 <= config.z_min < config.z_max:
        raise ValueError(f"need 0 <= z_min < z_max, got {config.z_min}, {config.z_max}")
    noise = noise or NoiseModel.default()
    if noise.flux_range is None:
        raise ValueError("the noise model has no reference flux range (fit it with `sedflow noise fit`)")
    prior = prior or Prior()
    filters = tuple(config.filters) if config.filters else noise.band_filters
    if len(filters) != len(noise.bands):
        raise ValueError(f"{len(filters)} filters for the noise model's {len(noise.bands)} bands {list(noise.bands)}")
    if model is None:    # the rest-frame grid follows the filters and the redshift range
        model = SEDModel(filters=filters, z_min=config.z_min, z_max=config.z_max, prior=prior,
                         nebular_logu=config.nebular_logu)
    elif tuple(model.band_names) != filters:
        raise ValueError(f"the SED model's filters {list(model.band_names)} differ from {list(filters)}")
    if config.z_max > model.phot.z_max:
        raise ValueError(f"z_max={config.z_max} exceeds the SED model's {model.phot.z_max}")
    schema = simulation_schema(noise.bands)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    claim_output(out / MANIFEST, _manifest(config, noise, model, prior), "a simulation")
    for stale in out.glob(".shard-*.tmp*"):
        stale.unlink()  # temp files of an interrupted run

    sizes = config.shard_sizes()
    todo = [k for k in range(config.shards)
            if not _shard_complete(shard_path(out, k, config.shards), sizes[k], schema)]
    counts, t0, written = _Counts(), time.perf_counter(), 0
    if todo:
        with ray_session(address):
            task = ray.remote(_simulate_shard).options(num_cpus=1, max_retries=3)
            refs = [ray.put(x) for x in (model, noise, prior, config)]
            queue, pending = list(todo), {}
            bar = tqdm(total=len(todo), desc="simulate", unit="shard", disable=not progress)
            while queue or pending:
                while queue and len(pending) < (workers or len(todo)):
                    k = queue.pop(0)
                    pending[task.remote(*refs, k)] = k
                done, _ = ray.wait(list(pending), num_returns=1)
                k = pending.pop(done[0])
                try:
                    table, c = ray.get(done[0])
                except ray.exceptions.RayError as e:  # lost beyond max_retries (e.g. nodes died)
                    raise RuntimeError(f"shard {k} failed on the Ray cluster ({type(e).__name__}); "
                                       f"{written} shards written this run are kept in {out}: rerun the "
                                       "same command to resume") from e
                write_parquet(table, shard_path(out, k, config.shards))
                counts.add(c)
                written += 1
                bar.update(1)
                if stop_after is not None and written >= stop_after:
                    for ref in pending:
                        ray.cancel(ref, force=True)
                    queue.clear()
                    break
            bar.close()
    elapsed = time.perf_counter() - t0
    paths = [shard_path(out, k, config.shards) for k in range(config.shards)]
    complete = [_shard_complete(p, n, schema) for p, n in zip(paths, sizes)]
    total = _Counts()
    for p, ok in zip(paths, complete):
        if ok:
            total.add(shard_counts(p))
    drawn = total.get("drawn", 0)
    summary = {
        "out": str(out), "shards_total": config.shards, "shards_complete": int(sum(complete)),
        "shards_written_now": written, "shards_skipped": config.shards - len(todo),
        "complete": all(complete), "rows": int(total.get("kept", 0)), "drawn": int(drawn),
        "cut_sigma_nonpositive": int(total.get("cut_sigma_nonpositive", 0)),
        "cut_flux_range": int(total.get("cut_flux_range", 0)),
        "unused_surplus": int(total.get("unused", 0)),
        "cut_fraction": ((total.get("cut_sigma_nonpositive", 0) + total.get("cut_flux_range", 0))
                         / (drawn - total.get("unused", 0))) if drawn else 0.0,
        "seconds": elapsed,
        "galaxies_per_s": counts.get("drawn", 0) / elapsed if elapsed > 0 else 0.0,
    }
    if summary["complete"]:
        (out / "_summary.json").write_text(json.dumps(summary, indent=1))
    return summary
