"""Which device a step computes on, and how concurrent steps on one machine share several GPUs.

Three cases, one answer per process:
- On a Ray cluster, Ray sets CUDA_VISIBLE_DEVICES to the GPU it assigned the step: device 0 is
  that GPU and no other is visible.
- On one machine with REST_DEVICES=0,1,... each process that computes claims one listed GPU
  (an exclusive file lock, held until the process ends or `release` is called), so concurrent
  steps of the `gpu` pool never share a device. The claim is lazy: steps that never compute
  (slices, reports) never hold a GPU.
- Otherwise: CUDA device 0 when there is one, else the CPU.

A spec can ask for the CPU (`compute.device: cpu`) even where CUDA is present; `prefer` records it.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from filelock import FileLock, Timeout

_preference = "auto"
_claimed: tuple[int, FileLock] | None = None


class DeviceError(RuntimeError):
    """REST_DEVICES names GPUs this process cannot see, or is not a list of indices."""


def prefer(device: str) -> None:
    """The running spec's `compute.device` ('auto', 'cpu' or 'cuda')."""
    global _preference
    if device not in ("auto", "cpu", "cuda"):
        raise DeviceError(f"compute.device must be auto, cpu or cuda, got '{device}'")
    _preference = device


def listed_devices() -> list[int]:
    """The GPU indices REST_DEVICES lists ([] when unset)."""
    value = os.environ.get("REST_DEVICES", "").strip()
    if not value:
        return []
    try:
        indices = [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise DeviceError(f"REST_DEVICES must be GPU indices such as '0,1', got '{value}'") from None
    if not indices or len(set(indices)) != len(indices) or min(indices) < 0:
        raise DeviceError(f"REST_DEVICES must list distinct GPU indices such as '0,1', got '{value}'")
    return indices


def _lock_dir() -> Path:
    from rest_pipeline.core.paths import home

    path = home() / ".device-locks"
    path.mkdir(parents=True, exist_ok=True)
    return path


def claim(indices: list[int], visible: int, poll_seconds: float = 0.5) -> int:
    """Lock the first free listed GPU (of `visible` this process sees), waiting while all are taken."""
    global _claimed
    if _claimed is not None:
        return _claimed[0]
    missing = [i for i in indices if i >= visible]
    if missing:
        raise DeviceError(f"REST_DEVICES lists GPU {missing[0]} but this process sees {visible} GPU(s)")
    while True:
        for i in indices:
            lock = FileLock(str(_lock_dir() / f"cuda{i}.lock"))
            try:
                lock.acquire(timeout=0)
            except Timeout:
                continue
            _claimed = (i, lock)
            return i
        time.sleep(poll_seconds)


def release() -> None:
    """Give the claimed GPU back (the end of a step in a process that runs several)."""
    global _claimed
    if _claimed is not None:
        _claimed[1].release()
        _claimed = None


def cuda_index() -> int | None:
    """The CUDA device this process computes on, or None for the CPU."""
    listed = listed_devices()
    if _preference == "cpu":
        return None
    if not torch.cuda.is_available():
        if _preference == "cuda" or listed:
            why = "compute.device is 'cuda'" if _preference == "cuda" else f"REST_DEVICES lists GPUs {listed}"
            raise DeviceError(f"{why} but this process sees no GPU")
        return None
    return claim(listed, torch.cuda.device_count()) if listed else 0


def torch_device() -> torch.device:
    index = cuda_index()
    return torch.device("cpu") if index is None else torch.device("cuda", index)


def ct2_device() -> tuple[str, int]:
    """CTranslate2's (device, device_index)."""
    index = cuda_index()
    return ("cpu", 0) if index is None else ("cuda", index)


@contextlib.contextmanager
def keep_torch_threads() -> Iterator[None]:
    """Around the construction of a CTranslate2 translator or encoder: it sets the OpenMP thread count
    of the calling thread to its `intra_threads` (1 on our CPU lanes), and torch in this process
    reads the same setting, so training after a validation or a scoring pass ran on one core."""
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
