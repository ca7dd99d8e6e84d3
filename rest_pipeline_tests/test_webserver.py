"""End to end through the real web server: `dagster dev` on loopback, runs launched through its
GraphQL API, the automation sensor taking over after Grow 1, and headless Chromium on the UI."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "test-output" / "webserver"
BC_STAGE = ["corpus", "tokenizer", "base_policy", "base_policy_eval", "reward_model", "base_policy_rewards"]
GROW_1 = [["grow_1", "candidates"], ["grow_1", "rewards"]]

LAUNCH = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on InvalidSubsetError { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}"""
RUN_STATUS = "query Run($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }"
ASSET = """
query Asset($key: AssetKeyInput!) {
  assetNodeOrError(assetKey: $key) {
    ... on AssetNode {
      dependencyKeys { path }
      assetMaterializations(limit: 1) { runId partition metadataEntries { label } }
    }
  }
}"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, port: int):
        self.url = f"http://127.0.0.1:{port}"

    def gql(self, query: str, variables: dict | None = None) -> dict:
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        req = urllib.request.Request(f"{self.url}/graphql", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            out = json.loads(r.read())
        assert "errors" not in out, out
        return out["data"]

    def launch(self, keys: list[list[str]], partition: str | None = None) -> str:
        tags = [{"key": "dagster/partition", "value": partition}] if partition else []
        params = {
            "selector": {
                "repositoryLocationName": "rest_pipeline",
                "repositoryName": "__repository__",
                "jobName": "__ASSET_JOB",
                "assetSelection": [{"path": k} for k in keys],
            },
            "runConfigData": {},
            "executionMetadata": {"tags": tags},
        }
        res = self.gql(LAUNCH, {"params": params})["launchRun"]
        assert res["__typename"] == "LaunchRunSuccess", res
        return res["run"]["runId"]

    def wait(self, run_id: str, timeout: float = 400) -> str:
        deadline = time.time() + timeout
        while time.time() < deadline:
            status = self.gql(RUN_STATUS, {"id": run_id})["runOrError"]["status"]
            if status in {"SUCCESS", "FAILURE", "CANCELED"}:
                return status
            time.sleep(2)
        raise TimeoutError(f"run {run_id} did not finish in {timeout}s")

    def asset(self, path: list[str]) -> dict:
        return self.gql(ASSET, {"key": {"path": path}})["assetNodeOrError"]


@pytest.fixture(scope="module")
def server(tmp_path_factory, data_dir):
    tmp = tmp_path_factory.mktemp("webserver")
    port = free_port()
    env = dict(
        os.environ,
        DAGSTER_HOME=str(tmp / "dagster_home"),
        REST_HOME=str(tmp / "home"),
        REST_DATA_DIR=str(data_dir),
        REST_EXECUTOR="in_process",  # one process per run: the daemon's runs start faster on 2 cores
    )
    (tmp / "dagster_home").mkdir()
    from rest_pipeline.orchestration.instance import INSTANCE_CONFIG

    (tmp / "dagster_home" / "dagster.yaml").write_text(INSTANCE_CONFIG)
    log = open(tmp / "dagster_dev.log", "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [sys.executable, "-m", "dagster", "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    srv = Server(port)
    deadline = time.time() + 240
    while True:
        try:
            srv.gql("{ version }")
            data = srv.gql(
                '{ repositoryOrError(repositorySelector: {repositoryLocationName: "rest_pipeline", '
                'repositoryName: "__repository__"}) { __typename } }'
            )
            if data["repositoryOrError"]["__typename"] == "Repository":
                break
        except (OSError, AssertionError):
            pass
        if proc.poll() is not None or time.time() > deadline:
            log.close()
            raise RuntimeError("dagster dev did not come up:\n" + (tmp / "dagster_dev.log").read_text()[-4000:])
        time.sleep(2)
    yield srv
    os.killpg(proc.pid, signal.SIGTERM)
    try:  # a run the automation just launched can hold dagster dev's shutdown for a minute; nothing here needs it
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    log.close()
    OUT.mkdir(parents=True, exist_ok=True)
    shutil.copy(tmp / "dagster_dev.log", OUT / "dagster_dev.log")


@pytest.mark.slow
def test_graphql_materializes_grow_1_and_automation_takes_over(server):
    run = server.launch([["smoke", k] for k in BC_STAGE])
    assert server.wait(run) == "SUCCESS"
    for shard in ("0000", "0001"):
        assert server.wait(server.launch([["smoke", *k] for k in GROW_1], shard)) == "SUCCESS"
    node = server.asset(["smoke", "grow_1", "rewards"])
    mat = node["assetMaterializations"][0]
    assert mat["partition"] in {"0000", "0001"}
    assert {"learned_mean", "chrf_mean", "candidates"} <= {e["label"] for e in mat["metadataEntries"]}
    # Lineage as the server reports it: the first checkpoint hangs off its slice and the BC policy.
    deps = {tuple(d["path"]) for d in server.asset(["smoke", "grow_1", "improve_1", "policy"])["dependencyKeys"]}
    assert ("smoke", "grow_1", "improve_1", "slice") in deps and ("smoke", "base_policy") in deps
    # Nobody launches the Improve steps: the automation sensor (RUNNING by default) does.
    deadline = time.time() + 420
    while time.time() < deadline:
        mats = server.asset(["smoke", "grow_1", "improve_1", "policy"])["assetMaterializations"]
        if mats:
            break
        time.sleep(5)
    else:
        pytest.fail("the automation sensor did not materialize grow_1/improve_1/policy within 7 minutes")
    labels = {e["label"] for e in mats[0]["metadataEntries"]}
    assert {"status", "parent", "lineage", "valid_reward"} <= labels


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(chromium() is None, reason="Debian's chromium is not installed (.ci/run installs it)")
@pytest.mark.slow
def test_headless_chromium_renders_graph_and_lineage(server):
    OUT.mkdir(parents=True, exist_ok=True)
    # Dismiss Dagster's one-time community dialog the way its "Skip" button does, so it does not cover the page.
    assert server.gql("mutation { setNuxSeen }")["setNuxSeen"] is True
    pages = {  # name -> (url, text the rendered DOM must contain)
        "asset_graph": (f"{server.url}/locations/__repository__@rest_pipeline/asset-groups/smoke", "base_policy"),
        "checkpoint_lineage": (
            f"{server.url}/assets/smoke/grow_1/improve_1/policy?view=lineage&lineageScope=upstream",
            "improve_1",
        ),
    }
    for name, (url, expected) in pages.items():
        common = [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--window-size=1600,1000",
            "--virtual-time-budget=20000",
        ]
        shot = OUT / f"{name}.png"
        shot.unlink(missing_ok=True)
        subprocess.run([*common, f"--screenshot={shot}", url], check=True, capture_output=True, timeout=180)
        assert shot.read_bytes()[:4] == b"\x89PNG" and shot.stat().st_size > 20_000, name
        dom = subprocess.run([*common, "--dump-dom", url], check=True, capture_output=True, text=True, timeout=180)
        assert expected in dom.stdout and "reward_model" in dom.stdout, f"{name}: the page does not show the assets"


@pytest.mark.slow
def test_rest_ui_started_in_the_background_stops_on_sigterm(tmp_path, data_dir):
    """A non-interactive shell starts background jobs with SIGINT ignored, and dagster dev turns SIGTERM into
    SIGINT: `rest ui` must stop on SIGTERM all the same (it resets both before handing over to dagster dev)."""
    port = free_port()
    env = dict(os.environ, REST_HOME=str(tmp_path / "home"), REST_DATA_DIR=str(data_dir))
    env.pop("DAGSTER_HOME", None)
    log = open(tmp_path / "ui.log", "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "rest"), "ui", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),  # noqa: PLW1509 (a test of exactly that)
    )
    try:
        deadline = time.time() + 240
        while True:
            try:
                Server(port).gql("{ version }")
                break
            except (OSError, AssertionError):
                assert proc.poll() is None and time.time() < deadline, (tmp_path / "ui.log").read_text()[-3000:]
                time.sleep(2)
        os.kill(proc.pid, signal.SIGTERM)  # the process `rest ui` became, as a shell's `kill %1` would
        proc.wait(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    assert proc.returncode is not None
