"""Shared pytest set-up: Hypothesis profiles and float64 torch."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# No deadlines: the first call into torch is slow, and CI machines are noisy. The "ci"
# profile (selected when CI is set) runs fewer examples so that `make test` stays quick.
settings.register_profile(
    "dev", deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "ci", deadline=None, max_examples=30, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))
