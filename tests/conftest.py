"""Shared fixtures: every test that takes ``backend`` runs once per kernel path."""
import os

# TensorFlow reads these at import: keep it to one thread each on a small shared machine.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")

import hypothesis_profiles  # noqa: E402
import pytest  # noqa: E402

import tinycnn  # noqa: E402
from helpers import BACKENDS  # noqa: E402

# ci (derandomised) under CI, random elsewhere: see hypothesis_profiles.py
HYPOTHESIS_PROFILE = hypothesis_profiles.load()


def pytest_report_header(config):
    seed = config.getoption("hypothesis_seed", None)
    return f"hypothesis profile: {HYPOTHESIS_PROFILE}" + (f", seed {seed}" if seed is not None else "")


@pytest.fixture(scope="session")
def fer_cache(tmp_path_factory):
    """One decoded-data cache folder for the whole run: FER-2013 is decoded once."""
    return tmp_path_factory.mktemp("fer-cache")


@pytest.fixture(autouse=True)
def every_kernel_on_all_threads(monkeypatch):
    """The fast kernels run small inputs on one thread (``threads_by_size``); tests use
    small inputs, so they lift that limit: every compiled loop then runs on all of
    Numba's threads, as it does on a training batch, and a race between them would show.
    ``test_kernels.py`` checks the one-thread path for small inputs itself."""
    monkeypatch.setattr(tinycnn.backend, "SMALL_WORK", 0)


@pytest.fixture(params=BACKENDS)
def backend(request):
    """The kernel path under test, selected with ``tinycnn.use_backend`` for the whole test."""
    with tinycnn.use_backend(request.param):
        yield request.param


# Figures a test measured (the load test's requests/s, latencies, memory), printed at the
# end of the run even when output is captured: a test appends lines to FIGURES.
FIGURES: list[str] = []


def pytest_terminal_summary(terminalreporter):
    if FIGURES:
        terminalreporter.section("measured by the tests")
        for line in FIGURES:
            terminalreporter.write_line(line)
