"""``pip install .`` as a user runs it: the wheel, built from a copy of this checkout and
installed (not editable) into a fresh virtual environment, gives the commands
``fer-webcam`` and ``fer-train``, which run from a folder outside the checkout with the
weights the wheel bundles.

The fresh environment has no packages of its own but the wheel (``--no-deps``); a
``.pth`` file lists this environment's site-packages after its own, so numpy, OpenCV and
the rest need not be downloaded again. That listing is a plain path: the ``.pth`` files
inside it, among them the editable install's finder that points at this checkout, are
not run there, and the test checks that the commands import the installed copies.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import cv2
import pytest

from fer_models.classes import CLASSES
from fer_models.data import default_location
from fixtures_faces import blank_frame, face_frame, fer_faces

ROOT = Path(__file__).resolve().parents[1]
NOT_SOURCES = (".git", ".venv", "venv", "site", "build", "dist", "runs", ".cache", "__pycache__", "*.egg-info",
               ".pytest_cache", ".hypothesis", "*.pyc")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The wheel built and installed into a new environment -> (its bin folder, a folder outside the checkout)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*NOT_SOURCES))
    # no build isolation: the build backend is the test extra's setuptools, nothing is fetched
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                    "-q", "-w", str(tmp / "dist"), str(source)], check=True, cwd=tmp)
    wheels = list((tmp / "dist").glob("tinycnn-*.whl"))
    assert len(wheels) == 1, wheels

    env = tmp / "env"
    venv.EnvBuilder(with_pip=False).create(env)
    python = env / "bin" / "python"
    here = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    env_site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   check=True, capture_output=True, text=True).stdout.strip())
    (env_site / "zz_test_environment.pth").write_text("".join(f"{p}\n" for p in sorted(here)))
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                    "-q", str(wheels[0])], check=True, cwd=tmp)

    outside = tmp / "elsewhere"
    outside.mkdir()
    where = subprocess.run([str(python), "-c", "import fer_models, fer_programs, tinycnn; "
                                              "print(fer_models.__file__, fer_programs.__file__, tinycnn.__file__)"],
                           check=True, capture_output=True, text=True, cwd=outside).stdout.split()
    for module in where:   # the installed copies, not this checkout's (an editable install's finder)
        assert Path(module).is_relative_to(env_site), where
    assert (env_site / "fer_models" / "weights" / "bundled.npz").is_file()
    return env / "bin", outside


def run(command: list, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{command} exited {proc.returncode}:\n{proc.stderr}"
    return proc


def test_fer_webcam_reads_a_photo_with_the_bundled_model(installed):
    bin_dir, outside = installed
    have_faces = (default_location() / "test").is_dir()
    frame = face_frame(fer_faces(1)) if have_faces else blank_frame()
    cv2.imwrite(str(outside / "face.png"), frame)
    proc = run([str(bin_dir / "fer-webcam"), "--source", "face.png", "--json"], outside)
    frames = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(frames) == 1 and frames[0]["source"] == "face.png", proc.stdout
    if have_faces:   # without FER-2013, a frame without a face: the command still loads the bundled model and runs
        face = frames[0]["faces"][0]
        assert face["label"] in CLASSES and set(face["probabilities"]) == set(CLASSES), face
        assert abs(sum(face["probabilities"].values()) - 1) < 1e-3, face


def test_fer_webcam_names_itself_in_its_messages(installed):
    bin_dir, outside = installed
    proc = subprocess.run([str(bin_dir / "fer-webcam"), "--source", "missing.png", "--json"], cwd=outside,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("fer-webcam: "), proc.stderr
    assert "Traceback" not in proc.stderr


def test_fer_train_lists_the_models(installed):
    bin_dir, outside = installed
    proc = run([str(bin_dir / "fer-train"), "--list-models"], outside)
    names = [line.split()[0] for line in proc.stdout.splitlines()[1:]]
    assert {"resfer", "small3", "mini"} <= set(names), proc.stdout
