"""Dagster resources: where an experiment's artifacts and the corpus mirror live."""

import os
from pathlib import Path

import dagster as dg

from rest_pipeline.core.base_policy import Layout
from rest_pipeline.core.paths import home
from rest_pipeline.spec import ExperimentSpec


class RestStorage(dg.ConfigurableResource):
    """Artifact root and corpus source. Empty fields fall back to REST_HOME / REST_DATA_DIR."""

    home: str = ""
    data_dir: str = ""

    def root(self) -> Path:
        return Path(self.home).resolve() if self.home else home()

    def layout(self, spec: ExperimentSpec) -> Layout:
        return Layout(self.root() / "experiments" / spec.name)

    def mirror(self) -> Path | None:
        value = self.data_dir or os.environ.get("REST_DATA_DIR", "")
        return Path(value).resolve() if value else None
