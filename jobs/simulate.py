"""Ray job: simulate the training set on the cluster this script runs on.

    ray submit ray_cluster.yaml jobs/simulate.py -- --n 1131561 --out /home/ubuntu/sims
    ray job submit --address http://HEAD:8265 --working-dir . -- python jobs/simulate.py --n 1000 --out sims

Arguments are those of ``sedflow simulate``; without ``--address`` the job joins the Ray
cluster it was submitted to (``RAY_ADDRESS``, or ``auto`` on a cluster node).
"""

import os
import sys

from sedflow.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if "--address" not in args:
        args += ["--address", os.environ.get("RAY_ADDRESS", "auto")]
    sys.exit(main(["simulate", *args]))
