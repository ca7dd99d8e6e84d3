"""Shared fixtures. Tests use real files, real models and a real Dagster instance; the only
data they read is the mirror in REST_DATA_DIR (CI points it at ../shared/data)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def shared_data() -> Path:
    value = os.environ.get("REST_DATA_DIR") or str(ROOT.parent / "shared" / "data")
    return Path(value).resolve()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = shared_data()
    if not (path / "multi30k" / "train.de").is_file():
        pytest.fail(f"corpus mirror not found at {path}: set REST_DATA_DIR (e.g. ../shared/data)")
    return path


@pytest.fixture
def rest_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "rest_home"
    monkeypatch.setenv("REST_HOME", str(home))
    return home


@pytest.fixture
def mirror(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("REST_DATA_DIR", str(data_dir))
    return data_dir


def write_lines(path: Path, lines: list[str] | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(lines, bytes):
        path.write_bytes(lines)
    else:
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path
