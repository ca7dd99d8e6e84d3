"""Human ratings end to end: the real rating server on loopback (`rest rate`), driven by headless
Chromium through Playwright; ratings in the store's Parquet files and DuckDB view; `human_eval`
materialized in a real Dagster instance and checked against a hand computation.

The experiment is a real store holding two evaluated systems on the first 30 sentences of Multi30k's
test split: BC's outputs drop a word of the reference, the checkpoint's are the reference."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from rest_pipeline.core.corpus.validate import read_parallel
from rest_pipeline.core.human.analysis import analyse
from rest_pipeline.core.human.ratings import RatingBook, RatingError, all_ratings
from rest_pipeline.core.human.rounds import RoundError, make_round, round_items
from rest_pipeline.core.paths import atomic_path
from rest_pipeline.core.store.experiment import ExperimentStore
from rest_pipeline.core.store.records import Evaluation, SplitScores
from rest_pipeline.core.store.side_records import HumanEval
from rest_pipeline.orchestration.definitions import build_definitions
from rest_pipeline.spec import DecodingSpec, LinePolicy, find_spec, load_spec

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
OUT = ROOT / "test-output" / "rating"
CHECKPOINT = "grow_1/improve_1"


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def smoke_store(rest_home: Path, data_dir: Path) -> ExperimentStore:
    """The smoke experiment's store with evaluations of BC and of grow_1/improve_1 on 30 test sentences."""
    lines = read_parallel(
        data_dir / "multi30k" / "test_2016_flickr.de", data_dir / "multi30k" / "test_2016_flickr.en", LinePolicy()
    )
    src, ref = lines.sources[:30], lines.targets[:30]
    store = ExperimentStore.open("smoke")
    outputs = {"base": [" ".join(r.split()[:-2]) + "." for r in ref], CHECKPOINT: list(ref)}
    rewards = {"base": np.linspace(0.40, 0.70, 30), CHECKPOINT: np.linspace(0.45, 0.80, 30)[::-1].copy()}
    for policy, hyps in outputs.items():
        path = store.eval_dir(policy) / "test.greedy.parquet"
        table = pd.DataFrame(
            {"source_id": [f"t{i}" for i in range(30)], "source": src, "reference": ref, "hypothesis": hyps}
        ).assign(reward_learned=rewards[policy], reward_chrf=0.5)
        with atomic_path(path) as tmp:
            table.to_parquet(tmp, index=False)
        split = SplitScores(
            sentences=30, bleu=30.0, chrf=50.0, rewards={"learned": float(rewards[policy].mean())},
            distinct_1=0.5, distinct_2=0.7, mean_length=10.0, hypotheses=store.rel(path),
        )  # fmt: skip
        checkpoint = "policies/base" if policy == "base" else f"policies/{policy}/best"
        store.put(
            Evaluation(key=policy, policy=policy, checkpoint=checkpoint, decoding=DecodingSpec(name="greedy"),
                       splits={"test": split})
        )  # fmt: skip
    return store


def test_round_is_seeded_hides_systems_and_refuses_bad_ratings(smoke_store):
    record = make_round(smoke_store, [CHECKPOINT], items=10, seed=3, reward="learned")
    assert make_round(smoke_store, [CHECKPOINT], items=10, seed=3, reward="learned") == record  # found again
    assert make_round(smoke_store, [CHECKPOINT], items=10, seed=4, reward="learned").round_id != record.round_id
    items = round_items(smoke_store, record)
    assert len(items) == 10 and len(set(items.source_id)) == 10
    orders = {tuple(json.loads(o)) for o in items.order}
    assert orders == {(0, 1), (1, 0)}  # BC is shown first on some items, second on others
    book = RatingBook(smoke_store, record)
    view = book.view(0)
    assert [label for label, _ in view.translations] == ["A", "B"]
    assert {text for _, text in view.translations} == {items.hyp_0.iat[0], items.hyp_1.iat[0]}

    for scores, status in [({"A": 7, "B": 3}, 400), ({"A": -1, "B": 3}, 400), ({"A": 2.5, "B": 3}, 400),
                           ({"A": True, "B": 3}, 400), ({"A": 3}, 400), ({"A": 1, "B": 2, "C": 3}, 400)]:  # fmt: skip
        with pytest.raises(RatingError) as e:
            book.rate("ann", 0, scores)
        assert e.value.status == status
    for item in (10, -1, "0"):
        with pytest.raises(RatingError, match="unknown item") as e:
            book.rate("ann", item, {"A": 1, "B": 2})
        assert e.value.status == 404
    with pytest.raises(RatingError, match="rater name"):
        book.rate("../etc", 0, {"A": 1, "B": 2})
    book.rate("ann", 0, {"A": 4, "B": 5})
    with pytest.raises(RatingError, match="already rated by ann: nothing stored twice") as e:
        book.rate("ann", 0, {"A": 0, "B": 0})
    assert e.value.status == 409
    assert len(all_ratings(smoke_store)) == 2  # one item, one row per system
    book.rate("bob", 0, {"A": 3, "B": 3})  # another rater may rate the same item
    assert book.next_item("ann") == 1 and book.next_item("ann", after=5) == 6
    with pytest.raises(RoundError, match="checkpoint 'grow_9/improve_9'"):
        make_round(smoke_store, ["grow_9/improve_9"], reward="learned")
    with pytest.raises(RoundError, match="only 30 test sentences"):
        make_round(smoke_store, [CHECKPOINT], items=31, reward="learned")


def test_human_eval_numbers_equal_a_hand_computation_in_a_real_instance(smoke_store, tmp_path):
    record = make_round(smoke_store, [CHECKPOINT], items=6, seed=1, reward="learned")
    book = RatingBook(smoke_store, record)
    items = round_items(smoke_store, record)
    # By system, not by label: ann prefers the checkpoint on items 0-3, bob rates items 0-2 too.
    ann = {0: (2, 5), 1: (3, 6), 2: (4, 4), 3: (1, 3), 4: (5, 2)}
    bob = {0: (2, 4), 1: (4, 6), 2: (3, 5)}
    for rater, table in (("ann", ann), ("bob", bob)):
        for item, (bc, ck) in table.items():
            by_system = {record.systems[0]: bc, record.systems[1]: ck}
            order = [record.systems[i] for i in json.loads(items.order.iat[item])]
            book.rate(rater, item, {"AB"[k]: by_system[s] for k, s in enumerate(order)})

    spec = load_spec(find_spec("smoke"))
    defs = build_definitions([spec])
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        result = dg.materialize(
            [a for a in defs.assets if dg.AssetKey(["smoke", "human_eval"]) in a.keys],
            instance=instance,
            resources=defs.resources,
        )
        assert result.success
        meta = instance.get_latest_materialization_event(
            dg.AssetKey(["smoke", "human_eval"])
        ).asset_materialization.metadata
    he = smoke_store.get(HumanEval)

    # By hand: per item, the mean over its raters of (checkpoint - BC).
    per_item = {0: ((5 - 2) + (4 - 2)) / 2, 1: ((6 - 3) + (6 - 4)) / 2, 2: ((4 - 4) + (5 - 3)) / 2, 3: 2, 4: -3}
    (delta,) = he.deltas
    assert delta.system == CHECKPOINT and delta.items == 5
    assert delta.human_delta == pytest.approx(np.mean(list(per_item.values())), abs=1e-4)
    assert delta.low <= delta.human_delta <= delta.high and delta.low < delta.high
    rew = {i: items.reward_1.iat[i] - items.reward_0.iat[i] for i in per_item}
    assert delta.reward_delta == pytest.approx(np.mean(list(rew.values())), abs=1e-5)
    # Reward model vs people, per (rater, item) with distinct ratings: tau is +1 where both prefer the
    # same system, -1 where they disagree (two systems); ties (ann's item 2) are left out.
    signs = [(np.sign(ck - bc), np.sign(rew[i])) for t in (ann, bob) for i, (bc, ck) in t.items() if ck != bc]
    assert he.pairs_compared == len(signs) == 7
    assert he.kendall_tau_human_vs_reward == pytest.approx(np.mean([h * r for h, r in signs]), abs=1e-4)
    assert he.reward_prefers_lower_rated == pytest.approx(np.mean([h == -r for h, r in signs]), abs=1e-4)
    # Between raters, on the 3 items x 2 systems both rated: ann (2,5,3,6,4,4) vs bob (2,4,4,6,3,5).
    from scipy.stats import kendalltau

    a, b = [2, 5, 3, 6, 4, 4], [2, 4, 4, 6, 3, 5]
    assert he.inter_rater_items == 3
    assert he.inter_rater_exact == pytest.approx(2 / 6, abs=1e-4)
    assert he.inter_rater_kendall_tau == pytest.approx(kendalltau(a, b).statistic, abs=1e-4)
    assert {s.system: s.mean for s in he.systems} == {
        "base": pytest.approx(np.mean([2, 3, 4, 1, 5, 2, 4, 3]), abs=1e-4),
        CHECKPOINT: pytest.approx(np.mean([5, 6, 4, 3, 2, 4, 6, 5]), abs=1e-4),
    }
    assert meta["ratings"].value == 16 and meta["human_delta_grow_1_improve_1"].value == delta.human_delta
    assert (smoke_store.human_dir / he.plot).stat().st_size > 1000  # the reward-vs-human plot
    assert analyse(smoke_store) == he.model_copy(update={"plot": None})  # recomputed: the same numbers


class RateServer:
    def __init__(self, env: dict[str, str], port: int):
        self.env, self.port, self.url = env, port, f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> RateServer:
        self.proc = subprocess.Popen(
            [str(BIN / "rest"), "rate", "smoke", "--checkpoint", CHECKPOINT, "--items", "8", "--rater", "ann",
             "--port", str(self.port)],
            env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/api/round", timeout=2):
                    return self
            except (urllib.error.URLError, ConnectionError):
                assert self.proc.poll() is None, self.proc.stdout.read()
                time.sleep(0.3)
        raise TimeoutError("rating server did not start")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def token(self) -> str:
        """The write token the server put in its page (what only the page itself can read)."""
        with urllib.request.urlopen(f"{self.url}/", timeout=10) as r:
            return re.search(r'name="rest-write-token" content="([^"]+)"', r.read().decode()).group(1)

    def post(self, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict]:
        if headers is None:
            headers = {"Content-Type": "application/json", "X-Rest-Token": self.token()}
        req = urllib.request.Request(f"{self.url}/api/rate", body, headers)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())


@pytest.mark.skipif(chromium() is None, reason="Debian's chromium is not installed (.ci/run installs it)")
@pytest.mark.slow
def test_rating_page_in_headless_chromium_keeps_every_rating(smoke_store, rest_home):
    from playwright.sync_api import sync_playwright

    env = {**os.environ, "REST_HOME": str(rest_home)}
    missing = subprocess.run([str(BIN / "rest"), "rate", "smoke", "--checkpoint", "grow_7/improve_2"], env=env,
                             capture_output=True, text=True)  # fmt: skip
    assert missing.returncode == 2 and "checkpoint 'grow_7/improve_2'" in missing.stderr
    assert "Traceback" not in missing.stderr

    server = RateServer(env, free_port()).start()
    OUT.mkdir(parents=True, exist_ok=True)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=chromium(),
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-sync",
                      "--disable-component-update", "--no-first-run"],
            )  # fmt: skip
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            page.goto(f"{server.url}/?rater=ann")
            page.wait_for_selector(".card")
            assert page.inner_text("#progress") == "0 / 8"
            first = page.inner_text("#source")
            page.click("#skip")  # skip item 0: item 1 comes next
            page.wait_for_function("s => document.getElementById('source').textContent !== s", arg=first)
            # Item 1 by clicks, the next two by keys (a digit rates the highlighted card, then moves on).
            page.click(".card:nth-child(1) .scale button:nth-child(5)")  # A = 4
            page.click(".card:nth-child(2) .scale button:nth-child(7)")  # B = 6
            page.fill("#comment", "B reads naturally")
            page.click("#submit")
            page.wait_for_function("() => document.getElementById('progress').textContent === '1 / 8'")
            for n, (a, b) in enumerate([("3", "5"), ("6", "2")], start=2):
                page.keyboard.press(a)
                page.keyboard.press(b)
                page.keyboard.press("Enter")
                page.wait_for_function(f"() => document.getElementById('progress').textContent === '{n} / 8'")
            page.screenshot(path=str(OUT / "rating_page.png"))
            page.reload()  # progress is the store's, not the page's; the skipped item 0 comes round again
            page.wait_for_function("() => document.getElementById('progress').textContent === '3 / 8'")
            assert page.inner_text("#source") == first
            server.kill()  # between two ratings: nothing stored is lost
            server = RateServer(env, server.port).start()
            page.reload()
            page.wait_for_function("() => document.getElementById('progress').textContent === '3 / 8'")
            for n in (4, 5):
                page.keyboard.press("2")
                page.keyboard.press("4")
                page.keyboard.press("Enter")
                page.wait_for_function(f"() => document.getElementById('progress').textContent === '{n} / 8'")
            browser.close()
        # A double submit of an item already rated, and bad input through the API: refused, nothing stored.
        done = all_ratings(smoke_store)
        item = int(done.item.iat[0])
        for body, status in [(json.dumps({"rater": "ann", "item": item, "scores": {"A": 1, "B": 1}}), 409),
                             (json.dumps({"rater": "ann", "item": 99, "scores": {"A": 1, "B": 1}}), 404),
                             (json.dumps({"rater": "ann", "item": 7, "scores": {"A": 9, "B": 1}}), 400),
                             ("not json", 400)]:  # fmt: skip
            code, answer = server.post(body.encode())
            assert code == status and answer["error"], (body, code, answer)
    finally:
        server.kill()
    ratings = smoke_store.query("SELECT * FROM ratings ORDER BY item, system")
    assert len(ratings) == 5 * 2 and ratings.item.nunique() == 5  # five items, one row per system
    assert set(ratings.rater) == {"ann"} and set(ratings.page_version) == {"rate-v1"}
    assert ratings.score.between(0, 6).all()
    record = smoke_store.rating_rounds()[0]
    items = round_items(smoke_store, record)
    commented = ratings[ratings.comment != ""]
    assert set(commented.comment) == {"B reads naturally"} and commented.item.nunique() == 1
    it = int(commented.item.iat[0])
    shown = [record.systems[i] for i in json.loads(items.order.iat[it])]  # A, B as that item showed them
    assert dict(zip(commented.system, commented.score, strict=True)) == {shown[0]: 4, shown[1]: 6}


def test_rating_api_refuses_cross_site_writes_and_answers_bad_bodies_with_400(smoke_store, rest_home):
    """A write needs the page's token, application/json and a loopback Host; no client input gives a 500."""
    env = {**os.environ, "REST_HOME": str(rest_home)}
    server = RateServer(env, free_port()).start()
    good = json.dumps({"rater": "bob", "item": 0, "scores": {"A": 1, "B": 2}}).encode()
    token = server.token()
    try:
        forged = [
            ({"Content-Type": "text/plain"}, 403),  # a cross-site form or fetch: no token
            ({"Content-Type": "application/json", "X-Rest-Token": "guess"}, 403),
            ({"Content-Type": "text/plain", "X-Rest-Token": token}, 415),
            ({"Content-Type": "application/json", "X-Rest-Token": token, "Host": "evil.example"}, 403),
        ]
        for headers, status in forged:
            code, answer = server.post(good, headers)
            assert code == status and answer["error"], (headers, code, answer)
        bad = [
            (b"\xff\xfe{", 400),
            (json.dumps({"rater": "bob", "item": True, "scores": {"A": 1, "B": 2}}).encode(), 404),
            (json.dumps({"rater": "bob", "item": 0, "scores": {"A": [1], "B": 2}}).encode(), 400),
            (json.dumps([1, 2]).encode(), 400),
            (json.dumps({"rater": {"x": 1}, "item": 0, "scores": {"A": 1, "B": 2}}).encode(), 400),
        ]
        for body, status in bad:
            code, answer = server.post(body)
            assert code == status and answer["error"] and "\n" not in answer["error"], (body, code, answer)
        assert server.post(good)[0] == 200
    finally:
        server.kill()
    log = server.proc.stdout.read()
    assert "Traceback" not in log, log
    assert len(all_ratings(smoke_store)) == 2  # the one good write (one row per system); nothing forged stored
