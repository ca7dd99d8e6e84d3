"""A reward model served apart from the policy: `rest serve-reward` on 127.0.0.1 and `reward.model: http`.
Real servers, real sockets: the same scores as in-process, the server's version in the reward's, clear
errors for a server that is down or answers nonsense, and a scoring run killed with its server that
resumes when the server is back, nothing scored twice."""

import json
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from rest_pipeline.core.rewards.base import ChrFReward, RewardError
from rest_pipeline.core.rewards.http import HttpReward
from rest_pipeline.core.rewards.scoring import score_candidates
from rest_pipeline.core.store.experiment import ExperimentStore
from rest_pipeline.spec import HttpRewardSpec
from rest_pipeline_tests.synthetic import pairs

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """`rest serve-reward <reward>` in a child process on a fixed loopback port."""

    def __init__(self, reward: str, port: int):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rest_pipeline.cli", "serve-reward", reward, "--port", str(port)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        line = self.proc.stdout.readline()
        assert "serving reward" in line, line + self.proc.stdout.read()
        self.url = line.split(" on ")[-1].strip()

    def stats(self) -> dict:
        import urllib.request

        with urllib.request.urlopen(self.url + "/stats", timeout=5) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def chrf_server():
    served = Served("chrf", free_port())
    yield served
    served.stop()


def test_served_chrf_scores_like_the_in_process_one_and_names_its_server(chrf_server):
    src, ref = pairs(23, seed=1)
    hyp = [r if i % 3 else r.upper() for i, r in enumerate(ref)]
    client = HttpReward(HttpRewardSpec(url=chrf_server.url, batch_size=5, max_in_flight=3))
    np.testing.assert_allclose(client.score(src, hyp, ref), ChrFReward().score(src, hyp, ref))
    assert client.server == f"chrf@{ChrFReward().version}" and client.server in client.version
    assert chrf_server.stats() == {"requests": 5, "inputs": 23}  # 23 inputs in batches of 5


def test_a_server_that_is_down_is_named_with_what_to_do():
    url = f"http://127.0.0.1:{free_port()}"
    t = time.perf_counter()
    with pytest.raises(RewardError, match=r"127.0.0.1:\d+: its /info failed after 2 tries .*is it running\?"):
        HttpReward(HttpRewardSpec(url=url, retries=1, timeout_s=2))
    assert time.perf_counter() - t < 10


class Misbehaving(BaseHTTPRequestHandler):
    answer: object = None

    def log_message(self, *args) -> None:
        pass

    def _send(self, payload: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:  # noqa: N802
        self._send(json.dumps({"name": "odd", "version": "0", "needs_reference": True}).encode())

    def do_POST(self) -> None:  # noqa: N802
        n = len(json.loads(self.rfile.read(int(self.headers["Content-Length"])))["sources"])
        answer = type(self).answer
        self._send(answer(n) if callable(answer) else answer)


@pytest.mark.parametrize(
    "answer,message",
    [
        (lambda n: json.dumps({"scores": [0.5] * (n - 1)}).encode(), r"answered \d+ scores for a batch of \d+ inputs"),
        (lambda n: b'{"scores": [NaN' + b", 0.5" * (n - 1) + b"]}", r"score 0 is nan, not a finite number"),
        (lambda n: json.dumps({"scores": ["high"] * n}).encode(), r"score 0 is 'high', not a finite number"),
        (b"<html>oops</html>", r"is not JSON"),
    ],
)
def test_nonsense_from_the_server_leaves_no_scores_file(tmp_path, answer, message):
    handler = type("H", (Misbehaving,), {"answer": staticmethod(answer) if callable(answer) else answer})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        store = shard(tmp_path)
        reward = HttpReward(HttpRewardSpec(url=f"http://127.0.0.1:{server.server_address[1]}", batch_size=4))
        with pytest.raises(RewardError, match=message):
            score_candidates(store, reward, 1, 0)
        assert not store.scores_file("http", 1, 0).exists()
    finally:
        server.shutdown()


def shard(tmp_path: Path, n: int = 12) -> ExperimentStore:
    store = ExperimentStore(tmp_path / "exp")
    src, ref = pairs(n, seed=4)
    store.write_candidates(
        experiment="t", grow=1, shard=0, source_ids=[f"s{i}" for i in range(n)], sources=src, references=ref,
        samples=[[r, r.upper(), r + " x"] for r in ref], policy="p", decoding="d",
    )  # fmt: skip
    return store


def test_killed_with_its_server_the_scoring_resumes_when_it_is_back_and_scores_nothing_twice(tmp_path):
    store = shard(tmp_path, n=30)  # 30 sources x (3 samples + reference) = 120 candidates, 90 distinct inputs
    port = free_port()
    slow = "rest_pipeline_tests.test_served_reward:slow_chrf"
    first = Served(slow, port)
    spec = HttpRewardSpec(url=first.url, batch_size=5, max_in_flight=1, retries=0, timeout_s=5)
    client = HttpReward(spec)
    killer = threading.Thread(target=lambda: (_wait_for(first, 20), first.stop()))
    killer.start()
    with pytest.raises(RewardError, match="is it running"):
        score_candidates(store, client, 1, 0, chunk=10)  # the cache keeps each chunk of 10 once scored
    killer.join()
    assert not store.scores_file("http", 1, 0).exists()  # no partial shard
    second = Served(slow, port)
    try:
        report = score_candidates(store, HttpReward(spec), 1, 0, chunk=10)
        done_before = report.unique_inputs - report.newly_scored
        assert done_before >= 20 and report.newly_scored > 0
        assert second.stats()["inputs"] == report.newly_scored  # only what the first server never scored
        assert store.scores_file("http", 1, 0).exists()
    finally:
        second.stop()


def _wait_for(served: Served, inputs: int) -> None:
    deadline = time.time() + 30
    while served.stats()["inputs"] < inputs and time.time() < deadline:
        time.sleep(0.02)


def slow_chrf():
    """chrF that takes its time (0.1 s per batch), so a test can kill its server mid-grow."""

    class Slow(ChrFReward):
        def score(self, sources, hypotheses, references):
            time.sleep(0.1)
            return super().score(sources, hypotheses, references)

    return Slow()
