"""Where stages read and write: local (or shared, e.g. NFS) POSIX paths and ``file://`` URLs.

Every stage that writes (simulate, train, ingest, infer, validate) resumes by finding
finished files and publishes each file with an atomic rename; object stores (``s3://``,
``gs://``, ``az://``) have no atomic rename, so their URLs are refused with a message
rather than half-supported. On a cloud cluster, write to a shared filesystem (NFS/EFS,
or a bucket mounted with s3fs / mountpoint-s3) and copy to object storage afterwards.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from urllib.parse import unquote, urlparse

__all__ = ["local_path", "cli_path"]


def local_path(location) -> Path:
    """A plain path or ``file://`` URL as a `Path`; other URL schemes raise ValueError."""
    text = str(location)
    if "://" not in text:
        return Path(text).expanduser()
    url = urlparse(text)
    if url.scheme == "file":
        if url.netloc not in ("", "localhost"):
            raise ValueError(f"{text}: file:// URLs must name a local path (file:///abs/path)")
        return Path(unquote(url.path))
    raise ValueError(f"{text}: {url.scheme}:// storage is not supported (sedflow resumes through "
                     "atomic renames, which object stores lack); use a local or shared filesystem "
                     "path, e.g. a mounted bucket, and copy the results afterwards")


def cli_path(value: str) -> str:
    """argparse ``type=`` for path arguments: the local path as a string, or a usage error."""
    try:
        return str(local_path(value))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
