"""The Dagster instance as `rest main` and `rest ui` share it: set up by one process at a time, cleared of
runs whose process died, and one `rest main` per experiment at a time.

Why each piece exists (all seen on a fresh clone): two processes creating the SQLite storages at once
stamp the schema twice and the instance never opens again; a SIGKILLed run stays STARTED and holds its
`gpu` pool slot, so the next run waits forever; two `rest main` of one experiment train the same step
twice. Every run records the process that executes it (`rest/pid`, `rest/host`, and the process's start
time so a recycled pid is not mistaken for it), which is what tells a dead run from a live one.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import dagster as dg
from filelock import FileLock, Timeout

from rest_pipeline.core.devices import listed_devices
from rest_pipeline.core.paths import home
from rest_pipeline.orchestration.keys import GPU_POOL

# The `gpu` pool admits one step at a time across all runs (generation and training share the device);
# raise it with `dagster instance concurrency set gpu N` or by editing the instance's dagster.yaml.
POOLS_CONFIG = """concurrency:
  pools:
    default_limit: 1
"""
# The daemon of `rest ui` frees the slots of runs that ended (e.g. terminated in the UI) 10 s later.
MONITORING_CONFIG = """run_monitoring:
  enabled: true
  start_timeout_seconds: 180
  free_slots_after_run_end_seconds: 10
"""
INSTANCE_CONFIG = "telemetry:\n  enabled: false\n" + POOLS_CONFIG + MONITORING_CONFIG

PID, HOST, PID_START, EXPERIMENT = "rest/pid", "rest/host", "rest/pid_start", "rest/experiment"
ALIVE_STATUSES = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]


def dagster_home() -> Path:
    """The persistent instance shared by `rest main` and `rest ui` (DAGSTER_HOME wins); its config is
    completed, never overwritten: pools and slot freeing are added to a file that lacks them."""
    path = Path(os.environ.get("DAGSTER_HOME") or home() / "dagster_home").resolve()
    path.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path / ".rest-instance.lock")):
        config = path / "dagster.yaml"
        text = config.read_text() if config.exists() else "telemetry:\n  enabled: false\n"
        if "concurrency:" not in text:
            text += POOLS_CONFIG
        if "run_monitoring:" not in text:
            text += MONITORING_CONFIG
        if not config.exists() or config.read_text() != text:
            config.write_text(text)
    os.environ["DAGSTER_HOME"] = str(path)
    return path


def open_instance() -> dg.DagsterInstance:
    """The instance, its storages created or migrated by one process at a time (a file lock)."""
    path = dagster_home()
    with FileLock(str(path / ".rest-instance.lock")):
        instance = dg.DagsterInstance.get()
        instance.get_run_records(limit=1)  # run storage (runs.db) created and stamped here, under the lock
        instance.event_log_storage.get_concurrency_keys()  # event log storage (index.db), likewise
        instance.schedule_storage  # noqa: B018 - schedules.db, likewise
        listed = listed_devices()
        if listed:  # REST_DEVICES=0,1,...: as many `gpu` steps at once as GPUs (each claims its own)
            instance.event_log_storage.set_concurrency_slots(GPU_POOL, len(listed))
    return instance


def process_start(pid: int) -> str:
    """When process `pid` started (clock ticks since boot, Linux); '' where /proc is not there."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def process_tags(pid: int | None = None) -> dict[str, str]:
    """Tags that name the process executing a run."""
    pid = pid or os.getpid()
    return {PID: str(pid), HOST: socket.gethostname(), PID_START: process_start(pid)}


def _alive(tags: dict[str, str]) -> bool | None:
    """Whether the process a run's tags name still runs; None when this host cannot tell."""
    if tags.get(HOST) != socket.gethostname() or not tags.get(PID, "").isdigit():
        return None
    pid = int(tags[PID])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    recorded = tags.get(PID_START, "")
    return not recorded or process_start(pid) in ("", recorded)


def reap_dead_runs(instance: dg.DagsterInstance, log: Callable[[str], None] = print) -> list[str]:
    """Mark runs whose process is gone as failed and free the pool slots they held; their ids."""
    reaped = []
    for record in instance.get_run_records(filters=dg.RunsFilter(statuses=ALIVE_STATUSES)):
        run = record.dagster_run
        if _alive(run.tags) is not False:
            continue
        instance.report_run_failed(run, f"rest: the process that ran it (pid {run.tags[PID]}) is gone")
        freed = instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        log(
            f"rest: run {run.run_id} ({run.tags.get(EXPERIMENT, run.job_name)}) was left STARTED by a process "
            f"that died (pid {run.tags[PID]}); marked failed{f', freed {freed} pool slot(s)' if freed else ''}"
        )
        reaped.append(run.run_id)
    return reaped


class ExperimentBusy(RuntimeError):
    """Another `rest main` is materializing this experiment."""


def running_runs(instance: dg.DagsterInstance, experiment: str) -> list[dg.DagsterRun]:
    filters = dg.RunsFilter(statuses=ALIVE_STATUSES, tags={EXPERIMENT: experiment})
    return [r.dagster_run for r in instance.get_run_records(filters=filters)]


@contextlib.contextmanager
def experiment_lock(
    instance: dg.DagsterInstance, experiment: str, *, wait: bool, log: Callable[[str], None] = print
) -> Iterator[None]:
    """Hold the experiment for one `rest main`: a second one refuses (naming the run) or, with wait, queues."""
    locks = dagster_home() / "locks"
    locks.mkdir(exist_ok=True)
    lock = FileLock(str(locks / f"{experiment}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        runs = running_runs(instance, experiment)
        who = (
            f"run {runs[0].run_id} (pid {runs[0].tags.get(PID, '?')})"
            if runs
            else "another `rest main` (between two runs)"
        )
        if not wait:
            raise ExperimentBusy(
                f"experiment '{experiment}' is being materialized by {who}; wait for it to finish, "
                f"or pass --wait to queue behind it"
            ) from None
        log(f"rest: experiment '{experiment}' is being materialized by {who}; waiting for it (--wait)")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def interrupts_not_retried(fn: Callable) -> Callable:
    """For assets with a RetryPolicy: Ctrl-C or SIGTERM fails the step for good instead of retrying it
    (the retry is for real failures); what the step saved (a training resume point) stays for the next run."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (KeyboardInterrupt, dg.DagsterExecutionInterruptedError) as e:
            raise dg.Failure(
                f"interrupted ({type(e).__name__} {e}); not retried. Saved work resumes on the next run.",
                allow_retries=False,
            ) from e

    return wrapper
