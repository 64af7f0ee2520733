"""Fine-tune a model trained on errors reported from the observed flux on its own simulations with
errors reported as the noise's own sigma (simulate --reported-errors true), so that Eq. 1 (sigma
fixed at the reported error) is the simulator's likelihood. Usage: python ft_true.py MODEL SIMS_DIR
OUT_DIR (MODEL: the sdss artifact of the model measured in README.md here; SIMS_DIR: its training
simulations, sims_v8). An experiment (README.md here), not a supported recipe; the shipped model
since 2026-12-06 is trained this way from scratch."""
import json, sys
from pathlib import Path
import sedflow.train as T

model, sims, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
original = T.training_data


def reported_as_true(data_dir):
    shards, manifest, fingerprint = original(data_dir)
    manifest = json.loads(json.dumps(manifest))
    manifest["config"]["reported_errors"] = "true"      # renoise draws errors this way
    return shards, manifest, fingerprint


T.training_data = reported_as_true
result = T.calibrate(model, sims, out, weight=100.0, progress=False)
cfg = json.loads((out / "config.json").read_text())
cfg["simulation"]["reported_errors"] = "true"             # held-out sets are drawn this way
(out / "config.json").write_text(json.dumps(cfg, indent=1))
print(json.dumps(result, indent=1))
