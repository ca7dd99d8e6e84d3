"""Dagster resources: where experiments' artifacts and the corpus mirror live."""

import multiprocessing
import os
from pathlib import Path

import dagster as dg

from rest_pipeline.core import devices
from rest_pipeline.core.paths import home
from rest_pipeline.core.store.experiment import ExperimentStore
from rest_pipeline.orchestration.instance import PID, process_tags
from rest_pipeline.spec import ExperimentSpec


class RestStorage(dg.ConfigurableResource):
    """Artifact root and corpus source. Empty fields fall back to REST_HOME / REST_DATA_DIR."""

    home: str = ""
    data_dir: str = ""

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """Name the process that executes this run in its tags (runs of the UI; `rest main` tags its own),
        so a run whose process is killed can be told from a live one and its pool slot freed."""
        run, instance = context.dagster_run, context.instance
        if run is None or instance is None or PID in run.tags or "DAGSTER_RUN_STEP_KEY" in os.environ:
            return  # tagged already, or a step that runs apart from its run worker (a Ray job)
        # A step process of the multiprocess executor is a child of the run worker, which outlives it.
        worker = os.getppid() if multiprocessing.parent_process() is not None else os.getpid()
        instance.add_run_tags(run.run_id, process_tags(worker))

    def root(self) -> Path:
        return Path(self.home).resolve() if self.home else home()

    def store(self, spec: ExperimentSpec) -> ExperimentStore:
        """The experiment's store: the CLI opens it the same way (`ExperimentStore.open`). Every asset
        asks for it first, so this is where the spec's device preference reaches the compute code."""
        devices.prefer(spec.compute.device)
        return ExperimentStore.for_spec(spec, self.root())

    def mirror(self) -> Path | None:
        value = self.data_dir or os.environ.get("REST_DATA_DIR", "")
        return Path(value).resolve() if value else None
