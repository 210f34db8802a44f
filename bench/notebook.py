"""The same measurement from a script and from a notebook cell: a student in Jupyter must
get the speed a script gets, with no setting made in either.

    python bench/notebook.py                  # the five seed models, about three minutes
    python bench/notebook.py --models small3 updown --rounds 3

Each round runs one measuring program twice, alternating: as a fresh ``python -c``
process, and as one cell of a new notebook executed by nbclient in a fresh Jupyter kernel
(ipykernel, as JupyterLab runs it). The program does what a user does: NumPy imported
first, no environment variable, ``fer_models.build(name)``, README's training loop at
batch 128 (Adam), ``model.predict`` on 256 faces and on one face. It prints one JSON line,
which both sides read back. The table gives the median over rounds of each figure and the
notebook's figure over the script's.

Close other programs first (anything else running distorts every figure).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = ("updown", "vggbn", "deep4", "small3", "gap4")

# What a user's cell holds; ``{models}`` is filled in. It imports nothing of bench/.
PROGRAM = """
import numpy as np
import json, statistics, time
import tinycnn as tc
import fer_models

def median_seconds(fn, warmup, repeats):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)

rng = np.random.default_rng(0)
x = rng.random((256, 48, 48, 1), dtype=np.float32)
y = rng.integers(0, 7, 256)
results = {{}}
for name in {models!r}:
    model = fer_models.build(name)
    opt = tc.optim.Adam(model.parameters(), lr=1e-3)

    def train_step():
        logits = model(x[:128], training=True)
        loss = tc.losses.softmax_cross_entropy(logits, y[:128])
        opt.zero_grad()
        loss.backward()
        opt.step()

    results[name] = {{
        "train images/s": 128 / median_seconds(train_step, 2, 5),
        "predict images/s": 256 / median_seconds(lambda: model.predict(x), 2, 5),
        "one face ms": 1e3 * median_seconds(lambda: model.predict(x[:1]), 10, 50),
    }}
print("RESULTS " + json.dumps(results))
"""


def parse(text):
    for line in reversed(text.splitlines()):
        if line.startswith("RESULTS "):
            return json.loads(line[len("RESULTS "):])
    raise RuntimeError(f"no RESULTS line in the output:\n{text[-2000:]}")


def clean_env():
    """The environment a user's shell gives: none of tinycnn's or OpenBLAS's settings."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith("TINYCNN_") and k not in ("OPENBLAS_THREAD_TIMEOUT", "OMP_WAIT_POLICY")}


def run_script(code):
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=clean_env(), cwd=ROOT,
                         check=True)
    return parse(run.stdout)


def run_notebook(code):
    """One cell in a fresh kernel of this interpreter, as JupyterLab would run it."""
    import nbformat
    from nbclient import NotebookClient
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_code_cell(code))
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    # the kernel gets the environment a JupyterLab started from the user's shell passes on
    # (nbclient alone starts it with almost none: without this machine's
    # OPENBLAS_CORETYPE, OpenBLAS would pick other kernels than the script's)
    NotebookClient(nb, timeout=1800, kernel_name="python3",
                   resources={"metadata": {"path": ROOT}}).execute(env=clean_env())
    out = "".join(o.get("text", "") for o in nb.cells[0].outputs if o.get("output_type") == "stream")
    return parse(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--rounds", type=int, default=2, help="script/notebook pairs, alternating (medians shown)")
    args = p.parse_args(argv)
    code = PROGRAM.format(models=list(args.models))
    runs = {"script": [], "notebook": []}
    for r in range(args.rounds):
        for where, run in (("script", run_script), ("notebook", run_notebook)):
            print(f"round {r + 1}/{args.rounds}: {where} ...", file=sys.stderr, flush=True)
            runs[where].append(run(code))
    print("| model | figure | script | notebook cell | notebook / script |")
    print("|---|---|---:|---:|---:|")
    for name in args.models:
        for figure in ("train images/s", "predict images/s", "one face ms"):
            s = statistics.median(r[name][figure] for r in runs["script"])
            n = statistics.median(r[name][figure] for r in runs["notebook"])
            digits = 3 if figure.endswith("ms") else 0
            print(f"| {name} | {figure} | {s:,.{digits}f} | {n:,.{digits}f} | {n / s:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
