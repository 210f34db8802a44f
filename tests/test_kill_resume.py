"""train.py killed with SIGKILL (no chance to clean up) at several moments, then
``--resume``: the run always finishes, with one history entry per epoch and a report.

The moments: before the first checkpoint, between epochs, and in the middle of a
checkpoint write (the temporary file written, not yet renamed over checkpoint.npz: a
wrapper slows that write down so the kill lands inside it).
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fer_models.data import default_location

ROOT = Path(__file__).resolve().parents[1]
DATA = default_location()  # $FER2013_DIR, else ../shared/fer2013
pytestmark = pytest.mark.skipif(not DATA.exists(), reason=f"FER-2013 not found at {DATA}")

EPOCHS = 3
TRAIN = ["--model", "mini", "--limit", "300", "--epochs", str(EPOCHS), "--batch-size", "50", "--data", str(DATA)]

# runs train.py with each checkpoint write that replaces an earlier checkpoint slowed down
# after the temporary file is written and before the rename, and says when it is there
SLOW_WRITES = """
import os, sys, time
import tinycnn.model as m
original = os.replace
def slow_replace(src, dst):
    if str(src).endswith(".tmp.npz") and str(dst).endswith("checkpoint.npz") and os.path.exists(dst):
        print("WRITING-CHECKPOINT", flush=True)
        time.sleep(30)
    return original(src, dst)
m.os.replace = slow_replace
sys.argv = ["train.py"] + sys.argv[1:]
sys.path.insert(0, {root!r})
import runpy
runpy.run_path({train!r}, run_name="__main__")
"""


def start(args, tmp_path, slow=False):
    if slow:
        script = tmp_path / "slow_train.py"
        script.write_text(SLOW_WRITES.format(root=str(ROOT), train=str(ROOT / "train.py")))
        cmd = [sys.executable, str(script), *args]
    else:
        cmd = [sys.executable, str(ROOT / "train.py"), *args]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def kill_when(proc, marker, timeout=300):
    """Read the output until a line containing ``marker``, then SIGKILL the process."""
    deadline = time.time() + timeout
    for line in proc.stdout:
        if marker in line:
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
            return
        if time.time() > deadline:
            break
    proc.kill()
    raise AssertionError(f"'{marker}' never appeared (exit {proc.wait()})")


def resume_to_the_end(run):
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "--resume", str(run), "--data", str(DATA)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    history = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in history] == list(range(1, EPOCHS + 1)), history
    assert json.loads((run / "report.json").read_text())["PrivateTest"]["report"]["accuracy"] > 0
    assert not list(run.glob("*.tmp*")), "a temporary file was left behind"
    return proc.stdout


@pytest.mark.parametrize("moment, marker, slow", [
    ("before the first checkpoint", "training images", False),
    ("between epochs", "epoch 1:", False),
    ("during a checkpoint write", "WRITING-CHECKPOINT", True),
])
def test_sigkill_then_resume_finishes_the_run(tmp_path, moment, marker, slow):
    run = tmp_path / "run"
    proc = start([*TRAIN, "--out", str(run)], tmp_path, slow=slow)
    kill_when(proc, marker)
    assert proc.returncode == -signal.SIGKILL, moment
    out = resume_to_the_end(run)
    assert ("starting it from epoch 1" in out) == (moment == "before the first checkpoint"), out[-1500:]
