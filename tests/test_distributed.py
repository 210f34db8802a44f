"""train_distributed.py: a fer_models architecture goes out to Keras, trains under
tf.distribute on real FER-2013 faces and comes back to tinycnn computing the same thing.

The distributed runs are real: MirroredStrategy over the CPU split into two logical
devices, and MultiWorkerMirroredStrategy with one and with two workers talking over
localhost, each a TF_CONFIG like the one a cluster would give it. A few steps each.
"""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import train_distributed
from fer_models.data import default_location

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "train_distributed.py"
DATA = default_location()  # $FER2013_DIR, else ../shared/fer2013
needs_data = pytest.mark.skipif(not DATA.exists(), reason=f"FER-2013 not found at {DATA}")
QUICK = ["--model", "mini", "--limit", "512", "--epochs", "1", "--steps-per-epoch", "4", "--batch-size", "32",
         "--data", str(DATA)]


def start(args, tf_config=None):
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    return subprocess.Popen([sys.executable, str(SCRIPT), *map(str, args)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process, timeout=300):
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        pytest.fail(f"train_distributed.py ran past {timeout} s:\n{output[-3000:]}")
    assert process.returncode == 0, f"exit code {process.returncode}:\n{output[-3000:]}"
    return output


def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def faces(n=64):
    from fer_models.data import load_fer2013
    x, _ = load_fer2013(DATA, progress=False)["PublicTest"]
    return x[:n]


def assert_same_model(out, x, tolerance=1e-5):
    """tinycnn's import of ``out`` gives Keras' softmax outputs on faces ``x``."""
    keras = pytest.importorskip("keras")
    import tinycnn as tc
    from tinycnn.io import load_keras
    expected = keras.models.load_model(out).predict(x, verbose=0)
    model = load_keras(out)
    assert model.output_softmax
    with tc.no_grad():
        got = tc.softmax(model(x, training=False)).numpy()
    np.testing.assert_allclose(got, expected, atol=tolerance)
    assert np.allclose(expected.sum(1), 1, atol=1e-5)   # probabilities: the Keras file ends in softmax


@needs_data
def test_mirrored_on_two_devices_comes_back_to_tinycnn(tmp_path):
    """Two replicas train what one device trains (the global batch split 16 + 16, BatchNormalization
    synchronised), and the best epoch comes back to tinycnn computing what Keras computes."""
    pytest.importorskip("tensorflow")
    out, alone = tmp_path / "fer-dist.keras", tmp_path / "alone" / "fer-dist.keras"
    common = [*QUICK, "--preprocessing", "equalize", "--label-smoothing", "0.1"]
    one_device = start([*common, "--strategy", "default", "--out", alone])
    output = finish(start([*common, "--devices", "2", "--strategy", "mirrored", "--out", out]))
    assert "the default strategy: 1 replicas in sync" in finish(one_device)
    assert "MirroredStrategy: 2 replicas in sync" in output, output
    assert "16 per replica" in output, output
    assert out.stat().st_size > 0
    line = next(line for line in output.splitlines() if line.startswith("PublicTest accuracy"))
    keras_acc, tiny_acc = line.split("Keras ")[1].split(",")[0], line.split("load_keras) ")[1].split(";")[0]
    assert keras_acc == tiny_acc, line
    assert json.loads(Path(f"{out}.json").read_text()) == {
        "model": "mini", "preprocessing": "equalize", "input_scale": [0, 1],
        "classes": ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]}
    run = tmp_path / "fer-dist-run"
    history = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1] and np.isfinite(history[0]["loss"])
    # the same 4 steps on one device: equal to float rounding (3e-6 measured; 5e-3 with each
    # replica normalising its own half-batch, --no-sync-batchnorm)
    history_alone = json.loads((tmp_path / "alone" / "fer-dist-run" / "history.json").read_text())
    assert abs(history[0]["loss"] - history_alone[0]["loss"]) < 1e-4, (history, history_alone)
    assert not (run / "backup").exists()   # BackupAndRestore removes its backup when the run ends
    from fer_models.predict import load_model
    from fer_models.preprocess import preprocess
    assert load_model(out).preprocessing == "equalize"   # what webcam.py --weights reads: the sidecar's
    assert_same_model(out, preprocess(faces(), "equalize"))


@needs_data
@pytest.mark.parametrize("workers", [1, 2])
def test_multiworker_over_localhost(tmp_path, workers):
    """Each worker is its own process with its own TF_CONFIG, as on separate machines; with two,
    the global batch of 32 is split 16 + 16 and both end with the same weights."""
    pytest.importorskip("tensorflow")
    out = tmp_path / "fer-dist.keras"
    cluster = {"worker": [f"localhost:{port}" for port in free_ports(workers)]}
    processes = [start([*QUICK, "--strategy", "multiworker", "--out", out],
                       {"cluster": cluster, "task": {"type": "worker", "index": i}}) for i in range(workers)]
    outputs = [finish(p) for p in processes]
    for i, output in enumerate(outputs):
        assert f"MultiWorkerMirroredStrategy: {workers} replicas in sync" in output, output
        assert f"task worker {i} of {workers}" in output, output
    assert "PublicTest accuracy" in outputs[0] and "PublicTest accuracy" not in "".join(outputs[1:])
    assert_same_model(out, faces())
    if workers == 2:
        import h5py
        chief, other = tmp_path / "fer-dist-run", tmp_path / "fer-dist-run" / "worker-1"
        with h5py.File(chief / "best.weights.h5") as a, h5py.File(other / "best.weights.h5") as b:
            names = []
            a.visititems(lambda name, item: names.append(name) if isinstance(item, h5py.Dataset) else None)
            assert names
            for name in names:
                np.testing.assert_array_equal(a[name][()], b[name][()], err_msg=name)


def test_tf_config_is_read_as_tensorflow_reads_it():
    read = train_distributed.read_tf_config
    assert read(None) is None and read("") is None
    two = {"cluster": {"worker": ["host-a:2222", "host-b:2222"]}, "task": {"type": "worker", "index": 1}}
    assert read(json.dumps(two)) == train_distributed.Role("worker", 1, 2, False)
    two["task"]["index"] = 0
    assert read(json.dumps(two)).is_chief
    with_chief = {"cluster": {"chief": ["c:1"], "worker": ["w:1"]}, "task": {"type": "worker", "index": 0}}
    assert read(json.dumps(with_chief)) == train_distributed.Role("worker", 0, 2, False)
    with_chief["task"] = {"type": "chief", "index": 0}
    assert read(json.dumps(with_chief)).is_chief
    for bad, says in [("{not json", "not JSON"),
                      ('{"cluster": {"worker": ["a:1"]}}', '"task"'),
                      ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}', "0..0"),
                      ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "ps", "index": 0}}', "not a job"),
                      ('{"cluster": {"worker": ["a:1"], "ps": ["b:1"]}, "task": {"type": "worker", "index": 0}}',
                       "'ps'"),
                      ('{"cluster": {"worker": ["no-port"]}, "task": {"type": "worker", "index": 0}}', "host:port")]:
        with pytest.raises(ValueError) as e:
            read(bad)
        assert says in str(e.value), (bad, str(e.value))


def test_strategy_choice_follows_tf_config():
    choose, role = train_distributed.choose_strategy, train_distributed.Role("worker", 0, 2, True)
    assert choose("auto", None) == "mirrored" and choose("auto", role) == "multiworker"
    assert choose("mirrored", None) == "mirrored" and choose("default", None) == "default"
    assert choose("multiworker", role) == "multiworker"
    with pytest.raises(ValueError, match="needs the TF_CONFIG"):
        choose("multiworker", None)
    with pytest.raises(ValueError, match="use --strategy multiworker, or unset TF_CONFIG"):
        choose("mirrored", role)
    out = Path("runs/fer-dist.keras")
    assert train_distributed.run_directory(out, None) == Path("runs/fer-dist-run")
    assert train_distributed.run_directory(out, role) == Path("runs/fer-dist-run")
    assert train_distributed.run_directory(out, train_distributed.Role("worker", 3, 4, False)) == \
        Path("runs/fer-dist-run/worker-3")


def test_bad_settings_fail_before_tensorflow_starts(monkeypatch, capsys):
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 0}}')
    with pytest.raises(SystemExit, match="unset TF_CONFIG"):
        train_distributed.main(["--strategy", "mirrored", "--out", "x.keras"])
    for argv, says in [(["--out", "x.h5"], "must end in .keras"),
                       (["--model", "mini", "--init-from", "a.npz"], "not both"),
                       (["--batch-size", "0"], "--batch-size must be positive")]:
        with pytest.raises(SystemExit):
            train_distributed.parse_args(argv)
        assert says in capsys.readouterr().err


def test_without_tensorflow_says_what_to_install(tmp_path):
    """TensorFlow is optional: without it the program ends with one line naming the install."""
    hide = ("import runpy, sys; sys.modules['tensorflow'] = None; "
            f"sys.argv = ['train_distributed.py', '--model', 'mini', '--out', {str(tmp_path / 'x.keras')!r}]; "
            f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", hide], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "pip install tensorflow" in lines[0], done.stderr
