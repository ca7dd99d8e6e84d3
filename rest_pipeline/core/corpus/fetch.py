"""Get a registered corpus file onto disk, verified: from a local mirror or by download.

Offline machines set REST_DATA_DIR to a mirror laid out like the registry (for example
`../shared/data`); files are read there in place and never copied. Online machines
download into `$REST_HOME/raw/`, with a temp file + rename so a killed download never
looks finished, and sha256 is checked before the file is accepted.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import urllib.request
from pathlib import Path

from rest_pipeline.core.corpus.registry import CorpusFile
from rest_pipeline.core.paths import atomic_path, home

SCRIPT_MADE = "; it is produced by a script: `rest fetch <dataset>` says how"


class FetchError(RuntimeError):
    """A corpus file is missing, unreachable or does not match its registered checksum."""


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def mirror_dir() -> Path | None:
    value = os.environ.get("REST_DATA_DIR")
    return Path(value).resolve() if value else None


def download_dir() -> Path:
    return home() / "raw"


def _verify(path: Path, entry: CorpusFile, where: str) -> None:
    if entry.sha256 is None:
        return  # produced by a script (registry notes): alignment and clean lines are checked on reading
    actual = sha256_of(path)
    if actual != entry.sha256:
        raise FetchError(f"{path}: sha256 mismatch for '{entry.path}' ({where}): expected {entry.sha256}, got {actual}")


def _download(entry: CorpusFile, dest: Path, timeout: float) -> None:
    if entry.url is None:
        raise FetchError(
            f"'{entry.path}' has no public download URL in the registry; set REST_DATA_DIR to a folder "
            f"that holds it (e.g. ../shared/data){SCRIPT_MADE if entry.sha256 is None else ''}"
        )
    with atomic_path(dest) as tmp:
        try:
            with urllib.request.urlopen(entry.url, timeout=timeout) as resp, open(tmp, "wb") as out:
                stream = gzip.GzipFile(fileobj=resp) if entry.gzip else resp
                shutil.copyfileobj(stream, out)
        except (OSError, EOFError) as e:
            raise FetchError(f"download of {entry.url} failed: {e}") from e
        _verify(tmp, entry, f"downloaded from {entry.url}")


def fetch(entry: CorpusFile, *, mirror: Path | None = None, timeout: float = 60.0) -> Path:
    """Return a local, checksum-verified path for `entry` (mirror defaults to $REST_DATA_DIR)."""
    mirror = mirror if mirror is not None else mirror_dir()
    if mirror is not None:
        path = mirror / entry.path
        if not path.is_file():
            how = SCRIPT_MADE if entry.sha256 is None else ""
            raise FetchError(f"{path}: not found in REST_DATA_DIR={mirror} (registry entry '{entry.path}'){how}")
        _verify(path, entry, f"mirror {mirror}")
        return path
    dest = download_dir() / entry.path
    if dest.is_file():
        try:
            _verify(dest, entry, "earlier download")
            return dest
        except FetchError:
            dest.unlink()  # a stale or corrupted copy: fetch it again
    _download(entry, dest, timeout)
    return dest
