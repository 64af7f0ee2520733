"""Command-line interface: thin wrappers over the stages.

    sedflow demo [--n N] [--seed S] [--out DIR]     forward-model demo on prior draws
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np


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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sedflow", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="forward-model photometry for prior draws (embedded defaults)")
    d.add_argument("--n", type=int, default=10000, help="number of prior draws (default 10000)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--z-min", type=float, default=0.01)
    d.add_argument("--z-max", type=float, default=0.2)
    d.add_argument("--show", type=int, default=10, help="rows to print")
    d.add_argument("--out", default="demo_out", help="output directory (default ./demo_out)")
    d.set_defaults(func=_demo)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"sedflow {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
