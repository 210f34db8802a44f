"""tinycnn against Keras (TensorFlow, CPU), PyTorch (CPU) and ONNX Runtime (CPU, on tinycnn's
own ``export_onnx``) on the five FER-2013 seed models.

    python bench/bench.py                      # the full run, ~10-15 min on 2 cores
    python bench/bench.py --quick --models small3

For every (framework, model) a fresh subprocess builds the model (``fer_models.build``
for tinycnn, ``bench/peers.py`` for the peers; parameter counts are asserted equal),
then times, on random 48x48x1 inputs and random labels:

* training: full Adam steps (forward, cross-entropy from logits, backward, update) at
  batch 128, in images/s;
* inference: a forward pass at batch 256 in inference mode, in images/s;
* one face: a forward pass at batch 1, in ms (what webcam.py pays per face);
* the process' peak resident memory, read right after training (imports, model,
  optimiser state and one training step's activations), in MB.

tinycnn's headline figures are measured as a user's script runs it: a fresh process,
NumPy imported first, no environment variable and no process-wide call, README's
training loop and ``model.predict``. The programs' configuration (``train.py`` and
``webcam.py`` call ``keep_freed_memory()``; ``webcam.py`` predicts with an
``inference_copy()``) is measured in processes of its own and reported beside them.
ONNX Runtime runs with its default session options, for inference and one face only.

Warm-up calls are excluded; each figure is the median of the timed calls. Two more
subprocesses time tinycnn's first training step with an empty Numba cache and then
with the cache the first one wrote; a third measures numpy's float32 matmul peak and
the GFLOP/s of tinycnn's convolution layers. The results are printed as markdown and
written as JSON (and the markdown next to it, ``.md``). See bench/README.md.
"""
from __future__ import annotations

import argparse
import datetime
import functools
import importlib.metadata
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, HERE]

import peers  # noqa: E402  (no framework is imported by this)

FRAMEWORKS = ("tinycnn", "keras", "torch", "onnxruntime", "programs")
PEERS = ("keras", "torch", "onnxruntime")
# "programs": tinycnn as train.py and webcam.py run it, beside the headline (a user's script)
LABELS = {"tinycnn": "tinycnn", "keras": "Keras", "torch": "PyTorch", "onnxruntime": "ONNX Runtime",
          "programs": "tinycnn as the programs run"}
TRAIN_BATCH, INFER_BATCH = 128, 256
H, W, C = peers.INPUT_SHAPE


# =============================================================================================
# Timing helpers (used inside the worker processes)
# =============================================================================================
def time_calls(fn, warmup: int, repeats: int, budget_s: float | None = None, min_repeats: int = 3):
    """Call ``fn`` ``warmup`` times untimed, then ``repeats`` times timed, stopping early
    (but not before ``min_repeats`` timed calls) once the timed calls exceed ``budget_s``,
    so that a very slow model cannot stretch the run for ever.

    Returns (seconds of the first call, list of timed seconds)."""
    first = None
    for i in range(warmup):
        t = time.perf_counter()
        fn()
        if i == 0:
            first = time.perf_counter() - t
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
        if budget_s is not None and len(times) >= min_repeats and sum(times) > budget_s:
            break
    return first, times


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def blas_info():
    from threadpoolctl import threadpool_info
    return [{k: d.get(k) for k in ("user_api", "internal_api", "version", "num_threads",
                                   "threading_layer", "architecture", "prefix")}
            for d in threadpool_info()]


# =============================================================================================
# One framework each: build, check the parameter count, and hand back the callables to time
# =============================================================================================
def setup_tinycnn(name, threads, x, y, programs=False):
    """As a user's script: README's loop and ``model.predict``, no setting made. With
    ``programs``: as train.py and webcam.py run, ``keep_freed_memory()`` at start and one
    face through an ``inference_copy()``."""
    import numba
    from threadpoolctl import threadpool_limits

    import fer_models
    import tinycnn as tc
    if programs:
        tc.backend.keep_freed_memory()
    if threads != len(os.sched_getaffinity(0)):   # --threads: fewer than the defaults
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        threadpool_limits(threads, user_api="blas")
    model = fer_models.build(name)
    opt = tc.optim.Adam(model.parameters(), lr=1e-3)

    def train_step():
        logits = model(x, training=True)
        loss = tc.losses.softmax_cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    copies = {}

    def predict_with_copy(batch):  # the copy is made once, as webcam.py and predict_emotion make it
        if "model" not in copies:
            model(batch[:1], training=False)
            copies["model"] = model.inference_copy()
        return copies["model"].predict(batch)

    predict = ({"model.inference_copy().predict(x)": predict_with_copy} if programs else
               {"model.predict(x)": lambda batch: model.predict(batch)})
    info = {"version": tc.__version__, "backend": tc.get_backend(),
            "numba_threads": numba.get_num_threads(), "blas": blas_info(), "programs": programs}
    return dict(train_step=train_step, predict=predict,
                prepare=lambda a: a, counts=peers.tinycnn_param_counts(model), info=info,
                after=lambda: info.update(numba_threading_layer=numba.threading_layer()))


def setup_programs(name, threads, x, y):
    return setup_tinycnn(name, threads, x, y, programs=True)


def setup_onnxruntime(name, threads, x, y):
    """tinycnn's model exported by ``tinycnn.io.export_onnx`` (logits), run by ONNX Runtime
    with default session options but the thread count; inference only."""
    import onnxruntime as ort

    import fer_models
    from tinycnn.io import export_onnx
    model = fer_models.build(name)
    path = os.path.join(tempfile.mkdtemp(prefix="bench-onnx-"), f"{name}.onnx")
    export_onnx(model, path, softmax=False)
    options = ort.SessionOptions()
    if threads != len(os.sched_getaffinity(0)):
        options.intra_op_num_threads = threads
    run = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    info = {"version": ort.__version__, "intra_op_threads": options.intra_op_num_threads or "default"}
    return dict(train_step=None, predict={"InferenceSession.run (default options)":
                                          lambda batch: run.run(None, {"input": batch})[0]},
                prepare=lambda a: a, counts=peers.tinycnn_param_counts(model), info=info, after=lambda: None)


def _onednn_state(tf):
    """Whether TensorFlow runs its oneDNN kernels, and why: it chooses by the CPU unless
    TF_ENABLE_ONEDNN_OPTS says (on an AVX2 machine without AVX-512 it left them off)."""
    try:
        from tensorflow.python.util import _pywrap_util_port
        on = "on" if _pywrap_util_port.IsMklEnabled() else "off"
    except (ImportError, AttributeError):   # a private module: a version without it
        on = "unknown"
    return f"{on} (TF_ENABLE_ONEDNN_OPTS={os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'unset: chosen by the CPU')})"


def setup_keras(name, threads, x, y):
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    import keras
    keras.utils.set_random_seed(0)
    model = peers.keras_model(name)
    model.compile(optimizer=keras.optimizers.Adam(1e-3, epsilon=1e-7),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    xt, yt = tf.constant(x), tf.constant(y)

    def train_step():  # the compiled train function model.fit runs per step
        return model.train_on_batch(xt, yt)

    forward = tf.function(lambda t: model(t, training=False))
    predict = {"model.predict_on_batch(x)": lambda t: model.predict_on_batch(t),
               "tf.function(model(x, training=False))": lambda t: forward(t).numpy()}
    info = {"version": tf.__version__, "keras": keras.__version__,
            "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
            "onednn": _onednn_state(tf)}
    return dict(train_step=train_step, predict=predict, prepare=tf.constant,
                counts=peers.keras_param_counts(model), info=info,
                after=lambda: info.update(jit_compile=bool(model.jit_compile)))


def setup_torch(name, threads, x, y):
    import torch
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = peers.torch_model(name)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7)
    loss_fn = torch.nn.CrossEntropyLoss()

    def nchw(a):
        return torch.from_numpy(a.transpose(0, 3, 1, 2).copy())

    xt, yt = nchw(x), torch.from_numpy(y.astype("int64"))

    def train_step():
        model.train()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(xt), yt)
        loss.backward()
        opt.step()
        return loss.item()

    def predict(t):
        model.eval()
        with torch.inference_mode():
            return model(t).numpy()

    info = {"version": torch.__version__, "threads": torch.get_num_threads(),
            "interop_threads": torch.get_num_interop_threads(),
            "mkldnn": torch.backends.mkldnn.is_available()}
    return dict(train_step=train_step, predict={"model.eval() under torch.inference_mode()": predict},
                prepare=nchw, counts=peers.torch_param_counts(model), info=info, after=lambda: None)


SETUPS = {"tinycnn": setup_tinycnn, "keras": setup_keras, "torch": setup_torch,
          "onnxruntime": setup_onnxruntime, "programs": setup_programs}


# =============================================================================================
# Workers: each runs in its own process and writes one JSON file
# =============================================================================================
def worker_measure(task):
    """Train, infer and one-face timings of one (framework, model)."""
    import numpy as np
    fw, name, s = task["framework"], task["model"], task["settings"]
    rng = np.random.default_rng(0)
    x = rng.random((TRAIN_BATCH, H, W, C), dtype=np.float32)
    y = rng.integers(0, peers.NUM_CLASSES, TRAIN_BATCH).astype(np.int32)
    t0 = time.perf_counter()
    setup = SETUPS[fw](name, s["threads"], x, y)
    build_s = time.perf_counter() - t0
    trainable, total = setup["counts"]
    expect = tuple(task["expect_counts"])
    assert (trainable, total) == expect, (
        f"{fw} {name}: parameter count (trainable, total incl. BN moving stats) is "
        f"{(trainable, total)}, tinycnn's is {expect}: the peer is not the same architecture")
    rss_built = current_rss_mb()

    med = statistics.median
    out = {"framework": fw, "model": name, "params": {"trainable": trainable, "total": total},
           "rss_after_build_mb": rss_built, "build_s": build_s, "info": setup["info"], "timed_calls": {}}
    figures = task.get("figures", ("throughput", "latency"))
    if "throughput" in figures:
        if setup["train_step"] is not None:
            first, train = time_calls(setup["train_step"], s["train_warmup"], s["repeats"], s["budget_s"])
            out.update({"train_img_s": TRAIN_BATCH / med(train), "train_step_ms": 1e3 * med(train),
                        "train_step_ms_all": [1e3 * t for t in train], "first_step_s": first})
            out["timed_calls"]["train"] = len(train)
        peak_train = peak_rss_mb()  # training came first: this is the training process' peak
        xi = setup["prepare"](rng.random((INFER_BATCH, H, W, C), dtype=np.float32))
        infer = {call: time_calls(lambda: fn(xi), s["infer_warmup"], s["repeats"], s["budget_s"])[1]
                 for call, fn in setup["predict"].items()}
        best_infer = min(infer, key=lambda k: med(infer[k]))
        out.update({
            "infer_img_s": INFER_BATCH / med(infer[best_infer]), "infer_call": best_infer,
            "infer_img_s_by_call": {k: INFER_BATCH / med(v) for k, v in infer.items()},
            "peak_train_mb": peak_train if setup["train_step"] is not None else None})
        out["timed_calls"].update(infer={k: len(v) for k, v in infer.items()})
    if "latency" in figures:
        face = setup["prepare"](rng.random((1, H, W, C), dtype=np.float32))
        latency = {call: time_calls(lambda: fn(face), s["latency_warmup"], s["latency_repeats"], s["budget_s"])[1]
                   for call, fn in setup["predict"].items()}
        best_latency = min(latency, key=lambda k: med(latency[k]))
        out.update({
            "latency_ms": 1e3 * med(latency[best_latency]), "latency_call": best_latency,
            "latency_ms_by_call": {k: 1e3 * med(v) for k, v in latency.items()},
            "latency_ms_p90": 1e3 * sorted(latency[best_latency])[int(0.9 * (len(latency[best_latency]) - 1))]})
        out["timed_calls"]["latency"] = {k: len(v) for k, v in latency.items()}
    setup["after"]()
    return out


def numba_cache_stats():
    """Cache hits and misses (= fresh compilations) of every cached tinycnn kernel so far."""
    import importlib
    import pkgutil

    import tinycnn.kernels
    hits = misses = 0
    for mod in pkgutil.iter_modules(tinycnn.kernels.__path__):
        m = importlib.import_module(f"tinycnn.kernels.{mod.name}")
        for obj in vars(m).values():
            stats = getattr(obj, "stats", None)
            if stats is not None and hasattr(stats, "cache_misses"):
                hits += sum(stats.cache_hits.values())
                misses += sum(stats.cache_misses.values())
    return {"cache_hits": hits, "cache_misses": misses}


def worker_compile(task):
    """First and second training step (and first one-face call) of each model, in a process
    whose NUMBA_CACHE_DIR the parent chose (empty for the cold run)."""
    import numpy as np
    t0 = time.perf_counter()
    import fer_models
    import tinycnn as tc
    import_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    x = rng.random((TRAIN_BATCH, H, W, C), dtype=np.float32)
    y = rng.integers(0, peers.NUM_CLASSES, TRAIN_BATCH)
    face = rng.random((1, H, W, C), dtype=np.float32)
    out = {"numba_cache_dir": os.environ.get("NUMBA_CACHE_DIR"), "import_s": import_s, "models": {}}
    for name in task["models"]:
        model = fer_models.build(name)
        opt = tc.optim.Adam(model.parameters(), lr=1e-3)

        def step():
            loss = tc.losses.softmax_cross_entropy(model(x, training=True), y)
            opt.zero_grad()
            loss.backward()
            opt.step()

        def one_face():
            with tc.no_grad():
                model(face, training=False)

        first, (second,) = time_calls(step, 1, 1)
        face_first, (face_second,) = time_calls(one_face, 1, 1)
        out["models"][name] = {"first_step_s": first, "second_step_s": second,
                               "first_face_s": face_first, "second_face_s": face_second}
    out.update(numba_cache_stats())
    m = out["models"].values()
    out["first_steps_s"] = sum(r["first_step_s"] + r["first_face_s"] for r in m)
    out["compile_s"] = sum(r["first_step_s"] - r["second_step_s"] + r["first_face_s"] - r["second_face_s"]
                           for r in m)
    return out


def worker_conv(task):
    """numpy's float32 matmul peak, and tinycnn's convolution layers of some models in GFLOP/s,
    each by the algorithm ``auto`` chooses and, where that is Winograd, by im2col too."""
    import numpy as np
    from threadpoolctl import threadpool_limits

    import fer_models
    import numba
    import tinycnn as tc
    from tinycnn.kernels import conv, subpixel, winograd
    s = task["settings"]
    numba.set_num_threads(min(s["threads"], numba.config.NUMBA_NUM_THREADS))
    threadpool_limits(s["threads"], user_api="blas")
    rng = np.random.default_rng(0)

    n = s["matmul_size"]
    a, b = rng.random((n, n), dtype=np.float32), rng.random((n, n), dtype=np.float32)
    _, mm = time_calls(functools.partial(np.matmul, a, b), 1, s["matmul_repeats"])
    matmul = {"size": n, "gflops_best": 2 * n**3 / min(mm) / 1e9,
              "gflops_median": 2 * n**3 / statistics.median(mm) / 1e9, "blas": blas_info()}
    del a, b

    def time_layer(layer, i, shape, out_shape):
        batch = TRAIN_BATCH
        xin = rng.random((batch,) + tuple(shape), dtype=np.float32)
        g = rng.standard_normal((batch,) + tuple(out_shape)).astype(np.float32)
        needs_dx = i > 0  # the first layer's input is the image: no gradient is asked for
        xt = tc.Tensor(xin, requires_grad=needs_dx)

        def forward():
            with tc.no_grad():
                layer(xin, training=False)

        def forward_backward():
            for p in layer.parameters():
                p.grad = None
            xt.grad = None
            layer(xt, training=True).backward(g)

        _, fwd = time_calls(forward, s["conv_warmup"], s["conv_repeats"])
        _, fb = time_calls(forward_backward, s["conv_warmup"], s["conv_repeats"])
        flop = 2 * layer.multiply_adds(shape) * batch
        fb_flop = flop * (3 if needs_dx else 2)  # forward, weight gradient, input gradient
        return {"fwd_ms": 1e3 * statistics.median(fwd), "fwd_gflops": flop / statistics.median(fwd) / 1e9,
                "fwd_bwd_ms": 1e3 * statistics.median(fb), "fwd_bwd_gflops": fb_flop / statistics.median(fb) / 1e9,
                "fwd_flop": flop, "fwd_bwd_flop": fb_flop,
                "fwd_ms_all": [1e3 * t for t in fwd], "fwd_bwd_ms_all": [1e3 * t for t in fb]}

    models = {}
    for name in task["models"]:
        model = fer_models.build(name)
        shape, layers = model.input_shape, []
        for i, layer in enumerate(model.layers):
            out_shape = layer.compute_output_shape(shape)
            if isinstance(layer, (tc.layers.Conv2D, tc.layers.Conv2DTranspose)):
                algorithm = "im2col"
                if isinstance(layer, tc.layers.Conv2DTranspose):
                    full = (TRAIN_BATCH,) + tuple(out_shape)
                    if subpixel.chosen((TRAIN_BATCH,) + tuple(shape), layer.kernel.shape, layer.strides,
                                       layer._pads(*out_shape[:2]), full):
                        algorithm = "sub-pixel F(6x6, 2x2)"
                elif isinstance(layer, tc.layers.Conv2D):
                    pads = layer._pads(shape[0], shape[1])
                    algorithm = conv.choose_algorithm((TRAIN_BATCH,) + tuple(shape), layer.kernel.shape, layer.strides,
                                                      pads)
                    if algorithm == "winograd":
                        m = winograd.choose_tile(*out_shape[:2])
                        algorithm = f"winograd F({m}x{m})"
                row = {"layer": layer.name, "type": type(layer).__name__, "input": list(shape),
                       "output": list(out_shape), "mult_adds_per_image": layer.multiply_adds(shape),
                       "algorithm": algorithm, **time_layer(layer, i, shape, out_shape)}
                if algorithm != "im2col":
                    with tc.use_conv_algorithm("im2col"):
                        row["im2col"] = time_layer(layer, i, shape, out_shape)
                layers.append(row)
            shape = out_shape
        total = {"fwd_ms": sum(r["fwd_ms"] for r in layers), "fwd_bwd_ms": sum(r["fwd_bwd_ms"] for r in layers)}
        total["fwd_gflops"] = sum(r["fwd_flop"] for r in layers) / total["fwd_ms"] / 1e6
        total["fwd_bwd_gflops"] = sum(r["fwd_bwd_flop"] for r in layers) / total["fwd_bwd_ms"] / 1e6
        total["im2col_fwd_ms"] = sum(r.get("im2col", r)["fwd_ms"] for r in layers)
        total["im2col_fwd_bwd_ms"] = sum(r.get("im2col", r)["fwd_bwd_ms"] for r in layers)
        models[name] = {"layers": layers, "total": total}
    return {"models": models, "batch": TRAIN_BATCH, "backend": tc.get_backend(),
            "conv_algorithm": tc.get_conv_algorithm(), "matmul": matmul}


WORKERS = {"measure": worker_measure, "compile": worker_compile, "conv": worker_conv}


# =============================================================================================
# The parent: runs the workers one after another and reports
# =============================================================================================
def run_worker(task, env_extra=None, timeout=1800):
    """Run one worker; returns (result or None, error text or None, peak RSS MB of the process)."""
    # a user's environment: none of the settings that tune tinycnn or OpenBLAS's threads
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("TINYCNN_") and k not in ("OPENBLAS_THREAD_TIMEOUT", "OMP_WAIT_POLICY")}
    env = dict(env, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=os.pathsep.join(
        [ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    env.update(env_extra or {})
    with tempfile.TemporaryDirectory() as tmp:
        out_path, log_path = os.path.join(tmp, "out.json"), os.path.join(tmp, "log.txt")
        with open(log_path, "w") as log:
            proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", json.dumps(task),
                                     "--worker-out", out_path], stdout=log, stderr=subprocess.STDOUT,
                                    env=env, cwd=ROOT)
            # wait4 gives this child's own peak RSS (RUSAGE_CHILDREN would be the max over all)
            deadline = time.monotonic() + timeout
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if time.monotonic() > deadline:
                    proc.kill()
                    pid, status, usage = os.wait4(proc.pid, 0)
                    break
                time.sleep(0.1)
            proc.returncode = os.waitstatus_to_exitcode(status)
        peak = usage.ru_maxrss / 1024
        if proc.returncode == 0 and os.path.exists(out_path):
            with open(out_path) as f:
                return json.load(f), None, peak
        with open(log_path) as f:
            lines = [l for l in f.read().splitlines() if l.strip()]
        why = "timed out" if time.monotonic() > deadline else f"exit code {proc.returncode}"
        return None, f"{why}: " + "\n".join(lines[-15:]), peak


def settings_for(args):
    quick = args.quick
    repeats = args.repeats or (2 if quick else 5)
    return {"threads": args.threads, "repeats": repeats,
            "train_warmup": 1 if quick else 2, "infer_warmup": 1 if quick else 2,
            "latency_warmup": 3 if quick else 10, "latency_repeats": max(10 * repeats, 20),
            "conv_warmup": 1, "conv_repeats": 1 if quick else 3,
            "matmul_size": 2048 if quick else 3072, "matmul_repeats": 2 if quick else 5,
            "budget_s": args.budget}


def machine_info():
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = None
    try:
        with open("/proc/meminfo") as f:
            mem = round(int(next(l for l in f if l.startswith("MemTotal")).split()[1]) / 2**20, 1)
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
            "memory_gb": mem, "platform": platform.platform(), "python": platform.python_version(),
            "load_average_at_start": [round(v, 2) for v in os.getloadavg()]}


def versions():
    out = {}
    for label, dists in {"numpy": ["numpy"], "numba": ["numba"], "tinycnn": ["tinycnn"],
                         "tensorflow": ["tensorflow-cpu", "tensorflow"], "keras": ["keras"],
                         "torch": ["torch"]}.items():
        for d in dists:
            try:
                out[label] = importlib.metadata.version(d)
                break
            except importlib.metadata.PackageNotFoundError:
                out[label] = None
    return out


def ratio(a, b):
    return a / b if a and b else None


def compute_ratios(results):
    out = {}
    for model, row in results.items():
        tc = row.get("tinycnn") or {}
        out[model] = {}
        programs = row.get("programs") or {}
        for metric in ("train_img_s", "infer_img_s", "latency_ms", "peak_train_mb"):
            for peer in PEERS:
                p = row.get(peer) or {}
                out[model].setdefault(metric, {})[f"tinycnn/{peer}"] = ratio(tc.get(metric), p.get(metric))
                out[model][metric][f"programs/{peer}"] = ratio(programs.get(metric), p.get(metric))
    return out


# -- markdown --------------------------------------------------------------------------------
def fmt(v, digits=0):
    if v is None:
        return "–"
    return f"{v:,.{digits}f}"


def _keras_onednn(report):
    """What the Keras processes reported of TensorFlow's oneDNN kernels (one entry for all
    models when they agree)."""
    states = {r["keras"]["info"].get("onednn", "not recorded") for r in report["results"].values()
              if isinstance(r.get("keras"), dict) and "info" in r["keras"]}
    return "; ".join(sorted(states)) or "Keras not run"


def markdown(report):
    m, v, s = report["machine"], report["versions"], report["settings"]
    blas = "; ".join(f"{b['internal_api']} {b['version']} ({b['num_threads']} threads, {b['architecture']})"
                     for b in report["blas"]) or "none found"
    lines = [f"# tinycnn vs Keras vs PyTorch vs ONNX Runtime on the FER-2013 seed models{' (QUICK: not for citing)' if report['quick'] else ''}",
             "",
             f"- date: {report['date']}",
             f"- machine: {m['cpu']}, {m['usable_cores']} usable cores ({m['cpu_count']} CPUs), {m['memory_gb']} GB; "
             f"load average {m['load_average_at_start']} at start, {m['load_average_at_end']} at end",
             f"- versions: Python {m['python']}, numpy {v['numpy']}, numba {v['numba']}, tinycnn {v['tinycnn']}, "
             f"TensorFlow {v['tensorflow']}, Keras {v['keras']}, PyTorch {v['torch']}",
             f"- numpy BLAS: {blas}; OPENBLAS_CORETYPE={report['openblas_coretype'] or 'unset'}",
             f"- threads per framework: {s['threads']} (TF intra/inter-op, torch.set_num_threads, "
             f"Numba and BLAS for tinycnn)",
             f"- TensorFlow's oneDNN kernels: {_keras_onednn(report)}",
             "- tinycnn: as a user's script runs it (fresh process, NumPy imported first, no environment "
             "variable, README's training loop, `model.predict`); \"tinycnn as the programs run\": with "
             "`keep_freed_memory()` and an `inference_copy()`, as train.py and webcam.py run; ONNX Runtime: "
             "tinycnn's `export_onnx` of the same model, default session options, no training",
             f"- train: batch {TRAIN_BATCH}, median of {s['repeats']} Adam steps (at least 3 if a figure "
             f"overran its {s['budget_s']:.0f} s budget) after {s['train_warmup']} warm-up; "
             f"infer: batch {INFER_BATCH}, median of {s['repeats']} after {s['infer_warmup']}; "
             f"1 face: median of {s['latency_repeats']} calls after {s['latency_warmup']}",
             ""]
    tables = [("Training, images/s (higher is better; ratio > 1: tinycnn faster)", "train_img_s", 0),
              (f"Inference at batch {INFER_BATCH}, images/s (higher is better; ratio > 1: tinycnn faster)",
               "infer_img_s", 0),
              ("One face (batch 1), ms (lower is better; ratio < 1: tinycnn faster)", "latency_ms", 2),
              ("Peak memory of the training process, MB (lower is better; ratio < 1: tinycnn smaller)",
               "peak_train_mb", 0)]
    fws = report["frameworks"]
    peers_ = [f for f in PEERS if f in fws and "tinycnn" in fws]
    for title, key, digits in tables:
        lines += [f"## {title}", "",
                  "| model | " + " | ".join(LABELS[f] for f in fws) + "".join(
                      f" | tinycnn/{LABELS[p]}" for p in peers_) + " |",
                  "|---" + "|---:" * (len(fws) + len(peers_)) + "|"]
        for model, row in report["results"].items():
            cells = [fmt((row.get(f) or {}).get(key), digits) if row.get(f) else "error" for f in fws]
            cells += [(f"{r:.2f}x" if (r := report["ratios"][model][key][f"tinycnn/{p}"]) else "–") for p in peers_]
            lines.append(f"| {model} | " + " | ".join(cells) + " |")
        if "programs" in fws and peers_:
            lines += ["", "As the programs run, against the same peers: " + "; ".join(
                f"{model} " + ", ".join(f"{r:.2f}x {LABELS[p]}" for p in peers_
                                        if (r := report["ratios"][model][key][f"programs/{p}"]))
                for model in report["results"])]
        lines.append("")
    for key, what in (("infer_call", "Inference"), ("latency_call", "One-face")):
        calls = {f: sorted({(r.get(f) or {}).get(key) for r in report["results"].values()} - {None}) for f in fws}
        lines += [f"{what} calls (the faster of those tried, per model): " + "; ".join(
            f"{LABELS[f]}: {', '.join(c)}" for f, c in calls.items() if c), ""]

    conv = report.get("conv")
    if conv:
        mm = conv["matmul"]
        peak = mm["gflops_best"]
        lines += [f"## tinycnn convolutions (batch {conv['batch']}, backend {conv['backend']}, algorithm "
                  f"{conv['conv_algorithm']}) vs numpy float32 matmul peak {peak:.0f} GFLOP/s "
                  f"({mm['size']}x{mm['size']}, median {mm['gflops_median']:.0f})", "",
                  "Effective GFLOP/s = 2 x the direct convolution's multiply-adds / time, so a layer "
                  "computed by Winograd (fewer multiplications) may pass 100% of the matmul peak. "
                  "Where the layer runs by Winograd, the same layer by im2col is timed too.", ""]
        for name, res in conv["models"].items():
            lines += [f"### {name}", "",
                      "| layer | input -> output | M mult-adds/img | algorithm | fwd ms | fwd GFLOP/s | % peak "
                      "| fwd+bwd ms | fwd+bwd GFLOP/s | % peak | im2col fwd / fwd+bwd ms |",
                      "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
            for r in res["layers"] + [dict(res["total"], layer="all conv layers", input=None)]:
                total = r["input"] is None
                shapes = "" if total else f"{'x'.join(map(str, r['input']))} -> {'x'.join(map(str, r['output']))}"
                ma = "" if total else f"{r['mult_adds_per_image'] / 1e6:.1f}"
                other = (f"{r['im2col_fwd_ms']:.1f} / {r['im2col_fwd_bwd_ms']:.1f}" if total else
                         f"{r['im2col']['fwd_ms']:.1f} / {r['im2col']['fwd_bwd_ms']:.1f}" if "im2col" in r else "")
                lines.append(f"| {r['layer']} | {shapes} | {ma} | {r.get('algorithm', '')} | {r['fwd_ms']:.1f} | "
                             f"{r['fwd_gflops']:.0f} | {100 * r['fwd_gflops'] / peak:.0f}% | {r['fwd_bwd_ms']:.1f} | "
                             f"{r['fwd_bwd_gflops']:.0f} | {100 * r['fwd_bwd_gflops'] / peak:.0f}% | {other} |")
            lines.append("")

    comp = report.get("compile")
    if comp:
        lines += ["## tinycnn first call: Numba compilation", "",
                  f"First training step (batch {TRAIN_BATCH}) plus first one-face call of "
                  f"{', '.join(comp['models'])}, each in a fresh process:", "",
                  "| process | first calls s | first minus second calls s | kernels compiled (cache misses) "
                  "| kernels loaded from cache |",
                  "|---|---:|---:|---:|---:|"]
        for key, label in (("cold", "1st, empty NUMBA_CACHE_DIR"), ("cached", "2nd, same NUMBA_CACHE_DIR")):
            r = comp.get(key)
            if r:
                lines.append(f"| {label} | {r['first_steps_s']:.2f} | {r['compile_s']:.2f} | "
                             f"{r['cache_misses']} | {r['cache_hits']} |")
            else:
                lines.append(f"| {label} | error | | | |")
        normal = {mdl: (row.get("tinycnn") or {}).get("first_step_s") for mdl, row in report["results"].items()}
        normal = {k: v for k, v in normal.items() if v is not None}
        lines += ["", "The difference between the first and second calls is the compilation in the cold "
                  "process; in the cached one it is what is left (loading the cache, first-touch allocation)."]
        if normal:
            lines += ["", "First training step in the measurement processes (the normal cache, "
                      "`tinycnn/kernels/__pycache__`): " + ", ".join(f"{k} {v:.2f} s" for k, v in normal.items())]
        lines.append("")
    if report["errors"]:
        lines += ["## Errors", ""] + [f"- {k}: {e.splitlines()[-1] if e else ''}" for k, e in report["errors"].items()] + [""]
    return "\n".join(lines)


def write_atomic(path, text):
    """Write via a temporary file and a rename, so an interrupted run leaves the old results."""
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Time tinycnn, Keras (TensorFlow CPU) and PyTorch (CPU) on the five FER-2013 "
                    "seed models: training and inference throughput, one-face latency, peak memory, "
                    "tinycnn's compile time and its convolutions' GFLOP/s against the matmul peak.")
    p.add_argument("--models", nargs="+", choices=peers.MODELS, default=None,
                   help="models to run (default: all five; with --quick: small3)")
    p.add_argument("--frameworks", nargs="+", choices=FRAMEWORKS, default=list(FRAMEWORKS),
                   help="frameworks to run (default: all; 'programs' is tinycnn as train.py and "
                        "webcam.py configure it, beside the headline's user script)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed training steps and inference batches per figure, the median is reported "
                        "(default 5, with --quick 2); one-face latency takes max(10 x this, 20) calls")
    p.add_argument("--quick", action="store_true",
                   help="a smoke test in about a minute: 2 repeats, 1 warm-up, small3 only unless --models, "
                        "smaller matmul; the numbers are not for citing")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                   help="threads each framework may use (default: all usable cores)")
    p.add_argument("--budget", type=float, default=60.0,
                   help="seconds of timed calls per figure after which a figure stops early, "
                        "having had at least 3 timed calls (default 60); JSON records the counts")
    p.add_argument("--conv-models", nargs="+", choices=peers.MODELS, default=None,
                   help="models whose convolution layers are timed in GFLOP/s "
                        "(default: every model run; with --quick the first of --models)")
    p.add_argument("--no-conv", action="store_true", help="skip the matmul peak and conv GFLOP/s")
    p.add_argument("--no-compile", action="store_true", help="skip the Numba first-call compile timing")
    p.add_argument("--json", default=None,
                   help="where to write the JSON (default bench/results/latest.json; with --quick "
                        "bench/results/quick.json); the markdown goes next to it as .md")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        p.error("--repeats must be at least 1")
    if args.models is None:
        args.models = ["small3"] if args.quick else list(peers.MODELS)
    if args.json is None:
        args.json = os.path.join(HERE, "results", "quick.json" if args.quick else "latest.json")
    if args.conv_models is None:
        args.conv_models = args.models[:1] if args.quick else list(args.models)
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.worker:  # inside a subprocess
        task = json.loads(args.worker)
        result = WORKERS[task["kind"]](task)
        with open(args.worker_out, "w") as f:
            json.dump(result, f)
        return 0

    import fer_models  # the parent builds tinycnn models only to count their parameters
    started = time.perf_counter()
    s = settings_for(args)
    fws = [f for f in FRAMEWORKS if f in args.frameworks]
    report = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "quick": args.quick, "command": " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:]),
              "machine": machine_info(), "versions": versions(), "blas": blas_info(),
              "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"),
              "settings": dict(s, train_batch=TRAIN_BATCH, infer_batch=INFER_BATCH),
              "frameworks": fws, "models": args.models, "results": {}, "errors": {}}

    if not args.no_conv and "tinycnn" in fws:
        log(f"[conv] numpy matmul peak and tinycnn conv layers of {', '.join(args.conv_models)} ...")
        res, err, _ = run_worker({"kind": "conv", "models": args.conv_models, "settings": s})
        report["conv"] = res
        if err:
            report["errors"]["conv"] = err
            log(f"  FAILED: {err}")
        else:
            log(f"  matmul {res['matmul']['gflops_best']:.0f} GFLOP/s; convs forward+backward " + ", ".join(
                f"{k} {v['total']['fwd_bwd_gflops']:.0f}" for k, v in res["models"].items()) + " GFLOP/s")

    if not args.no_compile and "tinycnn" in fws:
        compile_models = args.models[:1] if args.quick else args.models
        report["compile"] = {"models": compile_models}
        with tempfile.TemporaryDirectory(prefix="numba-cache-") as cache:
            for key in ("cold", "cached"):
                log(f"[compile] tinycnn first steps, {key} Numba cache ({cache}) ...")
                res, err, _ = run_worker({"kind": "compile", "models": compile_models},
                                         env_extra={"NUMBA_CACHE_DIR": cache})
                report["compile"][key] = res
                if err:
                    report["errors"][f"compile {key}"] = err
                    log(f"  FAILED: {err}")
                else:
                    log(f"  {res['first_steps_s']:.1f} s, compile {res['compile_s']:.1f} s, "
                        f"{res['cache_misses']} kernels compiled, {res['cache_hits']} loaded")

    for model in args.models:
        expect = peers.tinycnn_param_counts(fer_models.build(model))
        report["results"][model] = {}
        for fw in fws:
            log(f"[{model}] {LABELS[fw]} ...")
            task = {"kind": "measure", "framework": fw, "model": model, "expect_counts": expect, "settings": s}
            res, err, peak = run_worker(task)
            if err:
                report["errors"][f"{model} {fw}"] = err
                report["results"][model][fw] = None
                log(f"  FAILED: {err}")
                continue
            res["peak_process_mb"] = peak
            report["results"][model][fw] = res
            log(f"  train {fmt(res.get('train_img_s'))} img/s, infer {res['infer_img_s']:.0f} img/s, "
                f"1 face {res['latency_ms']:.2f} ms, peak {fmt(res.get('peak_train_mb'))} MB")

    report["ratios"] = compute_ratios(report["results"])
    report["machine"]["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    report["wall_s"] = time.perf_counter() - started
    md = markdown(report)
    print(md)
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    write_atomic(args.json, json.dumps(report, indent=2) + "\n")
    write_atomic(os.path.splitext(args.json)[0] + ".md", md + "\n")
    log(f"wrote {args.json} and its .md in {report['wall_s']:.0f} s")
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
