"""Shared fixtures. Tests use real files, real models and a real Dagster instance; the only
data they read is the mirror in REST_DATA_DIR (CI points it at ../shared/data)."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Under `-n N` (pytest-xdist, what `./scripts/rest test` runs) each worker and the processes its tests start
# share the cores: a worker's torch takes its share of them instead of all (oversubscribed OpenMP threads
# spin against each other). Set before anything imports torch; a user's own OMP_NUM_THREADS wins.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _share = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ.setdefault("OMP_NUM_THREADS", str(_share))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Files with the most slow tests first (a stable sort: a file's own order is kept). Under xdist, which
    hands out whole files (`--dist loadfile`), the long files start at once and short ones fill the end."""
    slow_tests = Counter(item.path for item in items if item.get_closest_marker("slow"))
    items.sort(key=lambda item: -slow_tests[item.path])


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
