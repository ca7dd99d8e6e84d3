"""The base of every spec section: strict (no unknown keys, no coercion, finite numbers) and frozen."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class SpecError(ValueError):
    """A spec file could not be read or failed validation."""


class _Strict(BaseModel):
    # Unknown keys are errors: a misspelt field must not be silently ignored.
    # No coercion either: `max_steps: true` or `samples_per_source: "3"` is a mistake, not a number; nor
    # is an infinite or NaN setting.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)
