"""Small types shared across the core, defined once."""

from __future__ import annotations

from collections.abc import Callable

# Progress lines: `print` on the command line, `context.log.info` inside a Dagster asset.
Log = Callable[[str], None]
