"""tinycnn.io.load_keras / save_keras against Keras 3 itself.

Both ways for each FER architecture: a tinycnn model written by ``save_keras`` (.keras
and legacy .h5) and opened by ``keras.models.load_model`` must output tinycnn's
softmax; a Keras model (tests/keras_models.py) saved by Keras and read by
``load_keras`` must give Keras' outputs, within 1e-5, on real faces when FER-2013 is
present (else on random images). Weights are random, BatchNorm statistics and biases
perturbed so that nothing is a zero or a one.

Keras 2 is not installed: its HDF5 layout (class_name/config per layer,
batch_input_shape, BatchNorm axis [3], weight names ``conv2d/kernel:0``, byte-string
attributes, old inbound_nodes) is written here with h5py, from a Keras 3 model's
config and weights.
"""
from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile

import h5py
import keras
import numpy as np
import pytest

import fer_models
import keras_models as km
import tinycnn as tc
from fer_models.classes import CLASSES
from fer_models.data import default_location
from fixtures_faces import smooth_random_images
from tinycnn.io import load_keras, save_keras

ATOL = 1e-5


def faces(n=8) -> np.ndarray:
    """(n, 48, 48, 1) float32 in [0, 1]: FER-2013 test faces, one class after another, or
    smooth random images when the data set is absent (on pixel noise the models'
    probabilities are near-uniform, and an absolute tolerance on them weak)."""
    import cv2
    root = default_location() / "test"
    files = [sorted((root / c).glob("*.png"))[:n] for c in CLASSES] if root.is_dir() else []
    in_turn = [f[i] for i in range(n) for f in files if i < len(f)][:n]
    if len(in_turn) < n:
        return smooth_random_images(n)
    return np.stack([cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in in_turn])[..., None].astype(np.float32) / 255


X = faces()


def perturb(model: tc.Sequential, seed=0) -> tc.Sequential:
    """Random biases, gamma, beta and BatchNorm moving statistics, so BatchNorm is really tested."""
    rng = np.random.default_rng(seed)
    weights = model.get_weights()
    for key, value in weights.items():
        kind = key.rsplit("/", 1)[1]
        if kind == "moving_variance":
            weights[key] = rng.uniform(0.5, 2.0, value.shape)
        elif kind == "gamma":
            weights[key] = 1.0 + 0.2 * rng.standard_normal(value.shape)
        elif kind in ("beta", "moving_mean", "bias"):
            weights[key] = 0.3 * rng.standard_normal(value.shape)
    model.set_weights(weights)
    return model


def saved_by_keras(model: keras.Model, path):
    """``model`` written by Keras itself: a Keras 3 archive for .keras, the legacy HDF5
    format for .h5. Returns the path."""
    if path.suffix == ".keras":
        model.save(path)
    else:
        keras.models.save_model(model, path)
    return path


def keras_out(model, x=X):
    return np.asarray(model(x, training=False))


def tinycnn_probs(model, x=X):
    return tc.softmax(model(x)).data


def assert_equal_outputs(what, got, expected, atol=ATOL):
    got, expected = np.asarray(got), np.asarray(expected)
    assert got.shape == expected.shape, f"{what}: shape {got.shape}, expected {expected.shape}"
    err = np.abs(got - expected).max()
    assert err <= atol, f"{what}: max abs difference {err:.3g} > {atol}"


def strip_ids(value):
    """A Keras config without the memory addresses Keras records for shared objects."""
    if isinstance(value, dict):
        return {k: strip_ids(v) for k, v in value.items() if k != "shared_object_id"}
    if isinstance(value, list):
        return [strip_ids(v) for v in value]
    return value


def archive_json(path, member="config.json"):
    with zipfile.ZipFile(path) as z:
        return json.loads(z.read(member))


def rewrite_archive(path, out, config=None, weights=None):
    """A copy of a .keras archive with config.json and/or model.weights.h5 replaced
    (``weights(h5 file)`` edits the weights in place)."""
    with zipfile.ZipFile(path) as z:
        members = {name: z.read(name) for name in z.namelist()}
    if config is not None:
        members["config.json"] = json.dumps(config).encode()
    if weights is not None:
        buffer = io.BytesIO(members["model.weights.h5"])
        with h5py.File(buffer, "a") as f:
            weights(f)
        members["model.weights.h5"] = buffer.getvalue()
    with zipfile.ZipFile(out, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return out


ARCHITECTURES = fer_models.names()


# -- tinycnn -> Keras ------------------------------------------------------------------------------
@pytest.mark.parametrize("ext", [".keras", ".h5"])
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_tinycnn_to_keras(tmp_path, name, ext):
    """save_keras -> keras.models.load_model outputs tinycnn's softmax; load_keras gives the
    same model back (names, weights, outputs)."""
    model = perturb(fer_models.build(name, seed=0))
    path = tmp_path / f"{name}{ext}"
    save_keras(model, path)
    loaded = keras.models.load_model(path)
    assert_equal_outputs(f"{name}{ext} in Keras", keras_out(loaded), tinycnn_probs(model))
    keras_names = {layer.name for layer in loaded.layers}
    missing = {layer.name for layer in model.all_layers()} - keras_names
    assert not missing, f"{name}{ext}: tinycnn layers {missing} have no Keras layer of that name"

    back = load_keras(path)
    assert back.output_softmax is True and back.input_shape == model.input_shape and back.name == name
    mine, theirs = model.get_weights(), back.get_weights()
    assert sorted(mine) == sorted(theirs), f"{name}{ext}: weight names changed: {set(mine) ^ set(theirs)}"
    for key in mine:
        np.testing.assert_array_equal(theirs[key], mine[key], err_msg=f"{name}{ext}: {key}")
    assert_equal_outputs(f"{name}{ext} read back", tinycnn_probs(back), tinycnn_probs(model), atol=1e-6)


@pytest.mark.parametrize("name", ["vggbn", "resfer", "mini_xception"])
def test_saved_files_mirror_keras(tmp_path, name):
    """What save_keras writes is what Keras writes for the same model (a Sequential, a
    functional one, one with separable convolutions): config.json, the weights file's
    groups and attributes, and the legacy file's config and layout."""
    if name == "mini_xception":                 # no regulariser: tinycnn has none to write back
        reference = km.mini_xception(l2=None)
        reference.save(tmp_path / "from_keras.keras")
        model = load_keras(tmp_path / "from_keras.keras")
    else:
        model, reference = fer_models.build(name, seed=0), km.build(name)
    save_keras(model, tmp_path / "ours.keras")
    save_keras(model, tmp_path / "ours.h5")
    reference.save(tmp_path / "keras.keras")
    keras.models.save_model(reference, tmp_path / "keras.h5")
    assert strip_ids(archive_json(tmp_path / "ours.keras")) == strip_ids(archive_json(tmp_path / "keras.keras"))
    assert set(zipfile.ZipFile(tmp_path / "ours.keras").namelist()) == {"metadata.json", "config.json",
                                                                         "model.weights.h5"}

    def layout(f):
        out = {"/": {k: str(v) for k, v in f.attrs.items() if k not in ("model_config", "keras_version")}}
        f.visititems(lambda key, obj: out.__setitem__(key, (getattr(obj, "shape", None), {
            k: str(v) for k, v in obj.attrs.items() if k != "keras_version"})))
        return out

    def weights_file(path):
        return h5py.File(io.BytesIO(zipfile.ZipFile(path).read("model.weights.h5")), "r")

    assert layout(weights_file(tmp_path / "ours.keras")) == layout(weights_file(tmp_path / "keras.keras"))
    with h5py.File(tmp_path / "ours.h5", "r") as ours, h5py.File(tmp_path / "keras.h5", "r") as theirs:
        assert layout(ours) == layout(theirs)
        assert strip_ids(json.loads(ours.attrs["model_config"])) == strip_ids(json.loads(theirs.attrs["model_config"]))


def test_softmax_option(tmp_path):
    """softmax=False writes the logits model; a model loaded from a Keras model without
    softmax is written without one by default."""
    model = perturb(fer_models.build("mini", seed=0))
    save_keras(model, tmp_path / "logits.keras", softmax=False)
    loaded = keras.models.load_model(tmp_path / "logits.keras")
    assert_equal_outputs("softmax=False", keras_out(loaded), model(X).data)
    back = load_keras(tmp_path / "logits.keras")
    assert back.output_softmax is False
    save_keras(back, tmp_path / "again.keras")            # default: as loaded, no softmax
    assert archive_json(tmp_path / "again.keras")["config"]["layers"][-1]["config"]["activation"] == "linear"
    save_keras(back, tmp_path / "forced.keras", softmax=True)
    assert_equal_outputs("softmax=True", keras_out(keras.models.load_model(tmp_path / "forced.keras")),
                         tinycnn_probs(model))


def test_softmax_added_as_a_layer_after_a_residual(tmp_path):
    """A model ending in something other than a linear Dense gets Activation('softmax'); a
    Residual without ReLU is a bare Add; an empty shortcut is the identity."""
    L = tc.layers
    model = tc.Sequential([L.Conv2D(4, 3, padding="same"),
                           L.Residual([L.Conv2D(4, 3, padding="same", use_bias=False), L.BatchNormalization()],
                                      activation=None),
                           L.Residual([L.Conv2D(6, 3, strides=2, padding="same")],
                                      [L.Conv2D(6, 1, strides=2, padding="same")]),
                           L.GlobalAveragePooling2D()], input_shape=(9, 9, 1), name="tiny")
    perturb(model)
    x = X[:, :9, :9]
    for ext in (".keras", ".h5"):
        save_keras(model, tmp_path / f"tiny{ext}")
        loaded = keras.models.load_model(tmp_path / f"tiny{ext}")
        assert [type(layer).__name__ for layer in loaded.layers][-2:] == ["GlobalAveragePooling2D", "Activation"]
        assert_equal_outputs(f"tiny{ext}", keras_out(loaded, x), tinycnn_probs(model, x))
        back = load_keras(tmp_path / f"tiny{ext}")
        assert [type(layer).__name__ for layer in back.layers] == ["Conv2D", "Residual", "Residual", "Activation",
                                                                   "GlobalAveragePooling2D"]
        assert back.layers[1].shortcut == [] and back.layers[3].name == "residual_1_relu"
        assert_equal_outputs(f"tiny{ext} read back", tinycnn_probs(back, x), tinycnn_probs(model, x), atol=1e-6)


def test_save_errors(tmp_path):
    L = tc.layers
    with pytest.raises(ValueError, match="not built"):
        save_keras(tc.Sequential([L.Dense(3)]), tmp_path / "x.keras")
    model = fer_models.build("mini", seed=0)
    with pytest.raises(ValueError, match=r"\.keras .*\.h5"):
        save_keras(model, tmp_path / "x.npz")
    ends = tc.Sequential([L.Flatten(), L.Dense(3, activation="softmax")], input_shape=(2, 2, 1))
    with pytest.raises(ValueError, match="already ends in softmax"):
        save_keras(ends, tmp_path / "x.keras", softmax=False)
    save_keras(ends, tmp_path / "ends.keras")             # written as it is, softmax once
    assert keras.models.load_model(tmp_path / "ends.keras").layers[-1].get_config()["activation"] == "softmax"
    middle = tc.Sequential([L.Flatten(), L.Dense(3, activation="softmax", name="early"), L.Dense(2)],
                           input_shape=(2, 2, 1))
    with pytest.raises(ValueError, match="'early'.*softmax before the last layer"):
        save_keras(middle, tmp_path / "x.keras")
    assert not list(tmp_path.glob("x.*")) and not list(tmp_path.glob("*.tmp"))


# -- Keras -> tinycnn ------------------------------------------------------------------------------
@pytest.mark.parametrize("ext", [".keras", ".h5"])
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_keras_to_tinycnn(tmp_path, name, ext):
    """A Keras model with random weights, saved by Keras, read by load_keras: Keras' outputs."""
    reference = km.randomise_weights(km.build(name), seed=1)
    model = load_keras(saved_by_keras(reference, tmp_path / f"{name}{ext}"))
    assert model.output_softmax is True and model.input_shape == (48, 48, 1) and model.name == name
    assert_equal_outputs(f"{name}{ext} in tinycnn", tinycnn_probs(model), keras_out(reference))
    ours = fer_models.build(name, seed=0)            # the same layers, named alike, as fer_models builds them
    assert sorted(model.get_weights()) == sorted(ours.get_weights())


def test_keras_layers_and_options(tmp_path):
    """Options each layer must carry over: BatchNorm momentum, epsilon, center and scale
    off; strided same-padded pooling; convolutions without bias; a final softmax layer."""
    reference = keras.Sequential([
        keras.Input((11, 11, 2), name="input_layer"),
        keras.layers.Conv2D(5, 3, strides=2, padding="same", use_bias=False, name="c1"),
        keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, center=False, name="bn1"),
        keras.layers.ReLU(name="r1"),
        keras.layers.MaxPooling2D(3, strides=2, padding="same", name="p1"),
        keras.layers.Conv2DTranspose(3, 3, strides=2, padding="valid", activation="relu", name="up"),
        keras.layers.BatchNormalization(scale=False, name="bn2"),
        keras.layers.Activation("linear", name="lin"),
        keras.layers.Dropout(0.3, seed=5, name="drop"),
        keras.layers.Flatten(name="flat"),
        keras.layers.Dense(6, use_bias=False, kernel_regularizer="l2", name="d1"),
        keras.layers.BatchNormalization(center=False, scale=False, name="bn3"),
        keras.layers.Activation("softmax", name="probs")], name="options")
    km.randomise_weights(reference, seed=2)
    x = np.random.default_rng(3).uniform(0, 1, (5, 11, 11, 2)).astype(np.float32)
    reference.save(tmp_path / "options.keras")
    model = load_keras(tmp_path / "options.keras")
    assert [layer.name for layer in model.layers] == ["c1", "bn1", "r1", "p1", "up", "bn2", "lin", "drop", "flat",
                                                      "d1", "bn3"]
    bn1, bn3 = model.layers[1], model.layers[10]
    assert (bn1.momentum, bn1.epsilon) == (0.9, 1e-5) and (bn3.momentum, bn3.epsilon) == (0.99, 1e-3)
    assert not bn1.beta.requires_grad and bn1.gamma.requires_grad and not bn3.gamma.requires_grad
    assert model.layers[7].rate == 0.3 and model.layers[7].seed == 5
    assert model.output_softmax is True
    assert_equal_outputs("options", tinycnn_probs(model, x), keras_out(reference, x))

    save_keras(model, tmp_path / "again.keras")       # and back: center/scale off again, the same outputs
    again = keras.models.load_model(tmp_path / "again.keras")
    flags = {layer.name: (layer.center, layer.scale) for layer in again.layers
             if isinstance(layer, keras.layers.BatchNormalization)}
    assert flags == {"bn1": (False, True), "bn2": (True, False), "bn3": (False, False)}
    assert_equal_outputs("options written back", keras_out(again, x), keras_out(reference, x))


def _residual_keras(identity_first):
    """x -> conv -> [conv, BN] + identity -> Add -> ReLU -> [conv s2, BN] + [conv 1x1 s2] -> Add -> GAP -> Dense."""
    inputs = keras.Input((8, 8, 3), name="input_layer")
    x = keras.layers.Conv2D(4, 3, padding="same", name="stem")(inputs)
    y = keras.layers.BatchNormalization(name="bn")(keras.layers.Conv2D(4, 3, padding="same", name="c1")(x))
    x = keras.layers.Add(name="add")([x, y] if identity_first else [y, x])
    x = keras.layers.ReLU(name="relu")(x)
    short = keras.layers.Conv2D(6, 1, strides=2, padding="same", name="short")(x)
    y = keras.layers.BatchNormalization(name="bn2")(keras.layers.Conv2D(6, 3, strides=2, padding="same",
                                                                        name="c2")(x))
    x = keras.layers.Add(name="add_1")([short, y])
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="logits")(x), name="residual")


@pytest.mark.parametrize("identity_first", [False, True])
def test_keras_residual_graph(tmp_path, identity_first):
    """Adds of residual connections, in either order of their inputs, with an identity or a
    projection shortcut; a model without softmax (output_softmax False); the weights found
    from Keras' layer order when the file does not name its weight groups."""
    reference = km.randomise_weights(_residual_keras(identity_first), seed=4)
    x = np.random.default_rng(5).uniform(0, 1, (3, 8, 8, 3)).astype(np.float32)
    reference.save(tmp_path / "residual.keras")
    model = load_keras(tmp_path / "residual.keras")
    assert [type(layer).__name__ for layer in model.layers] == ["Conv2D", "Residual", "ReLU", "Residual",
                                                                "GlobalAveragePooling2D", "Dense"]
    first, second = model.layers[1], model.layers[3]
    assert [l.name for l in first.block] == ["c1", "bn"] and first.shortcut == [] and first.activation is None
    assert [l.name for l in second.block] == ["short"] and [l.name for l in second.shortcut] == ["c2", "bn2"]
    assert model.output_softmax is False
    assert_equal_outputs("residual", model(x).data, keras_out(reference, x))

    def unname(f):                                   # as Keras before 3.x wrote them: no 'name' attribute
        for group in f["layers"].values():
            del group["vars"].attrs["name"]

    rewrite_archive(tmp_path / "residual.keras", tmp_path / "unnamed.keras", weights=unname)
    assert_equal_outputs("residual, weights by Keras' order", load_keras(tmp_path / "unnamed.keras")(x).data,
                         keras_out(reference, x))


# -- mini-Xception and the depthwise layers --------------------------------------------------------
@pytest.mark.parametrize("ext", [".keras", ".h5"])
def test_mini_xception_from_keras(tmp_path, ext):
    reference = km.randomise_weights(km.mini_xception(), seed=6)
    model = load_keras(saved_by_keras(reference, tmp_path / f"mini_xception{ext}"))
    assert model.output_softmax is True
    residuals = [layer for layer in model.layers if isinstance(layer, tc.layers.Residual)]
    assert len(residuals) == 4 and all(len(r.shortcut) == 2 and len(r.block) == 6 for r in residuals)
    assert_equal_outputs(f"mini-Xception{ext}", tinycnn_probs(model), keras_out(reference))

    save_keras(model, tmp_path / f"again{ext}")      # and written back
    again = keras.models.load_model(tmp_path / f"again{ext}")
    assert_equal_outputs(f"mini-Xception{ext} written back", keras_out(again), keras_out(reference))


def test_mini_xception_weights_by_keras_order(tmp_path):
    reference = km.randomise_weights(km.mini_xception(), seed=7)
    reference.save(tmp_path / "named.keras")

    def unname(f):
        for group in f["layers"].values():
            del group["vars"].attrs["name"]

    rewrite_archive(tmp_path / "named.keras", tmp_path / "unnamed.keras", weights=unname)
    assert_equal_outputs("mini-Xception by order", tinycnn_probs(load_keras(tmp_path / "unnamed.keras")),
                         keras_out(reference))


def test_depthwise_options(tmp_path):
    reference = keras.Sequential([
        keras.Input((10, 10, 3), name="input_layer"),
        keras.layers.DepthwiseConv2D(3, strides=2, padding="same", depth_multiplier=2, name="dw"),
        keras.layers.SeparableConv2D(5, 3, padding="valid", depth_multiplier=3, name="sep"),
        keras.layers.SeparableConv2D(4, 1, use_bias=False, name="sep_nobias"),
        keras.layers.GlobalAveragePooling2D(name="gap")], name="depthwise")
    km.randomise_weights(reference, seed=8)
    x = np.random.default_rng(9).uniform(0, 1, (2, 10, 10, 3)).astype(np.float32)
    for ext in (".keras", ".h5"):
        model = load_keras(saved_by_keras(reference, tmp_path / f"dw{ext}"))
        assert_equal_outputs(f"depthwise{ext}", model(x).data, keras_out(reference, x))
        save_keras(model, tmp_path / f"again{ext}")
        assert_equal_outputs(f"depthwise{ext} written back",
                             keras_out(keras.models.load_model(tmp_path / f"again{ext}"), x), keras_out(reference, x))


# -- Keras 2 files, written with h5py --------------------------------------------------------------
def _keras2_value(value):
    """A Keras 3 config value as Keras 2 wrote it: no module/registered_name, dtype a string."""
    if isinstance(value, dict):
        if value.get("class_name") == "DTypePolicy":
            return value["config"]["name"]
        return {k: _keras2_value(v) for k, v in value.items() if k not in ("module", "registered_name")}
    if isinstance(value, list):
        return [_keras2_value(v) for v in value]
    return value


def _keras2_layer(layer):
    config = _keras2_value(layer.get_config())
    for key in ("quantization_config", "synchronized", "renorm", "renorm_clipping", "renorm_momentum"):
        config.pop(key, None)                                     # Keras 3 only
    if isinstance(layer, keras.layers.BatchNormalization):       # Keras 2 stored the built, positive axes
        config["axis"] = [len(layer.input.shape) - 1]
    return config


def write_keras2_h5(model: keras.Model, path, chunks=1, bare_list=False):
    """The HDF5 file Keras 2 (tf.keras 2.x) ``model.save`` wrote for ``model``: a
    Sequential's config with an InputLayer (``batch_input_shape``; with ``bare_list``
    the Keras <= 2.2.4 form: the layer list itself, the shape on the first layer), a
    functional one with ``inbound_nodes`` [[[layer, 0, 0, {}]]], weights
    ``<layer>/<weight>:0``, fixed-length byte-string attributes (``layer_names`` split
    into ``chunks`` parts, as Keras did past 64 kB), a training config and optimizer
    weights to be ignored."""
    sequential = isinstance(model, keras.Sequential)
    batch_shape = [None, *model.inputs[0].shape[1:]]
    entries = []
    if sequential:
        if not bare_list:
            entries.append({"class_name": "InputLayer", "config": {
                "batch_input_shape": batch_shape, "dtype": "float32", "sparse": False, "ragged": False,
                "name": f"{model.layers[0].name}_input"}})
        for k, layer in enumerate(model.layers):
            config = _keras2_layer(layer)
            if k == 0:
                config["batch_input_shape"] = batch_shape
            entries.append({"class_name": type(layer).__name__, "config": config})
        model_config = {"class_name": "Sequential",
                        "config": entries if bare_list else {"name": model.name, "layers": entries}}
    else:
        for layer, entry in zip(model.layers, model.get_config()["layers"]):
            if isinstance(layer, keras.layers.InputLayer):
                config, inbound = {"batch_input_shape": batch_shape, "dtype": "float32", "sparse": False,
                                   "ragged": False, "name": layer.name}, []
            else:
                histories = []
                for arg in entry["inbound_nodes"][0]["args"]:
                    for tensor in (arg if isinstance(arg, list) else [arg]):
                        histories.append(tensor["config"]["keras_history"])
                config, inbound = _keras2_layer(layer), [[[h[0], 0, 0, {}] for h in histories]]
            entries.append({"class_name": type(layer).__name__, "config": config, "name": layer.name,
                            "inbound_nodes": inbound})
        model_config = {"class_name": "Functional", "config": {
            "name": model.name, "layers": entries, "input_layers": [[model.layers[0].name, 0, 0]],
            "output_layers": [[model.layers[-1].name, 0, 0]]}}

    def strings(values):
        return np.array([v.encode("utf8") for v in values], dtype=bytes) if values else np.array([])

    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = b"2.13.1"
        f.attrs["backend"] = b"tensorflow"
        f.attrs["model_config"] = json.dumps(model_config).encode("utf8")
        f.attrs["training_config"] = json.dumps({"loss": "categorical_crossentropy"}).encode("utf8")
        group = f.create_group("model_weights")
        names = [layer.name for layer in model.layers]
        for k, part in enumerate(np.array_split(np.arange(len(names)), chunks)):
            group.attrs["layer_names" if chunks == 1 else f"layer_names{k}"] = strings([names[i] for i in part])
        group.attrs["keras_version"], group.attrs["backend"] = b"2.13.1", b"tensorflow"
        for layer in model.layers:
            weight_names = []
            for w in layer.weights:
                kind = w.path.rsplit("/", 1)[-1]
                kind = "depthwise_kernel" if isinstance(layer, keras.layers.DepthwiseConv2D) else kind
                weight_names.append(f"{layer.name}/{kind}:0")
            sub = group.create_group(layer.name)
            sub.attrs["weight_names"] = strings(weight_names)
            for name, w in zip(weight_names, layer.weights):
                sub.create_dataset(name, data=np.asarray(w.numpy()))
        f.create_group("optimizer_weights").create_dataset("Adam/iter:0", data=np.int64(7))
    return path


KERAS2_CASES = [("gap4", {}), ("gap4", {"bare_list": True, "chunks": 3}), ("resfer", {"chunks": 2})]


@pytest.mark.parametrize("name, options", KERAS2_CASES, ids=["gap4", "gap4-keras2.2-chunked", "resfer"])
def test_keras2_h5(tmp_path, name, options):
    reference = km.randomise_weights(km.build(name), seed=10)
    path = write_keras2_h5(reference, tmp_path / f"{name}.h5", **options)
    with h5py.File(path, "r") as f:                      # the fixture really is Keras 2's layout
        config = json.loads(f.attrs["model_config"])
        assert "batch_input_shape" in json.dumps(config) and "module" not in json.dumps(config)
        assert all(n.endswith(":0") for g in f["model_weights"].values() for n in
                   [x.decode() for x in np.atleast_1d(g.attrs.get("weight_names", []))] if n)
    model = load_keras(path)
    assert model.output_softmax is True and model.input_shape == (48, 48, 1)
    assert_equal_outputs(f"Keras 2 {name}", tinycnn_probs(model), keras_out(reference))


def test_keras2_h5_mini_xception(tmp_path):
    reference = km.randomise_weights(km.mini_xception(), seed=11)
    model = load_keras(write_keras2_h5(reference, tmp_path / "mini_xception.h5"))
    assert_equal_outputs("Keras 2 mini-Xception", tinycnn_probs(model), keras_out(reference))


# -- what load_keras refuses ----------------------------------------------------------------------
def test_every_unsupported_layer_and_option_in_one_error(tmp_path):
    reference = keras.Sequential([
        keras.Input((12, 12, 1), name="input_layer"),
        keras.layers.Conv2D(4, 3, dilation_rate=2, name="dilated"),
        keras.layers.Conv2D(4, 3, activation="elu", name="elu_conv"),
        keras.layers.BatchNormalization(renorm=True, name="renorm_bn"),
        keras.layers.Reshape((36, 4), name="reshape"),
        keras.layers.LSTM(5, name="lstm"),
        keras.layers.Dense(3, activation="sigmoid", name="out")])
    reference.save(tmp_path / "bad.keras")
    with pytest.raises(ValueError) as error:
        load_keras(tmp_path / "bad.keras")
    message = str(error.value)
    for expected in ("'dilated' (Conv2D): dilation_rate=(2, 2)", "'elu_conv' (Conv2D): activation 'elu'",
                     "'renorm_bn' (BatchNormalization): renorm=True", "'reshape' (Reshape)", "'lstm' (LSTM)",
                     "'out' (Dense): activation 'sigmoid'", "bad.keras"):
        assert expected in message, f"{expected!r} not in the error:\n{message}"


def test_channels_first_and_groups_refused(tmp_path):
    reference = keras.Sequential([keras.Input((4, 6, 6), name="input_layer"),
                                  keras.layers.Conv2D(4, 3, groups=2, name="grouped"),
                                  keras.layers.MaxPooling2D(data_format="channels_first", name="cf_pool"),
                                  keras.layers.GlobalAveragePooling2D(keepdims=True, name="keep")])
    keras.models.save_model(reference, tmp_path / "bad.h5")
    with pytest.raises(ValueError, match=r"(?s)'grouped'.*groups=2.*'cf_pool'.*channels_first.*'keep'.*keepdims"):
        load_keras(tmp_path / "bad.h5")


def test_softmax_in_the_middle_refused(tmp_path):
    reference = keras.Sequential([keras.Input((4,), name="input_layer"),
                                  keras.layers.Dense(4, activation="softmax", name="early"),
                                  keras.layers.Dense(3, name="late")])
    reference.save(tmp_path / "middle.keras")
    with pytest.raises(ValueError, match="'early' \\(Dense\\): softmax before the last layer"):
        load_keras(tmp_path / "middle.keras")


def test_graphs_that_are_not_residual_chains_refused(tmp_path):
    a, b = keras.Input((4,), name="a"), keras.Input((4,), name="b")
    x = keras.Input((6, 6, 2), name="input_layer")
    left, right = keras.layers.Conv2D(2, 1, name="left")(x), keras.layers.Conv2D(2, 1, name="right")(x)
    y = keras.layers.Conv2D(2, 1, name="c")(x)
    u1, u2, u3 = (keras.layers.ReLU(name=f"u{k}")(y) for k in (1, 2, 3))
    shared = keras.layers.Conv2D(2, 1, name="shared")
    cases = {
        "2 inputs ['a', 'b'] and 1 outputs": keras.Model([a, b], keras.layers.Add(name="sum")([a, b])),
        "layer 'cat' (Concatenate): tinycnn has no such layer":
            keras.Model(x, keras.layers.Concatenate(name="cat")([left, right])),
        "1 inputs ['input_layer'] and 2 outputs ['left', 'right']": keras.Model(x, [left, right]),
        "layer 'sum3' (Add) adds 3 tensors": keras.Model(x, keras.layers.Add(name="sum3")([left, right, x])),
        "the output of 'c' feeds 3 layers ['u1', 'u2', 'u3']":
            keras.Model(x, keras.layers.Add(name="t")([keras.layers.Add(name="t1")([u1, u2]), u3])),
        "layer 'shared' is called 2 times": keras.Model(x, shared(shared(x))),
    }
    for k, (message, model) in enumerate(cases.items()):
        model.save(tmp_path / f"graph{k}.keras")
        with pytest.raises(ValueError) as error:
            load_keras(tmp_path / f"graph{k}.keras")
        assert message in str(error.value), f"{message!r} not in the error:\n{error.value}"


def test_nested_residual_graph(tmp_path):
    """A residual connection inside a branch of another: left(x) + (right(x) + r2(right(x)))."""
    x = keras.Input((6, 6, 2), name="input_layer")
    left, right = keras.layers.Conv2D(3, 1, name="left")(x), keras.layers.Conv2D(3, 1, name="right")(x)
    inner = keras.layers.Add(name="inner")([keras.layers.Conv2D(3, 3, padding="same", name="r2")(right), right])
    reference = keras.Model(x, keras.layers.Add(name="outer")([left, inner]), name="nested")
    km.randomise_weights(reference, seed=13)
    reference.save(tmp_path / "nested.keras")
    model = load_keras(tmp_path / "nested.keras")
    outer, = model.layers
    assert [l.name for l in outer.block] == ["left"] and [l.name for l in outer.shortcut] == ["right", "inner"]
    assert [l.name for l in outer.shortcut[1].block] == ["r2"] and outer.shortcut[1].shortcut == []
    x = np.random.default_rng(14).uniform(0, 1, (2, 6, 6, 2)).astype(np.float32)
    assert_equal_outputs("nested residual", model(x).data, keras_out(reference, x))
    save_keras(model, tmp_path / "again.keras")
    assert_equal_outputs("nested residual written back",
                         keras_out(keras.models.load_model(tmp_path / "again.keras"), x), keras_out(reference, x))


def test_damaged_and_foreign_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_keras(tmp_path / "absent.keras")
    (tmp_path / "text.keras").write_text("hello, not a model")
    with pytest.raises(ValueError, match="not a Keras model file"):
        load_keras(tmp_path / "text.keras")
    np.savez(tmp_path / "arrays.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="no config.json"):
        load_keras(tmp_path / "arrays.npz")

    model = fer_models.build("mini", seed=0)
    save_keras(model, tmp_path / "mini.keras")
    save_keras(model, tmp_path / "mini.h5")
    for ext in (".keras", ".h5"):
        data = (tmp_path / f"mini{ext}").read_bytes()
        (tmp_path / f"cut{ext}").write_bytes(data[:len(data) // 2])
        with pytest.raises(ValueError, match="damaged or truncated"):
            load_keras(tmp_path / f"cut{ext}")
    reference = km.build("mini")
    reference.save_weights(tmp_path / "only.weights.h5")
    with pytest.raises(ValueError, match="weights only"):
        load_keras(tmp_path / "only.weights.h5")
    with h5py.File(tmp_path / "plain.h5", "w") as f:
        f["x"] = np.zeros(2)
    with pytest.raises(ValueError, match="not a Keras model"):
        load_keras(tmp_path / "plain.h5")


def test_missing_and_mismatched_weights(tmp_path):
    model = fer_models.build("mini", seed=0)
    save_keras(model, tmp_path / "mini.keras")

    def drop_conv(f):
        del f["layers/conv2d_1"]

    rewrite_archive(tmp_path / "mini.keras", tmp_path / "missing.keras", weights=drop_conv)
    with pytest.raises(ValueError, match="missing.keras: no weights in the file for layer 'conv2d_1' \\(Conv2D\\)"):
        load_keras(tmp_path / "missing.keras")

    config = archive_json(tmp_path / "mini.keras")
    config["config"]["layers"][1]["config"]["filters"] = 8         # the first Conv2D had 16
    rewrite_archive(tmp_path / "mini.keras", tmp_path / "mismatch.keras", config=config)
    with pytest.raises(ValueError, match=r"layer 'conv2d' \(Conv2D\): weight 'kernel' has shape \(3, 3, 1, 16\) "
                                         r"in the file, but the layer's config makes it \(3, 3, 1, 8\)"):
        load_keras(tmp_path / "mismatch.keras")

    with zipfile.ZipFile(tmp_path / "mini.keras") as z, zipfile.ZipFile(tmp_path / "noweights.keras", "w") as out:
        out.writestr("config.json", z.read("config.json"))
    with pytest.raises(ValueError, match="no model.weights.h5"):
        load_keras(tmp_path / "noweights.keras")

    broken = {"module": "keras.src.models.functional", "class_name": "Functional", "config": None}
    rewrite_archive(tmp_path / "mini.keras", tmp_path / "broken.keras", config=broken)
    with pytest.raises(ValueError, match="broken.keras: the model config is damaged"):
        load_keras(tmp_path / "broken.keras")
    subclassed = {"module": "my_project", "class_name": "MyModel", "config": {}}
    rewrite_archive(tmp_path / "mini.keras", tmp_path / "subclassed.keras", config=subclassed)
    with pytest.raises(ValueError, match="not a Sequential or functional Keras model \\(model class 'MyModel'\\)"):
        load_keras(tmp_path / "subclassed.keras")


def test_no_tensorflow_at_run_time(tmp_path):
    """tinycnn reads and writes Keras files with h5py, json and zipfile alone."""
    code = ("import sys, fer_models; from tinycnn.io import load_keras, save_keras; "
            f"save_keras(fer_models.build('mini'), {str(tmp_path / 'm.keras')!r}); "
            f"load_keras({str(tmp_path / 'm.keras')!r}); "
            "bad = [m for m in ('keras', 'tensorflow', 'tf_keras') if m in sys.modules]; "
            "assert not bad, f'imported {bad}'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_unzipped_keras_folder(tmp_path):
    """model.save(path, zipped=False) writes the archive's files into a folder."""
    reference = km.randomise_weights(km.build("mini"), seed=12)
    reference.save(tmp_path / "folder", zipped=False)
    assert (tmp_path / "folder").is_dir()
    assert_equal_outputs("unzipped .keras", tinycnn_probs(load_keras(tmp_path / "folder")),
                         keras_out(reference))
