"""nautilus against the exact reference on the same galaxies: two chain directories written by
`sedflow validate` (--reference importance, --reference nautilus), same held-out set. Per parameter:
median over galaxies of |d median| / sigma(exact), mean signed offset, galaxies with nautilus low,
and median width ratio nautilus / exact."""
import sys
from pathlib import Path

import numpy as np

from sedflow.mcmc import read_samples
from sedflow.prior import PARAM_NAMES

exact_dir, other_dir = map(Path, sys.argv[1:3])
rows = []
for f in sorted(exact_dir.glob("galaxy-*.parquet")):
    if not (other_dir / f.name).exists():
        continue
    (e, me), (o, mo) = read_samples(f), read_samples(other_dir / f.name)
    assert me["request"]["flux"] == mo["request"]["flux"], f.name            # the same galaxy
    sd = e.std(0)
    rows.append(((np.median(o, 0) - np.median(e, 0)) / sd, o.std(0) / sd, me["n_eff"]))
signed = np.array([r[0] for r in rows]); width = np.array([r[1] for r in rows])
print(f"{len(rows)} galaxies; exact ESS min {min(r[2] for r in rows):.0f}")
print("| parameter | nautilus vs exact | signed mean | nautilus low on | width nautilus / exact |")
print("|---|---|---|---|---|")
for k, name in enumerate(PARAM_NAMES):
    print(f"| {name} | {np.median(np.abs(signed[:, k])):.3f} | {signed[:, k].mean():+.3f} | "
          f"{(signed[:, k] < 0).sum()} of {len(rows)} | {np.median(width[:, k]):.2f} |")
