"""Beyond one machine, on this one: a real Ray cluster on loopback (a head node and a second node, one
CPU each: two workers), a real PostgreSQL server for the Dagster instance (where the machine has one)
and a real S3-compatible server (moto) holding the candidate tables. One smoke run goes through all
three (up to Grow 1's rewards; REST_TEST_RAY_FULL=1: the whole graph); its Grow 1 (candidates and
scores) is compared with an in-process run of the same spec."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pytest

from rest_pipeline.core.paths import atomic_path
from rest_pipeline.core.store.experiment import ExperimentStore

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
BUCKET = "rest"
# The whole smoke graph through Ray takes ~14 min on 2 cores (every step a Ray job and a fresh process);
# the suite runs it up to Grow 1's rewards (BC, reward model, both shards), REST_TEST_RAY_FULL=1 all of it.
FULL = os.environ.get("REST_TEST_RAY_FULL") == "1"
SCORED = "SELECT candidate_id, hypothesis, reward_learned, reward_chrf FROM scored WHERE grow = 1 ORDER BY candidate_id"

pytestmark = pytest.mark.slow  # a local Ray cluster, PostgreSQL and S3: minutes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(ready: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if ready():
                return
        time.sleep(0.5)
    raise TimeoutError(f"{what} did not come up within {seconds:.0f}s")


def answers(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as r:
        return r.status < 500


@pytest.fixture(scope="module")
def s3_server() -> Iterator[dict[str, str]]:
    """moto's S3 server on loopback, with one bucket; the variables that point boto/s3fs at it."""
    port = free_port()
    proc = subprocess.Popen(
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    try:
        wait_for(lambda: answers(env["AWS_ENDPOINT_URL"]), 60, "moto's S3 server")
        import boto3

        boto3.client(
            "s3",
            endpoint_url=env["AWS_ENDPOINT_URL"],
            region_name=env["AWS_DEFAULT_REGION"],
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        ).create_bucket(Bucket=BUCKET)
        yield env
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _pg_tool(name: str) -> str | None:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))), None)
    return found


@pytest.fixture(scope="module")
def postgres() -> Iterator[dict[str, str] | None]:
    """A throwaway PostgreSQL server on loopback (`scripts/rest test` installs it where it may);
    None, with the reason printed, where the machine has none: the instance is then SQLite."""
    initdb, pg_ctl = _pg_tool("initdb"), _pg_tool("pg_ctl")
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        as_user = ["runuser", "-u", "postgres", "--"] if shutil.which("runuser") else []
    if not (initdb and pg_ctl) or (os.geteuid() == 0 and not as_user):
        print("cluster test: no PostgreSQL server here (initdb/pg_ctl, or runuser as root); instance on SQLite")
        yield None
        return
    root = Path(tempfile.mkdtemp(prefix="rest-pg-"))
    root.chmod(0o777)
    data, port = root / "data", free_port()
    subprocess.run(
        [*as_user, initdb, "-D", str(data), "-U", "rest", "--auth=trust", "-E", "UTF8"], check=True, capture_output=True
    )
    opts = f"-p {port} -h 127.0.0.1 -k {root}"
    subprocess.run(
        [*as_user, pg_ctl, "-D", str(data), "-o", opts, "-l", str(root / "log"), "-w", "start"],
        check=True,
        capture_output=True,
    )
    try:
        psql = _pg_tool("psql") or "psql"
        subprocess.run(
            [psql, "-h", "127.0.0.1", "-p", str(port), "-U", "rest", "-d", "postgres", "-c", "CREATE DATABASE dagster"],
            check=True,
            capture_output=True,
        )
        yield {
            "DAGSTER_PG_USERNAME": "rest",
            "DAGSTER_PG_PASSWORD": "unused",  # trust authentication on loopback
            "DAGSTER_PG_HOST": "127.0.0.1",
            "DAGSTER_PG_DB": "dagster",
            "DAGSTER_PG_PORT": str(port),
        }
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def _ray_ports() -> list[str]:
    """Every port of a node named (two nodes on one machine must not share Ray's fixed defaults)."""
    names = [
        "node-manager-port",
        "object-manager-port",
        "dashboard-agent-listen-port",
        "dashboard-agent-grpc-port",
        "metrics-export-port",
        "runtime-env-agent-port",
    ]
    return [f"--{n}={free_port()}" for n in names]


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """A Ray head on 127.0.0.1 and a second node, one CPU each; yields the job-submission address."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    gcs, dashboard = free_port(), free_port()
    ray = str(BIN / "ray")
    common = ["--num-cpus=1", "--num-gpus=0", "--disable-usage-stats"]
    try:
        subprocess.run(
            [
                ray,
                "start",
                "--head",
                "--node-ip-address=127.0.0.1",
                f"--port={gcs}",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={dashboard}",
                f"--temp-dir={temp}",
                *common,
                *_ray_ports(),
            ],
            env=env,
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [ray, "start", f"--address=127.0.0.1:{gcs}", "--node-ip-address=127.0.0.1", *common, *_ray_ports()],
            env=env,
            check=True,
            capture_output=True,
        )
        address = f"http://127.0.0.1:{dashboard}"
        from ray.job_submission import JobSubmissionClient

        wait_for(lambda: JobSubmissionClient(address).list_jobs() is not None, 120, "Ray's job server")
        yield address
    finally:
        subprocess.run([ray, "stop", "--force"], env=env, capture_output=True)
        shutil.rmtree(temp, ignore_errors=True)


def _rest(args: list[str], env: dict[str, str], timeout: float = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [str(BIN / "rest"), *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, (
        f"rest {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    )
    return proc


def _overlap(jobs: list) -> bool:
    """Two Ray jobs whose [start, end] intervals intersect ran at the same time."""
    a, b = sorted(jobs, key=lambda j: j.start_time)[:2]
    return b.start_time < a.end_time


def test_smoke_on_ray_with_postgres_and_s3_equals_an_in_process_run(
    tmp_path, data_dir, ray_cluster, postgres, s3_server, monkeypatch
):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REST_", "DAGSTER_", "RAY_", "AWS_"))}
    env.update(REST_DATA_DIR=str(data_dir), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"

    # The reference: the same spec in one process (Dagster's in-process executor), SQLite instance, local
    # tables. One torch thread, as each Ray step gets (compute.cpus_per_step = 1): the same float
    # arithmetic, so the same BC weights and the same samples (a shard's samples depend on its seed only).
    ref_env = {
        **env,
        "REST_HOME": str(tmp_path / "ref"),
        "REST_EXECUTOR": "in_process",
        "DAGSTER_HOME": str(tmp_path / "ref_dagster"),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    _rest(["main", "smoke", "--until", "grow_1/rewards"], ref_env)

    # The whole smoke graph on Ray: every step a Ray job; instance on PostgreSQL; tables on S3.
    dagster_home = tmp_path / "ray_dagster"
    dagster_home.mkdir()
    if postgres is not None:
        shutil.copy(ROOT / "deploy" / "dagster.postgres.yaml", dagster_home / "dagster.yaml")
    ray_env = {
        **env,
        **(postgres or {}),
        **s3_server,
        "REST_HOME": str(tmp_path / "ray"),
        "DAGSTER_HOME": str(dagster_home),
        "REST_EXECUTOR": "ray",
        "RAY_ADDRESS": ray_cluster,
        "REST_TABLES_URL": f"s3://{BUCKET}/cluster-test",
    }
    out = _rest(["main", "smoke", *([] if FULL else ["--until", "grow_1/rewards"])], ray_env).stdout
    assert ("ReST report" in out) == FULL

    # Ray's own records: each step a Ray job; the two shards of each grow ran as separate jobs, at once.
    from ray.job_submission import JobStatus, JobSubmissionClient

    jobs = JobSubmissionClient(ray_cluster).list_jobs()
    assert all(j.status == JobStatus.SUCCEEDED for j in jobs), [(j.submission_id, j.status) for j in jobs]
    by_step: dict[str, list] = {}
    for j in jobs:
        by_step.setdefault((j.metadata or {}).get("dagster/op", ""), []).append(j)
    assert {"smoke__base_policy", "smoke__reward_model", "smoke__grow_1__rewards"} <= set(by_step)
    for grow in (1, 2) if FULL else (1,):
        shards = by_step[f"smoke__grow_{grow}__candidates"]
        assert len({j.metadata["dagster/run-id"] for j in shards}) == 2  # one run per shard partition
        assert _overlap(shards), f"grow {grow}'s shards ran one after the other"

    # The instance the runs landed in is the PostgreSQL one.
    with monkeypatch.context() as mp:
        for k, v in ray_env.items():
            mp.setenv(k, v)
        import dagster as dg

        instance = dg.DagsterInstance.get()  # DAGSTER_HOME of the Ray run
        storage = type(instance.run_storage).__name__
        assert storage == ("PostgresRunStorage" if postgres is not None else "SqliteRunStorage")
        last = ["report"] if FULL else ["grow_1", "rewards"]
        assert instance.get_latest_materialization_event(dg.AssetKey(["smoke", *last])) is not None

        # The tables are on S3, not in the experiment folder; Grow 1 holds what the in-process run holds.
        ray_store = ExperimentStore(tmp_path / "ray" / "experiments" / "smoke")
        assert str(ray_store.tables_root).startswith(f"s3://{BUCKET}/cluster-test/")
        assert not (tmp_path / "ray" / "experiments" / "smoke" / "store").exists()
        on_ray = ray_store.query(SCORED)
    reference = ExperimentStore(tmp_path / "ref" / "experiments" / "smoke").query(SCORED)
    assert len(reference) == 60 * (3 + 1)  # grow 1: 60 sources x (3 samples + the reference)
    pd.testing.assert_frame_equal(on_ray, reference)

    # `rest query` reads the S3 tables through the same locked-down connection as local ones.
    q = _rest(
        ["query", "SELECT grow, count(*) AS n FROM scored GROUP BY grow ORDER BY grow", "--experiment", "smoke"],
        ray_env,
    ).stdout
    assert "240" in q and "1" in q and "2" in q


def test_a_failed_write_leaves_no_object_and_a_shard_is_one_object(tmp_path, s3_server, monkeypatch):
    for k, v in s3_server.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("REST_TABLES_URL", f"s3://{BUCKET}/atomic-{tmp_path.name}")
    store = ExperimentStore(tmp_path / "experiments" / "atomic")
    final = store.candidates_file(1, 0)
    with pytest.raises(RuntimeError), atomic_path(final) as tmp:
        tmp.write_bytes(b"half a parquet file")
        raise RuntimeError("killed mid-write")
    assert not final.exists() and store.candidate_files() == []
    store.write_candidates(
        experiment="atomic",
        grow=1,
        shard=0,
        source_ids=["s1", "s2"],
        sources=["a", "b"],
        references=["A", "B"],
        samples=[["x", "y"], ["z", "w"]],
        policy="base",
        decoding="t",
    )
    objects = [str(p) for p in final.fs.find(str(store.tables_root))]
    assert objects == [str(final).removeprefix("s3://")]  # the one object: no temp names, no parts
    assert store.query("SELECT count(*) AS n FROM candidates").n.item() == 6
    with pytest.raises(Exception, match="does not own"):
        store.check_writable(store.tables_root.parent.parent / "another" / "store" / "part.parquet")
