"""Device placement: REST_DEVICES claims, the spec's compute section, and each asset's Ray request."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from rest_pipeline.core import devices
from rest_pipeline.orchestration.definitions import build_definitions
from rest_pipeline.orchestration.keys import GPU_POOL
from rest_pipeline.orchestration.placement import RAY_TAG, forwarded_env
from rest_pipeline.spec import find_spec, load_spec


@pytest.fixture(autouse=True)
def _fresh(monkeypatch, rest_home):
    devices.release()
    devices.prefer("auto")
    yield
    devices.release()
    devices.prefer("auto")


@pytest.mark.parametrize("value", ["a,b", "0,0", "-1", ","])
def test_rest_devices_must_be_distinct_indices(monkeypatch, value):
    monkeypatch.setenv("REST_DEVICES", value)
    with pytest.raises(devices.DeviceError, match="REST_DEVICES"):
        devices.listed_devices()


def test_gpus_asked_for_where_there_are_none_is_an_error(monkeypatch):
    if devices.torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert devices.torch_device().type == "cpu"
    monkeypatch.setenv("REST_DEVICES", "0")
    with pytest.raises(devices.DeviceError, match=r"REST_DEVICES lists GPUs \[0\] but this process sees no GPU"):
        devices.torch_device()
    monkeypatch.delenv("REST_DEVICES")
    devices.prefer("cuda")
    with pytest.raises(devices.DeviceError, match="compute.device is 'cuda'"):
        devices.ct2_device()
    devices.prefer("cpu")
    assert devices.ct2_device() == ("cpu", 0)


HOLDER = """
import sys, time
from rest_pipeline.core import devices
print(devices.claim([0, 1], visible=2), flush=True)
time.sleep(float(sys.argv[1]))
"""


def test_concurrent_steps_claim_different_gpus_and_wait_when_all_are_taken(rest_home):
    """The claim logic on real file locks across processes (the GPUs themselves are not needed)."""
    first = subprocess.Popen([sys.executable, "-c", HOLDER, "30"], stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline().strip() == "0"
        assert devices.claim([0, 1], visible=2) == 1  # GPU 0 is held by the other step
        assert devices.claim([0, 1], visible=2) == 1  # a process keeps the GPU it claimed
        third = subprocess.Popen([sys.executable, "-c", HOLDER, "0"], stdout=subprocess.PIPE, text=True)
        time.sleep(3)
        assert third.poll() is None  # both GPUs taken: it waits
        devices.release()
        assert third.stdout.readline().strip() == "1"  # and takes the one given back
        assert third.wait(timeout=30) == 0
    finally:
        first.kill()
    devices.release()
    with pytest.raises(devices.DeviceError, match="lists GPU 3 but this process sees 2"):
        devices.claim([3], visible=2)


def _asset(defs: dg.Definitions, *path: str) -> dg.AssetsDefinition:
    return next(a for a in defs.assets if dg.AssetKey(list(path)) in a.keys)


def test_heavy_assets_take_the_gpu_pool_on_one_machine_and_ask_ray_for_resources_on_a_cluster(monkeypatch):
    spec = load_spec(find_spec("smoke"))
    defs = build_definitions([spec])
    candidates = _asset(defs, "smoke", "grow_1", "candidates")
    assert candidates.op.pool == GPU_POOL and RAY_TAG not in candidates.op.tags
    assert _asset(defs, "smoke", "grow_1", "rewards").op.pool is None  # scoring runs beside GPU steps

    monkeypatch.setenv("REST_EXECUTOR", "ray")
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")
    gpu_spec = spec.model_copy(update={"compute": spec.compute.model_copy(update={"device": "cuda"})})
    threads = {"runtime_env": {"env_vars": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}}}
    for s, want in [(spec, {"num_cpus": 1.0, **threads}), (gpu_spec, {"num_cpus": 1.0, "num_gpus": 1.0, **threads})]:
        defs = build_definitions([s])
        assert defs.executor.name == "ray"
        for path in [
            ("base_policy",),
            ("grow_1", "candidates"),
            ("grow_1", "rewards"),
            ("grow_1", "improve_1", "policy"),
        ]:
            op = _asset(defs, "smoke", *path).op
            assert op.pool is None and json.loads(op.tags[RAY_TAG]) == want, path
        assert RAY_TAG not in _asset(defs, "smoke", "report").op.tags  # light steps ask for nothing

    monkeypatch.setenv("REST_HOME", "/shared/rest")
    env = dict(pair.split("=", 1) for pair in forwarded_env())
    assert env["REST_HOME"] == "/shared/rest" and env["REST_EXECUTOR"] == "ray"
    assert env["PATH"].split(":")[0] == str(Path(sys.executable).parent)


def test_ray_without_an_address_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("REST_EXECUTOR", "ray")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(ValueError, match="REST_EXECUTOR=ray needs RAY_ADDRESS"):
        build_definitions([load_spec(find_spec("smoke"))])
    monkeypatch.setenv("REST_EXECUTOR", "celery")
    with pytest.raises(ValueError, match="REST_EXECUTOR must be one of multiprocess, in_process, ray"):
        build_definitions([load_spec(find_spec("smoke"))])
