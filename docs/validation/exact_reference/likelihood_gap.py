"""How far apart are the exact posteriors of the two likelihoods, per galaxy?

The catalog likelihood (Hahn & Melchior 2022, Eq. 1: sigma fixed at the reported error) and the
simulations' (sigma follows the model flux, `sedflow.mcmc.simulator_flux_error`) give different
posteriors for the same photometry. This script measures that difference directly on the validation
report's reference galaxies, with the report's own exact references (`sedflow validate
--reference importance`, chains in CHAIN_DIR): the catalog-likelihood runs are read from CHAIN_DIR
(written by the report), the simulator-likelihood runs are read or run there (same requests as
`sedflow validate --likelihood simulator`, so a later report reuses them).

    python likelihood_gap.py MODEL CHAIN_DIR [hard|all]      # hard: the galaxies with a non-detection or missing band

MODEL: a model trained on errors reported from the observed flux (for the one measured in README.md
here, the `sdss` artifact of git commit 3413011); for a model trained with `--reported-errors true`
and a noise envelope the two likelihoods are the same.

Prints, per parameter, the median over galaxies of |median_sim - median_cat| / sigma_cat, its
signed mean, and ANPE (MODEL, 10,000 draws as in the report) against each; then the
galaxies where the two exact medians of n_dust differ by more than 0.2 sigma, with each band's
S/N and |flux| in units of the sky-limited flux below which the two likelihoods' sigma agree.
"""
import sys

import numpy as np

from sedflow.importance import fit_proposal
from sedflow.posterior import load_model
from sedflow.validate import _hard, _mcmc_chains, held_out_simulations, reference_galaxies, reference_sky_flux

SEED, N_TEST, N_MCMC, N_SAMPLES = 20260101, 3000, 50, 10_000         # the report's settings
OPTIONS = {"n_eff": 3000, "max_draws": 10_000_000}

model, chain_dir, which = sys.argv[1], sys.argv[2], (sys.argv[3] if len(sys.argv) > 3 else "hard")
post = load_model(model)
sed = post.sed_model()
sims = held_out_simulations(post, sed, N_TEST, SEED)
galaxies = reference_galaxies(sims, N_MCMC)
if which == "hard":
    galaxies = galaxies[_hard(sims["flux"][galaxies])]
anpe = {i: post.sample(sims["x"][i:i + 1], N_SAMPLES, seed=int(SEED + i))[0] for i in galaxies}
proposals = {i: {"proposal": fit_proposal(post.prior, anpe[i])} for i in galaxies}
runs = {}
for likelihood in ("catalog", "simulator"):
    options = dict(OPTIONS, **({"sky_flux": reference_sky_flux(post.config)} if likelihood == "simulator" else {}))
    runs[likelihood] = _mcmc_chains(sed, post.prior, sims, galaxies, SEED, "importance", options, chain_dir,
                                    likelihood=likelihood, galaxy_options=proposals)

gap, anpe_cat, anpe_sim, ess = [], [], [], []
for k, i in enumerate(galaxies):
    (c, mc), (s, ms) = runs["catalog"][k], runs["simulator"][k]
    sd_c, sd_s = c.std(0), s.std(0)
    gap.append((np.median(s, 0) - np.median(c, 0)) / sd_c)
    anpe_cat.append((np.median(anpe[i], 0) - np.median(c, 0)) / sd_c)        # signed, as gap
    anpe_sim.append((np.median(anpe[i], 0) - np.median(s, 0)) / sd_s)
    ess.append((mc["n_eff"], ms["n_eff"]))
gap, anpe_cat, anpe_sim, ess = map(np.array, (gap, anpe_cat, anpe_sim, ess))
print(f"{len(galaxies)} galaxies ({which}); ESS min catalog {ess[:, 0].min():.0f}, simulator {ess[:, 1].min():.0f}")
print("| parameter | exact sim vs exact cat: median abs / sigma | signed mean | ANPE vs exact cat | ANPE vs exact sim |")
print("|---|---|---|---|---|")
for k, name in enumerate(post.names):
    print(f"| {name} | {np.median(np.abs(gap[:, k])):.3f} | {gap[:, k].mean():+.3f} | "
          f"{np.median(np.abs(anpe_cat[:, k])):.3f} | {np.median(np.abs(anpe_sim[:, k])):.3f} |")

n_dust = post.names.index("n_dust")
sky = np.asarray(reference_sky_flux(post.config))
print(f"\ngalaxies with |n_dust gap| > 0.2 sigma (bands {post.bands}):")
print("| galaxy | z | exact sim - exact cat | ANPE - exact cat | ANPE - exact sim | S/N per band | abs(flux) / sky-limited flux |")
print("|---|---|---|---|---|---|---|")
for k, i in enumerate(galaxies):
    if abs(gap[k, n_dust]) > 0.2:
        flux, err = sims["flux"][i], sims["flux_err"][i]
        print(f"| {i} | {sims['z'][i]:.3f} | {gap[k, n_dust]:+.3f} | {anpe_cat[k, n_dust]:+.3f} | {anpe_sim[k, n_dust]:+.3f} | "
              f"{' '.join(f'{v:.1f}' for v in flux / err)} | {' '.join(f'{v:.1f}' for v in np.abs(flux) / sky)} |")
