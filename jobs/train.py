"""Ray job: train the posterior on the cluster this script runs on.

    ray submit ray_cluster.yaml jobs/train.py -- /home/ubuntu/sims --out /home/ubuntu/model --workers 8

Arguments are those of ``sedflow train``; without ``--address`` the job joins the Ray
cluster it was submitted to. Multi-node training needs the shards and ``--out`` on storage
every node sees (NFS), as Ray Train checkpoints there.
"""

import os
import sys

from sedflow.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if "--address" not in args:
        args += ["--address", os.environ.get("RAY_ADDRESS", "auto")]
    sys.exit(main(["train", *args]))
