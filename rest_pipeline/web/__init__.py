"""Pages served on loopback beside the Dagster UI (the rating page)."""
