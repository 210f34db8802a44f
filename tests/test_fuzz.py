"""The fuzz suite: every layer, the loss and the tensor ops, random shapes, channel counts, strides,
paddings, dtypes, empty and one-element batches, NaN/inf, a built layer handed other
channels, both backends and every convolution algorithm (``fuzz_worker.py`` draws and
checks the cases with hypothesis).

Each layer's cases run in their own process, so that a crash (a signal: a compiled
kernel writing out of bounds, an abort in malloc) fails this test naming the case that
was running, instead of taking pytest down with it.
"""
from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).resolve().parent / "fuzz_worker.py"
KINDS = ["Conv2D", "Conv2DTranspose", "DepthwiseConv2D", "SeparableConv2D", "MaxPool2D", "BatchNormalization", "Dense", "Dropout",
         "GlobalAveragePooling2D", "Flatten", "Residual", "softmax_cross_entropy", "ops"]
EXAMPLES = 150


def problems(cmd, expect_cases=0) -> list[str]:
    """Run a worker; every problem it showed: a death by signal (naming the case it was
    running), failed cases, an unfinished run."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    lines = proc.stdout.splitlines()
    cases = [line for line in lines if line.startswith("CASE ")]
    verdicts = [line for line in lines if line == "OK" or line.startswith("FAIL")]
    if proc.returncode < 0:
        return [f"the process died of {signal.Signals(-proc.returncode).name} during "
                f"{cases[-1] if cases else 'start-up'}"]
    found = [f"{case}\n  -> {verdict}" for case, verdict in zip(cases, verdicts) if verdict != "OK"]
    if proc.returncode != 0 or lines[-1:] != ["DONE"]:
        found.append(f"exit {proc.returncode}, no DONE: {proc.stderr[-1500:]}")
    if len(cases) < expect_cases:
        found.append(f"only {len(cases)} cases ran")
    return found


@pytest.mark.parametrize("kind", KINDS)
def test_fuzz(kind):
    found = problems([sys.executable, str(WORKER), kind, str(EXAMPLES)], EXAMPLES)
    assert not found, f"{kind}: {len(found)} problems, e.g.\n" + "\n".join(found[:3])


def test_a_crash_is_reported_with_its_case_not_fatal():
    crash = "print('CASE (the bad one)', flush=True); import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"
    assert problems([sys.executable, "-c", crash]) == ["the process died of SIGSEGV during CASE (the bad one)"]
