"""Where the candidate tables live: under the experiment folder, or in object storage named by an
fsspec URL (REST_TABLES_URL, e.g. s3://bucket/prefix) that every worker of a cluster can reach.

Only the tables (candidates, scores, the score cache, slices) move: they are what every Grow shard
and Improve step reads and writes; checkpoints stay on the shared filesystem of REST_HOME. Objects
are immutable: a file is written locally in full and then put as one object (an S3 PUT is atomic,
so readers see the whole object or none), and DuckDB reads the same objects through the same fsspec
filesystem, registered on its connection.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePath

import duckdb
import pandas as pd

from rest_pipeline.core.paths import is_remote

TablePath = Path | PurePath  # a local Path, or a universal_pathlib UPath for a URL


def tables_url() -> str:
    """REST_TABLES_URL without its trailing slash ('' when the tables stay local)."""
    return os.environ.get("REST_TABLES_URL", "").rstrip("/")


def url_path(url: str) -> TablePath:
    from upath import UPath

    return UPath(url)


def is_url(text: str) -> bool:
    return "://" in text


def tables_root(experiment: str, local_root: Path) -> TablePath:
    url = tables_url()
    if not url:
        return local_root / "store"
    if not is_url(url):
        raise ValueError(f"REST_TABLES_URL must be an fsspec URL such as s3://bucket/prefix, got '{url}'")
    return url_path(f"{url}/experiments/{experiment}/store")


def glob(root: TablePath, pattern: str) -> list[TablePath]:
    if is_remote(root):
        root.fs.invalidate_cache()  # type: ignore[attr-defined] (listings of another process's writes)
    return sorted(root.glob(pattern), key=str)


def read_table(path: TablePath) -> pd.DataFrame:
    if is_remote(path):
        with path.open("rb") as f:  # type: ignore[call-arg]
            return pd.read_parquet(f)
    return pd.read_parquet(path)


def connect_for(paths: list[TablePath]) -> duckdb.DuckDBPyConnection:
    """An in-memory connection that can read `paths`: extensions never downloaded, object storage
    through the fsspec filesystem the paths come with."""
    con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    for fs in {id(p.fs): p.fs for p in paths if is_remote(p)}.values():  # type: ignore[attr-defined]
        con.register_filesystem(fs)
    return con
