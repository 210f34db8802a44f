#!/usr/bin/env python
"""Train and evaluate a tinycnn emotion recogniser on FER-2013.

    python train.py --data ../shared/fer2013 --model resfer --epochs 30 --out runs/resfer
    python train.py --resume runs/resfer                  # continue where it stopped
    python train.py --evaluate runs/resfer --data ../shared/fer2013
    python train.py --list-models

``pip install .`` installs this program as the command ``fer-train`` (the same options).

Protocol: train on Training, choose the epoch (the best checkpoint) on PublicTest,
report PrivateTest once at the end.
"""
from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import time
from pathlib import Path

import numpy as np

class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except the empty ones whose help already says what happens."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def parse_args(argv=None):
    import fer_models
    from fer_models.preprocess import METHODS
    from fer_models.data import default_location
    p = argparse.ArgumentParser(
        description="Train a tinycnn model on FER-2013, validate on PublicTest each epoch, "
                    "report PrivateTest at the end.",
        formatter_class=_HelpFormatter)
    p.add_argument("--data", type=Path, default=default_location(),
                   help="FER-2013: an image-folder tree (train/, test/ [validation/]) or fer2013.csv")
    p.add_argument("--model", default=None, choices=fer_models.names(),
                   help="architecture (see --list-models); with --evaluate, for weights files that do not "
                        "record theirs (default: resfer)")
    p.add_argument("--epochs", type=int, default=None,
                   help="number of passes over Training (default 30; when resuming, the run's own)")
    p.add_argument("--batch-size", type=int, default=64, help="images per optimiser step")
    p.add_argument("--optimizer", choices=("adam", "sgd"), default="adam",
                   help="Adam (Keras defaults) or SGD with Nesterov momentum")
    p.add_argument("--lr", type=float, default=None, help="base learning rate (default: 1e-3 Adam, 0.01 SGD)")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    p.add_argument("--weight-decay", type=float, default=0.0, help="decoupled weight decay (AdamW-style)")
    p.add_argument("--schedule", choices=("none", "cosine", "plateau"), default="cosine",
                   help="learning-rate schedule: cosine decay over all epochs (per step), or halve "
                        "the rate when PublicTest accuracy stalls for --plateau-patience epochs")
    p.add_argument("--plateau-patience", type=int, default=3, help="epochs without improvement before halving")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True,
                   help="random flip, rotation, shift and zoom on Training images")
    p.add_argument("--erase", type=float, default=0.0, metavar="P",
                   help="random erasing: with probability P a rectangle of 2-25%% of each training face is "
                        "replaced by noise (Zhong et al. 2017), on top of --augment")
    p.add_argument("--camera", type=float, default=0.0, metavar="P",
                   help="with probability P each training face gets a camera's changes: gamma, contrast, "
                        "brightness, blur and JPEG compression (fer_models/augment.py camera_batch; the ranges "
                        "of --reframed's test frames), after --augment and --erase")
    p.add_argument("--mixup", type=float, default=0.0, metavar="ALPHA",
                   help="MixUp: each training batch blended with itself in a random order, images and "
                        "targets alike, in a proportion drawn from Beta(ALPHA, ALPHA) (e.g. 0.2; default 0: off)")
    p.add_argument("--cutmix", type=float, default=0.0, metavar="ALPHA",
                   help="CutMix: a rectangle of another training face pasted into each one, the targets "
                        "mixed by area, Beta(ALPHA, ALPHA) (e.g. 1.0; default 0: off); with --mixup each "
                        "batch takes one of the two")
    p.add_argument("--preprocessing", choices=METHODS, default=None,
                   help="contrast normalisation of every face before the model (see fer_models/preprocess.py); "
                        "recorded in the weights file, so prediction and evaluation apply the same "
                        "(default: none; with --evaluate or --init-from: what the file records)")
    p.add_argument("--input-scale", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                   help="with --evaluate or --init-from a Keras model: the pixel range it takes, where the file "
                        "does not record it (e.g. -1 1) (default: recorded, else 0 1)")
    p.add_argument("--classes", default=None, metavar="ORDER",
                   help="with --evaluate or --init-from a Keras model: its output order, where the file does "
                        "not record it: 'fer2013' (the CSV's), 'alphabetical' (this project's) or seven "
                        "comma-separated names")
    p.add_argument("--init-from", type=Path, default=None, metavar="FILE",
                   help="start from a trained model instead of --model's fresh weights: a Keras file (.keras, "
                        ".h5) or weights written here (.npz); fine-tunes it with this run's recipe")
    p.add_argument("--class-weights", choices=("none", "balanced"), default="none",
                   help="'balanced' weights each class by n / (7 * count), as scikit-learn")
    p.add_argument("--label-smoothing", type=float, default=0.0, help="cross-entropy label smoothing")
    p.add_argument("--ema", type=float, default=0.0, metavar="MOMENTUM",
                   help="keep a moving average of the weights, average = MOMENTUM * average + (1 - MOMENTUM) * "
                        "weights after each step (e.g. 0.999), and validate, keep as best.npz and evaluate it "
                        "instead of the last weights; 0: off")
    p.add_argument("--early-stopping", type=int, default=0, metavar="N",
                   help="stop when PublicTest accuracy has not improved for N epochs (0: never)")
    p.add_argument("--limit", type=int, default=0, metavar="N",
                   help="use only the first N Training images (stratified); 0 for all. For quick trials")
    p.add_argument("--seed", type=int, default=0, help="seeds weights, shuffling, augmentation and dropout")
    p.add_argument("--out", type=Path, default=None, help="run directory (default: runs/<model>-<time>)")
    p.add_argument("--resume", type=Path, default=None, metavar="RUN",
                   help="continue the run in RUN from its last checkpoint (its settings are reused)")
    p.add_argument("--distill-from", type=Path, default=None, metavar="TEACHER",
                   help="train on a teacher's probabilities (an ensemble file or any weights/run) instead of "
                        "the one-hot labels: knowledge distillation")
    p.add_argument("--ensemble", type=Path, nargs="+", default=None, metavar="RUN",
                   help="combine trained runs or weights files into one ensemble file (written to --out, "
                        "default ensemble.npz), reporting each member and the average on PublicTest, then exit")
    p.add_argument("--soup", type=Path, nargs="+", default=None, metavar="RUN",
                   help="average the weights of networks fine-tuned from one starting point into one network "
                        "of the same cost (a model soup; written to --out, default soup.npz), reporting each "
                        "ingredient and the soup on PublicTest, then exit")
    p.add_argument("--soup-stats", choices=("training", "average"), default="training",
                   help="with --soup: the soup's BatchNorm statistics, measured on the Training images in "
                        "an order shuffled by --seed (--limit N: N of them, stratified) or the mean of the "
                        "ingredients' own")
    p.add_argument("--soup-recipe", choices=("uniform", "greedy"), default="uniform",
                   help="with --soup: 'uniform' averages every network given; 'greedy' (Wortsman et al. 2022) "
                        "takes them in order of their PublicTest accuracy with --tta's views (default mirror), "
                        "best first, and keeps each whose addition leaves the soup at least as accurate")
    p.add_argument("--half", action="store_true",
                   help="with --ensemble: store the weights as float16 (half the file), and report the "
                        "stored file's PublicTest accuracy too")
    p.add_argument("--choose", type=int, default=0, metavar="K",
                   help="with --ensemble: try every subset of at most K of the given members and keep the one "
                        "whose PublicTest accuracy with --tta's views (default: the mirror) is best (ties: "
                        "fewer members, then less compute per face)")
    p.add_argument("--export", type=Path, nargs=2, default=None, metavar=("MODEL", "FILE"),
                   help="write MODEL (a run, weights file or Keras file) as FILE: .onnx (ONNX, for onnxruntime "
                        "and other engines), .keras or .h5 (Keras); the input contract (size, preprocessing, "
                        "pixel scale, class order) goes in the ONNX metadata or a .json beside a Keras file")
    p.add_argument("--evaluate", type=Path, default=None, metavar="RUN_OR_WEIGHTS",
                   help="only evaluate a run directory or weights file on PrivateTest, then exit")
    p.add_argument("--reframed", nargs="?", const="PrivateTest", default=None, choices=("PublicTest", "PrivateTest"),
                   help="with --evaluate: also each face of the split (default PrivateTest) pasted into a webcam-"
                        "sized frame at a random size, place and tilt, with light, blur and JPEG changed, found "
                        "by the detector and cropped as webcam.py does (fer_models/reframe.py); reports the "
                        "accuracy both ways and the recall per class (report-reframed-<split>.json); "
                        "--limit N takes the split's first N faces")
    p.add_argument("--list-models", action="store_true", help="list architectures with parameters and multiply-adds")
    p.add_argument("--model-card", type=Path, default=None, metavar="RUN",
                   help="print a markdown model card of a finished, evaluated run directory, then exit")
    p.add_argument("--tta", nargs="?", const="mirror", default=False, choices=("mirror", "shifts", "zooms"),
                   help="evaluate with test-time augmentation: 'mirror' (the default when given alone) averages "
                        "each face with its mirror image (saved as report-tta.json beside the plain report); "
                        "'shifts' averages ten views, the face and its mirror each also moved 2 px four ways "
                        "(report-tta-shifts.json); 'zooms' six, the face and its mirror each also zoomed out "
                        "and in by 8%% (report-tta-zooms.json). With --ensemble --choose: the views subsets "
                        "are compared with (default mirror)")
    p.add_argument("--backend", choices=("numba", "numpy"), default="numba",
                   help="tinycnn kernels: fast Numba or the readable NumPy reference")
    p.add_argument("--conv-algorithm", choices=("auto", "im2col", "winograd"), default="auto",
                   help="how 3x3 stride-1 convolutions are computed: 'auto' uses Winograd F(4x4,3x3) "
                        "where it measured faster, else im2col; the other two force one where Winograd "
                        "applies (results agree to float32 rounding)")
    p.add_argument("--cache-dir", type=Path, default=None, help="where decoded data is cached")
    args = p.parse_args(argv)
    args.model_given = args.model is not None
    args.model = args.model or "resfer"
    return args


# -- small pieces ------------------------------------------------------------------------------
def list_models():
    import fer_models
    print(f"{'model':<8} {'params':>11} {'mult-adds/image':>16}  description")
    for name in fer_models.names():
        m = fer_models.build(name)
        print(f"{name:<8} {m.count_params():>11,} {m.multiply_adds() / 1e6:>14.1f}M  {fer_models.describe(name)}")


def evaluate_model(model, x, y, batch_size=256, tta=False):
    """(predictions, mean cross-entropy) of a model on (x, y), in inference mode.

    ``tta``: average each face's probabilities with those of its mirror image (a face
    and its mirror show the same emotion), a cheap test-time augmentation."""
    from fer_models.predict import predict_probabilities
    probs = np.concatenate([predict_probabilities(model, x[s:s + batch_size], tta=tta)
                            for s in range(0, len(x), batch_size)]) if len(x) else np.zeros((0, 7))
    loss = -np.log(np.maximum(probs[np.arange(len(y)), y], 1e-12)).mean() if len(y) else 0.0
    return probs.argmax(1), float(loss)


def write_json(path, obj):
    """``obj`` as JSON in ``path``, written atomically (``tinycnn.model.write_atomic``)."""
    from tinycnn.model import write_atomic
    write_atomic(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2)), suffix=".json.tmp")


def make_optimizer(args, model):
    import tinycnn as tc
    ema = {"use_ema": True, "ema_momentum": args.ema} if getattr(args, "ema", 0.0) else {}  # runs from before: none
    if args.optimizer == "adam":
        return tc.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay, **ema)
    return tc.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum, nesterov=True,
                        weight_decay=args.weight_decay, **ema)


# -- checkpoints -------------------------------------------------------------------------------
def save_checkpoint(run, model, opt, epoch, history, best, plateau):
    """Everything needed to continue exactly: weights, optimiser slots, epoch, history.

    The random streams need no saving: each epoch's shuffle, augmentation and dropout
    draws come from generators seeded with (seed, epoch), so epoch k+1 after a resume
    draws exactly what it would have drawn without the interruption.
    """
    from tinycnn.model import save_npz_atomic
    arrays = {f"model/{k}": v for k, v in model.get_weights().items()}
    arrays.update({f"opt/{k}": v for k, v in opt.state_dict().items()})
    meta = {"epoch": epoch, "history": history, "best": best,
            "plateau": plateau.state_dict() if plateau else None}
    arrays["meta"] = np.array(json.dumps(meta))
    save_npz_atomic(run / "checkpoint.npz", arrays)


def load_checkpoint(run, model, opt):
    """Restore model and optimiser from ``run/checkpoint.npz``; returns its metadata.
    A damaged checkpoint ends the program with one line saying what is wrong."""
    from tinycnn.model import read_npz
    path = run / "checkpoint.npz"
    try:
        f = read_npz(path, "checkpoint")
        model.set_weights({k[6:]: v for k, v in f.items() if k.startswith("model/")})
        opt.load_state_dict({k[4:]: v for k, v in f.items() if k.startswith("opt/")})
        return json.loads(str(f["meta"]))
    except (ValueError, KeyError) as e:  # json.JSONDecodeError is a ValueError
        sys.exit(f"error: cannot resume from {path}: {e}. The run's best.npz, if any, still holds its "
                 f"best weights; start a new run with --out")


# -- training -------------------------------------------------------------------------------
def build_model(args):
    """The model a run trains: --model's architecture, fresh from --seed, or the model in
    --init-from (a Keras file or weights written here), with its input contract."""
    import fer_models
    from fer_models.predict import load_model, set_input_contract
    contract = contract_of(args)
    init_from = getattr(args, "init_from", None)
    if init_from is None:
        model = fer_models.build(args.model, seed=args.seed)
        return set_input_contract(model, contract["preprocessing"] or "none", contract["input_scale"],
                                  contract["classes"], where="train.py")
    try:
        model = load_model(init_from, **contract)
    except (ValueError, FileNotFoundError, OSError) as e:
        sys.exit(f"error: --init-from {init_from}: {e}")
    if hasattr(model, "members"):
        sys.exit(f"error: --init-from {init_from} is an ensemble; distil it instead (--distill-from)")
    return model


def record_architecture(args, run, model):
    """A run started from --init-from trains that file's architecture, not --model's
    default: ``args.json`` names the one trained, for the model card and the run's readers."""
    if args.model != model.name:
        args.model = model.name
        write_json(run / "args.json", {**json.loads((run / "args.json").read_text()), "model": model.name})


def save_best(model, path_stem):
    """best.npz for this project's architectures; best.keras (+ its input contract beside
    it) for a model imported from Keras, whose architecture only a Keras file can hold."""
    import fer_models
    from fer_models.predict import save_keras_model, save_model
    if model.name in fer_models.names():
        save_model(model, path_stem.with_suffix(".npz"))
    else:
        save_keras_model(model, path_stem.with_suffix(".keras"))


def contract_of(args) -> dict:
    """--preprocessing, --input-scale, --classes as ``load_model``'s overrides (None: not given)."""
    classes = getattr(args, "classes", None)
    if isinstance(classes, str) and "," in classes:
        classes = [c.strip().lower() for c in classes.split(",")]
    return {"preprocessing": getattr(args, "preprocessing", None), "input_scale": getattr(args, "input_scale", None),
            "classes": classes}


def train(args):
    """Train as ``args`` says, a new run or ``--resume``: after every epoch the run's record
    (best weights, checkpoint, history) is rewritten in its folder; at the end the best
    epoch is evaluated on PrivateTest. Returns the run folder."""
    import tinycnn as tc

    args, run, fresh_start = open_run(args)
    tc.set_backend(args.backend)
    tc.set_conv_algorithm(args.conv_algorithm)
    data, (x_train, y_train), (x_val, y_val), y_labels = training_data(args)
    model = build_model(args)
    if not args.resume:
        record_architecture(args, run, model)
    x_train, y_train, x_val, y_val, order = as_the_model_sees_it(model, x_train, y_train, x_val, y_val)
    opt = make_optimizer(args, model)
    record = RunRecord(run, model, opt, plateau_of(args))
    if args.resume and fresh_start:
        print(f"{run} was stopped before its first checkpoint: starting it from epoch 1")
    elif args.resume:
        record.resume()
    callbacks = EpochCallbacks(args, model, opt, record, len(x_train))
    print(f"{model.name}: {model.count_params():,} parameters, {model.multiply_adds() / 1e6:.1f}M mult-adds/image; "
          f"{len(x_train):,} training images, {len(x_val):,} PublicTest; run directory {run}")
    signal.signal(signal.SIGTERM, callbacks.request_stop)
    fit_run(run, model, callbacks, x_train, y_train, epochs=args.epochs, validation_data=(x_val, y_val),
            optimizer=opt, **training_options(args, y_labels, order))

    best = record.best
    print(f"best PublicTest accuracy {best['acc']:.4f} at epoch {best['epoch']}; evaluating it on PrivateTest")
    evaluate(run, data=data, out=run)
    return run


def open_run(args):
    """The run folder and its record of the settings (args.json): ``--resume``'s, read back
    (with this call's --epochs, --data, --cache-dir, --backend, --conv-algorithm), or a new
    one, created. Returns (the run's args, its folder, whether a resumed run starts afresh:
    it was stopped before its first checkpoint)."""
    if not args.resume:
        return args, new_run(args), False
    run = args.resume
    if not (run / "checkpoint.npz").exists() and not (run / "args.json").exists():
        sys.exit(f"error: {run} holds no checkpoint.npz to resume from")
    try:
        saved = json.loads((run / "args.json").read_text())
    except (OSError, ValueError) as e:
        sys.exit(f"error: cannot resume {run}: its args.json (the run's settings) is missing or damaged ({e})")
    for leftover in list(run.glob("*.tmp.npz")) + list(run.glob("*.json.tmp")):
        leftover.unlink()   # a write that a kill interrupted before its rename: never the real file
    # stopped before its first checkpoint: the run starts again, with its own settings
    fresh_start = not (run / "checkpoint.npz").exists()
    keep = {"resume": run, "epochs": args.epochs or saved["epochs"],
            "data": args.data, "cache_dir": args.cache_dir, "backend": args.backend,
            "conv_algorithm": args.conv_algorithm}
    args = argparse.Namespace(**{**saved, **keep})
    args.data, args.out = Path(args.data), run
    if args.epochs != saved["epochs"]:  # a new length is the run's from now on, for later resumes too
        write_json(run / "args.json", {**saved, "epochs": args.epochs})
    return args, run, fresh_start


def new_run(args):
    """A new run: its defaults set in ``args`` (--epochs, --lr), its folder (--out, else
    runs/<model>-<time>) created and its args.json written. Returns the folder."""
    args.epochs = args.epochs or 30
    if args.lr is None:
        args.lr = 1e-3 if args.optimizer == "adam" else 0.01
    run = args.out or Path("runs") / f"{args.model}-{time.strftime('%Y%m%d-%H%M%S')}"
    if (run / "checkpoint.npz").exists():
        sys.exit(f"error: {run} already holds a run; use --resume {run} or another --out")
    try:
        run.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        sys.exit(f"error: --out {run}: cannot create the folder: {e.strerror or e}")
    write_json(run / "args.json", {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                                   if k not in ("resume", "evaluate", "list_models", "model_given")})
    return run


def fer2013_of(args) -> dict:
    """FER-2013 from --data (decoded once into --cache-dir): {split: (x, y)}; exits with
    the reason where it cannot be read."""
    from fer_models.data import load_fer2013
    try:
        return load_fer2013(args.data, cache_dir=args.cache_dir)
    except (FileNotFoundError, ValueError, OSError) as e:   # no such folder, no layout, unreadable CSV
        sys.exit(f"error: --data {args.data}: {e}")


def npz_out(args, default: str) -> Path:
    """Where a command that writes one weights file writes it: --out (made an .npz),
    else ``default``; its folder is created."""
    out = args.out or Path(default)
    if out.suffix != ".npz":
        out = out.with_suffix(".npz")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def training_data(args):
    """FER-2013 from --data: (all splits, (x_train, y_train), (x_val, y_val), the hard
    training labels). Training is cut to --limit images, stratified; with --distill-from,
    y_train is the teacher's probabilities (N, 7) instead of the labels."""
    from fer_models.data import stratified_subset
    data = fer2013_of(args)
    x_train, y_train = data["Training"]
    x_val, y_val = data["PublicTest"]
    if len(x_train) == 0:
        sys.exit(f"error: --data {args.data} holds no Training images to train on (train/<class>/*.png "
                 f"or the CSV's Usage=Training rows)")
    if args.limit:
        keep = stratified_subset(y_train, args.limit, args.seed)
        x_train, y_train = x_train[keep], y_train[keep]
    if len(x_val) == 0:
        sys.exit("error: the data has no PublicTest split to validate on")
    y_labels = y_train   # the hard labels, whatever the model is trained on
    teacher = getattr(args, "distill_from", None)
    if teacher:   # the teacher sees the raw faces, each member with its own preprocessing
        from fer_models.ensemble import soft_labels
        from fer_models.predict import load_model
        try:
            teacher_model = load_model(teacher)
        except (ValueError, FileNotFoundError) as e:
            sys.exit(f"error: --distill-from {teacher}: {e}")
        print(f"distilling from {teacher_model.name}: computing its probabilities on {len(x_train):,} images")
        y_train = soft_labels(teacher_model, x_train, tta=True, progress=True)
    return data, (x_train, y_train), (x_val, y_val), y_labels


def as_the_model_sees_it(model, x_train, y_train, x_val, y_val):
    """The data in the model's own terms: its input size, preprocessing and scale, and its
    class order. Returns the five, the last ``order``: output k is CLASSES[order[k]]."""
    import fer_models
    from fer_models.predict import classes_of, model_input
    x_train, x_val = model_input(model, x_train), model_input(model, x_val)
    order = [fer_models.CLASSES.index(c) for c in classes_of(model)]
    if order != list(range(fer_models.NUM_CLASSES)):
        y_train = y_train[:, order] if y_train.ndim == 2 else np.argsort(order)[y_train]
        y_val = np.argsort(order)[y_val]
    return x_train, y_train, x_val, y_val, order


def training_options(args, y_labels, order) -> dict:
    """fit's options from the settings: batch size, class weights (--class-weights, in the
    model's class ``order``), label smoothing, augmentation (--augment, --erase, --camera),
    mixing (--mixup, --cutmix), seed."""
    import tinycnn as tc

    import fer_models
    from fer_models.augment import Augmenter, Mixer
    weights = (tc.losses.balanced_class_weights(y_labels, fer_models.NUM_CLASSES)[order]
               if args.class_weights == "balanced" else None)
    erase = getattr(args, "erase", 0.0)    # runs from before the option: none
    camera = getattr(args, "camera", 0.0)
    augment = (Augmenter(erase=erase, camera=camera) if args.augment else
               Augmenter(False, 0, 0, 0, erase, camera) if erase or camera else None)
    mixup, cutmix = getattr(args, "mixup", 0.0), getattr(args, "cutmix", 0.0)
    return {"batch_size": args.batch_size, "class_weights": weights, "label_smoothing": args.label_smoothing,
            "augment": augment, "mix": Mixer(mixup, cutmix) if mixup or cutmix else None, "seed": args.seed}


def plateau_of(args):
    """--schedule plateau's ReduceLROnPlateau on PublicTest accuracy, else None."""
    import tinycnn as tc
    return (tc.optim.ReduceLROnPlateau(args.lr, patience=args.plateau_patience, mode="max")
            if args.schedule == "plateau" else None)


class RunRecord:
    """What a run keeps in its folder, each file written atomically after every epoch:
    the best weights on PublicTest (``save_best``), checkpoint.npz (everything needed to
    continue exactly, the plateau schedule's state included) and history.json."""

    def __init__(self, run, model, opt, plateau):
        self.run, self.model, self.opt, self.plateau = run, model, opt, plateau
        self.history, self.best = [], {"acc": -1.0, "epoch": 0}
        self.checkpointed = 0   # the epoch that checkpoint.npz holds (0: none yet)

    def resume(self):
        """Weights, optimiser, history, best epoch and plateau state from checkpoint.npz."""
        meta = load_checkpoint(self.run, self.model, self.opt)
        self.history, self.best, self.checkpointed = meta["history"], meta["best"], meta["epoch"]
        if self.plateau and meta["plateau"]:
            self.plateau.load_state_dict(meta["plateau"])
        print(f"resuming {self.run} after epoch {meta['epoch']} (best PublicTest {self.best['acc']:.4f} "
              f"at epoch {self.best['epoch']})")

    def add(self, entry) -> bool:
        """One epoch's history entry (with its ``val_acc``) recorded, its weights saved as
        the best if they are; returns whether they are."""
        self.history.append(entry)
        improved = entry["val_acc"] > self.best["acc"]
        if improved:
            self.best = {"acc": entry["val_acc"], "epoch": entry["epoch"]}
            if self.opt.use_ema:   # the weights validated: the moving average
                self.opt.swap_ema_weights()
                try:
                    save_best(self.model, self.run / "best")
                finally:
                    self.opt.swap_ema_weights()
            else:
                save_best(self.model, self.run / "best")
        save_checkpoint(self.run, self.model, self.opt, entry["epoch"], self.history, self.best, self.plateau)
        self.checkpointed = entry["epoch"]
        write_json(self.run / "history.json", self.history)
        return improved


class EpochCallbacks:
    """fit's callbacks for a run: each step's learning rate (--schedule: cosine per step, or
    the plateau's per epoch), a stop at the next step once SIGTERM came, and after each
    epoch the run's record, one line, and early stopping."""

    def __init__(self, args, model, opt, record, n_train):
        import tinycnn as tc
        self.model, self.opt, self.record, self.n_train = model, opt, record, n_train
        self.plateau, self.early_stopping = record.plateau, args.early_stopping
        self.steps_per_epoch = math.ceil(n_train / args.batch_size)
        self.cosine = (tc.optim.CosineDecay(args.lr, args.epochs * self.steps_per_epoch, min_lr=args.lr * 0.01)
                       if args.schedule == "cosine" else None)
        self.epoch = record.checkpointed + 1   # the epoch under way
        self.stop_requested = False

    def request_stop(self, *_):   # the SIGTERM handler
        self.stop_requested = True

    def on_epoch_begin(self, epoch):
        self.epoch = epoch
        if self.plateau:
            self.opt.lr = self.plateau.lr

    def on_train_batch_begin(self, step):
        if self.stop_requested:
            raise KeyboardInterrupt
        if self.cosine:
            self.opt.lr = self.cosine((self.epoch - 1) * self.steps_per_epoch + step)

    def on_epoch_end(self, epoch, logs):
        seconds = self.model.history.seconds[-1]
        if self.plateau:
            self.plateau.step(logs["val_accuracy"])
        improved = self.record.add({"epoch": epoch, "loss": logs["loss"], "acc": logs["accuracy"],
                                    "val_loss": logs["val_loss"], "val_acc": logs["val_accuracy"],
                                    "lr": self.opt.lr, "seconds": seconds, "img_per_s": self.n_train / seconds})
        print(f"epoch {epoch}: loss {logs['loss']:.4f} acc {logs['accuracy']:.4f} | PublicTest loss "
              f"{logs['val_loss']:.4f} acc {logs['val_accuracy']:.4f}{' (best)' if improved else ''} | "
              f"{self.n_train / seconds:.0f} img/s, {seconds:.0f} s")
        best = self.record.best
        if self.early_stopping and epoch - best["epoch"] >= self.early_stopping:
            print(f"early stopping: no PublicTest improvement for {self.early_stopping} epochs")
            self.model.stop_training = True


def fit_run(run, model, callbacks, x, y, **fit_args):
    """``model.fit(x, y, **fit_args)`` from the epoch after the checkpoint, with the run's
    ``callbacks``; an interruption (Ctrl-C, SIGTERM), a failed write or a diverged loss
    ends the program with one line saying what is kept and how to continue."""
    import tinycnn as tc
    try:
        # with --ema, PublicTest sees the moving average of the weights (SwapEMAWeights)
        ema = [tc.callbacks.SwapEMAWeights(callbacks.opt)] if callbacks.opt.use_ema else []
        model.fit(x, y, initial_epoch=callbacks.record.checkpointed, callbacks=ema + [callbacks], verbose=1,
                  **fit_args)
    except KeyboardInterrupt:
        save_best(model, run / "interrupted")
        saved_as = next(p for p in (run / "interrupted.npz", run / "interrupted.keras") if p.exists())
        print(f"\ninterrupted during epoch {callbacks.epoch}: its partial weights are in {saved_as}; "
              f"the last checkpoint (epoch {callbacks.epoch - 1}) is intact. Continue with: "
              f"python train.py --resume {run}")
        sys.exit(130)
    except tc.model.WriteError as e:
        last = callbacks.record.checkpointed
        kept = (f"the last checkpoint (epoch {last}) is intact: free some space and continue with "
                f"python train.py --resume {run}") if last else "no epoch had been checkpointed yet"
        sys.exit(f"error: {e}. Training stopped; {kept}")
    except tc.model.TrainingDiverged as e:
        sys.exit(f"error: the loss became {e.value} at epoch {e.epoch}, step {e.step}. Training stopped; the last "
                 f"good checkpoint (epoch {e.epoch - 1}) is kept in {run}. Try a lower --lr.")


# -- evaluation -------------------------------------------------------------------------------
def evaluate(target, data=None, data_path=None, cache_dir=None, out=None, tta=False, model=None, contract=None):
    """PrivateTest accuracy, confusion matrix and per-class figures, printed and saved
    (``report.json``, ``confusion.png``; with ``tta``: ``report-tta.json`` and
    ``confusion-tta.png``, beside the plain ones). ``model``: the architecture, for
    weights files that do not record it (default: the one recorded); ``contract``:
    preprocessing / input_scale / classes overrides for ``load_model``."""
    import fer_models
    from fer_models.data import load_fer2013
    from fer_models.metrics import accuracy_interval, classification_report, confusion_matrix, format_report
    from fer_models.predict import load_model
    from fer_models.plots import plot_confusion, plot_history

    target = Path(target)
    model = load_model(target, model, **(contract or {}))
    if data is None:
        data = load_fer2013(data_path, cache_dir=cache_dir)
    out = Path(out) if out else (target if target.is_dir() else target.parent)
    out.mkdir(parents=True, exist_ok=True)
    suffix = {False: "", "mirror": "-tta", True: "-tta", "shifts": "-tta-shifts", "zooms": "-tta-zooms"}[tta]
    weights = target
    if target.is_dir():
        weights = target / ("best.keras" if (target / "best.keras").exists() and not (target / "best.npz").exists()
                            else "best.npz")
    result = {"weights": str(weights), "model": model.name,
              "tta": tta}
    for split in ("PublicTest", "PrivateTest"):
        x, y = data[split]
        if len(x) == 0:
            continue
        pred, loss = evaluate_model(model, x, y, tta=tta)
        cm = confusion_matrix(y, pred, fer_models.NUM_CLASSES)
        report = classification_report(y, pred)
        low, high = accuracy_interval(int(np.trace(cm)), len(y))
        result[split] = {"loss": loss, "report": report, "confusion_matrix": cm.tolist(),
                         "accuracy_95ci": [low, high]}
        print(f"\n== {split}: accuracy {report['accuracy']:.4f} on {len(y):,} images "
              f"(95% interval {low:.4f}-{high:.4f}) ==")
        print(format_report(report, cm))
        if split == "PrivateTest":
            plot_confusion(cm, out / f"confusion{suffix}.png",
                           title=f"{model.name}{f' + {tta} TTA' if tta else ''} on PrivateTest "
                                 f"(accuracy {report['accuracy']:.3f})")
    write_json(out / f"report{suffix}.json", result)
    history = out / "history.json"
    if history.exists():
        plot_history(json.loads(history.read_text()), out / "curves.png")
    print(f"\nreport written to {out / f'report{suffix}.json'}, plots to {out}")
    return result


def evaluate_reframed(target, split, data_path=None, cache_dir=None, out=None, tta=False, model=None,
                      contract=None, limit=0):
    """--evaluate TARGET --reframed SPLIT: the split's faces as given and re-framed as a
    webcam sees them (``fer_models.reframe``), through the classifier webcam.py would
    build from TARGET; printed and saved as ``report-reframed-<split>.json``."""
    from fer_models.data import load_fer2013
    from fer_models.predict import EmotionClassifier
    from fer_models.reframe import evaluate_reframed as run, format_reframed

    target = Path(target)
    classifier = EmotionClassifier(target, model, tta=tta, **(contract or {}))
    x, y = load_fer2013(data_path, cache_dir=cache_dir)[split]
    if len(x) == 0:
        raise ValueError(f"--reframed: the data at {data_path} has no {split} faces")
    if limit:   # the first ``limit`` faces of the split, for a quick look
        x, y = x[:limit], y[:limit]
    faces = (x[..., 0] * 255).round().astype(np.uint8)
    report = run(classifier, faces, y)
    report.update(weights=str(target), tta=tta, split=split)
    print(f"\n== {split}, direct and re-framed ({target}{f', {views_name(tta)} TTA' if tta else ''}) ==")
    print(format_reframed(report))
    out = Path(out) if out else (target if target.is_dir() else target.parent)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / f"report-reframed-{split}.json", report)
    print(f"\nreport written to {out / f'report-reframed-{split}.json'}")
    return report


def export(args):
    """--export MODEL FILE: ONNX or Keras, with the input contract alongside."""
    from fer_models.predict import (classes_of, input_scale_of, load_model, preprocessing_of,
                                    save_keras_model)
    source, dest = args.export
    try:
        model = load_model(source, args.model if args.model_given else None, **contract_of(args))
    except (ValueError, FileNotFoundError, OSError) as e:
        sys.exit(f"error: --export {source}: {e}")
    if hasattr(model, "members"):
        sys.exit(f"error: --export {source} is an ensemble of {len(model)}; export each member, or distil "
                 f"it into one model first (--distill-from)")
    suffix = dest.suffix.lower()
    try:
        if suffix == ".onnx":
            from tinycnn.io import export_onnx
            export_onnx(model, dest, softmax=True, metadata={
                "preprocessing": preprocessing_of(model), "input_scale": json.dumps(list(input_scale_of(model))),
                "classes": json.dumps(list(classes_of(model))),
                "input": "NHWC float32 grey faces; pixels in [0, 1] after preprocessing, mapped onto input_scale"})
        elif suffix in (".keras", ".h5", ".hdf5"):
            save_keras_model(model, dest)
        else:
            sys.exit(f"error: --export: {dest} must end in .onnx, .keras or .h5")
    except (ValueError, ImportError, OSError) as e:
        sys.exit(f"error: --export {dest}: {e}")
    print(f"{model.name} written to {dest} (input {tuple(model.input_shape)}, preprocessing "
          f"{preprocessing_of(model)}, pixels scaled to {list(input_scale_of(model))})")


def make_ensemble(args):
    """Load the members, report each one and their average on PublicTest (the split the
    members are chosen on), and write the ensemble file. With ``--choose K``, every
    subset of at most K members is tried first and the best one is written."""
    import tinycnn as tc

    from fer_models.ensemble import Ensemble, save_ensemble
    from fer_models.predict import load_model
    tc.set_backend(args.backend)
    tc.set_conv_algorithm(args.conv_algorithm)
    if args.choose < 0:
        sys.exit(f"error: --choose must be a positive number of members, got {args.choose}")
    members, labels = [], []
    for path in args.ensemble:
        try:
            m = load_model(path)
        except (ValueError, FileNotFoundError) as e:
            sys.exit(f"error: --ensemble {path}: {e}")
        parts = m.members if hasattr(m, "members") else [m]
        members += parts
        labels += [f"{path} ({p.name})" if len(parts) == 1 else f"{path} member {i} ({p.name})"
                   for i, p in enumerate(parts)]
    x, y = fer2013_of(args)["PublicTest"]
    if len(x) == 0:
        sys.exit("error: the data has no PublicTest split to choose members on")
    views = (False, "mirror", "shifts", "zooms")
    print(f"PublicTest accuracy ({len(y):,} images): plain, mirror TTA, shifts TTA (10 views), zooms TTA (6 views):")
    probs = []   # per member, per view setting: (N, 7); an ensemble's are their mean
    for label, model in zip(labels, members):
        probs.append({tta: member_probabilities(model, x, tta) for tta in views})
        print("  " + "  ".join(f"{(probs[-1][tta].argmax(1) == y).mean():.4f}" for tta in views) + f"  {label}")
    chosen = list(range(len(members)))
    if args.choose:
        chosen = choose_members(probs, y, [m.multiply_adds() for m in members], labels, args.choose,
                                tta=args.tta or "mirror")
    ensemble = Ensemble([members[i] for i in chosen])
    print("  " + "  ".join(f"{(np.mean([probs[i][tta] for i in chosen], axis=0).argmax(1) == y).mean():.4f}"
                           for tta in views) + f"  {ensemble.name}")
    out = npz_out(args, "ensemble.npz")
    try:
        save_ensemble(ensemble, out, half=args.half)
    except ValueError as e:
        sys.exit(f"error: {e}")
    if args.half:   # what the file gives, not what the float32 members gave
        stored = load_model(out)
        accs = [float((evaluate_model(stored, x, y, tta=tta)[0] == y).mean()) for tta in views]
        print("  " + "  ".join(f"{a:.4f}" for a in accs) + "  as stored (float16 weights)")
    print(f"ensemble of {len(ensemble)} written to {out}; evaluate it once with: python train.py --evaluate {out} "
          f"--tta {args.tta or 'mirror'}")


def make_soup(args):
    """Average the ingredients' weights into one network (``tinycnn.averaging``), measure
    its BatchNorm statistics on Training (``--soup-stats training``), report every
    ingredient and the soup on PublicTest, and write the soup. With ``--soup-recipe
    greedy`` only the ingredients ``greedy_soup`` keeps go in."""
    import fer_models
    import tinycnn as tc
    from tinycnn.averaging import average_weights, update_batchnorm

    from fer_models.data import stratified_subset
    from fer_models.predict import classes_of, input_scale_of, load_model, model_input, preprocessing_of, save_model
    tc.set_backend(args.backend)
    tc.set_conv_algorithm(args.conv_algorithm)
    if len(args.soup) < 2:
        sys.exit(f"error: --soup averages two or more networks, got {len(args.soup)}")
    ingredients = []
    for path in args.soup:
        try:
            m = load_model(path)
        except (ValueError, FileNotFoundError, OSError) as e:
            sys.exit(f"error: --soup {path}: {e}")
        if hasattr(m, "members"):
            sys.exit(f"error: --soup {path} is an ensemble of {len(m)}: give the networks themselves")
        if m.name not in fer_models.names():
            sys.exit(f"error: --soup {path} is a '{m.name}', not one of fer_models' architectures "
                     f"({', '.join(fer_models.names())}), which a soup file records by name")
        ingredients.append(m)
    contract = [(m.name, preprocessing_of(m), tuple(input_scale_of(m)), tuple(classes_of(m))) for m in ingredients]
    for path, c in zip(args.soup[1:], contract[1:]):
        if c != contract[0]:
            sys.exit(f"error: --soup {path} is (architecture, preprocessing, input scale, classes) {c}, but "
                     f"{args.soup[0]} is {contract[0]}: only networks of one architecture and one input "
                     f"can be averaged")
    try:
        average_weights(ingredients)   # refuses networks whose weights differ in names or shapes
    except ValueError as e:
        sys.exit(f"error: --soup: {e}")
    data = fer2013_of(args)
    x, y = data["PublicTest"]
    if len(x) == 0:
        sys.exit("error: the data has no PublicTest split to report the soup on")
    shuffled = None
    if args.soup_stats == "training":
        x_train, y_train = data["Training"]
        if args.limit:
            x_train = x_train[stratified_subset(y_train, args.limit, args.seed)]
        if len(x_train) == 0:
            sys.exit(f"error: --data {args.data} holds no Training images to measure the soup's BatchNorm "
                     f"statistics on; use --soup-stats average")
        shuffled = x_train[np.random.default_rng(args.seed).permutation(len(x_train))]   # batches as in training

    def soup_of(kept):
        """The soup of the ingredients ``kept`` (indices), its statistics as --soup-stats says."""
        soup = load_model(args.soup[0])
        soup.set_weights(average_weights([ingredients[i] for i in kept]))
        if shuffled is not None:
            print(f"measuring the soup's BatchNorm statistics on {len(shuffled):,} Training images")
            update_batchnorm(soup, shuffled, prepare=lambda batch: model_input(soup, batch))
        return soup

    views = (False, "mirror", "shifts", "zooms")
    judge = args.tta or "mirror"
    print(f"PublicTest accuracy ({len(y):,} images): plain, mirror TTA, shifts TTA (10 views), zooms TTA (6 views):")
    accuracy = []
    for path, model in zip(args.soup, ingredients):
        accs = {tta: float((member_probabilities(model, x, tta).argmax(1) == y).mean()) for tta in views}
        print("  " + "  ".join(f"{accs[tta]:.4f}" for tta in views) + f"  {path}")
        accuracy.append(accs[judge])
    if args.soup_recipe == "uniform":
        kept, soup = list(range(len(ingredients))), soup_of(range(len(ingredients)))
    else:
        soups = {}

        def soup_accuracy(kept):
            soups[tuple(kept)] = soup_of(kept)
            return float((member_probabilities(soups[tuple(kept)], x, judge).argmax(1) == y).mean())

        kept, _ = greedy_soup(accuracy, soup_accuracy, [str(p) for p in args.soup], judge)
        soup = soups[tuple(kept)] if len(kept) > 1 else ingredients[kept[0]]   # one: itself, as trained
    label = f"soup of {len(kept)}" if len(kept) > 1 else f"{args.soup[kept[0]]} alone (no other ingredient kept)"
    print("  " + "  ".join(f"{(member_probabilities(soup, x, tta).argmax(1) == y).mean():.4f}"
                           for tta in views) + f"  {label}")
    out = npz_out(args, "soup.npz")
    save_model(soup, out)
    print(f"{args.soup_recipe} soup of {len(kept)} {soup.name} networks ({args.soup_stats} BatchNorm statistics) "
          f"written to {out}; evaluate it once with: python train.py --evaluate {out} --tta {args.tta or 'mirror'}")


def greedy_soup(accuracy, soup_accuracy, labels, views="mirror"):
    """Wortsman et al.'s greedy soup: the ingredients in order of their own ``accuracy``
    (a list, one each; ties keep the given order), best first; each is kept if the soup
    of the kept ones with it, ``soup_accuracy(indices)``, is at least as accurate as the
    soup without it. Prints each step (``labels`` name the ingredients). Returns the kept
    indices and their soup's accuracy (the best ingredient's own when none joins it)."""
    order = sorted(range(len(accuracy)), key=lambda i: -accuracy[i])
    kept, best = [order[0]], accuracy[order[0]]
    print(f"greedy soup ({views} TTA, PublicTest): start from {labels[order[0]]} ({best:.4f})")
    for i in order[1:]:
        acc = soup_accuracy([*kept, i])
        if acc >= best:
            kept, best = [*kept, i], acc
        print(f"  {acc:.4f}  + {labels[i]}: " + ("kept" if kept[-1] == i else f"left out (below {best:.4f})"))
    return kept, best


def member_probabilities(model, x, tta, batch_size=256):
    """A model's probabilities (N, 7) on faces x, averaged over the views ``tta`` asks for."""
    from fer_models.predict import predict_probabilities
    return np.concatenate([predict_probabilities(model, x[s:s + batch_size], tta=tta)
                           for s in range(0, len(x), batch_size)]) if len(x) else np.zeros((0, 7), np.float32)


def views_name(tta) -> str:
    """A ``tta`` setting by its name: ``True`` is the mirror."""
    return "mirror" if tta is True else tta


def choose_members(probs, y, costs, labels, most, show=10, tta="mirror"):
    """Indices of the subset of at most ``most`` members whose probabilities, averaged
    over the views ``tta`` names and then over the members, are right most often on
    (PublicTest) labels y; ties go to fewer members, then to less compute (``costs``:
    multiply-adds per face). Prints the best few and the best of each size."""
    import itertools
    views = [p[tta] for p in probs]
    rows = []
    for k in range(1, min(most, len(views)) + 1):
        for subset in itertools.combinations(range(len(views)), k):
            acc = float((np.mean([views[i] for i in subset], axis=0).argmax(1) == y).mean())
            rows.append((-acc, k, sum(costs[i] for i in subset), subset))
    rows.sort()
    print(f"best of {len(rows):,} subsets of at most {most} members ({tta} TTA, PublicTest):")
    for acc, k, cost, subset in rows[:show]:
        print(f"  {-acc:.4f}  {k} members, {cost / 1e6:,.0f}M multiply-adds per view: "
              + ", ".join(labels[i] for i in subset))
    best_of = {}
    for row in rows:
        best_of.setdefault(row[1], row)
    print("best of each size: " + ", ".join(f"{k}: {-r[0]:.4f}" for k, r in sorted(best_of.items())))
    return list(rows[0][3])


def main(argv=None):
    args = parse_args(argv)
    import tinycnn as tc
    tc.backend.keep_freed_memory()  # big activations reused, not re-faulted, every step
    try:
        run_command(args)
    except tc.model.WriteError as e:   # a full disk, a read-only folder: the file and the cause, no traceback
        sys.exit(f"error: {e}")


def run_command(args):
    """What the parsed arguments ask for: list, card, ensemble, export, evaluate or train."""
    if args.list_models:
        list_models()
        return
    if args.model_card:
        from fer_models.card import model_card
        print(model_card(args.model_card), end="")
        return
    if args.choose and not args.ensemble:
        sys.exit("error: --choose picks members for --ensemble; give the candidates with --ensemble RUN ...")
    if args.soup and args.ensemble:
        sys.exit("error: --soup and --ensemble each make one file: give one of them")
    if args.ensemble:
        make_ensemble(args)
        return
    if args.soup:
        make_soup(args)
        return
    if args.export:
        export(args)
        return
    if args.evaluate:
        import tinycnn as tc
        tc.set_backend(args.backend)
        tc.set_conv_algorithm(args.conv_algorithm)
        if not args.evaluate.exists():
            sys.exit(f"error: {args.evaluate} does not exist")
        try:
            if args.reframed:
                evaluate_reframed(args.evaluate, args.reframed, data_path=args.data, cache_dir=args.cache_dir,
                                  out=args.out, tta=args.tta, model=args.model if args.model_given else None,
                                  contract=contract_of(args), limit=args.limit)
            else:
                evaluate(args.evaluate, data_path=args.data, cache_dir=args.cache_dir, out=args.out, tta=args.tta,
                         model=args.model if args.model_given else None, contract=contract_of(args))
        except (ValueError, FileNotFoundError) as e:
            sys.exit(f"error: {e}")
        return
    if args.reframed:
        sys.exit("error: --reframed evaluates a trained model: give it with --evaluate RUN_OR_WEIGHTS")
    if (args.epochs is not None and args.epochs < 1) or args.batch_size < 1:
        sys.exit("error: --epochs and --batch-size must be positive")
    if not 0 <= args.erase <= 1:
        sys.exit(f"error: --erase must be a probability in [0, 1], got {args.erase}")
    if not 0 <= args.camera <= 1:
        sys.exit(f"error: --camera must be a probability in [0, 1], got {args.camera}")
    for name in ("mixup", "cutmix"):
        if not (math.isfinite(getattr(args, name)) and getattr(args, name) >= 0):
            sys.exit(f"error: --{name} is a Beta distribution's alpha >= 0 (e.g. 0.2; 0 turns it off), "
                     f"got {getattr(args, name)}")
    if not 0 <= args.ema < 1:
        sys.exit(f"error: --ema is a momentum in [0, 1) (e.g. 0.999; 0 turns it off), got {args.ema}")
    if args.lr is not None and not args.lr > 0:
        sys.exit(f"error: --lr must be positive, got {args.lr}")
    train(args)


if __name__ == "__main__":
    main()
