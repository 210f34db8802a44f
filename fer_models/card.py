"""Write a model card (markdown) from a finished run directory of train.py."""
from __future__ import annotations

import json
import platform
from pathlib import Path

from .classes import CLASSES

# The evaluations with test-time augmentation a run may hold (train.py --evaluate RUN --tta),
# each given a section of its own: (file, heading, how the faces were classified).
TTA_REPORTS = (
    ("report-tta.json", "With test-time augmentation",
     "Each face is classified together with its mirror image and the two probability vectors are "
     "averaged (`train.py --evaluate RUN --tta`, `predict_emotion(tta=True)`, `webcam.py --tta`)."),
    ("report-tta-shifts.json", "With ten-view test-time augmentation",
     "Each face is classified as ten views, itself and its mirror image each also shifted by 2 pixels "
     "in the four directions, and the ten probability vectors averaged (`train.py --evaluate RUN --tta "
     "shifts`)."),
    ("report-tta-zooms.json", "With six-view test-time augmentation",
     "Each face is classified as six views, itself and its mirror image each also zoomed out and in by 8% "
     "about its centre, and the six probability vectors averaged (`train.py --evaluate RUN --tta zooms`, "
     "`predict_emotion`'s default)."),
)


def _accuracy_sections(report, heading, intro=None) -> list[str]:
    """Markdown lines: accuracy and loss per split, then PrivateTest's per-class table
    and confusion matrix, from a report written by ``train.py --evaluate``."""
    lines = [f"## {heading}", ""] + ([intro, ""] if intro else [])
    lines += ["| split | accuracy | 95% interval | loss |", "|---|---:|---:|---:|"]
    for split in ("PublicTest", "PrivateTest"):
        if split in report:
            ci = report[split].get("accuracy_95ci")
            interval = f"{ci[0]:.4f}-{ci[1]:.4f}" if ci else "-"
            lines.append(f"| {split} | {report[split]['report']['accuracy']:.4f} | {interval} | "
                         f"{report[split]['loss']:.4f} |")
    if "PrivateTest" in report:
        r, cm = report["PrivateTest"]["report"], report["PrivateTest"]["confusion_matrix"]
        lines += ["", "PrivateTest per class:", "", "| class | precision | recall | F1 | support |",
                  "|---|---:|---:|---:|---:|"]
        for c in CLASSES:
            lines.append(f"| {c} | {r[c]['precision']:.3f} | {r[c]['recall']:.3f} | {r[c]['f1-score']:.3f} | "
                         f"{r[c]['support']} |")
        lines += ["", "Confusion matrix on PrivateTest (rows: true class, columns: predicted):", "",
                  "| | " + " | ".join(CLASSES) + " |", "|---|" + "---:|" * len(CLASSES)]
        lines += [f"| {c} | " + " | ".join(str(v) for v in row) + " |" for c, row in zip(CLASSES, cm)]
    return lines


def model_card(run, title="FER-2013 emotion model") -> str:
    """Markdown describing the run in ``run``: architecture, recipe, training time and
    throughput, PublicTest and PrivateTest figures. Reads ``args.json``,
    ``history.json`` and ``report.json`` (written by ``train.py`` and its evaluation), and
    ``report-tta.json`` when ``train.py --evaluate RUN --tta`` has been run."""
    from .architectures import build, describe

    run = Path(run)
    args = json.loads((run / "args.json").read_text())
    history = json.loads((run / "history.json").read_text())
    report = json.loads((run / "report.json").read_text())
    model = build(args["model"])
    best = max(history, key=lambda h: h["val_acc"])
    seconds = sum(h["seconds"] for h in history)
    rates = sorted(h["img_per_s"] for h in history)
    lines = [f"# {title}", "",
             f"Architecture `{args['model']}`: {describe(args['model'])}. "
             f"{model.count_params():,} parameters, {model.multiply_adds() / 1e6:.1f}M multiply-adds per "
             f"48x48 face. Input: grayscale 48x48 in [0, 1], preprocessing `{args.get('preprocessing') or 'none'}` "
             "(recorded in the weights; `fer_models/preprocess.py`); output: logits for "
             f"{', '.join(CLASSES)} (in that order).", "",
             "## Recipe", "",
             f"- data: FER-2013 Training ({'all' if not args.get('limit') else args['limit']} images), "
             "model chosen on PublicTest, reported once on PrivateTest",
             f"- optimiser: {args['optimizer']}, learning rate {args['lr']}, schedule {args['schedule']}, "
             f"weight decay {args['weight_decay']}, batch {args['batch_size']}",
             f"- augmentation: {'random flip, rotation ±10°, shift ±10%, zoom ±10%' if args['augment'] else 'none'}; "
             f"class weights: {args['class_weights']}; label smoothing: {args['label_smoothing']}; seed {args['seed']}",
             f"- epochs run: {len(history)} (planned {args['epochs']}); best PublicTest at epoch {best['epoch']}",
             f"- training time: {seconds / 3600:.2f} h of training passes on {platform.machine()} "
             f"({platform.processor() or 'CPU'}), median {rates[len(rates) // 2]:.0f} images/s "
             "(per epoch below)", "",
             *_accuracy_sections(report, "Accuracy")]
    for name, title, how in TTA_REPORTS:
        if (run / name).exists():
            lines += ["", *_accuracy_sections(json.loads((run / name).read_text()), title, how)]
    lines += ["", "## Per epoch", "", "| epoch | train loss | train acc | PublicTest acc | lr | img/s |",
              "|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {h['epoch']} | {h['loss']:.4f} | {h['acc']:.4f} | {h['val_acc']:.4f} | {h['lr']:.2e} | "
              f"{h['img_per_s']:.0f} |" for h in history]
    return "\n".join(lines) + "\n"
