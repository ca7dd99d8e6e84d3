"""The root of all run artifacts, and atomic writes so a killed run never leaves half a file.
(Where each artifact of an experiment lives is `ExperimentStore`'s business.)"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


UMASK = _umask()  # temp files are created 0600/0700; finished artifacts get the user's usual modes


def home() -> Path:
    """Root of downloads and run artifacts: $REST_HOME, else ./data of the working directory."""
    return Path(os.environ.get("REST_HOME", Path.cwd() / "data")).resolve()


def is_remote(path: object) -> bool:
    """A path on object storage (a universal_pathlib UPath with a protocol other than the local
    filesystem; core/store/location.py makes them)."""
    protocol = getattr(path, "protocol", "")
    return bool(protocol) and protocol not in ("file", "local")


def put(local: Path, final: object) -> None:
    """One object from a finished local file: the only way a file reaches object storage."""
    final.fs.put_file(str(local), final.path)  # type: ignore[attr-defined]
    final.fs.invalidate_cache()  # type: ignore[attr-defined]


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temp path beside `final`; rename it into place only if the block succeeds. On object
    storage (core/store/location.py) the finished temp file is put as one object instead."""
    if is_remote(final):
        with tempfile.TemporaryDirectory(prefix="rest-put-") as d:
            tmp_file = Path(d) / final.name
            yield tmp_file
            put(tmp_file, final)
        return
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~UMASK)
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temp directory; swap it in for `final` only if the block succeeds."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~UMASK)
        old = final.with_name(f".{final.name}.old")
        if old.exists():
            shutil.rmtree(old)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        if old.exists():
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def is_hub_id(path: str | Path) -> bool:
    """'Qwen/Qwen2.5-1.5B-Instruct': a Hugging Face Hub name (downloaded where online), not a local folder."""
    text = str(path)
    return not Path(text).exists() and text.count("/") == 1 and not text.startswith((".", "/", "~"))
