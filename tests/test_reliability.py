"""Bad files and bad arguments get one clear message, never a traceback, never advice to
unpickle, and never leave state corrupted (issue 12's list, each case failing before
its fix)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fer_models
import tinycnn as tc
import train
from fer_models.predict import load_model, save_model
from tinycnn.model import read_npz
from fer_models.data import default_location

ROOT = Path(__file__).resolve().parents[1]
DATA = default_location()  # $FER2013_DIR, else ../shared/fer2013


@pytest.fixture(scope="module")
def good_weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "small3.npz"
    save_model(fer_models.build("small3", seed=0), path)
    return path


def damaged_files(folder: Path, good: Path) -> dict[str, Path]:
    """A truncated archive, a text file named .npz, a .npy array, and weights holding NaN."""
    files = {"truncated": folder / "truncated.npz", "text": folder / "notes.npz",
             "npy": folder / "array.npz", "nan": folder / "nan.npz"}
    data = good.read_bytes()
    files["truncated"].write_bytes(data[:len(data) // 2])
    files["text"].write_text("these are not weights\n")
    with open(files["npy"], "wb") as f:
        np.save(f, np.zeros(3, np.float32))
    with np.load(good) as f:
        arrays = {k: f[k] for k in f.files}
    name = next(k for k in arrays if k.endswith("/kernel"))
    arrays[name] = arrays[name].copy()
    arrays[name].flat[5] = np.nan
    np.savez(files["nan"], **arrays)
    return files


@pytest.mark.parametrize("case, message", [("truncated", "not a readable .npz weights file"),
                                           ("text", "not a NumPy file at all"),
                                           ("npy", "a single array"),
                                           ("nan", "holds NaN or inf")])
def test_damaged_weights_raise_one_clear_error(tmp_path, good_weights, case, message):
    path = damaged_files(tmp_path, good_weights)[case]
    with pytest.raises(ValueError, match=message) as info:
        load_model(path)
    assert str(path) in str(info.value) and "allow_pickle" not in str(info.value)
    if case != "nan":  # the same for a plain tinycnn model (whose files hold no architecture name)
        with pytest.raises(ValueError, match=message):
            fer_models.build("small3").load_weights(path)


def test_sequential_refuses_nan_weights(tmp_path):
    model = fer_models.build("mini")
    model.layers[0].kernel.data[0, 0, 0, 0] = np.inf
    model.save_weights(tmp_path / "inf.npz")
    with pytest.raises(ValueError, match=r"inf.npz: layer 'conv2d': weight 'kernel' holds NaN or inf "
                                         r"\(first at index \(0, 0, 0, 0\)\)"):
        fer_models.build("mini").load_weights(tmp_path / "inf.npz")


def test_read_npz_missing_file():
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_npz("/nonexistent/w.npz")


@pytest.mark.parametrize("case", ["truncated", "text", "nan"])
def test_webcam_with_damaged_weights_says_so_and_exits_2(tmp_path, good_weights, case):
    import cv2
    path = damaged_files(tmp_path, good_weights)[case]
    image = tmp_path / "frame.png"
    cv2.imwrite(str(image), np.full((120, 160, 3), 128, np.uint8))
    proc = subprocess.run([sys.executable, str(ROOT / "webcam.py"), "--source", str(image), "--weights", str(path),
                           "--json"], cwd=ROOT, capture_output=True, text=True, timeout=180,
                          env={k: v for k, v in os.environ.items() if k != "DISPLAY"})
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "allow_pickle" not in proc.stderr
    assert str(path) in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr


@pytest.mark.parametrize("args, message", [(["--max-frames", "-1"], "--max-frames must be >= 0"),
                                           (["--margin", "-0.6"], "--margin must be between 0 and 1"),
                                           (["--min-face", "-3"], "--min-face must be >= 0"),
                                           (["--tilt", "60"], "--tilt must be between 0 and 45")])
def test_webcam_refuses_arguments_out_of_range(args, message):
    proc = subprocess.run([sys.executable, str(ROOT / "webcam.py"), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


def test_train_refuses_a_zero_learning_rate():
    with pytest.raises(SystemExit, match="--lr must be positive, got 0.0"):
        train.main(["--lr", "0"])


@pytest.mark.parametrize("option", ["--erase", "--camera"])
def test_train_refuses_a_probability_out_of_range(option):
    with pytest.raises(SystemExit, match=f"{option} must be a probability in \\[0, 1\\], got 1.5"):
        train.main([option, "1.5"])


@pytest.mark.parametrize("option, value", [("--mixup", "-0.2"), ("--cutmix", "nan")])
def test_train_refuses_a_mixing_alpha_below_zero(option, value):
    with pytest.raises(SystemExit, match=f"{option} is a Beta distribution's alpha >= 0.*got {value}"):
        train.main([option, value])


@pytest.mark.parametrize("value", ["1", "-0.5"])
def test_train_refuses_an_ema_momentum_out_of_range(value):
    with pytest.raises(SystemExit, match=f"--ema is a momentum in \\[0, 1\\).*got {value}"):
        train.main(["--ema", value])


@pytest.mark.skipif(not DATA.exists(), reason=f"FER-2013 not found at {DATA}")
def test_resume_from_a_damaged_checkpoint_or_missing_settings(tmp_path, good_weights):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.npz").write_bytes(good_weights.read_bytes()[:1000])
    with pytest.raises(SystemExit, match="args.json .* missing or damaged"):
        train.main(["--resume", str(run), "--data", str(DATA)])
    (run / "args.json").write_text(json.dumps({**vars(train.parse_args(["--model", "mini", "--limit", "70"])),
                                               "data": str(DATA), "out": str(run), "cache_dir": None,
                                               "resume": None, "evaluate": None, "lr": 1e-3, "epochs": 1},
                                              default=str))
    with pytest.raises(SystemExit, match=r"cannot resume from .*checkpoint.npz.*not a readable .npz checkpoint"):
        train.main(["--resume", str(run), "--data", str(DATA)])


@pytest.mark.skipif(not DATA.exists(), reason=f"FER-2013 not found at {DATA}")
def test_evaluate_uses_model_for_files_without_an_architecture(tmp_path):
    model = fer_models.build("mini", seed=0)
    model.save_weights(tmp_path / "plain.npz")          # weights only: no architecture recorded
    with pytest.raises(SystemExit, match="does not record its architecture"):
        train.main(["--evaluate", str(tmp_path / "plain.npz"), "--data", str(DATA), "--out", str(tmp_path / "a")])
    train.main(["--evaluate", str(tmp_path / "plain.npz"), "--model", "mini", "--data", str(DATA),
                "--out", str(tmp_path / "b")])
    assert json.loads((tmp_path / "b" / "report.json").read_text())["model"] == "mini"


def test_empty_training_batch_is_refused_and_leaves_batchnorm_intact(backend):
    model = tc.Sequential([tc.layers.Conv2D(4, 3), tc.layers.BatchNormalization(), tc.layers.Flatten(),
                           tc.layers.Dense(2)], input_shape=(5, 5, 1))
    before = {k: v.copy() for k, v in model.get_weights().items()}
    with pytest.raises(ValueError, match="a training batch needs at least one value"):
        model(np.zeros((0, 5, 5, 1), np.float32), training=True)
    for k, v in model.get_weights().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)
    assert model.predict(np.zeros((0, 5, 5, 1), np.float32)).shape[0] == 0   # inference on nothing is fine


def test_importing_tinycnn_leaves_malloc_alone():
    """glibc's thresholds are the programs' choice (train.py, webcam.py), not an import's."""
    import tinycnn.backend as B
    assert not hasattr(B, "FREED_MEMORY_KEPT")
    assert "keep_freed_memory()" in (ROOT / "fer_programs" / "train.py").read_text()
    assert "keep_freed_memory()" in (ROOT / "fer_programs" / "webcam.py").read_text()


def test_layers_built_on_their_own_differ_and_seeded_ones_repeat():
    a, b = tc.layers.Conv2D(4, 3), tc.layers.Conv2D(4, 3)
    a.ensure_built((5, 5, 2)), b.ensure_built((5, 5, 2))
    assert not np.array_equal(a.kernel.data, b.kernel.data), "two standalone layers got the same weights"
    d1, d2 = tc.layers.Dropout(0.5), tc.layers.Dropout(0.5)
    x = np.ones((4, 50), np.float32)
    assert not np.array_equal(d1(x, training=True).numpy(), d2(x, training=True).numpy())
    s1, s2 = (tc.Sequential([tc.layers.Conv2D(4, 3)], input_shape=(5, 5, 2), seed=3) for _ in range(2))
    np.testing.assert_array_equal(s1.layers[0].kernel.data, s2.layers[0].kernel.data)


def test_train_with_missing_or_empty_data_says_so(tmp_path):
    with pytest.raises(SystemExit, match=r"error: --data .*nowhere: .*does not exist"):
        train.main(["--data", str(tmp_path / "nowhere"), "--model", "mini", "--out", str(tmp_path / "a")])
    if not DATA.exists():
        return
    import shutil
    (tmp_path / "fer" / "train" / "happy").mkdir(parents=True)
    (tmp_path / "fer" / "test" / "happy").mkdir(parents=True)
    for src in sorted((DATA / "test" / "happy").glob("PublicTest_*.png"))[:3]:
        shutil.copy(src, tmp_path / "fer" / "test" / "happy" / src.name)
    with pytest.raises(SystemExit, match="holds no Training images"):
        train.main(["--data", str(tmp_path / "fer"), "--model", "mini", "--out", str(tmp_path / "b"),
                    "--cache-dir", str(tmp_path / "cache")])


FORK_SCRIPT = """
import multiprocessing as mp, numpy as np
import tinycnn as tc, fer_models
m = fer_models.build("mini", seed=0)
x = np.random.default_rng(0).random((256, 48, 48, 1), dtype=np.float32)   # big enough for all threads
with tc.no_grad(): ref = m(x).data
def child(_):
    with tc.no_grad(): return float(np.abs(m(x).data - ref).max()), tc.get_backend()
if __name__ == "__main__":
    with mp.get_context("fork").Pool(1) as p:
        err, backend = p.map(child, [0])[0]
    print("child", backend, err < 1e-5, "parent", tc.get_backend())
"""


@pytest.mark.skipif(not hasattr(os, "register_at_fork"), reason="no fork here")
def test_a_process_forked_after_the_parallel_kernels_ran_still_works(tmp_path):
    """GNU OpenMP is not fork-safe (Numba ends such a child); tinycnn's forked child falls
    back to the NumPy kernels and says so, instead of dying."""
    script = tmp_path / "fork.py"
    script.write_text(FORK_SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    if tc.backend.PARALLEL:
        assert "child numpy True parent numba" in run.stdout
        assert "forked from one that ran Numba's OpenMP kernels" in run.stderr
    else:
        assert "child numba True parent numba" in run.stdout
