"""Command-line interface: thin wrappers over the stages.

    sedflow demo [--n N] [--seed S] [--out DIR]            forward-model demo on prior draws
    sedflow noise fit CATALOG --spec SPEC --out FILE       fit the empirical noise model
    sedflow noise check CATALOG --spec SPEC [--model FILE] compare a noise model with a catalog
    sedflow ingest --spec SPEC INPUT --out DIR [--partition-rows N | --healpix-order K]
    sedflow simulate --n N --out DIR [--shards K] [--seed S] [--noise-model FILE] [--z-range ZMIN ZMAX]
                     [--filters F ...] [--address RAY] [--workers W] [--reported-errors observed|true]
    sedflow train DATA_DIR --out MODEL_DIR [--arch NAME] [--workers W] [--batch-size B] [--max-epochs E]
                  [--lr-schedule plateau|cosine] [--lr-patience 5] [--renoise]
                  [--precision float32|bfloat16] [--address RAY]
    sedflow mcmc --flux F ... --flux-err E ... --z Z [--model NAME_OR_DIR] [--walkers 30] [--steps 10000]
    sedflow validate --out REPORT_DIR [--model MODEL_DIR] [--n-test 1000] [--samples 10000] [--mcmc 50]
                     [--reference importance|nautilus|zeus] [--likelihood catalog|simulator] [--repeat-sets K]
                     [--mcmc-dir DIR] [--address RAY]
    sedflow run [--out DIR]                                the main job on embedded defaults
    sedflow infer CATALOG_DIR --out OUT_DIR [--model DIR] [--samples N] [--keep-samples K]
                  [--fallback mcmc] [--address DASK_SCHEDULER]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from sedflow.storage import cli_path


def _demo(args) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sedflow import BANDS, PARAM_NAMES, Prior, SEDModel
    from sedflow.sps.photometry import nanomaggies_to_mag

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model = SEDModel.default()
    t_setup = time.perf_counter() - t0
    prior = Prior()
    theta = prior.sample(args.n, seed=args.seed)
    z = np.random.default_rng(args.seed).uniform(args.z_min, args.z_max, args.n)

    t0 = time.perf_counter()
    flux = model.photometry(theta, z)
    t_phot = time.perf_counter() - t0
    props = model.properties(theta, z)
    mags = nanomaggies_to_mag(flux)

    columns = {name: theta[:, i] for i, name in enumerate(PARAM_NAMES)}
    columns["z"] = z
    columns.update({f"flux_true_{b}": flux[:, i] for i, b in enumerate(BANDS)})
    columns.update({f"mag_true_{b}": mags[:, i] for i, b in enumerate(BANDS)})
    columns.update(props)
    pq.write_table(pa.table(columns), out / "demo_photometry.parquet")

    print(f"SED model: {model.ssp.source}; bases: {model.bases.source}")
    print(f"set-up {t_setup:.1f} s; photometry of {args.n} galaxies in {t_phot:.3f} s "
          f"({args.n / t_phot:,.0f} galaxies/s)\n")
    head = f"{'logM*':>6} {'z':>6} " + " ".join(f"{b:>7}" for b in BANDS) + f" {'logM*surv':>9} {'logSFR1G':>8}"
    print(head)
    for i in range(min(args.show, args.n)):
        print(f"{theta[i, 0]:6.2f} {z[i]:6.3f} " + " ".join(f"{m:7.2f}" for m in mags[i])
              + f" {props['logmstar_surv'][i]:9.2f} {props['logsfr_1gyr'][i]:8.2f}")
    _demo_figure(model, theta, z, mags, props, out / "demo.png")
    print(f"\nwrote {out / 'demo_photometry.parquet'} and {out / 'demo.png'}")
    return 0


def _demo_figure(model, theta, z, mags, props, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(11, 4.2))
    sc = ax[0].scatter(mags[:, 2], mags[:, 1] - mags[:, 2], c=props["logsfr_1gyr"] - props["logmstar_surv"],
                       s=4, cmap="coolwarm_r", vmin=-12, vmax=-8)
    fig.colorbar(sc, ax=ax[0], label="log sSFR (1 Gyr) [1/yr]")
    ax[0].set(xlabel="r [AB mag]", ylabel="g - r", xlim=(25, 10), ylim=(-0.5, 1.5), title="prior draws, noiseless")
    wave, lum = model.spectrum(theta[:4], z[:4])
    for i in range(4):
        ax[1].loglog(wave, lum[i], lw=0.8, label=f"logM*={theta[i, 0]:.1f}, z={z[i]:.2f}")
    ax[1].set(xlabel="rest wavelength [A]", ylabel="L_lambda [Lsun/A]", title="rest-frame spectra")
    ax[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _parse_floors(items) -> dict | None:
    if not items:
        return None
    floors = {}
    for item in items:
        band, _, value = item.partition("=")
        if not value:
            raise ValueError(f"--floor takes BAND=MAG, got {item!r}")
        floors[band] = float(value)
    return floors


def _noise_fit(args) -> int:
    from sedflow.noise import NSA_MAG_ERR_FLOOR, fit_noise_model

    floors = NSA_MAG_ERR_FLOOR if args.nsa_floors else _parse_floors(args.floor)
    model, report = fit_noise_model(args.catalog, args.spec, floors=floors, bin_width=args.bin_width,
                                    min_count=args.min_count)
    model.save(args.out)
    print(f"fitted {args.out} from {report['catalog']} ({report['spec']}): {report['rows_used']} rows used, "
          f"{report['rows_excluded']} excluded {report['excluded_by_reason']}")
    for b, c in zip(model.bands, model.mag_centres):
        print(f"  {b}: {c.size} bins, {c[0]:.2f}-{c[-1]:.2f} mag")
    return 0


def _noise_check(args) -> int:
    from sedflow.noise import NoiseModel, compare_with_catalog

    model = NoiseModel.load(args.model) if args.model else NoiseModel.default()
    table = compare_with_catalog(model, args.catalog, args.spec)
    print(f"{'band':>4} {'n':>6} {'obs median':>11} {'model median':>13} {'median ratio':>13} {'> mu+3s':>8}")
    for b, r in table.items():
        print(f"{b:>4} {r['n']:6d} {r['observed_median']:11.4f} {r['model_median']:13.4f} "
              f"{r['median_ratio']:13.3f} {r['frac_above_mu_3s']:8.3f}")
    return 0


def _simulate(args) -> int:
    from sedflow.noise import NoiseModel
    from sedflow.simulate import SimulationConfig, run_simulation

    z_min, z_max = args.z_range
    config = SimulationConfig(n=args.n, shards=args.shards, seed=args.seed, z_min=z_min, z_max=z_max,
                              reported_errors=args.reported_errors or ("true" if args.noise_envelope else "observed"),
                              filters=tuple(args.filters) if args.filters else None,
                              noise_envelope=tuple(args.noise_envelope) if args.noise_envelope else None,
                              min_detected=args.min_detected,
                              nebular_logu=None if args.no_nebular else args.nebular_logu)
    noise = NoiseModel.load(args.noise_model) if args.noise_model else None
    s = run_simulation(args.out, config, noise=noise, address=args.address, workers=args.workers,
                       progress=not args.quiet)
    print(f"{s['rows']:,} rows in {s['shards_complete']}/{s['shards_total']} shards under {s['out']} "
          f"({s['shards_skipped']} already complete); drawn {s['drawn']:,}, cut {100 * s['cut_fraction']:.1f}% "
          f"(sigma <= 0: {s['cut_sigma_nonpositive']:,}, outside the catalog's flux range: {s['cut_flux_range']:,}); "
          f"{s['seconds']:.1f} s, {s['galaxies_per_s']:,.0f} galaxies/s")
    return 0 if s["complete"] else 1


def _train(args) -> int:
    from sedflow.train import train

    s = train(args.data_dir, args.out, arch=args.arch, workers=args.workers, batch_size=args.batch_size,
              max_epochs=args.max_epochs, lr=args.lr, patience=args.patience, seed=args.seed, address=args.address,
              lr_patience=args.lr_patience, lr_schedule=args.lr_schedule, inputs=args.inputs,
              missing_fraction=args.missing_fraction, infer_redshift=args.infer_redshift,
              unconstrained=args.unconstrained, renoise=args.renoise,
              precision=args.precision)
    print(f"trained {args.arch} ({s['parameters']:,} parameters) for {s['epochs']} epochs "
          f"(best {s['best_epoch']}, validation loss {s['best_val_loss']:.4f}) in {s['seconds']:.0f} s; "
          f"artifact in {s['artifact']}")
    return 0


def _calibrate(args) -> int:
    from sedflow.train import calibrate

    s = calibrate(args.model, args.data_dir, args.out, steps=args.steps, weight=args.weight, lr=args.lr,
                  seed=args.seed, progress=not args.quiet)
    print(f"calibrated {args.model} over {s['steps']} steps in {s['wall_seconds']:.0f} s: validation loss "
          f"{s['val_loss_before']:.4f} -> {s['val_loss_after']:.4f}; artifact in {s['artifact']}")
    return 0


def _infer(args) -> int:
    from sedflow.infer import run_inference

    mcmc = {"n_walkers": args.mcmc_walkers, "n_steps": args.mcmc_steps, "burn_in": args.mcmc_burn_in}
    s = run_inference(args.catalog_dir, args.out, model_path=args.model, n_samples=args.samples,
                      keep_samples=args.keep_samples, address=args.address, seed=args.seed,
                      property_samples=args.property_samples, fallback=args.fallback,
                      mcmc_options=mcmc if args.fallback else None, workers=args.workers, progress=not args.quiet,
                      population_prior=not args.no_population_prior, precision=args.precision)
    flagged = ", ".join(f"{f[5:]} {100 * v:.1f}%" for f, v in s["flagged_fraction"].items())
    print(f"{s['galaxies']:,} galaxies in {s['partitions']} partitions ({s['partitions_skipped']} already done) "
          f"-> {s['out']}; {s['seconds']:.1f} s, {s['galaxies_per_s']:,.1f} galaxies/s; flagged: {flagged}; "
          f"methods: anpe {s['method_anpe']:,}, mcmc {s['method_mcmc']:,}, none {s['method_none']:,}")
    return 0


def _run(args) -> int:
    from sedflow.main_job import run_main_job

    run_main_job(args.out, n_samples=args.samples, address=args.address, workers=args.workers,
                 progress=not args.quiet, max_rows=args.max_rows, precision=args.precision)
    return 0


def _population_prior(args) -> int:
    from sedflow.population import POPULATION_FILE, fit_to_catalog

    pop = fit_to_catalog(args.model, args.catalog, args.spec, specz_model=args.specz_model, row_every=args.row_every,
                         row_offset=args.row_offset, n_components=args.components, iterations=args.iterations,
                         draws=args.draws, seed=args.seed, max_rows=args.max_rows, write=True)
    print(f"population prior of {pop.fitted_on['n_galaxies']:,} galaxies ({pop.ndim} coordinates, "
          f"{len(pop.weights)} components) -> {Path(args.model) / POPULATION_FILE}")
    return 0


def _validate(args) -> int:
    from sedflow.validate import validate

    options = {"nautilus": {"n_live": args.nested_live, "n_eff": args.nested_eff},
               "importance": {"n_eff": args.importance_eff, "max_draws": args.importance_max_draws},
               "zeus": {"n_walkers": args.mcmc_walkers, "n_steps": args.mcmc_steps, "burn_in": args.mcmc_burn_in}
               }[args.reference]
    m = validate(args.out, model_path=args.model, n_test=args.n_test, n_samples=args.samples, n_mcmc=args.mcmc,
                 catalog=args.catalog, catalog_spec=args.spec, reference=args.reference, mcmc_options=options,
                 address=args.address, mcmc_dir=args.mcmc_dir, baseline=args.baseline, specz_model=args.specz_model,
                 photoz_samples=args.photoz_samples, precision=args.precision, repeat_sets=args.repeat_sets,
                 likelihood=args.likelihood)
    cal = m["calibration"]["passes"]
    print(f"report: {Path(args.out) / 'report.md'}; SBC {'pass' if cal['sbc'] else 'FAIL'}, "
          f"p-p {'pass' if cal['pp'] else 'FAIL'}"
          + (f", {args.reference} agreement {'pass' if m['mcmc']['passes'] else 'FAIL'}" if "mcmc" in m else ""))
    for r in m.get("photoz_real_data", []):
        a = r["all"]
        print(f"photo-z on {r['spec']} ({a['n']} galaxies): sigma_NMAD {a['sigma_nmad']:.4f}, bias {a['bias']:+.4f}, "
              f"outliers {a['outlier_fraction']:.2%}, PIT KS p {a['pit_ks_pvalue']:.2g}")
    return 0 if all(cal.values()) and m.get("mcmc", {}).get("passes", True) else 1


def _ingest_report(s: dict) -> str:
    """A few human lines about an ingest summary."""
    where = (f"{s['partitions']} HEALPix partitions at order {s['healpix_order']} (HATS)"
             if s["layout"] == "hats" else f"{s['partitions']} partitions of <= {s['partition_rows']:,} rows")
    reasons = ", ".join(f"{k}: {v:,}" for k, v in s["flagged"].items())
    return (f"ingested {s['input']['name']} ({s['spec']}): {s['rows_in']:,} rows in, {s['rows_out']:,} out, "
            f"{where} under {s['out']} in {s['seconds']:.1f} s\n"
            f"  flag_bad_input: {s['flag_bad_input']:,}, flag_quality: {s['flag_quality']:,} ({reasons})")


def _ingest(args) -> int:
    from sedflow.ingest import ingest_catalog

    s = ingest_catalog(args.input, args.spec, args.out, partition_rows=args.partition_rows,
                       healpix_order=args.healpix_order, overwrite=args.overwrite, workers=args.workers,
                       tmp_dir=args.tmp_dir, max_rows=args.max_rows)
    print(_ingest_report(s))
    return 0


def _mcmc_report(result) -> str:
    """Plain-text table: median and 16/84 percentiles, tau and R-hat per parameter, then the verdict."""
    p16, p50, p84 = result.percentiles()
    lines = [f"{'parameter':>9} {'median':>11} {'p16':>11} {'p84':>11} {'tau':>8} {'R-hat':>7}"]
    for i, n in enumerate(result.names):
        lines.append(f"{n:>9} {p50[i]:11.5g} {p16[i]:11.5g} {p84[i]:11.5g} {result.autocorr_time[i]:8.1f} "
                     f"{result.rhat[i]:7.3f}")
    need = result.tau_factor * float(np.max(result.autocorr_time))
    lines.append(f"converged: {'yes' if result.converged else 'NO'} (kept {result.n_kept_steps} iterations, "
                 f"need > {result.tau_factor:g} x max tau = {need:.0f}; max R-hat {np.max(result.rhat):.3f}, "
                 f"need < {result.rhat_max:g})")
    lines.append(f"{result.n_walkers} walkers x {result.n_steps} iterations ({result.burn_in} burn-in, thin "
                 f"{result.thin}): {len(result.samples):,} samples; {result.n_evaluations:,} evaluations; "
                 f"{result.seconds:.1f} s; best-fit chi2 {result.best_chi2:.2f}"
                 + (f"; {result.n_reset} stuck walkers moved during burn-in" if result.n_reset else ""))
    return "\n".join(lines)


def _mcmc(args) -> int:
    """Exit status 0 converged, 1 not converged (2, bad input, from `main`)."""
    from sedflow.infer import load_models
    from sedflow.mcmc import run_mcmc, write_samples

    post, model = load_models(args.model)
    nb = len(post.bands)
    if len(args.flux) != nb or len(args.flux_err) != nb:
        raise ValueError(f"the model {args.model or 'sdss'} has {nb} bands {list(post.bands)}: give {nb} --flux "
                         f"and {nb} --flux-err values, got {len(args.flux)} and {len(args.flux_err)}")
    prior = post.prior if args.z is None else post.prior.sed_prior     # --z given: condition on it
    result = run_mcmc(args.flux, args.flux_err, args.z, model=model, prior=prior, n_walkers=args.walkers,
                      n_steps=args.steps, burn_in=args.burn_in, thin=args.thin, seed=args.seed,
                      progress=args.progress, tau_factor=args.tau_factor, rhat_max=args.rhat_max)
    print(_mcmc_report(result))
    if args.out:
        path = write_samples(result, args.out, flux=args.flux, flux_err=args.flux_err)
        print(f"wrote {len(result.samples):,} samples to {path}")
    return 0 if result.converged else 1


def _add_ingest_parser(sub) -> None:
    from sedflow.ingest import DEFAULT_PARTITION_ROWS

    p = sub.add_parser(
        "ingest", help="catalog -> partitioned Parquet (standard columns; rows or HATS)",
        description="Read a FITS/CSV/Parquet catalog through its description and write the standard "
                    "input form as partitioned Parquet; no row is dropped, bad values are flagged.")
    p.add_argument("input", type=cli_path, help="FITS, CSV or Parquet catalog")
    p.add_argument("--spec", required=True, help="catalog description: a shipped name (e.g. nsa, lsst) or a YAML path")
    p.add_argument("--out", type=cli_path, required=True, help="output directory (new or empty)")
    layout = p.add_mutually_exclusive_group()
    layout.add_argument("--partition-rows", type=int, metavar="N",
                        help=f"rows per part-NNNNN.parquet (default {DEFAULT_PARTITION_ROWS:,})")
    layout.add_argument("--healpix-order", type=int, metavar="K",
                        help="write a HATS catalog (Norder=K/Dir=D/Npix=N.parquet) with hats-import; needs ra/dec")
    p.add_argument("--overwrite", action="store_true", help="replace a previous ingest in --out")
    p.add_argument("--max-rows", type=int, metavar="N", help="ingest only the first N rows (trials)")
    p.add_argument("--workers", type=int, default=2, help="local Dask workers for hats-import (default 2)")
    p.add_argument("--tmp-dir", type=cli_path, help="where the work directory goes (default: beside --out)")
    p.set_defaults(func=_ingest)


def _add_mcmc_parser(sub) -> None:
    from sedflow.mcmc import PAPER_BURN_IN, PAPER_STEPS, PAPER_WALKERS

    p = sub.add_parser(
        "mcmc", help="zeus MCMC posterior of one galaxy (the paper's reference method)",
        description="Sample p(theta | flux, z) for one galaxy with the zeus ensemble slice sampler "
                    "(Gaussian flux likelihood, Hahn & Melchior 2022 Eq. 1; defaults: 30 walkers, 10,000 "
                    "iterations, 2,000 burn-in [paper]) with the SED model and prior of a model artifact. "
                    "Exit status 0 converged, 1 not converged, 2 bad input.")
    p.add_argument("--flux", type=float, nargs="+", required=True, metavar="F",
                   help="one flux per band of the model, in its band order [nanomaggies]")
    p.add_argument("--flux-err", type=float, nargs="+", required=True, metavar="E",
                   help="their 1-sigma uncertainties [nanomaggies]")
    p.add_argument("--z", type=float,
                   help="redshift; without it z is free, a 13th parameter (uniform on the model's redshift range, "
                        "or a photo-z model's redshift prior)")
    p.add_argument("--model", type=cli_path,
                   help="model whose SED model, filters and prior are used: a shipped name or a directory "
                        "(default: the shipped sdss model, SDSS ugriz)")
    p.add_argument("--walkers", type=int, default=PAPER_WALKERS, help=f"(default {PAPER_WALKERS})")
    p.add_argument("--steps", type=int, default=PAPER_STEPS, help=f"total iterations (default {PAPER_STEPS})")
    p.add_argument("--burn-in", type=int, default=PAPER_BURN_IN, help=f"(default {PAPER_BURN_IN})")
    p.add_argument("--thin", type=int, default=1, help="keep every k-th iteration in --out (default 1)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--tau-factor", type=float, default=50.0,
                   help="converged needs kept iterations > this x max autocorrelation time (default 50)")
    p.add_argument("--rhat-max", type=float, default=1.1,
                   help="converged needs max split-R-hat below this (default 1.1)")
    p.add_argument("--progress", action="store_true", help="show zeus's progress bar")
    p.add_argument("--out", type=cli_path, help="write the samples here as Parquet (one column per parameter)")
    p.set_defaults(func=_mcmc)


def _precision_option(parser) -> None:
    from sedflow.flows import PRECISIONS

    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="the flow's sampling arithmetic: auto (default: bfloat16 hidden layers on CPUs with "
                             "AMX, where they are ~1.6x faster; float32 elsewhere), float32 or bfloat16")


def build_parser() -> argparse.ArgumentParser:
    from sedflow.prior import UNCONSTRAINED_MAPS

    p = argparse.ArgumentParser(prog="sedflow", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="forward-model photometry for prior draws (embedded defaults)")
    d.add_argument("--n", type=int, default=10000, help="number of prior draws (default 10000)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--z-min", type=float, default=0.01)
    d.add_argument("--z-max", type=float, default=0.2)
    d.add_argument("--show", type=int, default=10, help="rows to print")
    d.add_argument("--out", type=cli_path, default="demo_out", help="output directory (default ./demo_out)")
    d.set_defaults(func=_demo)

    noise = sub.add_parser("noise", help="empirical noise model").add_subparsers(dest="noise_command", required=True)
    f = noise.add_parser("fit", help="fit sigma_mag(m) per band from a catalog")
    f.add_argument("catalog", type=cli_path, help="FITS, CSV or Parquet catalog")
    f.add_argument("--spec", required=True, help="catalog description: a shipped name (nsa, sdss_kcorrect) or a YAML path")
    f.add_argument("--out", type=cli_path, required=True, help="output JSON file")
    f.add_argument("--floor", action="append", metavar="BAND=MAG", help="magnitude-error floor, repeatable")
    f.add_argument("--nsa-floors", action="store_true", help="NSA's floors: u 0.05, g r i 0.02, z 0.03 mag")
    f.add_argument("--bin-width", type=float, default=0.25, help="magnitude bin width (default 0.25)")
    f.add_argument("--min-count", type=int, default=10, help="fewest galaxies per bin (default 10)")
    f.set_defaults(func=_noise_fit)
    c = noise.add_parser("check", help="compare a noise model's sigma(m) with a catalog's")
    c.add_argument("catalog", type=cli_path)
    c.add_argument("--spec", required=True)
    c.add_argument("--model", type=cli_path, help="noise model JSON (default: the shipped one)")
    c.set_defaults(func=_noise_check)

    from sedflow.simulate import PAPER_N
    from sedflow.sps.nebular import DEFAULT_LOGU

    _add_ingest_parser(sub)
    _add_mcmc_parser(sub)

    from sedflow.posterior import ARCHITECTURES, DEFAULT_ARCH

    t = sub.add_parser("train", help="train the amortized posterior with Ray Train")
    t.add_argument("data_dir", type=cli_path, help="directory of simulation shards (sedflow simulate --out)")
    t.add_argument("--out", type=cli_path, required=True, help="model artifact directory (rerun to resume)")
    t.add_argument("--arch", default=DEFAULT_ARCH, choices=sorted(ARCHITECTURES))
    t.add_argument("--workers", type=int, default=1, help="Ray Train workers (DDP)")
    t.add_argument("--batch-size", type=int, default=2048)
    t.add_argument("--max-epochs", type=int, default=500)
    t.add_argument("--lr", type=float, default=5e-4)
    t.add_argument("--patience", type=int, default=20, help="early stopping patience in epochs")
    t.add_argument("--lr-schedule", choices=["plateau", "cosine"], default="plateau",
                   help="plateau: halve the lr when the validation loss stalls (--lr-patience); cosine: anneal it "
                        "to 0 over --max-epochs (a fixed budget that ends converged)")
    t.add_argument("--lr-patience", type=int, default=5,
                   help="halve the lr after this many epochs without a better validation loss (0: constant lr)")
    t.add_argument("--seed", type=int, default=0, help="train/validation split and initialisation seed")
    t.add_argument("--inputs", choices=["mag", "asinh"], default="mag",
                   help="x layout: log magnitudes (SEDflow's) or asinh magnitudes with missing-band flags, "
                        "for non-detections and missing bands (default mag)")
    t.add_argument("--missing-fraction", type=float,
                   help="share of training rows that lose 1-2 random bands (asinh only; default 0.2)")
    t.add_argument("--infer-redshift", action="store_true",
                   help="a photometric-redshift model: infer z with the galaxy's parameters from photometry alone "
                        "(z's prior uniform on the simulated range)")
    t.add_argument("--unconstrained", choices=UNCONSTRAINED_MAPS, default="probit",
                   help="map of the prior's bounded coordinates to R for the flow: probit (default; standard normal "
                        "under the prior, like the flow's base) or logit (the shipped photoz and older models)")
    t.add_argument("--renoise", action="store_true",
                   help="a new noise draw and new band masks for every training row each epoch, from its noiseless "
                        "fluxes and the simulation's noise settings (default: the simulation's one draw)")
    t.add_argument("--precision", choices=("float32", "bfloat16"), default="float32",
                   help="arithmetic of the flow's hidden layers in training: float32 (default) or bfloat16, as the "
                        "sampler runs them on CPUs with AMX (~1.1-1.6x faster steps there; realnvp* only)")
    t.add_argument("--address", help="Ray address (default: start a local Ray)")
    t.set_defaults(func=_train)

    c = sub.add_parser("calibrate", help="fine-tune a trained model against SBC rank biases (sedflow.train.calibrate)")
    c.add_argument("model", help="model directory or shipped name")
    c.add_argument("data_dir", type=cli_path, help="the simulations the model was trained on")
    c.add_argument("--out", type=cli_path, required=True, help="directory of the calibrated model artifact")
    c.add_argument("--steps", type=int, default=2500, help="Adam steps of 2,048 rows (default 2500)")
    c.add_argument("--weight", type=float, default=100.0,
                   help="weight of the rank-moment term against the negative log density (default 100)")
    c.add_argument("--lr", type=float, default=3e-5, help="initial lr, annealed to 0 (default 3e-5)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    c.set_defaults(func=_calibrate)

    i = sub.add_parser("infer", help="posteriors for every galaxy of an ingested catalog (Dask)")
    i.add_argument("catalog_dir", type=cli_path, help="output of `sedflow ingest` (row partitions or HATS)")
    i.add_argument("--out", type=cli_path, required=True, help="output directory (one Parquet file per input partition)")
    i.add_argument("--model", type=cli_path, help="model artifact directory (default: the shipped model)")
    i.add_argument("--samples", type=int, default=10000, help="posterior draws per galaxy (default 10000)")
    i.add_argument("--keep-samples", type=int, default=0, help="draws per galaxy to store in the output")
    i.add_argument("--property-samples", type=int, default=1000,
                   help="draws per galaxy used for derived properties (default 1000)")
    i.add_argument("--seed", type=int, default=0)
    i.add_argument("--fallback", choices=["mcmc"], help="run zeus MCMC for valid but OOD-flagged galaxies")
    i.add_argument("--mcmc-walkers", type=int, default=30)
    i.add_argument("--mcmc-steps", type=int, default=10000)
    i.add_argument("--mcmc-burn-in", type=int, default=2000)
    i.add_argument("--address", help="Dask scheduler address (default: a local cluster)")
    i.add_argument("--workers", type=int, default=2, help="local Dask worker processes (default 2)")
    i.add_argument("--no-population-prior", action="store_true",
                   help="keep the model's training prior even when it has a population prior (photoz has one)")
    _precision_option(i)
    i.add_argument("--quiet", action="store_true")
    i.set_defaults(func=_infer)

    pp = sub.add_parser("population-prior",
                        help="fit a model's population prior to a catalog with spectroscopic redshifts")
    pp.add_argument("model", type=cli_path, help="model artifact directory: population_prior.json is written there")
    pp.add_argument("--catalog", type=cli_path, required=True, help="catalog with spectroscopic redshifts")
    pp.add_argument("--spec", required=True, help="its catalog description (a shipped name or a YAML path)")
    pp.add_argument("--specz-model", type=cli_path, default="sdss",
                    help="the spec-z model whose posteriors at the catalog's z are pooled (default sdss)")
    pp.add_argument("--row-every", type=int, default=2,
                    help="fit on rows with index %% ROW_EVERY == ROW_OFFSET, the rest held out (default 2)")
    pp.add_argument("--row-offset", type=int, default=0)
    pp.add_argument("--components", type=int, default=16, help="Gaussian mixture components (default 16)")
    pp.add_argument("--iterations", type=int, default=1, help="deconvolution (stochastic EM) rounds (default 1)")
    pp.add_argument("--draws", type=int, default=200, help="spec-z posterior draws per galaxy (default 200)")
    pp.add_argument("--max-rows", type=int, help="the catalog's first rows only")
    pp.add_argument("--seed", type=int, default=0)
    pp.set_defaults(func=_population_prior)

    v = sub.add_parser("validate", help="calibration, MCMC comparison and real-data report of a model")
    v.add_argument("--out", type=cli_path, required=True, help="report directory")
    v.add_argument("--model", type=cli_path, help="model artifact directory (default: the shipped model)")
    v.add_argument("--n-test", type=int, default=1000, help="held-out simulations (default 1000)")
    v.add_argument("--samples", type=int, default=10000, help="posterior draws each (default 10000)")
    v.add_argument("--repeat-sets", type=int, default=0,
                   help="also run the SBC test on this many more independent held-out sets of --n-test, and on "
                        "them pooled (default 0)")
    v.add_argument("--mcmc", type=int, default=50,
                   help="galaxies compared with the reference sampler (default 50; a fifth with a non-detection "
                        "or a missing band)")
    v.add_argument("--reference", choices=["importance", "nautilus", "zeus"], default="importance",
                   help="reference sampler: importance sampling with a proposal fitted to the flow's draws (default; "
                        "exact, its noise set by its effective sample size; ~15 s per galaxy, minutes for a few), "
                        "nautilus nested sampling (converges by its criteria, biased where the likelihood is flat) "
                        "or the paper's zeus MCMC")
    v.add_argument("--likelihood", choices=["catalog", "simulator"], default="catalog",
                   help="the reference's likelihood: catalog (default; the paper's Eq. 1, sigma = the reported "
                        "error) or simulator (sigma follows the model flux as in the training simulations: the "
                        "posterior the flow learns)")
    v.add_argument("--nested-live", type=int, default=500, help="nautilus live points (default 500)")
    v.add_argument("--nested-eff", type=int, default=2000, help="nautilus effective sample size (default 2000)")
    v.add_argument("--importance-eff", type=int, default=3000,
                   help="importance sampling: effective sample size to reach (default 3000)")
    v.add_argument("--importance-max-draws", type=int, default=10_000_000,
                   help="importance sampling: likelihood calls after which a galaxy stops unconverged (default 1e7)")
    v.add_argument("--mcmc-walkers", type=int, default=30, help="zeus walkers")
    v.add_argument("--mcmc-steps", type=int, default=10000, help="zeus iterations")
    v.add_argument("--mcmc-burn-in", type=int, default=2000, help="zeus burn-in iterations")
    v.add_argument("--catalog", type=cli_path, help="real catalog for flag fractions and chi^2 (default: the NSA rows in ../shared)")
    v.add_argument("--spec", default="nsa", help="its catalog description (default nsa)")
    v.add_argument("--baseline", type=cli_path,
                   help="a model (name or directory) to compare posterior widths with on typical galaxies")
    v.add_argument("--specz-model", type=cli_path, default="sdss",
                   help="photo-z models: the spectroscopic-redshift model whose stellar masses they are compared "
                        "with on real galaxies (default sdss)")
    v.add_argument("--photoz-samples", type=int, default=1000,
                   help="photo-z models: draws per real galaxy for the photo-z metrics (default 1000)")
    v.add_argument("--address", help="Ray address for the MCMC runs, one galaxy per CPU (default: local Ray)")
    v.add_argument("--mcmc-dir", type=cli_path,
                   help="where the MCMC chains are kept and reused from (default OUT/mcmc); they do not depend "
                        "on the flow, so reports of several models can share them, as long as the held-out "
                        "galaxies are the same (same --n-test; the same simulation settings and prior)")
    _precision_option(v)
    v.set_defaults(func=_validate)

    r = sub.add_parser("run", help="the main job on embedded defaults (SDSS sample -> posteriors)")
    r.add_argument("--out", type=cli_path, default="sedflow_run", help="output directory (default ./sedflow_run)")
    r.add_argument("--samples", type=int, default=1000, help="posterior draws per galaxy (default 1000)")
    r.add_argument("--address", help="Dask scheduler address (default: a local cluster)")
    r.add_argument("--workers", type=int, default=2)
    r.add_argument("--max-rows", type=int, metavar="N", help="only the first N galaxies (a quick trial)")
    _precision_option(r)
    r.add_argument("--quiet", action="store_true")
    r.set_defaults(func=_run)

    s = sub.add_parser("simulate", help="simulate the training set into Parquet shards with Ray")
    s.add_argument("--n", type=int, default=PAPER_N, help=f"rows after cuts (default {PAPER_N:,}, the paper's)")
    s.add_argument("--out", type=cli_path, required=True, help="output directory")
    s.add_argument("--shards", type=int, default=16)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--z-range", type=float, nargs=2, default=(0.0, 0.2), metavar=("ZMIN", "ZMAX"),
                   help="redshifts drawn uniformly on (ZMIN, ZMAX] (default 0 0.2); the SED model's rest-frame "
                        "grid follows the filters over this range")
    s.add_argument("--filters", nargs="+", metavar="FILTER",
                   help="filters, one per band of the noise model (default: the ones it records)")
    s.add_argument("--noise-envelope", type=float, nargs=2, metavar=("LO", "HI"),
                   help="multiply each band's sigma_mag by a factor ~ log-U(LO, HI) per galaxy and band, e.g. 0.5 20")
    s.add_argument("--min-detected", type=int, metavar="K",
                   help="keep simulations with >= K bands inside the catalog's flux range (others may be "
                        "non-detections, with sky-limited errors; train with --inputs asinh); default: all bands")
    s.add_argument("--reported-errors", choices=["observed", "true"],
                   help="report each galaxy's flux error as the noise's own sigma (default with --noise-envelope: "
                        "the simulations' likelihood is then the catalog's Gaussian of sigma = flux_err, as the "
                        "shipped sdss model's) or from its observed flux, as catalogs do (default without an "
                        "envelope, where the noise's own sigma would leak the noise draw)")
    neb = s.add_mutually_exclusive_group()
    neb.add_argument("--nebular-logu", type=float, default=DEFAULT_LOGU, metavar="LOGU",
                     help=f"log10 ionisation parameter of the nebular emission of stars younger than the "
                          f"birth-cloud escape time (default {DEFAULT_LOGU:g}, as FSPS; -4 .. 0)")
    neb.add_argument("--no-nebular", action="store_true", help="stellar light only (as PROVABGS)")
    s.add_argument("--noise-model", type=cli_path, help="noise model JSON (default: the shipped SDSS+NSA-floors model)")
    s.add_argument("--address", help="Ray address (default: start a local Ray)")
    s.add_argument("--workers", type=int, help="most shards simulated at once (default: as many as Ray has CPUs)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=_simulate)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError, RuntimeError) as e:      # OSError: a path that is missing, a file, not writable
        print(f"sedflow {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:      # finished partitions and shards are kept: the same command resumes
        print(f"sedflow {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
