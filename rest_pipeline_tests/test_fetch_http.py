"""The download path against a real HTTP server on loopback (no internet needed)."""

import gzip
import hashlib
import http.server
import threading
from pathlib import Path

import pytest

from rest_pipeline.core.corpus.fetch import FetchError, download_dir, fetch
from rest_pipeline.core.corpus.registry import CorpusFile

TEXT = "Ein Hund läuft.\nZwei Katzen schlafen.\n".encode()


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    (root / "plain.txt").write_bytes(TEXT)
    (root / "packed.txt.gz").write_bytes(gzip.compress(TEXT))

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(root), **kw)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture
def online(rest_home, monkeypatch):
    monkeypatch.delenv("REST_DATA_DIR", raising=False)
    return rest_home


SHA = hashlib.sha256(TEXT).hexdigest()


def test_download_plain_and_gzip_verified(server, online):
    plain = fetch(CorpusFile("demo/plain.de", SHA, 2, f"{server}/plain.txt"))
    packed = fetch(CorpusFile("demo/packed.de", SHA, 2, f"{server}/packed.txt.gz", gzip=True))
    assert plain.read_bytes() == TEXT == packed.read_bytes()
    assert plain.parent == download_dir() / "demo"


def test_sha_mismatch_leaves_nothing_behind(server, online):
    entry = CorpusFile("demo/bad.de", "f" * 64, 2, f"{server}/plain.txt")
    with pytest.raises(FetchError, match="sha256 mismatch") as e:
        fetch(entry)
    assert server in str(e.value)
    folder = download_dir() / "demo"
    assert not any(folder.iterdir()) if folder.exists() else True


def test_corrupted_earlier_download_is_replaced(server, online):
    entry = CorpusFile("demo/plain.de", SHA, 2, f"{server}/plain.txt")
    dest = download_dir() / entry.path
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"truncated")
    assert fetch(entry).read_bytes() == TEXT


def test_unreachable_and_mirror_only(server, online):
    with pytest.raises(FetchError, match="download of"):
        fetch(CorpusFile("demo/x.de", SHA, 2, f"{server}/missing.txt"))
    with pytest.raises(FetchError, match="REST_DATA_DIR"):
        fetch(CorpusFile("demo/y.de", SHA, 2, None))
    assert not (Path(download_dir()) / "demo" / "x.de").exists()
