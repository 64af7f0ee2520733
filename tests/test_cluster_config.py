"""ray_cluster.yaml is a valid Ray cluster config (Ray's own schema and config preparation)."""

import copy
import json
import os
from pathlib import Path

import jsonschema
import pytest
import yaml

CONFIG = Path(__file__).resolve().parents[1] / "ray_cluster.yaml"


@pytest.fixture(scope="module")
def schema():
    import ray.autoscaler

    return json.loads((Path(os.path.dirname(ray.autoscaler.__file__)) / "ray-schema.json").read_text())


def test_cluster_config_passes_rays_schema(schema):
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load(CONFIG.read_text())
    jsonschema.validate(config, schema)
    validate_config(prepare_config(copy.deepcopy(config)))   # what `ray up` runs
    assert config["provider"]["type"] in {"aws", "gcp", "azure"}
    workers = [t for name, t in config["available_node_types"].items() if name != config["head_node_type"]]
    assert workers and all("GPU" not in t.get("resources", {}) for t in workers)
    assert any("torch==2.13.0" in c for c in config["setup_commands"])


def test_schema_catches_a_typo(schema):
    config = yaml.safe_load(CONFIG.read_text())
    config["max_workerz"] = 3
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, schema)
