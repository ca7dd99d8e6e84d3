"""Dagster resources: where experiments' artifacts and the corpus mirror live."""

import os
from pathlib import Path

import dagster as dg

from rest_pipeline.core.paths import home
from rest_pipeline.core.store.experiment import ExperimentStore
from rest_pipeline.spec import ExperimentSpec


class RestStorage(dg.ConfigurableResource):
    """Artifact root and corpus source. Empty fields fall back to REST_HOME / REST_DATA_DIR."""

    home: str = ""
    data_dir: str = ""

    def root(self) -> Path:
        return Path(self.home).resolve() if self.home else home()

    def store(self, spec: ExperimentSpec) -> ExperimentStore:
        """The experiment's store: the CLI opens it the same way (`ExperimentStore.open`)."""
        return ExperimentStore.for_spec(spec, self.root())

    def mirror(self) -> Path | None:
        value = self.data_dir or os.environ.get("REST_DATA_DIR", "")
        return Path(value).resolve() if value else None
