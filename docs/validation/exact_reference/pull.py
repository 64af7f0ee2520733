"""Pull (f_obs - f_true) / flux_err of simulated galaxies under both reporting conventions (README.md here)."""
import numpy as np, time
from scipy import stats
from sedflow import SEDModel, Prior
from sedflow.noise import NoiseModel
from sedflow.simulate import simulate_rows
sed, prior, noise = SEDModel.default(), Prior(), NoiseModel.default()
t0 = time.time()
for rep in ("observed", "true"):
    cols, _ = simulate_rows(sed, noise, prior, 6000, np.random.default_rng(5), z_max=0.4, reported_errors=rep,
                            noise_envelope=(0.5, 20), min_detected=3)
    for b in "ugriz":
        pull = (cols[f"flux_{b}"] - cols[f"flux_true_{b}"]) / cols[f"flux_err_{b}"]
        print(rep, b, f"mean {pull.mean():+.3f} sd {pull.std():.3f} skew {stats.skew(pull):+.2f} "
              f"frac|pull|>3 {np.mean(np.abs(pull) > 3):.4f}")
print(time.time() - t0)
