"""Where stages read and write: plain paths and file:// URLs; object stores refused clearly."""

from pathlib import Path

import pytest

from sedflow.storage import local_path


@pytest.mark.parametrize("location, expected", [
    ("/data/sims", Path("/data/sims")),
    ("relative/out", Path("relative/out")),
    ("file:///data/my%20sims", Path("/data/my sims")),
    ("file://localhost/data/sims", Path("/data/sims")),
])
def test_local_paths_and_file_urls(location, expected):
    assert local_path(location) == expected


@pytest.mark.parametrize("location, match", [
    ("s3://bucket/sims", "s3:// storage is not supported"),
    ("gs://bucket/sims", "gs:// storage is not supported"),
    ("file://otherhost/data", "must name a local path"),
])
def test_other_locations_are_refused(location, match):
    with pytest.raises(ValueError, match=match):
        local_path(location)
