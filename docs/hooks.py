"""MkDocs hooks: what the site takes from the rest of the repository at build time.

* the seven notebooks of ``notebooks/`` become pages (mkdocs-jupyter executes them);
* the plots of the benchmark ratios are drawn from ``bench/results/latest.json``, so
  they always show the results file beside them, and no image is committed;
* the pages that include a file of the repository (the model card, the benchmark
  tables) find it from the project root, wherever ``mkdocs`` is started;
* ``mkdocs serve`` keeps executed notebooks between rebuilds (a notebook that changes
  runs again); ``mkdocs build`` always executes all of them.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
BENCH_RESULTS = ROOT / "bench" / "results" / "latest.json"

# bench.py's figures, as its ratios name them: (key, title, better, targets)
RATIO_PLOTS = [
    ("train_img_s", "Training, images/s at batch 128", "higher", {"keras": 1.3, "torch": 2.0}),
    ("infer_img_s", "Inference, images/s at batch 256", "higher", {"keras": 1.3, "onnxruntime": 1.0}),
    ("latency_ms", "One face, ms", "lower", {"onnxruntime": 1.0}),
    ("peak_train_mb", "Peak memory of a training process, MB", "lower", {}),
]
PEERS = {"keras": "Keras", "torch": "PyTorch", "onnxruntime": "ONNX Runtime"}
_command = "build"


def on_startup(command, dirty):
    global _command
    _command = command


def on_config(config):
    # pymdownx.snippets reads included files relative to the project root, not the cwd
    config.mdx_configs.setdefault("pymdownx.snippets", {})["base_path"] = [str(ROOT)]
    # notebooks execute at every build; while serving, only those that changed
    config.plugins["mkdocs-jupyter"].config["cache"] = _command == "serve"
    config.plugins["mkdocs-jupyter"].config["cache_dir"] = str(ROOT / ".cache" / "mkdocs-jupyter")
    return config


@event_priority(100)   # before mkdocs-jupyter turns .ipynb files into pages
def on_files(files, config):
    for notebook in sorted(NOTEBOOKS.glob("*.ipynb")):
        files.append(File(f"notebooks/{notebook.name}", src_dir=str(ROOT), dest_dir=config.site_dir,
                          use_directory_urls=config.use_directory_urls))
    results = json.loads(BENCH_RESULTS.read_text())
    for key, title, better, targets in RATIO_PLOTS:
        png = ratio_plot(results, key, title, better, targets)
        files.append(File.generated(config, f"benchmarks/ratios-{key}.png", content=png))
    return files


def on_serve(server, config, builder):
    for path in (NOTEBOOKS, ROOT / "bench", ROOT / "fer_models", ROOT / "tinycnn"):
        server.watch(str(path))
    return server


def ratio_plot(results: dict, key: str, title: str, better: str, targets: dict) -> bytes:
    """tinycnn's figure over each peer's, per model, as grouped bars (a PNG's bytes)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    models = [m for m in results["models"] if m in results["ratios"]]
    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=110)
    # the peers this figure has (a results file may predate a peer; ONNX Runtime does not train)
    peers = {p: n for p, n in PEERS.items()
             if any(results["ratios"][m][key].get(f"tinycnn/{p}") for m in models)}
    width = 0.8 / max(len(peers), 1)
    for i, (peer, name) in enumerate(peers.items()):
        ratios = [results["ratios"][m][key].get(f"tinycnn/{peer}") or np.nan for m in models]
        x = np.arange(len(models)) + (i - (len(peers) - 1) / 2) * width
        bars = ax.bar(x, ratios, width, label=f"tinycnn / {name}", color=f"C{i}")
        ax.bar_label(bars, labels=[f"{r:.2f}x" for r in ratios], fontsize=7, padding=2)
        if peer in targets:
            ax.axhline(targets[peer], color=f"C{i}", linestyle="--", linewidth=1,
                       label=f"target against {name}: {'>=' if better == 'higher' else '<='} {targets[peer]:g}x")
    ax.axhline(1.0, color="black", linewidth=0.6)
    ax.set_xticks(np.arange(len(models)), models)
    ax.set_ylabel("ratio")
    ax.set_title(f"{title}: {better} is better for tinycnn\n"
                 f"(run of {results['date'][:16].replace('T', ' ')} UTC, "
                 f"{results['machine']['usable_cores']} cores)", fontsize=10)
    ax.margins(y=0.15)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png")
    plt.close(fig)
    return out.getvalue()
