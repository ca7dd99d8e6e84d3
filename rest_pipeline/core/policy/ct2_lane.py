"""Sampling lanes: worker processes that sample token batches with CTranslate2.

Lanes are processes, not threads, because CTranslate2 seeds each of its threads' generators from a
process-global seed at that thread's first draw: two translators sampling at once in one process
race for that seed, and the same batch gives different samples run to run. In a lane every batch
gets the serial treatment (seed, fresh translator, sample), so its samples depend on its seed only,
whichever lane runs it. A lane is `python -m` this module: it imports CTranslate2 and nothing else
(a multiprocessing pool would re-import the caller's main module, seconds under Dagster).
"""

from __future__ import annotations

import contextlib
import pickle
import queue
import subprocess
import sys
import threading
from typing import Any


def sample_tokens(
    model_dir: str,
    device: str,
    compute_type: str,
    intra_threads: int,
    tokens: list[list[str]],
    n: int,
    temperature: float,
    top_k: int,
    top_p: float,
    max_new_tokens: int,
    suppress: list[list[str]] | None,
    seed: int,
    target_prefix: list[str] | None = None,
    end_ids: list[int] | None = None,
) -> list[list[list[str]]] | list[list[list[int]]]:
    """`n` samples per input: a Translator's output tokens, or (`end_ids` given: a decoder-only model)
    a Generator's completion ids after each prompt in `tokens`, stopped at any of `end_ids`."""
    import ctranslate2

    ctranslate2.set_random_seed(seed % (2**31))
    kind, _, index = device.partition(":")  # 'cpu' or 'cuda:<index>', as ct2.device() spells it
    engine = ctranslate2.Translator if end_ids is None else ctranslate2.Generator
    with _keep_torch_threads():
        translator = engine(
            model_dir,
            device=kind,
            device_index=int(index or 0),
            compute_type=compute_type,
            inter_threads=1,
            intra_threads=intra_threads,
        )
    sampling = {"beam_size": 1, "num_hypotheses": n, "sampling_topk": top_k, "sampling_topp": top_p,
                "sampling_temperature": temperature}  # fmt: skip
    if end_ids is not None:
        generated = translator.generate_batch(
            tokens, max_length=max_new_tokens, end_token=end_ids, include_prompt_in_result=False, **sampling
        )
        return [r.sequences_ids for r in generated]
    results = translator.translate_batch(
        tokens,
        max_decoding_length=max_new_tokens,
        suppress_sequences=suppress,
        target_prefix=[target_prefix] * len(tokens) if target_prefix else None,
        **sampling,
    )
    return [r.hypotheses for r in results]


def _keep_torch_threads() -> contextlib.AbstractContextManager[None]:
    """In-process (one lane) torch must not inherit the translator's intra_threads=1; a lane process
    never imports torch (1.5 s of start-up per lane, paid by every sampler)."""
    if "torch" not in sys.modules:
        return contextlib.nullcontext()
    from rest_pipeline.core.devices import keep_torch_threads

    return keep_torch_threads()


class LanePool:
    """`size` lane processes; `run` blocks the calling thread until a free lane has done the job."""

    def __init__(self, size: int):
        self._free: queue.Queue[subprocess.Popen] = queue.Queue()
        self._all: list[subprocess.Popen] = []
        self._lock = threading.Lock()
        for _ in range(size):
            # In its own session: a Ctrl-C at the terminal reaches the parent, which closes its lanes; a lane
            # whose parent died reads end-of-file and returns. So no lane prints an interrupt of its own.
            proc = subprocess.Popen(
                [sys.executable, "-m", __name__], stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True
            )
            self._all.append(proc)
            self._free.put(proc)

    def run(self, args: tuple[Any, ...]) -> Any:
        proc = self._free.get()
        try:
            assert proc.stdin is not None and proc.stdout is not None
            pickle.dump(args, proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
            proc.stdin.flush()
            ok, value = pickle.load(proc.stdout)
        except (EOFError, BrokenPipeError) as e:
            raise RuntimeError(f"sampling lane (pid {proc.pid}) died with exit code {proc.poll()}") from e
        self._free.put(proc)
        if not ok:
            raise RuntimeError(f"sampling lane failed: {value}")
        return value

    def close(self) -> None:
        for proc in self._all:
            if proc.stdin:
                proc.stdin.close()
        for proc in self._all:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def _serve() -> None:
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        try:
            args = pickle.load(stdin)
        except EOFError:
            return
        try:
            reply: tuple[bool, Any] = (True, sample_tokens(*args))
        except Exception as e:  # reported to the caller, which raises it with the lane's message
            reply = (False, f"{type(e).__name__}: {e}")
        pickle.dump(reply, stdout, protocol=pickle.HIGHEST_PROTOCOL)
        stdout.flush()


if __name__ == "__main__":
    _serve()
