"""Exact catalog-likelihood posteriors of the 50 reference galaxies by importance sampling from the
prior truncated to a box (logM*, tau_bc, tau_ism, n_dust: uniform priors, so weights are L alone)
set from the flow's draws with wide margins; independent of the flow's density. Compares ANPE and nautilus."""
import sys, time, json, numpy as np
from pathlib import Path
from sedflow.posterior import load_model
from sedflow.validate import held_out_simulations, reference_galaxies
from sedflow.mcmc import log_likelihood, check_measurements, read_samples
post = load_model(sys.argv[1], precision="float32"); sed = post.sed_model(); p = post.prior.sed_prior
chain_dir = Path(sys.argv[2]); which = [int(j) for j in sys.argv[3].split(",")] if len(sys.argv) > 3 else range(50)
sims = held_out_simulations(post, sed, 3000, 20260101); gal = reference_galaxies(sims, 50)
BOX = [0, 9, 10, 11]          # logmstar, tau_bc, tau_ism, n_dust (uniform priors)
lo_p, hi_p = p._theta_lo[BOX], p._theta_hi[BOX]
out = {}
for j in which:
    i = int(gal[j]); t0 = time.time()
    a = post.sample(sims["x"][i:i + 1], 10000, seed=20260101 + i)[0]
    sd = a[:, BOX].std(0)
    lo = np.maximum(a[:, BOX].min(0) - 2 * sd, lo_p); hi = np.minimum(a[:, BOX].max(0) + 2 * sd, hi_p)
    f, e, z = check_measurements(sed, sims["flux"][i], sims["flux_err"][i], sims["z"][i])
    rng = np.random.default_rng(i); th, ll = [], []
    n = 0
    while True:
        t = p.sample(200000, seed=rng)
        t[:, BOX] = rng.uniform(lo, hi, (len(t), len(BOX)))
        th.append(t); ll.append(log_likelihood(sed, t, z, f, e)); n += len(t)
        L = np.concatenate(ll); w = np.exp(L - L.max()); ess = w.sum() ** 2 / np.sum(w ** 2)
        if ess >= 3000 or n >= 3_000_000:
            break
    T = np.concatenate(th); w /= w.sum()
    # weight within 0.5 sd of the box's inner edges (where the prior is not the edge): truncation check
    edge = 0.0
    for k in range(len(BOX)):
        if lo[k] > lo_p[k]: edge += w[T[:, BOX[k]] < lo[k] + 0.5 * sd[k]].sum()
        if hi[k] < hi_p[k]: edge += w[T[:, BOX[k]] > hi[k] - 0.5 * sd[k]].sum()
    idx = rng.choice(len(T), 20000, p=w)
    ex = T[idx]
    m, meta = read_samples(chain_dir / f"galaxy-{i:04d}.parquet")
    sig = ex.std(0)
    out[j] = {"galaxy": i, "ess": float(ess), "n": n, "edge_weight": float(edge),
              "anpe": (np.abs(np.median(a, 0) - np.median(ex, 0)) / sig).tolist(),
              "nautilus": (np.abs(np.median(m, 0) - np.median(ex, 0)) / sig).tolist(),
              "anpe_vs_nautilus": (np.abs(np.median(a, 0) - np.median(m, 0)) / m.std(0)).tolist(),
              "width_anpe": (a.std(0) / sig).tolist(), "width_nautilus": (m.std(0) / sig).tolist(),
              "signed_nautilus": ((np.median(m, 0) - np.median(ex, 0)) / sig).tolist(),
              "exact_median": np.median(ex, 0).tolist(), "exact_sd": sig.tolist(), "exact_q16": np.quantile(ex, 0.16, 0).tolist(), "exact_q84": np.quantile(ex, 0.84, 0).tolist(), "nautilus_n_eff": meta.get("n_eff"), "hard": bool(np.any(~(sims["flux"][i] > 0))), "seconds": time.time() - t0}
    print(j, i, f"ess {ess:.0f} n {n} edge {edge:.4f} s {time.time()-t0:.0f}", flush=True)
    Path(sys.argv[4] if len(sys.argv) > 4 else "box_is.json").write_text(json.dumps(out))
