"""Shared fixtures: one local Ray session per test run, the default SED model, reference data."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def shared_path(*parts) -> Path:
    """A path under ../shared/data, or skip the test saying what is missing."""
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"reference data {p} not found (the read-only ../shared/data folder beside the repo)")
    return p


@pytest.fixture(scope="session")
def ray_local():
    """One real local Ray for the whole test run (2 CPUs, temp dir we remove, no auth token)."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    tmp = tempfile.mkdtemp(prefix="sedflow-test-ray-")
    ray.init(num_cpus=2, _temp_dir=tmp, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def sed_model():
    from sedflow import SEDModel

    return SEDModel.default()


@pytest.fixture(scope="session")
def prior():
    from sedflow import Prior

    return Prior()
