"""Where one face's time goes: each step of a model's inference plan at one image, timed
alone, against the same layers run through Tensors and Functions and against the
arithmetic it does, and the whole call against ONNX Runtime's.

    python bench/one_face.py                   # the five seed models, about a minute
    python bench/one_face.py --models small3 updown

Per step (as ``model.predict`` runs it: the inference copy's plan, one Numba thread for
the call; ``tinycnn/plan/inference.py``): the median time of ``--repeats`` calls, the same
layers' time through ``run_layers`` (Tensors, Functions, checks: what the plan leaves
out), its
multiply-adds, and the time those would take at the float32 matmul rate of one core
measured in the same run (a (576, 576) x (576, 128) product on one BLAS thread: about the
size of the models' products at one image). What is left over is the step's
overhead: Python, the checks at each kernel's entry, allocation, passes over memory.
A step with no multiply-adds (pooling, flatten) is all overhead by that measure. The
multiply-adds are the direct convolution's: a layer computed by Winograd does fewer, and
a large product is split between the cores, so there "the rest" can come out below
zero. Then
the whole call by ``model.predict`` and by ONNX Runtime (default session options, in a
process of its own) on tinycnn's ``export_onnx`` of the same weights, when onnxruntime is
installed, and ONNX Runtime's own profile of the call, operator by operator, with its
default threads and on one thread: where its time goes against the plan's steps.

Close other programs first (anything else running distorts every figure).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from bench import time_calls  # noqa: E402  (bench/bench.py, beside this file)

MODELS = ("updown", "vggbn", "deep4", "small3", "gap4")


def median_ms(fn, repeats, warmup=20):
    """Median ms of ``repeats`` timed calls after ``warmup`` untimed ones (bench.py's timer)."""
    return 1e3 * statistics.median(time_calls(fn, warmup, repeats)[1])


def one_core_rate(repeats):
    """Multiply-adds per ms of a one-image-sized float32 product on one BLAS thread."""
    from tinycnn import backend
    rng = np.random.default_rng(0)
    a, b = rng.random((576, 576), dtype=np.float32), rng.random((576, 128), dtype=np.float32)
    out = np.empty((576, 128), np.float32)
    with backend.one_blas_thread():
        ms = median_ms(lambda: np.matmul(a, b, out=out), repeats)
    return 576 * 576 * 128 / ms


ORT_WORKER = """
import sys, numpy as np
sys.path.insert(0, {root!r}); sys.path.insert(0, {here!r})
import onnxruntime as ort, fer_models
from tinycnn.io import export_onnx
from one_face import median_ms
path = {path!r}
export_onnx(fer_models.build({name!r}), path, softmax=False)
session = ort.InferenceSession(path, ort.SessionOptions(), providers=["CPUExecutionProvider"])
face = np.random.default_rng(1).random((1, 48, 48, 1), dtype=np.float32)
print(median_ms(lambda: session.run(None, {{"input": face}}), {repeats}))
"""


def onnxruntime_ms(name, repeats):
    """ONNX Runtime's one face on tinycnn's export, in a process of its own: beside
    tinycnn's threads (or they beside its spinning ones) either measured up to twice as
    slow. None when onnxruntime is not installed."""
    import subprocess
    try:
        import onnxruntime  # noqa: F401  (only whether it is installed)
    except ImportError:
        return None
    path = os.path.join(tempfile.mkdtemp(prefix="one-face-"), f"{name}.onnx")
    code = ORT_WORKER.format(root=ROOT, here=os.path.dirname(os.path.abspath(__file__)), path=path, name=name,
                             repeats=repeats)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(run.stdout.strip().splitlines()[-1])


ORT_NODES_WORKER = """
import json, os, sys, numpy as np
sys.path.insert(0, {root!r})
import onnxruntime as ort, fer_models
from tinycnn.io import export_onnx
path = {path!r}
export_onnx(fer_models.build({name!r}), path, softmax=False)
face = np.random.default_rng(1).random((1, 48, 48, 1), dtype=np.float32)
times = {{}}
for threads in (0, 1):          # 0: ONNX Runtime's default (every core), then one thread
    options = ort.SessionOptions()
    options.enable_profiling, options.profile_file_prefix = True, path + f".{{threads}}"
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    for _ in range({repeats}):
        session.run(None, {{"input": face}})
    trace = session.end_profiling()
    for event in json.load(open(trace)):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            times.setdefault(event["name"][:-len("_kernel_time")], ([], []))[threads].append(event["dur"])
    os.remove(trace)
print(json.dumps([(node, float(np.median(a)) / 1e3, float(np.median(b)) / 1e3) for node, (a, b) in times.items()]))
"""


def onnxruntime_nodes(name, repeats):
    """ONNX Runtime's own profile of the same face, operator by operator (its optimised
    graph: NCHWc convolutions with their activation fused, layout changes): a list of
    (operator, median ms with its default threads, median ms on one thread), from a
    process of its own; None when onnxruntime is not installed. Profiling adds a little to
    each operator, so the sum comes out above the whole call's time."""
    import json
    import subprocess
    try:
        import onnxruntime  # noqa: F401  (only whether it is installed)
    except ImportError:
        return None
    path = os.path.join(tempfile.mkdtemp(prefix="one-face-"), f"{name}.onnx")
    code = ORT_NODES_WORKER.format(root=ROOT, path=path, name=name, repeats=repeats)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(run.stdout.strip().splitlines()[-1])


def profile(name, repeats, rate):
    """(predict's ms, rows, ONNX Runtime's ms): a row per step of the model's inference
    plan: (label, input shape, output shape, multiply-adds, ms as the plan runs it, ms of
    the same layers through Tensors and Functions, arithmetic ms at one core's rate)."""
    import fer_models
    import tinycnn as tc
    from tinycnn import backend
    from tinycnn.plan.fold import run_layers
    model = fer_models.build(name)
    face = np.random.default_rng(1).random((1, 48, 48, 1), dtype=np.float32)
    ort_ms = onnxruntime_ms(name, repeats)
    whole = median_ms(lambda: model.predict(face), repeats)
    plan = model.inference_plan()
    timed = plan.profile(face, repeats=repeats, warmup=20)
    rows, h = [], tc.Tensor(face)
    with tc.no_grad(), backend.one_numba_thread():
        for step, seconds in timed:
            layers_ms = median_ms(lambda: run_layers(step.layers, h, False), repeats)
            h = run_layers(step.layers, h, False)
            rows.append((step.label, step.input_shape, step.output_shape, step.multiply_adds, 1e3 * seconds,
                         layers_ms, step.multiply_adds / rate))
    return whole, rows, ort_ms


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--repeats", type=int, default=300, help="timed calls per figure (the median is shown)")
    p.add_argument("--onnxruntime-operators", action=argparse.BooleanOptionalAction, default=True,
                   help="also ONNX Runtime's own profile, operator by operator, with its default threads "
                        "and on one thread (when onnxruntime is installed)")
    args = p.parse_args(argv)
    rate = one_core_rate(args.repeats)
    print(f"One face, step by step of the inference plan (one image); one core's float32 product rate "
          f"{2 * rate / 1e6:.0f} GFLOP/s ((576, 576) x (576, 128), one BLAS thread)\n")
    for name in args.models:
        whole, rows, ort_ms = profile(name, args.repeats, rate)
        steps_ms, layers_ms, arithmetic = (sum(r[i] for r in rows) for i in (4, 5, 6))
        print(f"## {name}: predict {whole:.3f} ms" + (f", ONNX Runtime {ort_ms:.3f} ms" if ort_ms else "")
              + f"; the plan's steps alone {steps_ms:.3f} ms (the same layers through Tensors and Functions "
              f"{layers_ms:.3f} ms), arithmetic at one core's rate {arithmetic:.3f} ms\n")
        print("| step | input -> output | M mult-adds | plan ms | through Functions ms | arithmetic ms | "
              "plan - arithmetic ms |")
        print("|---|---|---:|---:|---:|---:|---:|")
        for label, shape, out, macs, ms, via_layers, arith in rows:
            print(f"| {label} | {'x'.join(map(str, shape))} -> {'x'.join(map(str, out))} | {macs / 1e6:.2f} | "
                  f"{ms:.3f} | {via_layers:.3f} | {arith:.3f} | {ms - arith:.3f} |")
        print()
        nodes = onnxruntime_nodes(name, args.repeats) if args.onnxruntime_operators else None
        if nodes:
            print(f"ONNX Runtime's profile of {name}, operator by operator (median ms; its optimised graph):\n")
            print("| operator | default threads | one thread |")
            print("|---|---:|---:|")
            for node, ms, one in nodes:
                print(f"| {node} | {ms:.3f} | {one:.3f} |")
            print(f"| sum | {sum(n[1] for n in nodes):.3f} | {sum(n[2] for n in nodes):.3f} |")
            print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
