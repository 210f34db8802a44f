"""A full disk (or any failed write) ends the programs with one line naming the file and
the cause, exit status 1, the previous file intact and no temporary file left behind.

Two ways to make a write fail: ``write_atomic`` handed a write that raises ENOSPC (any
machine), and the programs run on a real, tiny tmpfs that fills up (a user and mount
namespace from ``unshare``, which needs no root; skipped with a reason where the kernel
refuses one). Neither needs FER-2013: the runs train on a few drawn faces.
"""
from __future__ import annotations

import errno
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from fer_models.classes import CLASSES
from tinycnn.model import WriteError, write_atomic

ROOT = Path(__file__).resolve().parents[1]


# -- write_atomic itself -------------------------------------------------------------------------
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "checkpoint.npz"
    target.write_bytes(b"the previous checkpoint")

    def fill_the_disk(tmp):
        Path(tmp).write_bytes(b"half of a new one")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(WriteError) as info:
        write_atomic(target, fill_the_disk)
    assert str(info.value) == f"cannot write {target}: No space left on device"
    assert info.value.errno == errno.ENOSPC and isinstance(info.value, OSError)
    assert target.read_bytes() == b"the previous checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.npz"]


def test_a_folder_that_cannot_be_made_is_a_write_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(WriteError, match=f"cannot write {blocker / 'sub' / 'x.json'}: "):
        write_atomic(blocker / "sub" / "x.json", lambda tmp: None)


def test_other_errors_pass_through_untouched(tmp_path):
    def broken(tmp):
        raise ValueError("not a write problem")
    with pytest.raises(ValueError, match="not a write problem"):
        write_atomic(tmp_path / "x", broken)
    assert list(tmp_path.iterdir()) == []


# -- the programs on a tiny tmpfs ----------------------------------------------------------------
def _namespaces_work() -> str | None:
    """None if ``unshare -rm`` can mount a tmpfs here, else the reason it cannot."""
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True, text=True)
    return None if probe.returncode == 0 else f"cannot mount a tmpfs in a user namespace: {probe.stderr.strip()}"


_why_not = _namespaces_work()
needs_tmpfs = pytest.mark.skipif(_why_not is not None, reason=f"a small tmpfs is needed: {_why_not}")


def on_a_small_disk(tmp_path, disk_kib: int, setup: str, command: list[str]) -> tuple[subprocess.CompletedProcess, str]:
    """Run ``command`` with a tmpfs of ``disk_kib`` KiB mounted on ``tmp_path/disk``, after
    the shell lines ``setup`` (which may fill it). Returns the finished process and a
    listing of the disk afterwards (path, size, sha256 of each file): the tmpfs is gone
    once the namespace ends."""
    disk, report = tmp_path / "disk", tmp_path / "after.txt"
    disk.mkdir(exist_ok=True)
    script = (f'mount -t tmpfs -o size={disk_kib}k tmpfs "$DISK" || exit 99\n{setup}\n"$@"\nrc=$?\n'
              f'(cd "$DISK" && find . -type f -exec sha256sum {{}} +) > "{report}"\nexit $rc\n')
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", *command],
                          capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env={**os.environ, "DISK": str(disk)})
    assert proc.returncode != 99, f"the tmpfs did not mount: {proc.stderr}"
    return proc, report.read_text() if report.exists() else ""


def tiny_data_set(folder: Path) -> Path:
    """Image folders with 4 drawn 48x48 faces per class in each split (no FER-2013)."""
    rng = np.random.default_rng(0)
    for split, where in (("Training", "train"), ("PublicTest", "test"), ("PrivateTest", "test")):
        for k, name in enumerate(CLASSES):
            (folder / where / name).mkdir(parents=True, exist_ok=True)
            for i in range(4):
                face = np.full((48, 48), 30 * k, np.uint8)
                cv2.circle(face, (24, 24), 10 + 2 * k, 255, -1)
                face = np.clip(face + rng.integers(0, 40, face.shape), 0, 255).astype(np.uint8)
                cv2.imwrite(str(folder / where / name / f"{split}_{k}_{i}.png"), face)
    return folder


def assert_one_line_error(proc, path_start: str):
    """Exit status 1, no traceback, and a last line naming a file under ``path_start`` and the cause."""
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert f"cannot write {path_start}" in last and "No space left on device" in last, last
    return last


def no_temporaries(listing: str):
    names = [line.split()[-1] for line in listing.splitlines()]
    assert not [n for n in names if ".tmp" in n or Path(n).name.startswith("tmp")], names


@pytest.fixture(scope="module")
def first_epoch(tmp_path_factory):
    """A run of one epoch of mini on the tiny data, on the ordinary disk."""
    folder = tmp_path_factory.mktemp("full-disk")
    data, run = tiny_data_set(folder / "data"), folder / "run"
    proc = subprocess.run([sys.executable, "train.py", "--model", "mini", "--data", str(data), "--cache-dir",
                           str(folder / "cache"), "--epochs", "1", "--batch-size", "8", "--out", str(run)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return data, run, folder / "cache"


@needs_tmpfs
def test_training_on_a_full_disk_stops_with_one_line_and_keeps_its_checkpoint(tmp_path, first_epoch):
    data, run, cache = first_epoch
    before = hashlib.sha256((run / "checkpoint.npz").read_bytes()).hexdigest()
    # room for the run as it is plus two pages: the next epoch's checkpoint does not fit beside it
    used = sum(-(-p.stat().st_size // 4096) * 4 for p in run.iterdir() if p.is_file())
    proc, listing = on_a_small_disk(tmp_path, used + 8, f'cp -r "{run}" "$DISK/run"',
                                    [sys.executable, "train.py", "--resume", str(tmp_path / "disk" / "run"),
                                     "--epochs", "2", "--data", str(data), "--cache-dir", str(cache)])
    last = assert_one_line_error(proc, str(tmp_path / "disk" / "run"))
    assert "the last checkpoint (epoch 1) is intact" in last and "--resume" in last, last
    assert f"{before}  ./run/checkpoint.npz" in listing, listing
    no_temporaries(listing)


@needs_tmpfs
@pytest.mark.parametrize("what", ["report", "export", "webcam output"])
def test_reports_exports_and_images_on_a_full_disk(tmp_path, first_epoch, what):
    data, run, cache = first_epoch
    disk = tmp_path / "disk"
    fill = 'cat /dev/zero > "$DISK/filler" 2>/dev/null; true'
    image = tmp_path / "face.png"
    cv2.imwrite(str(image), np.full((120, 160, 3), 128, np.uint8))
    command = {
        "report": [sys.executable, "train.py", "--evaluate", str(run / "best.npz"), "--data", str(data),
                   "--cache-dir", str(cache), "--out", str(disk)],
        "export": [sys.executable, "train.py", "--export", str(run / "best.npz"), str(disk / "mini.onnx")],
        "webcam output": [sys.executable, "webcam.py", "--source", str(image), "--weights", str(run / "best.npz"),
                          "--output", str(disk / "annotated.png")],
    }[what]
    if what == "export":
        pytest.importorskip("onnx")
    proc, listing = on_a_small_disk(tmp_path, 64, fill, command)
    assert_one_line_error(proc, str(disk))
    no_temporaries(listing)
