"""The decoder-only smoke through the whole graph with vLLM as its sampler, killed mid-grow and resumed."""

import signal
import subprocess
import sys
import time

import pytest
import yaml

from rest_pipeline.core.policy.model import weights_hash
from rest_pipeline.core.policy.vllm_engine import WORKER, ensure_env
from rest_pipeline.core.store.experiment import ExperimentStore
from rest_pipeline.core.store.records import BestOfN, Report
from rest_pipeline.spec import find_spec
from rest_pipeline_tests.test_reliability import ROOT, Main, _assert_store_whole, _env


def _engines(home) -> list[int]:
    """Pids of vLLM engine processes serving a model under `home`."""
    out = subprocess.run(["pgrep", "-f", f"{WORKER.name} .*{home}"], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


@pytest.mark.slow
def test_llm_smoke_runs_on_vllm_and_a_killed_run_leaves_no_engine(tmp_path, data_dir):
    """`grow.backend: vllm` on llm_smoke: SIGKILL the run while an engine samples grow 1; the engine exits
    by itself, and the next run completes the graph with no candidate lost or duplicated, every grow
    sampled by vLLM (its version and the weights it ran on record), and no engine left afterwards.
    One grow and no PPO baseline (which samples with transformers): every asset that samples still
    runs on vLLM (the grow's shards, every checkpoint's diversity probe, Best-of-N), in half the time;
    a LoRA chain's merge on vLLM is test_causal.py's."""
    ensure_env()  # built once per checkout (about a minute with a warm pip cache)
    spec = yaml.safe_load(find_spec("llm_smoke").read_text())
    spec["grow"]["backend"] = "vllm"
    spec["improve"]["grows"] = 1
    spec["online_rl"]["enabled"] = False
    spec["description"] = "llm_smoke sampled by vLLM"
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "llm_vllm.yaml").write_text(yaml.safe_dump(spec))
    home = tmp_path / "home"
    env = {**_env(home, data_dir), "REST_EXPERIMENTS_DIR": str(tmp_path / "specs")}

    run = Main(env, "llm_vllm")
    run.wait_for('Started execution of step "llm_vllm__grow_1__candidates"')
    deadline = time.monotonic() + 300
    while not _engines(home) and run.proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    engines = _engines(home)
    assert engines, run.output[-3000:]
    assert run.kill(signal.SIGKILL) == -signal.SIGKILL
    deadline = time.monotonic() + 10
    while _engines(home) and time.monotonic() < deadline:  # the worker polls its parent twice a second
        time.sleep(0.2)
    assert not _engines(home), "a vLLM engine outlived its SIGKILLed run"

    last = Main(env, "llm_vllm")
    assert last.finish() == 0, last.output[-4000:]
    assert not _engines(home)
    store = ExperimentStore(home / "experiments" / "llm_vllm")
    assert store.exists(Report)
    _assert_store_whole(store)
    decodings = store.query("SELECT DISTINCT grow, decoding FROM candidates WHERE origin = 'sample' ORDER BY grow")
    assert decodings.grow.tolist() == [1, 1]  # one seed per shard
    assert all(d.startswith("vllm-0.32.0:") for d in decodings.decoding)
    (engine,) = store.sampling_engines(1)
    assert (engine["engine"], engine["version"], engine["dtype"]) == ("vllm", "0.32.0", "float32")
    assert engine["weights"] == weights_hash(store.policy("base"))
    assert store.get(BestOfN).signature.decoding.startswith("vllm:")
    # Each engine left its log beside the checkpoint it served: BC (grow 1, its diversity probe, Best-of-N)
    # and every evaluated step.
    assert (store.policy("base").parent / ".base.vllm.log").is_file()
    lineage = subprocess.run(
        [sys.executable, "-m", "rest_pipeline.cli", "lineage", "llm_vllm"], env=env, capture_output=True, text=True,
        cwd=ROOT,
    )  # fmt: skip
    assert "engine: engine vllm, version 0.32.0" in lineage.stdout, lineage.stdout + lineage.stderr
