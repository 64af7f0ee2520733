"""`fit`: posteriors for one galaxy, many galaxies or a DataFrame, in one call.

The notebook front door to what ``sedflow ingest`` + ``sedflow infer`` do for a catalog. The
rows go through the catalog description exactly as ingest reads a file (`sedflow.catalog.
standard_form`: flux units, dereddening, error floors, quality cuts, bad-value flags) and then
through the same checks, sampling, summaries and derived properties as inference
(`sedflow.infer.infer_frame`), treated as one partition: the same rows and seed give the same
draws and quantiles as ``sedflow infer`` on a one-partition catalog ingested from them (means and
standard deviations to float32 rounding, ~1e-5: torch may sum with other thread counts). One seed
drives a whole call, so a galaxy's draws depend on the rows beside it: fit alone, it gets other
draws of the same posterior (summaries equal within Monte Carlo noise).

A data problem in a row (fewer than 3 measured bands, a missing redshift or one outside the
model's range; for a log-magnitude model also a flux <= 0 or a missing band; masked entries and
null cells count as missing) never raises: that row comes back flagged (``flag_bad_input``,
``method = 'none'``, summaries NaN). ``inputs`` holds the catalog-level flags of ingest, which do
not know the model (an asinh-input model samples fluxes <= 0). A programming error (wrong shapes,
an unknown description or model, a duplicated or masked id, a bad option) raises a ValueError that
names it.

Example
-------
>>> import sedflow
>>> res = sedflow.fit([20.6, 60.2, 121.0, 170.3, 215.8], [2.1, 1.3, 2.2, 3.2, 6.2], 0.08,
...                   spec="nsa", n_samples=1000, seed=0)
>>> res.summary[["logmstar_p50", "flag_bad_input", "method"]]      # doctest: +SKIP
   logmstar_p50  flag_bad_input method
0     10.37...           False   anpe
>>> res.samples["logmstar"].shape
(1, 1000)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd

from sedflow.catalog import CatalogSpec, frame_columns, normalise_ids, refuse_duplicate_ids, standard_form, unmasked

__all__ = ["fit", "FitResult"]


@dataclass(frozen=True)
class FitResult:
    """What `fit` returns; every attribute has one row (or entry) per input row, in input order.

    Attributes:
        summary: DataFrame with the columns of ``sedflow infer``'s output: ``id``, for each
            parameter and derived property ``{name}_{mean,std,p2p5,p16,p50,p84,p97p5}``, the flags
            and ``method`` (see the README's output table).
        samples: ``{parameter name: (n_rows, n_draws) float32 array}`` of posterior draws, NaN for
            rows that were not sampled; empty when ``keep_samples=0``.
        inputs: the standard form the rows were inferred from (``id``, ``z``, extinction-corrected
            ``flux_{b}``, ``flux_err_{b}`` in nanomaggies with floors, ``flag_bad_input``,
            ``flag_quality``), to join or plot against.
        counts: rows flagged at reading, by reason (as ``sedflow ingest`` counts them).
    """

    summary: pd.DataFrame
    samples: dict
    inputs: pd.DataFrame
    counts: dict

    def __len__(self) -> int:
        return len(self.summary)


def _rows(values, name: str, n_bands: int | None, n: int | None) -> np.ndarray:
    """(n, n_bands) float array from one row (n_bands,) or many; ValueError on any other shape.
    Masked entries (`numpy.ma`, astropy ``MaskedColumn``) become NaN: no measurement."""
    a = np.asarray(unmasked(values), dtype=float)
    if n_bands is None:                                   # a per-row scalar such as z
        if a.ndim == 0:
            a = np.full(n, float(a))
        if a.ndim != 1 or a.shape[0] != n:
            raise ValueError(f"{name} must be a number or have one value per row ({n}), got shape {a.shape}")
        return a
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2 or a.shape[1] != n_bands:
        raise ValueError(f"{name} must have shape (n_rows, {n_bands}) or ({n_bands},) for the description's "
                         f"{n_bands} bands, got shape {np.shape(values)}")
    if n is not None and a.shape[0] != n:
        raise ValueError(f"{name} has {a.shape[0]} rows, flux has {n}")
    return a


def _array_columns(spec: CatalogSpec, flux, flux_err, z, extinction, ids) -> tuple[dict, CatalogSpec]:
    """Arrays in the description's units -> (columns, the description re-pointed at them)."""
    nb = len(spec.bands)
    if flux_err is None:
        raise ValueError("fit(flux, flux_err, z, spec=...): flux_err is needed with array input "
                         "(or pass one pandas DataFrame with the description's columns)")
    f = _rows(flux, "flux", nb, None)
    n = f.shape[0]
    cols = {"flux": f, "flux_err": _rows(flux_err, "flux_err", nb, n)}
    if z is not None:                  # None: no redshifts (a photo-z model infers them)
        cols["z"] = _rows(z, "z", None, n)
    needs_extinction = bool(spec.extinction) and not spec.extinction.get("applied", False)
    kind = (spec.extinction or {}).get("kind", "mag")          # mag or transmission per band, or ebv per row
    if extinction is not None and not needs_extinction:
        raise ValueError(f"the description {spec.name!r} has no extinction to apply (its fluxes are already "
                         f"corrected, or it names none): drop extinction=")
    if needs_extinction and extinction is None:
        import warnings

        warnings.warn(f"the description {spec.name!r} says its fluxes are not corrected for Galactic extinction, "
                      f"and no extinction= was given: the fluxes are used as they are (pass extinction= as the "
                      f"description's extinction.kind ({kind!r}) says: mag or transmission per band, or E(B-V) "
                      f"per row)", UserWarning, stacklevel=3)
        extinction = 1.0 if kind == "transmission" else 0.0          # no extinction
    if needs_extinction and kind == "ebv":
        cols["extinction"] = _rows(extinction, "extinction (E(B-V))", None, n)
    elif needs_extinction:
        a = _rows(np.broadcast_to(extinction, (nb,)) if np.ndim(extinction) == 0 else extinction,
                  "extinction", nb, None)
        cols["extinction"] = np.broadcast_to(a, (n, nb)) if a.shape[0] == 1 else _rows(a, "extinction", nb, n)
    if ids is not None and np.ma.is_masked(ids):
        raise ValueError("ids has masked (missing) entries: every row needs an id")
    cols["id"] = np.arange(n, dtype=np.int64) if ids is None else np.asarray(ids)
    if cols["id"].shape != (n,):
        raise ValueError(f"ids must have one value per row ({n}), got shape {cols['id'].shape}")
    units = spec.flux.get("units", "nanomaggies")
    as_arrays = dataclasses.replace(
        spec, id="id", ra=None, dec=None, redshift="z" if z is not None else None,
        flux={"column": "flux", "units": units},
        flux_error={"column": "flux_err", "kind": "sigma"},
        extinction={**{k: v for k, v in spec.extinction.items() if k in ("kind", "r_v", "ebv_scale")},
                    "column": "extinction", "applied": False} if needs_extinction else None)
    return cols, as_arrays


def fit(flux, flux_err=None, z=None, *, spec, extinction=None, ids=None, n_samples: int = 10_000,
        keep_samples: int | None = None, seed: int = 0, model=None, property_samples: int = 1000,
        fallback: str | None = None, population_prior: bool = True, precision: str = "auto") -> FitResult:
    """Posteriors of galaxies from raw catalog values, through a catalog description.

    Args:
        flux: fluxes in the description's units, shape (n_bands,) for one galaxy or
            (n_rows, n_bands); or a pandas DataFrame with the columns the description names
            (then ``flux_err`` and ``z`` stay None, and errors are read as the description says,
            e.g. inverse variances).
        flux_err: 1-sigma flux errors, same shape and units as ``flux`` (array input).
        z: spectroscopic redshift, one number or one per row (array input); None for a photo-z
            model (``model="photoz"``), which infers it (a spec-z model then refuses).
        spec: the catalog description: a shipped name (``"sdss_kcorrect"``, ``"nsa"``) or a YAML
            path. It says whether the fluxes are dereddened and which error floors to add.
        extinction: for array input when the description's fluxes are not extinction-corrected, as
            its ``extinction.kind`` says: A [mag] per band (``sdss_kcorrect``), transmissions per band
            (``legacysurveys_*``), or E(B-V) per row (``lsst``); shapes (n_bands,) / (n_rows, n_bands),
            or a number / (n_rows,) for E(B-V). Without it the fluxes are used as given, with a warning.
        ids: one id per row (array input; default the row number).
        n_samples: posterior draws per galaxy (default 10,000, as ``sedflow infer``).
        keep_samples: draws per galaxy returned in ``samples`` (default all ``n_samples``;
            0 for summaries only, which saves n_rows x n_samples x 48 bytes).
        seed: random seed; ``sedflow infer --seed`` on the same rows as one partition agrees.
        model: a model directory or a shipped model's name (default the shipped SDSS model;
            ``"photoz"``: the shipped SDSS photometric-redshift model, summaries gain ``z_*``).
        property_samples: draws per galaxy used for the derived properties (default 1,000).
        fallback: ``"mcmc"`` runs zeus MCMC for valid but out-of-distribution rows (slow).
        population_prior: re-weight the posteriors to the model's population prior when it has one
            (the shipped ``photoz`` does: `sedflow.population`); False keeps its training prior.
        precision: the flow's sampling arithmetic, ``"auto"`` (bfloat16 on CPUs with AMX, else
            float32), ``"float32"`` or ``"bfloat16"`` (`sedflow.PosteriorModel.precision`).

    Returns:
        `FitResult` (``summary``, ``samples``, ``inputs``, ``counts``).

    Example:
        >>> import numpy as np, sedflow
        >>> from astropy.table import Table
        >>> t = Table.read(sedflow.catalog.kcorrect_sample_path())[:3]
        >>> res = sedflow.fit(t["MODELFLUX"], 1 / np.sqrt(t["MODELFLUX_IVAR"]), t["Z"], spec="sdss_kcorrect",
        ...                   extinction=t["EXTINCTION"], n_samples=1000)
        >>> len(res), sorted(res.samples)[:2]
        (3, ['beta1', 'beta2'])
    """
    from sedflow.infer import (check_filters, check_sampling_options, infer_frame, load_models, partition_seed,
                               require_redshifts)

    keep = n_samples if keep_samples is None else keep_samples
    check_sampling_options(n_samples, keep, seed, property_samples, fallback)
    spec = CatalogSpec.load(spec)
    if isinstance(flux, pd.DataFrame):
        if flux_err is not None or z is not None or extinction is not None or ids is not None:
            raise ValueError("with a DataFrame, the description names every column: drop flux_err, z, "
                             "extinction and ids")
        cols = frame_columns(flux, spec.required_columns())
        frame, counts = standard_form(cols, spec)
    else:
        cols, as_arrays = _array_columns(spec, flux, flux_err, z, extinction, ids)
        frame, counts = standard_form(cols, as_arrays)
    frame["id"], _ = normalise_ids(frame["id"])
    refuse_duplicate_ids(frame["id"].to_numpy())

    post, sed = load_models(model)
    post.precision = precision
    check_filters(post, spec.bands, spec.filters, f"the description {spec.name!r}")
    require_redshifts(post, bool(spec.redshift) and (isinstance(flux, pd.DataFrame) or z is not None),
                      "the input")
    table, draws = infer_frame(frame, post, sed, n_samples=int(n_samples), keep_samples=int(keep),
                               seed=partition_seed(seed, 0), property_samples=property_samples,
                               fallback=fallback, return_draws=True, population_prior=population_prior)
    samples = {name: draws[:, :, j] for j, name in enumerate(post.names)} if keep else {}
    return FitResult(summary=table.to_pandas(), samples=samples, inputs=frame, counts=counts)
