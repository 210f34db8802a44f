"""Hypothesis' two profiles, loaded by ``conftest.py`` and by ``fuzz_worker.py`` (its own
process), so that every property and fuzz test follows the same one:

* ``ci``: derandomised, the same examples on every run: CI passes or fails on the code,
  never on the draw. Loaded when ``HYPOTHESIS_PROFILE=ci`` (``.ci/run`` sets it) or when
  ``CI`` is set, as CI services do.
* ``random`` (the default elsewhere): fresh examples on every run, so that local runs keep
  exploring. A failure prints the seed and the example; pin the example with ``@example``.

``HYPOTHESIS_SEED=N`` (``tests/variants.sh`` draws one) seeds the random profile, so a run
that failed can be repeated, the fuzz workers included.

The tests' own ``settings(...)`` give only their example counts and health checks and
inherit the rest from the profile loaded here (``settings`` objects take the default
profile current when they are created: this module loads before any test module).
"""
from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, database=None, deadline=None, print_blob=True)
settings.register_profile("random", derandomize=False, database=None, deadline=None, print_blob=True)


def profile_name() -> str:
    return os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "random")


def load() -> str:
    name = profile_name()
    settings.load_profile(name)
    return name


def seed():
    """``HYPOTHESIS_SEED`` as an int, or None: for ``hypothesis.seed`` in the fuzz worker
    (pytest's tests take it as ``--hypothesis-seed``)."""
    value = os.environ.get("HYPOTHESIS_SEED")
    return int(value) if value else None
