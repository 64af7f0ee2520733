"""Where stages read and write: local (or shared, e.g. NFS) POSIX paths and ``file://`` URLs,
and the one way every stage publishes a file (`atomic_write`: a temp file beside it, renamed).

Every stage that writes (simulate, train, ingest, infer, validate) resumes by finding
finished files and publishes each file with an atomic rename; object stores (``s3://``,
``gs://``, ``az://``) have no atomic rename, so their URLs are refused with a message
rather than half-supported. On a cloud cluster, write to a shared filesystem (NFS/EFS,
or a bucket mounted with s3fs / mountpoint-s3) and copy to object storage afterwards.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path
from urllib.parse import unquote, urlparse

__all__ = ["local_path", "cli_path", "atomic_write", "write_parquet", "write_row_partitions", "write_json",
           "file_sha256", "temp_name", "claim_output"]


def temp_name(path: Path) -> Path:
    """The temp file `atomic_write` writes first: ``.{name}.tmp{pid}`` beside ``path`` (stale ones match
    ``.{name}.tmp*``; the pid keeps two writers apart)."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def atomic_write(path, write) -> Path:
    """Publish ``path`` whole or not at all: ``write(tmp)`` writes a temp file beside it, which is then
    renamed over ``path`` (atomic on POSIX filesystems); the temp file is removed if ``write`` fails."""
    path = Path(path)
    tmp = temp_name(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_parquet(table, path, **kwargs) -> Path:
    """`atomic_write` of a pyarrow Table (``kwargs`` go to ``pyarrow.parquet.write_table``)."""
    import pyarrow.parquet as pq

    return atomic_write(path, lambda tmp: pq.write_table(table, tmp, **kwargs))


def write_row_partitions(table, dest, partition_rows: int) -> list[str]:
    """``table`` as ``part-NNNNN.parquet`` files of ``partition_rows`` rows in row order under ``dest``
    (zstd, each published by `write_parquet`; an empty table gives one empty part); their names."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    names = []
    for k, start in enumerate(range(0, max(table.num_rows, 1), partition_rows)):
        names.append(f"part-{k:05d}.parquet")
        write_parquet(table.slice(start, partition_rows), dest / names[-1], compression="zstd")
    return names


def write_json(path, obj) -> Path:
    """`atomic_write` of a JSON document (indented)."""
    text = json.dumps(obj, indent=1)
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def claim_output(path, manifest: dict, what: str, ignore=()) -> None:
    """The resume rule of every stage: the first run writes ``manifest`` (its settings) to ``path``; a
    rerun into the same output must have the same settings (keys in ``ignore`` aside), or it is
    refused with a ValueError, so finished files of other settings are never mixed in."""
    path = Path(path)
    manifest = json.loads(json.dumps(manifest))                      # compare as it reads back
    if path.exists():
        old = json.loads(path.read_text())
        differ = [k for k, v in manifest.items() if k not in ignore and old.get(k) != v]
        if differ:
            raise ValueError(f"{path.parent} holds {what} with other settings ({', '.join(differ)}; {path}); "
                             f"use a new output directory or the same settings")
    else:
        write_json(path, manifest)


def file_sha256(path) -> str:
    """sha256 hex digest of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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
