#!/usr/bin/env python
"""Train a FER-2013 model with Keras under tf.distribute, for when one machine is not enough.

    python train_distributed.py --model resfer --epochs 30 --label-smoothing 0.1 --out fer-dist.keras
    TF_CONFIG='{"cluster": {"worker": ["host-a:2222", "host-b:2222"]}, "task": {"type": "worker", "index": 0}}' \
        python train_distributed.py --model resfer --epochs 30 --label-smoothing 0.1 --out fer-dist.keras
    python webcam.py --weights fer-dist.keras

The route out and back: the tinycnn model (``fer_models.build(name, seed)``, or
``--init-from`` a weights file) is written with ``tinycnn.io.save_keras``, opened with
``keras.models.load_model`` inside ``strategy.scope()`` and trained by Keras' ``fit`` with
train.py's recipe; the best epoch is written to ``--out`` and read back with
``tinycnn.io.load_keras``, whose PublicTest accuracy must equal Keras'.

The recipe is train.py's: Adam (lr 1e-3) with cosine decay per step to 1% over the whole
run, cross-entropy with optional label smoothing, a global batch of 64 (split evenly across
the replicas, so the step and the learning rate mean what they mean in train.py),
BatchNormalization over the whole global batch (synchronised across the replicas), random
flip/rotation/shift/zoom by ``fer_models.augment.Augmenter`` itself, the epoch chosen on
PublicTest. Epoch e visits Training in train.py's order (``default_rng([seed, e])``).

Strategies: ``mirrored`` trains on this machine's GPUs (or its CPU), ``multiworker`` on
several machines, each running this same command with its own TF_CONFIG (``auto``, the
default, picks ``multiworker`` exactly when TF_CONFIG is set), ``default`` on one device.

Files, for ``--out fer-dist.keras``:

    fer-dist.keras       the best epoch's model (Keras 3, ending in softmax)
    fer-dist.keras.json  what the model expects: {"model", "preprocessing", "input_scale", "classes"}
    fer-dist-run/        initial.keras, best.weights.h5, history.json, settings.json and, until the
                         run ends, backup/: run the same command again and a killed run resumes
                         after its last finished epoch (other workers keep theirs in worker-<i>/)

TensorFlow is needed by this program only (``pip install -e ".[distributed]"``); tinycnn, train.py and
webcam.py never import it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fer_models.data import stratified_subset
from train import _HelpFormatter, write_json

STRATEGIES = ("auto", "mirrored", "multiworker", "default")
EVAL_BATCH = 256   # global batch for validation and prediction: no gradients, so larger is fine


def parse_args(argv=None):
    import fer_models
    from fer_models.data import default_location
    from fer_models.preprocess import METHODS
    p = argparse.ArgumentParser(
        description="Train a fer_models architecture with Keras under tf.distribute (several GPUs or machines), "
                    "with train.py's data and recipe; write the best epoch as a Keras file that tinycnn and "
                    "webcam.py read back.",
        formatter_class=_HelpFormatter)
    p.add_argument("--model", default=None, choices=fer_models.names(),
                   help="architecture to train from scratch, exported with tinycnn.io.save_keras from "
                        "fer_models.build(NAME, seed) (default: resfer)")
    p.add_argument("--init-from", type=Path, default=None, metavar="FILE",
                   help="start from a trained model instead: a train.py weights file (.npz) or a Keras file "
                        "(.keras, .h5) that tinycnn.io.load_keras reads (its .json sidecar, if any, gives its "
                        "preprocessing)")
    p.add_argument("--data", type=Path, default=default_location(),
                   help="FER-2013: an image-folder tree (train/, test/ [validation/]) or fer2013.csv")
    p.add_argument("--epochs", type=int, default=30, help="number of passes over Training")
    p.add_argument("--batch-size", type=int, default=64,
                   help="global batch: images per optimiser step, split evenly across all replicas")
    p.add_argument("--lr", type=float, default=1e-3,
                   help="Adam's base learning rate, decayed per step along a cosine to 1%% of it")
    p.add_argument("--label-smoothing", type=float, default=0.0, help="cross-entropy label smoothing")
    p.add_argument("--preprocessing", choices=METHODS, default=None,
                   help="contrast normalisation of every face before the model (fer_models/preprocess.py), "
                        "recorded in the sidecar <out>.json (default: the --init-from model's, else none)")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True,
                   help="random flip, rotation, shift and zoom of Training images (fer_models.augment.Augmenter)")
    p.add_argument("--sync-batchnorm", action=argparse.BooleanOptionalAction, default=True,
                   help="BatchNormalization normalises with the statistics of the whole global batch, as train.py "
                        "does on one device (one small all-reduce per layer and step); without it each replica "
                        "uses its own share of the batch and keeps moving statistics of its own, of which only "
                        "the first replica's are saved")
    p.add_argument("--strategy", choices=STRATEGIES, default="auto",
                   help="tf.distribute strategy: 'mirrored' (this machine's GPUs, else its CPU), 'multiworker' "
                        "(several machines, described by the TF_CONFIG environment variable), 'default' (one "
                        "device); 'auto' is multiworker when TF_CONFIG is set, else mirrored")
    p.add_argument("--devices", type=int, default=None, metavar="N",
                   help="use N devices: the first N GPUs, or on a machine without GPUs the CPU split into N "
                        "logical devices (to try the distributed path on a laptop)")
    p.add_argument("--steps-per-epoch", type=int, default=None, metavar="N",
                   help="at most N steps per epoch, for quick trials (default: all whole batches of Training)")
    p.add_argument("--limit", type=int, default=0, metavar="N",
                   help="use only N Training images (stratified, as train.py); 0 for all. For quick trials")
    p.add_argument("--seed", type=int, default=0, help="seeds the initial weights, the order and the augmentation")
    p.add_argument("--out", type=Path, default=Path("fer-dist.keras"), metavar="PATH.keras",
                   help="where the best epoch's model goes; its sidecar is PATH.keras.json and the run's "
                        "working files are in PATH-run/")
    p.add_argument("--cache-dir", type=Path, default=None, help="where decoded data is cached")
    args = p.parse_args(argv)
    if args.model and args.init_from:
        p.error("give --model (a fresh architecture) or --init-from (a trained model), not both")
    args.model = args.model or (None if args.init_from else "resfer")
    problems = [f"{name} must be positive, got {value}" for name, value in
                (("--epochs", args.epochs), ("--batch-size", args.batch_size), ("--lr", args.lr),
                 ("--devices", args.devices or 1), ("--steps-per-epoch", args.steps_per_epoch or 1))
                if not value > 0]
    if not 0 <= args.label_smoothing < 1:
        problems.append(f"--label-smoothing must be in [0, 1), got {args.label_smoothing}")
    if args.limit < 0:
        problems.append(f"--limit must be 0 (all) or positive, got {args.limit}")
    if args.out.suffix != ".keras":
        problems.append(f"--out must end in .keras (a Keras 3 model file), got {args.out}")
    if args.init_from and args.init_from.suffix.lower() not in (".npz", ".keras", ".h5", ".hdf5"):
        problems.append(f"--init-from must be a .npz, .keras or .h5 file, got {args.init_from}")
    elif args.init_from and not args.init_from.is_file():
        problems.append(f"--init-from {args.init_from} does not exist")
    if problems:
        p.error("; ".join(problems))
    return args


# -- the cluster -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Role:
    """This process's place in a TF_CONFIG cluster."""
    task_type: str      # "worker" or "chief"
    index: int
    num_workers: int    # every task that trains: the chief, if any, and the workers
    is_chief: bool      # the one that writes --out: "chief" if there is one, else worker 0


def read_tf_config(text: str | None) -> Role | None:
    """Parse TF_CONFIG (as tf.distribute reads it) -> Role, or None when it is unset or empty.

    ``{"cluster": {"worker": ["host-a:2222", "host-b:2222"]}, "task": {"type": "worker", "index": 0}}``;
    a ``"chief"`` job of one task may stand beside ``"worker"``. Raises ValueError saying what is
    wrong with anything else."""
    if not text or not text.strip():
        return None
    try:
        config = json.loads(text)
    except ValueError as e:
        raise ValueError(f"TF_CONFIG is not JSON ({e}): {text!r}") from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    task = config.get("task") if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise ValueError('TF_CONFIG must be {"cluster": {"worker": ["host:port", ...]}, '
                         f'"task": {{"type": "worker", "index": i}}}}, got {text!r}')
    extra = sorted(set(cluster) - {"worker", "chief"})
    if extra:
        raise ValueError(f"TF_CONFIG: jobs {extra} are not used by MultiWorkerMirroredStrategy; "
                         "list the machines under \"worker\" (and at most one under \"chief\")")
    for job, tasks in cluster.items():
        if not isinstance(tasks, list) or not tasks or not all(isinstance(t, str) and ":" in t for t in tasks):
            raise ValueError(f'TF_CONFIG: cluster["{job}"] must be a list of "host:port", got {tasks!r}')
    if len(cluster.get("chief", [])) > 1:
        raise ValueError(f'TF_CONFIG: at most one chief, got {cluster["chief"]}')
    kind, index = task.get("type"), task.get("index")
    if kind not in cluster:
        raise ValueError(f'TF_CONFIG: task type {kind!r} is not a job of the cluster ({", ".join(cluster)})')
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(cluster[kind]):
        raise ValueError(f"TF_CONFIG: task index must be 0..{len(cluster[kind]) - 1} for the "
                         f"{len(cluster[kind])} {kind} address(es), got {index!r}")
    is_chief = kind == "chief" or ("chief" not in cluster and index == 0)
    return Role(kind, index, sum(len(t) for t in cluster.values()), is_chief)


def choose_strategy(requested: str, role: Role | None) -> str:
    """The strategy to build ('mirrored', 'multiworker' or 'default') for --strategy and TF_CONFIG.

    TF_CONFIG and a one-machine strategy contradict each other (each machine would train a
    model of its own and write the same files), so that is an error, as is multiworker
    without TF_CONFIG."""
    if requested == "auto":
        return "multiworker" if role else "mirrored"
    if requested == "multiworker" and role is None:
        raise ValueError("--strategy multiworker needs the TF_CONFIG environment variable describing the "
                         "cluster (see --help and README); for this machine alone use --strategy mirrored")
    if requested != "multiworker" and role is not None:
        raise ValueError(f"TF_CONFIG is set (task {role.task_type} {role.index} of a {role.num_workers}-machine "
                         f"cluster) but --strategy {requested} trains on this machine alone: use --strategy "
                         "multiworker, or unset TF_CONFIG")
    return requested


def run_directory(out: Path, role: Role | None) -> Path:
    """``fer-dist.keras`` -> ``fer-dist-run/``; a worker other than the chief keeps its own copies
    in ``fer-dist-run/worker-<i>/``, so workers sharing a file system never write the same file."""
    run = out.with_name(out.stem + "-run")
    return run if role is None or role.is_chief else run / f"{role.task_type}-{role.index}"


# -- TensorFlow --------------------------------------------------------------------------------------
def import_tensorflow():
    """(tensorflow, keras), or the program ends with one line saying what to install."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")   # TensorFlow's C++ start-up chatter
    try:
        import tensorflow as tf
        import keras
    except ImportError as e:
        sys.exit(f"error: train_distributed.py needs TensorFlow 2.16 or later with Keras 3 ({e}); "
                 "install it with: pip install -e \".[distributed]\" (or pip install tensorflow)")
    if int(keras.__version__.split(".")[0]) < 3:
        sys.exit(f"error: train_distributed.py needs Keras 3 (TensorFlow 2.16 or later), found Keras "
                 f"{keras.__version__}: pip install -U tensorflow")
    return tf, keras


def configure_devices(tf, n, kind):
    """Make N devices visible before TensorFlow starts -> their names, or None for the strategy's
    own choice (every GPU, else the CPU). Must run before anything creates a tensor."""
    if n is None:
        return None
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        if n > len(gpus):
            sys.exit(f"error: --devices {n}, but this machine has {len(gpus)} GPU(s)")
        tf.config.set_visible_devices(gpus[:n], "GPU")
        return [f"/gpu:{i}" for i in range(n)]
    if kind == "multiworker":
        sys.exit("error: --devices splits the CPU only for --strategy mirrored; a multi-worker run uses each "
                 "worker's GPUs, or its CPU as one device")
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)
    return [f"/cpu:{i}" for i in range(n)]


def make_strategy(tf, kind, devices):
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy(devices)
    if kind == "multiworker":   # reads TF_CONFIG, and waits here until every worker has started
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def describe_strategy(strategy, kind, role):
    name = {"mirrored": "MirroredStrategy", "multiworker": "MultiWorkerMirroredStrategy",
            "default": "the default strategy"}[kind]
    devices = "one device, TensorFlow's choice" if kind == "default" else ", ".join(strategy.extended.worker_devices)
    where = f"; task {role.task_type} {role.index} of {role.num_workers}" if role else ""
    return f"{name}: {strategy.num_replicas_in_sync} replicas in sync (here: {devices}{where})"


def synchronize_batch_norm(keras, model) -> int:
    """Make every BatchNormalization of ``model`` use the whole global batch's mean and variance
    (Keras' ``synchronized=True``) -> how many there are. Keras' default under tf.distribute
    normalises each replica's share alone, and each replica then updates its own copy of the
    moving statistics (they are not aggregated), so the copies drift apart. Synchronised,
    a step computes what train.py's step computes on one device, and every copy is the same.
    Only the training copy changes: the model written to --out is rebuilt from initial.keras."""
    layers = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in layers:
        layer.synchronized = True
    return len(layers)


def work_around_keras_multiworker(tf, model, strategy, example):
    """Let Keras 3's fit() run under MultiWorkerMirroredStrategy with more than one worker.

    Two bugs stop it there (Keras 3.x to 3.15 at least: keras-team/keras#20585,
    tensorflow/tensorflow#72388), each worked around on this model alone:

    * before training, fit() reduces one input batch across the workers only to learn its
      shapes, and MultiWorkerMirroredStrategy cannot reduce a (faces, labels) pair: the
      model is built from ``example``, a batch of this worker's own, instead;
    * each step's logs (loss, accuracy) are scalars that Keras reduces across the workers
      "along axis 0": the steps return them as vectors of one value, so that axis exists.
    """
    def build_from_example(iterator=None, data_batch=None):
        with strategy.scope():
            model._symbolic_build(data_batch=example)

    def logs_as_vectors(step):
        def step_with_vector_logs(data):
            return {name: tf.reshape(value, [1]) for name, value in step(data).items()}
        return step_with_vector_logs

    model._maybe_symbolic_build = build_from_example
    model.train_step = logs_as_vectors(model.train_step)
    model.test_step = logs_as_vectors(model.test_step)


def wait_for_every_worker(tf, strategy):
    """Return once every worker has called this (an all-reduce of one number per replica):
    a worker that leaves while the chief is still writing and checking --out would be
    reported to the chief as crashed."""
    @tf.function
    def count_replicas():
        return strategy.reduce("SUM", strategy.run(lambda: tf.ones([])), axis=None)
    try:
        return int(count_replicas())
    except (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.InternalError) as e:
        sys.exit(f"error: the other workers did not reach the end of the run ({type(e).__name__}); "
                 "see their output")


# -- the model ---------------------------------------------------------------------------------------
def starting_model(args):
    """The tinycnn model training starts from -> (model, architecture name, preprocessing)."""
    import fer_models
    from fer_models.classes import CLASSES
    if not args.init_from:
        return fer_models.build(args.model, seed=args.seed), args.model, args.preprocessing or "none"
    from fer_models.predict import load_model
    try:
        net = load_model(args.init_from)   # .npz as train.py writes it; .keras/.h5 with its .json sidecar
    except (ValueError, FileNotFoundError, OSError) as e:
        sys.exit(f"error: --init-from {args.init_from}: {e}")
    if hasattr(net, "members"):
        sys.exit(f"error: --init-from {args.init_from} is an ensemble; start from one of its members")
    wrong = []
    if tuple(net.input_shape) != fer_models.architectures.INPUT_SHAPE:
        wrong.append(f"input shape {tuple(net.input_shape)}, not {fer_models.architectures.INPUT_SHAPE}")
    if tuple(getattr(net, "input_scale", (0.0, 1.0))) != (0.0, 1.0):
        wrong.append(f"input scale {tuple(net.input_scale)}, not (0, 1)")
    if tuple(getattr(net, "classes", CLASSES)) != tuple(CLASSES):
        wrong.append(f"classes in the order {', '.join(net.classes)}, not {', '.join(CLASSES)}")
    if wrong:
        sys.exit(f"error: --init-from {args.init_from} takes other faces than FER-2013's as this program feeds "
                 f"them: {'; '.join(wrong)}")
    recorded = getattr(net, "preprocessing", "none")
    if args.preprocessing and args.preprocessing != recorded:
        print(f"note: {args.init_from} was trained with preprocessing {recorded!r}; training on with "
              f"{args.preprocessing!r} as asked")
    return net, net.name, args.preprocessing or recorded


def keras_model(keras, strategy, net, initial, args, steps):
    """The tinycnn model ``net`` as a compiled Keras model whose variables live under ``strategy``.

    It goes through a file, as any Keras model would arrive: ``save_keras`` writes ``initial``
    (ending in softmax, since the loss takes probabilities) and ``keras.models.load_model``
    reads it inside ``strategy.scope()``, so every variable is mirrored on every replica."""
    from tinycnn.io import save_keras
    save_keras(net, initial, softmax=True)
    keras.utils.set_random_seed(args.seed)
    with strategy.scope():
        model = keras.models.load_model(initial, compile=False)
        schedule = keras.optimizers.schedules.CosineDecay(args.lr, decay_steps=args.epochs * steps, alpha=0.01)
        model.compile(optimizer=keras.optimizers.Adam(schedule),
                      loss=keras.losses.CategoricalCrossentropy(label_smoothing=args.label_smoothing),
                      metrics=["accuracy"])
    return model


# -- data ---------------------------------------------------------------------------------------------
class TrainingBatches:
    """Global step number -> (faces, one-hot labels): the batch all replicas together train on.

    Step s is batch b = s % steps_per_epoch of epoch e = s // steps_per_epoch + 1 (1-based, as
    in train.py). Epoch e visits the faces in the order ``default_rng([seed, e]).permutation(n)``,
    the order train.py's fit uses, in whole batches (the few faces past the last whole batch
    differ from epoch to epoch); batch b is augmented by ``Augmenter`` with
    ``default_rng([seed, e, b])``. A batch therefore depends on the seed and its step number
    alone: not on how many devices share it, nor on whether the run was interrupted before it.
    """

    def __init__(self, x, y, batch_size, steps_per_epoch, seed, augment, num_classes):
        self.x, self.batch_size, self.steps_per_epoch = x, batch_size, steps_per_epoch
        self.one_hot = np.eye(num_classes, dtype=np.float32)[y]
        self.seed, self.augment = seed, augment

    def __call__(self, step):
        epoch, b = divmod(int(step), self.steps_per_epoch)
        epoch += 1
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.x))
        chosen = order[b * self.batch_size:(b + 1) * self.batch_size]
        faces = self.x[chosen]
        if self.augment is not None:
            faces = self.augment(faces, np.random.default_rng([self.seed, epoch, b]))
        return faces, self.one_hot[chosen]


def sharded_by_data(tf, dataset):
    """Every worker builds the same global batches and keeps its replicas' share of each
    (tf.data's DATA sharding): there are no files to split between workers."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def training_dataset(tf, batches: TrainingBatches, first_step, last_step):
    """Steps first_step .. last_step - 1 as a tf.data pipeline of global batches.

    The augmentation is ``fer_models.augment.Augmenter`` itself, called through
    ``tf.numpy_function``: the same warp (one bilinear ``cv2.warpAffine`` of flip, rotation,
    zoom and shift, mirrored border) and the same distributions as train.py, rather than
    Keras' RandomRotation/RandomTranslation/RandomZoom, which interpolate three times,
    reflect the border differently and define zoom and shift otherwise. It runs on the
    host's CPU beside the accelerators, about a millisecond per 100 faces."""
    shape = (batches.batch_size, *batches.x.shape[1:])

    def load(step):
        faces, labels = tf.numpy_function(batches, [step], (tf.float32, tf.float32), stateful=False)
        return tf.ensure_shape(faces, shape), tf.ensure_shape(labels, (shape[0], batches.one_hot.shape[1]))

    steps = tf.data.Dataset.range(first_step, last_step)
    return sharded_by_data(tf, steps.map(load, num_parallel_calls=2, deterministic=True).prefetch(2))


def validation_dataset(tf, x, y, num_classes):
    one_hot = np.eye(num_classes, dtype=np.float32)[y]
    return sharded_by_data(tf, tf.data.Dataset.from_tensor_slices((x, one_hot)).batch(EVAL_BATCH))


def load_data(args, preprocessing):
    """-> (x_train, y_train) preprocessed, and {split: (raw x, preprocessed x, y)} for PublicTest, PrivateTest."""
    from fer_models.data import load_fer2013
    from fer_models.preprocess import preprocess
    try:
        data = load_fer2013(args.data, cache_dir=args.cache_dir)
    except (FileNotFoundError, ValueError, OSError) as e:
        sys.exit(f"error: --data {args.data}: {e}")
    x_train, y_train = data["Training"]
    if len(x_train) == 0:
        sys.exit(f"error: --data {args.data} holds no Training images to train on")
    if len(data["PublicTest"][0]) == 0:
        sys.exit(f"error: --data {args.data} has no PublicTest split to choose the epoch on")
    if args.limit:
        keep = stratified_subset(y_train, args.limit, args.seed)
        x_train, y_train = x_train[keep], y_train[keep]
    tests = {split: (x, preprocess(x, preprocessing), y) for split, (x, y) in data.items()
             if split != "Training" and len(x)}
    return preprocess(x_train, preprocessing), y_train, tests


# -- the run's record ---------------------------------------------------------------------------------
def resume_point(keras, model, backup, run, settings, steps_per_epoch, epochs):
    """Restore a killed run's backup, if any -> (steps already done, history so far, best PublicTest
    accuracy so far or None). Ends the program if the backup is of a run with other settings."""
    recorded = run / "settings.json"
    if not (run / "backup").exists():   # a new run: what an earlier, finished one left goes
        for leftover in ("best.weights.h5", "history.json"):
            (run / leftover).unlink(missing_ok=True)
        write_json(recorded, settings)
        return 0, [], None
    try:
        before = json.loads(recorded.read_text())
    except (OSError, ValueError):
        before = None
    if before != settings:
        changed = sorted(k for k in settings if not before or before.get(k) != settings[k])
        sys.exit(f"error: {run / 'backup'} holds an unfinished run with other settings ({', '.join(changed)}); "
                 f"run it again with the same options to resume it, or delete {run} to start over")
    with model.distribute_strategy.scope():
        backup.set_model(model)
        backup.on_train_begin()     # weights, optimiser state and epoch, as fit() itself would
    done = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
    if done % steps_per_epoch or done > epochs * steps_per_epoch:
        sys.exit(f"error: the backup in {run / 'backup'} is after step {done}, which is not the end of an epoch "
                 f"of {steps_per_epoch} steps; delete {run} to start over")
    history = json.loads((run / "history.json").read_text()) if (run / "history.json").exists() else []
    best = max((h["val_accuracy"] for h in history), default=None)
    history = [h for h in history if h["epoch"] <= done // steps_per_epoch]
    print(f"resuming {run} after epoch {done // steps_per_epoch}"
          + (f" (best PublicTest accuracy so far {best:.4f})" if best is not None else ""))
    return done, history, best


def make_history_callback(keras, run, history):
    """One record per epoch in run/history.json (as train.py's), written atomically."""
    import time

    class RunHistory(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            record = {"epoch": epoch + 1, "seconds": time.perf_counter() - self.started}
            record.update({k: float(np.mean(v)) for k, v in (logs or {}).items()})
            history.append(record)
            write_json(run / "history.json", history)

    return RunHistory()


# -- the result -----------------------------------------------------------------------------------------
def write_result(keras, out, run, name, preprocessing, tests):
    """Write the best epoch's model to ``out`` and its sidecar, then read it back with tinycnn
    and check that both frameworks give it the same accuracy (ends the program if not)."""
    from fer_models.classes import CLASSES
    from fer_models.predict import keras_sidecar, predict_probabilities
    from tinycnn.io import load_keras

    best = keras.models.load_model(run / "initial.keras", compile=False)   # outside the strategy:
    best.load_weights(run / "best.weights.h5")                            # plain variables, no optimiser
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.stem}.partial.keras")
    best.save(partial)
    os.replace(partial, out)
    sidecar = keras_sidecar(out)   # where fer_models.predict.load_model (so webcam.py) looks for it
    write_json(sidecar, {"model": name, "preprocessing": preprocessing, "input_scale": [0, 1],
                         "classes": list(CLASSES)})
    print(f"best epoch's model written to {out} (sidecar {sidecar}: preprocessing {preprocessing})")

    imported = load_keras(out)
    imported.preprocessing = preprocessing   # the sidecar's, as webcam.py applies it to raw faces
    for split, (raw, x, y) in tests.items():
        keras_probs = best.predict(x, batch_size=EVAL_BATCH, verbose=0)
        tiny_probs = np.concatenate([predict_probabilities(imported, raw[s:s + EVAL_BATCH])
                                     for s in range(0, len(raw), EVAL_BATCH)])
        gap = float(np.abs(keras_probs - tiny_probs).max())
        differ = int((keras_probs.argmax(1) != tiny_probs.argmax(1)).sum())
        print(f"{split} accuracy ({len(y):,} faces): Keras {(keras_probs.argmax(1) == y).mean():.4f}, "
              f"tinycnn (tinycnn.io.load_keras) {(tiny_probs.argmax(1) == y).mean():.4f}; probabilities differ "
              f"by at most {gap:.1e}, {differ} predicted class(es) differ")
        if gap > 1e-4:
            sys.exit(f"error: tinycnn's import of {out} disagrees with Keras on {split} (probabilities differ by "
                     f"up to {gap:.2e}); please report this with the file")


# -- the program ----------------------------------------------------------------------------------------
def main(argv=None):
    args = parse_args(argv)
    try:
        role = read_tf_config(os.environ.get("TF_CONFIG"))
        kind = choose_strategy(args.strategy, role)
    except ValueError as e:
        sys.exit(f"error: {e}")
    tf, keras = import_tensorflow()
    devices = configure_devices(tf, args.devices, kind)   # before anything else touches TensorFlow
    strategy = make_strategy(tf, kind, devices)
    print(describe_strategy(strategy, kind, role))
    replicas = strategy.num_replicas_in_sync
    if args.batch_size % replicas:
        sys.exit(f"error: --batch-size {args.batch_size} does not split evenly across {replicas} replicas; "
                 f"use a multiple of {replicas}")

    import fer_models
    net, name, preprocessing = starting_model(args)
    x_train, y_train, tests = load_data(args, preprocessing)
    steps = len(x_train) // args.batch_size
    if steps == 0:
        sys.exit(f"error: --batch-size {args.batch_size} is larger than the {len(x_train)} Training images")
    steps = min(steps, args.steps_per_epoch or steps)

    run = run_directory(args.out, role)
    run.mkdir(parents=True, exist_ok=True)
    model = keras_model(keras, strategy, net, run / "initial.keras", args, steps)
    synchronized = synchronize_batch_norm(keras, model) if args.sync_batchnorm and replicas > 1 else 0
    if role and role.num_workers > 1:
        example = (x_train[:args.batch_size // replicas],
                   np.zeros((args.batch_size // replicas, fer_models.NUM_CLASSES), np.float32))
        work_around_keras_multiworker(tf, model, strategy, example)

    settings = {"model": name, "init_from": str(args.init_from) if args.init_from else None,
                "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                "label_smoothing": args.label_smoothing, "preprocessing": preprocessing, "augment": args.augment,
                "limit": args.limit, "seed": args.seed, "sync_batchnorm": args.sync_batchnorm,
                "steps_per_epoch": steps, "training_images": len(x_train)}
    backup = keras.callbacks.BackupAndRestore(str(run / "backup"))
    done, history, best = resume_point(keras, model, backup, run, settings, steps, args.epochs)
    from fer_models.augment import Augmenter
    batches = TrainingBatches(x_train, y_train, args.batch_size, steps, args.seed,
                              Augmenter() if args.augment else None, fer_models.NUM_CLASSES)
    public = tests["PublicTest"]
    print(f"{name}: {model.count_params():,} parameters; {len(x_train):,} Training images in {steps} steps of "
          f"{args.batch_size} ({args.batch_size // replicas} per replica), {len(public[2]):,} PublicTest; "
          f"preprocessing {preprocessing}; {synchronized} BatchNormalization layer(s) synchronised across replicas; "
          f"working files in {run}")
    callbacks = [   # in this order: a kill between them at most repeats an epoch
        keras.callbacks.ModelCheckpoint(str(run / "best.weights.h5"), monitor="val_accuracy", mode="max",
                                        save_best_only=True, save_weights_only=True, initial_value_threshold=best),
        make_history_callback(keras, run, history),
        backup,
    ]
    if done < args.epochs * steps:
        model.fit(training_dataset(tf, batches, done, args.epochs * steps), epochs=args.epochs,
                  steps_per_epoch=steps, validation_data=validation_dataset(tf, public[1], public[2],
                                                                            fer_models.NUM_CLASSES),
                  shuffle=False, callbacks=callbacks, verbose=1 if sys.stdout.isatty() else 2)
    best_epoch = max(history, key=lambda h: h["val_accuracy"])
    if role and not role.is_chief:
        print(f"{role.task_type} {role.index}: training done; waiting for the chief to write {args.out}")
        wait_for_every_worker(tf, strategy)
        return
    write_result(keras, args.out, run, name, preprocessing, tests)
    if role:
        wait_for_every_worker(tf, strategy)
    print(f"best PublicTest accuracy during training {best_epoch['val_accuracy']:.4f} at epoch {best_epoch['epoch']}"
          f"\nuse it with: python webcam.py --weights {args.out}")


if __name__ == "__main__":
    main()
