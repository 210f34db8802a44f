"""Keras model files, read and written with h5py, json and zipfile alone (no Keras).

``load_keras(path)`` turns a Keras model file into a ``tinycnn.Sequential``;
``save_keras(model, path)`` writes one that ``keras.models.load_model`` opens.

The two formats, told apart by their first bytes (not by the file's name):

* **Keras 3** ``.keras``: a zip archive of ``config.json`` (the architecture: for each
  layer its ``class_name`` and ``config``), ``metadata.json`` (Keras version, date) and
  ``model.weights.h5``. There a layer's arrays are the datasets ``0, 1, ...`` of the
  group ``layers/<class in snake case>[_n]/vars``: the group is named after the layer's
  *class*, ``_n`` counting the earlier layers of that class in Keras' layer order
  (Keras 3.15 also stores the layer's name as the group's attribute ``name``).
* **legacy HDF5** ``.h5``/``.hdf5``, as Keras 2's ``model.save`` and Keras 3's
  ``keras.models.save_model(model, "x.h5")`` write it: the root attribute
  ``model_config`` (JSON), and a group ``model_weights`` whose attribute ``layer_names``
  lists the layers; each layer's group has an attribute ``weight_names`` naming its
  datasets in order (``conv2d/kernel:0`` in Keras 2, ``sequential/conv2d/kernel`` in
  Keras 3).

Graphs. A Sequential model, or a functional model that is a chain in which a tensor
may fork into two branches that meet again in an ``Add``: a residual connection,
``tinycnn.layers.Residual(block, shortcut, activation=None)`` named after the Add (an
empty branch is the identity shortcut). A ReLU after the Add stays a layer of its own,
so every Keras layer keeps its name.

Softmax. tinycnn models end in logits (the loss takes logits). A Keras model that
ends in softmax (``Dense(activation="softmax")`` or a final ``Activation("softmax")``)
is loaded without it and ``model.output_softmax = True`` records that it had one:
``tinycnn.softmax(model(x))`` is then what Keras outputs. ``save_keras`` puts it back
(see there).

Only what tinycnn computes exactly is accepted: every layer or option it cannot
reproduce (another activation, dilation, channels_first, ...) is named in one
ValueError, never loaded approximately. Regularizers, constraints, initializers and
``trainable`` flags do not change what a trained model computes and are ignored.
BatchNormalization with ``center=False`` (``scale=False``) gets a constant beta of 0
(gamma of 1) that does not train, which ``save_keras`` writes back as center=False.
"""
from __future__ import annotations

import datetime
import io
import json
import os
import re
import zipfile
import zlib

import h5py
import numpy as np

from .. import layers as L
from ..model import Sequential, write_atomic

KERAS_VERSION = "3.15.1"   # the Keras whose files save_keras mirrors (metadata.json, legacy attributes)
_WEIGHT_ORDER = ("kernel", "depthwise_kernel", "pointwise_kernel", "bias",
                 "gamma", "beta", "moving_mean", "moving_variance")   # the order Keras keeps them in


# ================================================================================================
# Reading
# ================================================================================================

class KerasLayer:
    """One layer of a Keras model file: its name, class, config and the layers feeding it."""

    def __init__(self, name, cls, config, inputs=()):
        self.name, self.cls, self.config, self.inputs = name, cls, config, list(inputs)

    def __repr__(self):
        return f"KerasLayer({self.name!r}, {self.cls})"


def load_keras(path) -> Sequential:
    """Read a Keras model file (``.keras`` archive, or legacy HDF5 ``.h5``) into tinycnn.

    Layers: InputLayer, Conv2D, Conv2DTranspose, DepthwiseConv2D, SeparableConv2D,
    MaxPooling2D, BatchNormalization, Dropout, GlobalAveragePooling2D, Flatten, Dense,
    Activation, ReLU, and Add in residual connections (see the module's docstring).

    Returns a built ``Sequential`` named as the Keras model, each layer named as in the
    file, with ``model.input_shape`` (one example's shape, from the file) and
    ``model.output_softmax`` (True if the Keras model ended in a softmax, which the
    tinycnn model leaves out: it outputs logits; ``model.output_softmax_name`` then
    keeps the name of a softmax layer of its own, for ``save_keras``).

    Raises FileNotFoundError for a missing file and ValueError, naming the file, for
    anything else: not a Keras model file, a damaged one, weights missing or of the
    wrong shape (naming the layer and both shapes), a graph that is not a chain of
    residual blocks, and every unsupported layer or option at once.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"Keras model file {path} does not exist")
    source = _read_file(path)
    try:
        try:
            graph = _Graph(source.config)
        except (KeyError, TypeError, AttributeError, IndexError) as e:
            raise ValueError(f"the model config is damaged or not one Keras writes ({type(e).__name__}: {e})") \
                from None
        return _to_tinycnn(graph, source)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


# -- the files ---------------------------------------------------------------------------------

class _Source:
    """A model file's config and arrays.

    ``by_name``: layer name -> its arrays in Keras' order, when the file names them
    (legacy HDF5; recent .keras files). ``by_path``: .keras group (``conv2d_1``) ->
    arrays, found from the layer order when the file does not name them.
    """

    def __init__(self, config, by_name=None, by_path=None):
        self.config, self.by_name, self.by_path = config, by_name, by_path

    def arrays(self, layer_name, keras_path):
        if self.by_name is not None:
            return self.by_name.get(layer_name)
        return self.by_path.get(keras_path)


def _read_file(path) -> _Source:
    if os.path.isdir(path):
        return _read_archive(path)
    with open(path, "rb") as f:
        head = f.read(8)
    if zipfile.is_zipfile(path) or head[:2] == b"PK":
        return _read_archive(path)
    if head == b"\x89HDF\r\n\x1a\n" or h5py.is_hdf5(path):
        return _read_legacy_h5(path)
    raise ValueError(f"{path}: not a Keras model file (neither a .keras zip archive nor HDF5; "
                     f"it starts with {head!r})")


def _read_archive(path) -> _Source:
    """config.json and the arrays of model.weights.h5 from a Keras 3 .keras archive (or
    the folder that ``model.save(path, zipped=False)`` writes)."""
    try:
        with (_Folder(path) if os.path.isdir(path) else zipfile.ZipFile(path)) as z:
            names = z.namelist()
            if "config.json" not in names:
                raise ValueError(f"{path}: not a Keras model (.keras): no config.json "
                                 f"(it holds {names[:5]}{'...' if len(names) > 5 else ''})")
            config = json.loads(z.read("config.json"))
            if "model.weights.h5" not in names:
                raise ValueError(f"{path}: the archive has no model.weights.h5: the weights are missing "
                                 f"(it holds {names})")
            weights = z.read("model.weights.h5")
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: a damaged or truncated .keras archive ({type(e).__name__}: {e})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: config.json holds a {type(config).__name__}, not a model config")
    try:
        with h5py.File(io.BytesIO(weights), "r") as f:
            by_path, by_name = _read_weight_groups(f)
    except (OSError, KeyError, ValueError) as e:
        raise ValueError(f"{path}: model.weights.h5 in the archive is damaged ({type(e).__name__}: {e})") from None
    return _Source(config, by_name=by_name, by_path=by_path)


class _Folder:
    """A folder read like a zip archive: ``namelist()`` and ``read(name)``."""

    def __init__(self, path):
        self.path = path

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def namelist(self):
        return sorted(os.listdir(self.path))

    def read(self, name):
        with open(os.path.join(self.path, name), "rb") as f:
            return f.read()


def _read_weight_groups(f):
    """{group name: [arrays]} under ``layers/``, and {layer name: [arrays]} if every group
    records its layer's name (else None)."""
    by_path, by_name = {}, {}
    layers = f.get("layers")
    for key in (layers.keys() if layers is not None else ()):
        variables = layers[key].get("vars")
        arrays = []
        if variables is not None:
            n = len(variables)
            arrays = [np.asarray(variables[str(i)][()]) for i in range(n)]
        by_path[key] = arrays
        name = variables.attrs.get("name") if variables is not None else None
        if by_name is not None and name is not None:
            by_name[_text(name)] = arrays
        else:
            by_name = None
    return by_path, by_name


def _read_legacy_h5(path) -> _Source:
    """model_config and {layer name: [arrays]} from a legacy (Keras 2 style) HDF5 file."""
    try:
        with h5py.File(path, "r") as f:
            if "model_config" not in f.attrs:
                if "layer_names" in f.attrs or "layers" in f or "vars" in f:
                    raise ValueError(f"{path}: holds weights only (written by save_weights), no model; "
                                     "load_keras needs a whole model, written by model.save()")
                raise ValueError(f"{path}: an HDF5 file but not a Keras model (no 'model_config' attribute)")
            config = json.loads(_text(f.attrs["model_config"]))
            if "model_weights" not in f:
                raise ValueError(f"{path}: the file has a model config but no 'model_weights' group: "
                                 "the weights are missing")
            group = f["model_weights"]
            by_name = {}
            for name in _h5_strings(group, "layer_names"):
                if name in group:
                    layer = group[name]
                    by_name[name] = [np.asarray(layer[w][()]) for w in _h5_strings(layer, "weight_names")]
    except (OSError, KeyError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: a damaged or truncated HDF5 model file ({type(e).__name__}: {e})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: model_config holds a {type(config).__name__}, not a model config")
    return _Source(config, by_name=by_name)


def _text(value) -> str:
    return value.decode("utf8") if isinstance(value, (bytes, np.bytes_)) else str(value)


def _h5_strings(group, name) -> list[str]:
    """A list-of-strings attribute, also when Keras split a long one into name0, name1, ..."""
    if name in group.attrs:
        values = list(np.atleast_1d(group.attrs[name]))
    else:
        values, k = [], 0
        while f"{name}{k}" in group.attrs:
            values += list(np.atleast_1d(group.attrs[f"{name}{k}"]))
            k += 1
    return [_text(v) for v in values]


# -- the graph ---------------------------------------------------------------------------------

class _Graph:
    """A model config as layers with their inputs, Keras 2 and 3 alike.

    Attributes: kind ("Sequential" or "Functional"), name, layers {name: KerasLayer} in
    the file's order (the input layer first), input and output (layer names),
    input_shape (one example's), consumers {name: [names of the layers it feeds]}.
    """

    def __init__(self, config):
        cls, inner = config.get("class_name"), config.get("config")
        if cls == "Sequential":
            self.kind = "Sequential"
            self._sequential(inner, config)
        elif cls in ("Functional", "Model"):
            self.kind = "Functional"
            self._functional(inner)
        else:
            raise ValueError(f"not a Sequential or functional Keras model (model class {cls!r}): "
                             "subclassed models keep their architecture in Python code, not in the file")
        self.consumers = {name: [] for name in self.layers}
        for layer in self.layers.values():
            for source in dict.fromkeys(layer.inputs):
                if source not in self.layers:
                    raise ValueError(f"layer '{layer.name}' takes its input from '{source}', "
                                     "which is not a layer of the model")
                self.consumers[source].append(layer.name)

    def _sequential(self, inner, config):
        entries = inner if isinstance(inner, list) else (inner or {}).get("layers", [])  # Keras <= 2.2.4: a list
        self.name = "sequential" if isinstance(inner, list) else (inner or {}).get("name", "sequential")
        layers = [KerasLayer(_entry_name(e), e.get("class_name"), e.get("config") or {}) for e in entries]
        if not layers:
            raise ValueError("the Sequential model has no layers")
        if layers[0].cls == "InputLayer":
            first = layers.pop(0)
            shape = _batch_shape(first.config)
        else:                           # Keras 2 without an InputLayer: the shape is on the first layer
            first = KerasLayer("input_layer", "InputLayer", {})
            shape = (_batch_shape(layers[0].config) or (inner or {}).get("build_input_shape")
                     or (config.get("build_config") or {}).get("input_shape"))
        self.input_shape = _example_shape(shape)
        previous = first.name
        for layer in layers:
            layer.inputs = [previous]
            previous = layer.name
        self.layers = {first.name: first, **{layer.name: layer for layer in layers}}
        if len(self.layers) != len(layers) + 1:
            raise ValueError("two layers of the Sequential model have the same name")
        self.input, self.output = first.name, previous

    def _functional(self, inner):
        self.name = inner.get("name", "model")
        self.layers = {}
        for entry in inner.get("layers", []):
            name = _entry_name(entry)
            self.layers[name] = KerasLayer(name, entry.get("class_name"), entry.get("config") or {},
                                           _inbound(name, entry.get("inbound_nodes") or []))
        inputs, outputs = _endpoints(inner.get("input_layers")), _endpoints(inner.get("output_layers"))
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(f"unsupported graph: the model has {len(inputs)} inputs {inputs} and "
                             f"{len(outputs)} outputs {outputs}; tinycnn models have one of each")
        self.input, self.output = inputs[0], outputs[0]
        if self.input not in self.layers or self.layers[self.input].cls != "InputLayer":
            raise ValueError(f"the model's input '{self.input}' is not an InputLayer of the model")
        if self.output not in self.layers:
            raise ValueError(f"the model's output '{self.output}' is not a layer of the model")
        self.input_shape = _example_shape(_batch_shape(self.layers[self.input].config))

    def keras_order(self) -> list[str]:
        """The layers' names in Keras' order (``model.layers``): a Sequential's in the file's
        order without the input, a functional model's as ``_keras_order`` finds them."""
        if self.kind == "Sequential":
            return [name for name in self.layers if name != self.input]
        return _keras_order({name: layer.inputs for name, layer in self.layers.items()}, self.output)


def _keras_order(inputs_of: dict, output) -> list[str]:
    """A functional model's layers in the order Keras lists them (``model.layers``), which
    numbers the groups of a .keras weights file, as ``map_graph`` in Keras'
    ``ops/function.py`` orders them: by depth (the longest path to the output), deepest
    first; ties in the order in which a depth-first walk from the output along each
    layer's inputs first meets them.

    ``inputs_of``: {layer name: names of the layers feeding it, in call order}."""
    finished, first_seen = [], {}

    def visit(name):
        if name in first_seen:
            return
        first_seen[name] = len(first_seen)
        for source in inputs_of[name]:
            visit(source)
        finished.append(name)         # after everything that feeds it

    visit(output)
    depth = {}
    for name in reversed(finished):   # every layer before the layers feeding it
        d = depth.setdefault(name, 0)
        for source in inputs_of[name]:
            depth[source] = max(depth.get(source, 0), d + 1)
    return sorted(finished, key=lambda name: (-depth[name], first_seen[name]))


def _group_names(classes) -> list[str]:
    """The groups under ``layers/`` of a .keras weights file for layers of these Keras
    classes, in Keras' order: the class in snake case, ``_1``, ``_2``, ... for the second
    and later layers of a class (``Conv2D, Conv2D, ReLU`` -> ``conv2d, conv2d_1, re_lu``)."""
    counts, groups = {}, []
    for cls in classes:
        base = _snake(cls or "")
        counts[base] = counts.get(base, -1) + 1
        groups.append(base if counts[base] == 0 else f"{base}_{counts[base]}")
    return groups


def _entry_name(entry) -> str:
    name = entry.get("name") or (entry.get("config") or {}).get("name")
    if not isinstance(name, str):
        raise ValueError(f"a layer of class {entry.get('class_name')!r} has no name in the config")
    return name


def _inbound(name, nodes) -> list[str]:
    """Names of the layers feeding layer ``name``: Keras 3 writes a node as
    ``{"args": [...], "kwargs": {...}}`` holding ``__keras_tensor__`` dicts with a
    ``keras_history`` [layer, node, tensor]; Keras 2 as a list of [layer, node, tensor, kwargs]."""
    if len(nodes) > 1:
        raise ValueError(f"unsupported graph: layer '{name}' is called {len(nodes)} times (a shared layer)")
    if not nodes:
        return []
    histories = []

    def collect(value):
        if isinstance(value, dict):
            if value.get("class_name") == "__keras_tensor__":
                histories.append(value["config"]["keras_history"])
            else:
                for v in value.values():
                    collect(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                collect(v)

    node = nodes[0]
    if isinstance(node, dict):
        collect(node.get("args", []))
        collect(node.get("kwargs", {}))
    else:
        histories = [item[:3] for item in node]
    for source, node_index, tensor_index in histories:
        if node_index != 0 or tensor_index != 0:
            raise ValueError(f"unsupported graph: layer '{name}' takes output {tensor_index} of call "
                             f"{node_index} of '{source}' (a shared or multi-output layer)")
    return [h[0] for h in histories]


def _endpoints(value) -> list[str]:
    """input_layers / output_layers: [name, 0, 0] (Keras 3, one) or [[name, 0, 0], ...]."""
    if value is None:
        return []
    if isinstance(value, dict):
        value = list(value.values())
    if value and isinstance(value[0], str):
        value = [value]
    return [v[0] for v in value]


def _batch_shape(config):
    return config.get("batch_shape") or config.get("batch_input_shape")


def _example_shape(batch_shape) -> tuple:
    if not batch_shape:
        raise ValueError("the file gives no input shape (no InputLayer, batch_input_shape or build shape)")
    shape = tuple(batch_shape[1:])
    if any(d is None for d in shape):
        raise ValueError(f"the input shape (batch,) + {shape} has unknown sizes; tinycnn models are "
                         "built for one input shape")
    return tuple(int(d) for d in shape)


def _snake(name) -> str:
    """Keras' ``to_snake_case``: Conv2DTranspose -> conv2d_transpose, ReLU -> re_lu."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


# -- one layer: its config read, every unsupported value noted ---------------------------------

class _Reader:
    """Reads one Keras layer's config; what tinycnn cannot reproduce goes to ``problems``
    and a harmless stand-in is returned, so that every problem of a file is found at once."""

    def __init__(self, layer: KerasLayer, problems: list):
        self.layer, self.config, self.problems = layer, layer.config, problems

    def note(self, what):
        self.problems.append(f"layer '{self.layer.name}' ({self.layer.cls}): {what}")

    def get(self, key, default=None):
        value = self.config.get(key, default)
        return default if value is None else value

    def expect(self, key, allowed, default):
        value = self.config.get(key, default)
        value = default if value is None and default is not None else value
        if value not in allowed:
            self.note(f"{key}={value!r} (tinycnn: {' or '.join(repr(a) for a in allowed)})")
        return value

    def pair(self, key, default):
        value = self.get(key, default)
        value = (value, value) if isinstance(value, int) else tuple(value)
        if len(value) != 2:
            self.note(f"{key}={value!r} is not a pair")
            return (default, default) if isinstance(default, int) else tuple(default)
        return tuple(int(v) for v in value)

    def padding(self):
        value = str(self.get("padding", "valid")).lower()
        if value not in ("valid", "same"):
            self.note(f"padding={value!r} (tinycnn: 'valid' or 'same')")
            return "valid"
        return value

    def common(self):
        """What every layer must satisfy: float32 computation, channels last."""
        dtype = self.config.get("dtype")
        if isinstance(dtype, dict):
            dtype = (dtype.get("config") or {}).get("name", dtype.get("class_name"))
        if dtype not in (None, "float32"):
            self.note(f"dtype {dtype!r} (tinycnn computes in float32)")
        if "data_format" in self.config:
            self.expect("data_format", ("channels_last",), "channels_last")

    def conv(self):
        """Options of the convolutions that tinycnn does not have."""
        if self.pair("dilation_rate", 1) != (1, 1):
            self.note(f"dilation_rate={self.pair('dilation_rate', 1)} (tinycnn: 1)")
        if self.get("groups", 1) != 1:
            self.note(f"groups={self.get('groups')} (tinycnn: 1)")
        self.unquantised()

    def unquantised(self):
        if self.get("lora_rank"):
            self.note(f"lora_rank={self.get('lora_rank')} (LoRA weights are not supported)")
        if self.config.get("quantization_config") is not None:
            self.note("quantised weights are not supported")

    def activation(self, allowed=("linear", "relu"), softmax_ok=False):
        """-> (tinycnn activation, whether it is the final softmax)."""
        name = _activation_name(self.config.get("activation"))
        if name == "softmax" and softmax_ok:
            return None, True
        if name == "softmax":
            self.note("softmax before the last layer (only the model's output may apply softmax)")
            return None, False
        if name not in allowed:
            self.note(f"activation {name!r} (tinycnn: {' or '.join(repr(a) for a in allowed)})")
            return None, False
        return (None if name == "linear" else name), False


def _activation_name(value) -> str:
    """'relu' from 'relu', None, or a serialised function {'class_name': 'function', 'config': 'relu'}."""
    if value is None:
        return "linear"
    if isinstance(value, dict):
        inner = value.get("config")
        value = inner if isinstance(inner, str) else value.get("class_name")
    return str(value).lower()


def _initializer(r: _Reader, key):
    """The tinycnn initializer named like Keras' (only matters for re-initialising)."""
    value = r.config.get(key)
    name = value.get("class_name") if isinstance(value, dict) else value
    return {"GlorotUniform": "glorot_uniform", "glorot_uniform": "glorot_uniform", "HeUniform": "he_uniform",
            "he_uniform": "he_uniform", "Zeros": "zeros", "zeros": "zeros", "Ones": "ones",
            "ones": "ones"}.get(name, "zeros" if key.startswith("bias") else "glorot_uniform")


def _convolution(r: _Reader, activation, *initializers, depthwise=False):
    """The keyword arguments the four convolutions share, as their tinycnn layers take
    them: the window (kernel size, strides, padding), the depth multiplier of the
    depthwise ones, the ``activation`` the caller read, the bias, ``initializers`` and
    the bias' initializer, and the name."""
    options = dict(kernel_size=r.pair("kernel_size", 1), strides=r.pair("strides", 1), padding=r.padding())
    if depthwise:
        options["depth_multiplier"] = int(r.get("depth_multiplier", 1))
    options.update(activation=activation, use_bias=bool(r.get("use_bias", True)),
                   **{key: _initializer(r, key) for key in (*initializers, "bias_initializer")}, name=r.layer.name)
    return options


def _conv2d(r: _Reader, is_output):
    r.common()
    r.conv()
    activation, _ = r.activation()
    return L.Conv2D(int(r.get("filters")), **_convolution(r, activation, "kernel_initializer"))


def _conv2d_transpose(r: _Reader, is_output):
    r.common()
    r.conv()
    if r.config.get("output_padding") is not None:
        r.note(f"output_padding={r.config['output_padding']} (tinycnn: None)")
    activation, _ = r.activation()
    return L.Conv2DTranspose(int(r.get("filters")), **_convolution(r, activation, "kernel_initializer"))


def _depthwise_conv2d(r: _Reader, is_output):
    r.common()
    r.conv()
    activation, _ = r.activation()
    return L.DepthwiseConv2D(**_convolution(r, activation, "depthwise_initializer", depthwise=True))


def _separable_conv2d(r: _Reader, is_output):
    r.common()
    r.conv()
    activation, _ = r.activation()
    return L.SeparableConv2D(int(r.get("filters")), **_convolution(r, activation, "depthwise_initializer",
                                                                   "pointwise_initializer", depthwise=True))


def _max_pooling2d(r: _Reader, is_output):
    r.common()
    pool = r.pair("pool_size", 2)
    strides = r.pair("strides", pool) if r.config.get("strides") is not None else pool
    return L.MaxPooling2D(pool, strides, r.padding(), name=r.layer.name)


def _batch_normalization(r: _Reader, is_output):
    r.common()
    if r.get("renorm", False):
        r.note("renorm=True (batch renormalisation is not supported)")
    for key in ("virtual_batch_size", "adjustment"):     # Keras 2 options
        if r.config.get(key) is not None:
            r.note(f"{key}={r.config[key]!r} (tinycnn: None)")
    momentum, epsilon = float(r.get("momentum", 0.99)), float(r.get("epsilon", 1e-3))
    if not (0.0 <= momentum <= 1.0 and epsilon > 0):
        r.note(f"momentum={momentum}, epsilon={epsilon} (tinycnn: momentum in [0, 1], epsilon > 0)")
        momentum, epsilon = 0.99, 1e-3
    return L.BatchNormalization(momentum=momentum, epsilon=epsilon, name=r.layer.name)


def _dropout(r: _Reader, is_output):
    r.common()
    if r.config.get("noise_shape") is not None:
        r.note(f"noise_shape={r.config['noise_shape']} (tinycnn drops single values: None)")
    rate = float(r.get("rate", 0.0))
    if not 0.0 <= rate < 1.0:
        r.note(f"rate={rate} (tinycnn: in [0, 1))")
        rate = 0.0
    seed = r.config.get("seed")
    return L.Dropout(rate, seed=int(seed) if isinstance(seed, int) else None, name=r.layer.name)


def _global_average_pooling2d(r: _Reader, is_output):
    r.common()
    r.expect("keepdims", (False,), False)
    return L.GlobalAveragePooling2D(name=r.layer.name)


def _flatten(r: _Reader, is_output):
    r.common()
    return L.Flatten(name=r.layer.name)


def _dense(r: _Reader, is_output):
    r.common()
    r.unquantised()
    activation, softmax = r.activation(softmax_ok=is_output)
    layer = L.Dense(int(r.get("units")), activation=activation, use_bias=bool(r.get("use_bias", True)),
                    kernel_initializer=_initializer(r, "kernel_initializer"), name=r.layer.name)
    return layer, softmax


def _activation(r: _Reader, is_output):
    r.common()
    activation, softmax = r.activation(softmax_ok=is_output)
    if softmax:
        return None, True
    return L.Activation(activation or "linear", name=r.layer.name)


def _softmax(r: _Reader, is_output):
    r.common()
    axis = r.get("axis", -1)
    if axis not in (-1, [-1]):
        r.note(f"axis={axis} (tinycnn: -1)")
    if not is_output:
        r.note("softmax before the last layer (only the model's output may apply softmax)")
    return None, True


def _relu(r: _Reader, is_output):
    r.common()
    if r.config.get("max_value") is not None:
        r.note(f"max_value={r.config['max_value']} (tinycnn's ReLU is max(x, 0))")
    for key in ("negative_slope", "threshold"):
        if r.get(key, 0.0) != 0.0:
            r.note(f"{key}={r.config[key]} (tinycnn's ReLU is max(x, 0))")
    return L.ReLU(name=r.layer.name)


def _input_layer(r: _Reader, is_output):
    for key in ("sparse", "ragged"):
        if r.get(key, False):
            r.note(f"{key}=True (tinycnn takes dense arrays)")
    r.common()
    return None


def _add(r: _Reader, is_output):
    r.common()
    return None


_CONVERTERS = {"Conv2D": _conv2d, "Conv2DTranspose": _conv2d_transpose,
               "DepthwiseConv2D": _depthwise_conv2d, "SeparableConv2D": _separable_conv2d,
               "MaxPooling2D": _max_pooling2d, "MaxPool2D": _max_pooling2d,
               "BatchNormalization": _batch_normalization, "Dropout": _dropout,
               "GlobalAveragePooling2D": _global_average_pooling2d, "Flatten": _flatten, "Dense": _dense,
               "Activation": _activation, "Softmax": _softmax, "ReLU": _relu, "InputLayer": _input_layer,
               "Add": _add}


# -- the tinycnn model -------------------------------------------------------------------------

def _to_tinycnn(graph: _Graph, source: _Source) -> Sequential:
    converted, softmax = _convert_layers(graph)
    layers, _ = _Walk(graph, converted).run()
    model = Sequential(layers, input_shape=graph.input_shape, name=graph.name)
    _load_weights(model, graph, source)
    model.output_softmax = softmax
    if softmax and converted[graph.output] is None:     # a softmax layer of its own: its name, for save_keras
        model.output_softmax_name = graph.output
    return model


def _convert_layers(graph: _Graph):
    """{Keras name: tinycnn layer or None (input, Add, the final softmax)} and whether the model
    ends in softmax; one ValueError listing every unsupported layer and option."""
    problems, converted, softmax = [], {}, False
    for layer in graph.layers.values():
        convert = _CONVERTERS.get(layer.cls)
        if convert is None:
            problems.append(f"layer '{layer.name}' ({layer.cls}): tinycnn has no such layer")
            continue
        if layer.cls != "Add" and len(layer.inputs) > 1:
            problems.append(f"layer '{layer.name}' ({layer.cls}) takes {len(layer.inputs)} inputs")
        if layer.cls == "Add" and len(layer.inputs) != 2:
            problems.append(f"layer '{layer.name}' (Add) adds {len(layer.inputs)} tensors "
                            "(only the two branches of a residual connection)")
        try:
            result = convert(_Reader(layer, problems), layer.name == graph.output)
        except (KeyError, TypeError, ValueError) as e:     # a value missing, of the wrong type, or refused
            problems.append(f"layer '{layer.name}' ({layer.cls}): config not understood "
                            f"({type(e).__name__}: {e})")
            continue
        if isinstance(result, tuple):
            result, ends_in_softmax = result
            softmax = softmax or ends_in_softmax
        converted[layer.name] = result
    if problems:
        raise ValueError("the model uses what tinycnn cannot reproduce exactly:\n  " + "\n  ".join(problems))
    return converted, softmax


class _Walk:
    """From the input to the output, turning the graph into tinycnn layers and building
    each with its input shape. A tensor feeding two layers starts a residual block: both
    branches are followed to the Add where they meet."""

    def __init__(self, graph: _Graph, converted: dict):
        self.graph, self.converted = graph, converted
        self.rng = np.random.default_rng(0)   # initial weights, replaced by the file's

    def run(self):
        layers, end, shape = self.chain(self.graph.input, self.graph.input_shape)
        if end != self.graph.output:
            raise ValueError(f"unsupported graph: the chain from the input ends at '{end}', "
                             f"which feeds an Add that no fork of it leads to")
        return layers, shape

    def chain(self, name, shape):
        """Layers from the output of ``name`` on, until the model's output or an Add that
        closes a branch -> (layers, the last layer's name, its output shape)."""
        layers = []
        while True:
            users = self.graph.consumers[name]
            if not users:
                return layers, name, shape
            if len(users) == 1 and self.graph.layers[users[0]].cls == "Add":
                return layers, name, shape
            if len(users) == 1:
                layer, shape = self.build(users[0], shape)
                layers += [layer] if layer is not None else []
                name = users[0]
            elif len(users) == 2:
                residual, name, shape = self.residual(name, users, shape)
                layers.append(residual)
            else:
                raise ValueError(f"unsupported graph: the output of '{name}' feeds {len(users)} layers "
                                 f"{users}; only a fork into the two branches of a residual block is supported")

    def residual(self, fork, users, shape):
        """The two branches from ``fork`` to their Add -> (Residual, the Add's name, shape)."""
        branches = []
        for user in users:
            if self.graph.layers[user].cls == "Add":
                branches.append(([], fork, shape, user))          # the identity shortcut
                continue
            first, first_shape = self.build(user, shape)
            rest, end, end_shape = self.chain(user, first_shape)
            after = self.graph.consumers[end]
            if len(after) != 1 or self.graph.layers[after[0]].cls != "Add":
                raise ValueError(f"unsupported graph: the branches from '{fork}' (through '{user}') do not "
                                 "meet in an Add: only residual connections may branch")
            branches.append(([first] * (first is not None) + rest, end, end_shape, after[0]))
        add = branches[0][3]
        if branches[1][3] != add or set(self.graph.layers[add].inputs) != {branches[0][1], branches[1][1]}:
            raise ValueError(f"unsupported graph: the two branches from '{fork}' end in different layers "
                             f"({branches[0][3]}, {branches[1][3]}); only residual connections, whose "
                             "branches meet in one Add, may branch")
        # the block: the branch with layers if the other is the identity, else the Add's first input
        first, second = branches
        if not first[0] or (second[0] and second[1] == self.graph.layers[add].inputs[0]):
            first, second = second, first
        (block, _, block_shape, _), (shortcut, _, short_shape, _) = first, second
        if tuple(block_shape) != tuple(short_shape):
            raise ValueError(f"layer '{add}' (Add) adds shapes {block_shape} and {short_shape}")
        residual = L.Residual(block, shortcut, activation=None, name=add)
        return residual, add, residual.ensure_built(shape, self.rng)

    def build(self, name, shape):
        """Build the tinycnn twin of layer ``name`` for input ``shape`` -> (layer or None, out shape)."""
        layer, keras = self.converted[name], self.graph.layers[name]
        if layer is None:
            return None, shape
        if isinstance(layer, L.BatchNormalization):
            axis = keras.config.get("axis", -1)
            axes = axis if isinstance(axis, list) else [axis]
            if len(axes) != 1 or axes[0] not in (-1, len(shape)):
                raise ValueError(f"layer '{name}' (BatchNormalization): axis={axis} on inputs of shape "
                                 f"(batch,) + {tuple(shape)}; tinycnn normalises the last axis only")
        if isinstance(layer, L.Dense) and len(shape) != 1:
            raise ValueError(f"layer '{name}' (Dense) is applied to inputs of shape (batch,) + {tuple(shape)}; "
                             "tinycnn's Dense takes (batch, features): Keras' Dense on the last axis of "
                             "an image is not supported")
        return layer, layer.ensure_built(shape, self.rng)


def _keras_weight_names(layer) -> list[str]:
    """The tinycnn weight names of ``layer`` in the order Keras keeps them."""
    return [w for w in _WEIGHT_ORDER if w in layer.weights]


def _load_weights(model: Sequential, graph: _Graph, source: _Source):
    """Give every tinycnn layer the file's arrays; shapes checked against the config."""
    order = graph.keras_order()
    paths = dict(zip(order, _group_names(graph.layers[name].cls for name in order)))
    weights = model.get_weights()
    for layer in model.all_layers():
        names = _keras_weight_names(layer)
        if not names:
            continue
        keras = graph.layers[layer.name]
        frozen = {}
        if isinstance(layer, L.BatchNormalization):
            frozen = {w: v for w, v, on in (("gamma", 1.0, keras.config.get("scale", True)),
                                              ("beta", 0.0, keras.config.get("center", True))) if not on}
            names = [w for w in names if w not in frozen]
        arrays = source.arrays(layer.name, paths.get(layer.name))
        if arrays is None:
            raise ValueError(f"no weights in the file for layer '{layer.name}' ({keras.cls}); "
                             f"expected {', '.join(names)}")
        if len(arrays) != len(names):
            raise ValueError(f"layer '{layer.name}' ({keras.cls}) has {len(arrays)} weight arrays in the "
                             f"file, its config needs {len(names)} ({', '.join(names)})")
        for wname, array in zip(names, arrays):
            expected = tuple(layer.weights[wname].shape)
            if tuple(array.shape) != expected:
                raise ValueError(f"layer '{layer.name}' ({keras.cls}): weight '{wname}' has shape "
                                 f"{tuple(array.shape)} in the file, but the layer's config makes it {expected}")
            weights[f"{layer.name}/{wname}"] = array
        for wname, value in frozen.items():       # center/scale=False: a constant beta 0 / gamma 1
            weights[f"{layer.name}/{wname}"] = np.full(layer.weights[wname].shape, value, np.float32)
    model.set_weights(weights)
    for layer in model.all_layers():
        if isinstance(layer, L.BatchNormalization):
            keras = graph.layers[layer.name]
            layer.gamma.requires_grad = bool(keras.config.get("scale", True))
            layer.beta.requires_grad = bool(keras.config.get("center", True))


# ================================================================================================
# Writing
# ================================================================================================

def save_keras(model: Sequential, path, softmax: bool | None = None):
    """Write ``model`` as a Keras 3 model file that ``keras.models.load_model`` opens.

    ``path`` ending in ``.keras``: a Keras 3 archive; ``.h5`` or ``.hdf5``: the legacy
    HDF5 format. Both as Keras 3.15 writes them for the equivalent model: a Sequential,
    or a functional model when there are ``Residual`` blocks (each becomes an ``Add``
    named after it, followed by ``Activation("relu")`` named ``<name>_relu`` when the
    block applies a ReLU). The input layer is ``input_layer``.

    Softmax: tinycnn models output logits; the Keras models they stand for end in
    softmax. ``softmax=True`` makes the Keras model end in softmax (a final linear Dense
    gets ``activation="softmax"``, anything else a final ``Activation("softmax")``), so
    that it outputs ``tinycnn.softmax(model(x))``; ``softmax=False`` writes the logits
    model as it is. The default, None, is ``getattr(model, "output_softmax", True)``:
    softmax unless the model was loaded from a Keras model without one. A model that
    already ends in softmax is written as it is (``softmax=False`` is then an error).

    The file is written to a temporary file first and renamed: a crash never leaves
    half a file. Raises ValueError naming every layer that Keras' format cannot hold.
    """
    path = os.fspath(path)
    if model.input_shape is None:
        raise ValueError(f"save_keras: model '{model.name}' is not built yet; pass input_shape= or "
                         "call it on data first")
    extension = os.path.splitext(path)[1].lower()
    if extension not in (".keras", ".h5", ".hdf5"):
        raise ValueError(f"save_keras: {path} must end in .keras (Keras 3) or .h5/.hdf5 (legacy HDF5)")
    graph = _KerasGraph(model, softmax)
    write_atomic(path, lambda tmp: (_write_archive if extension == ".keras" else _write_legacy_h5)(tmp, graph))


class _KerasGraph:
    """A tinycnn model as Keras layers, in the order they are called.

    ``layers``: KerasLayer, each with a Keras 3 ``config``, ``inputs`` and besides
    ``arrays`` [(Keras variable name, array)], ``input_shapes`` (what its build_config
    records) and ``output_shape`` (no batch axes); the InputLayer first.
    ``functional``: whether a Residual made it a graph rather than a stack.
    """

    def __init__(self, model: Sequential, softmax):
        self.model, self.name = model, model.name
        self.taken = {layer.name for layer in model.all_layers()}
        self.problems, self.layers = [], []
        name = self.fresh("input_layer")
        self.input = self.add(name, "InputLayer", _input_config(name, model.input_shape), [], model.input_shape)
        self.chain(model.layers, self.input, tuple(model.input_shape))
        for layer in self.layers[1:-1]:
            if layer.config.get("activation") == "softmax":
                self.problems.append(f"layer '{layer.name}' ({layer.cls}): softmax before the last layer")
        if self.problems:
            raise ValueError("save_keras: no Keras model can hold these layers:\n  " + "\n  ".join(self.problems))
        self.output = self.final_softmax(model, softmax)
        self.functional = any(len(layer.inputs) > 1 for layer in self.layers)

    def fresh(self, base):
        """``base``, or ``base_1``, ``base_2``, ...: a name no other layer has."""
        name, k = base, 0
        while name in self.taken:
            k += 1
            name = f"{base}_{k}"
        self.taken.add(name)
        return name

    def add(self, name, cls, config, inputs, output_shape, arrays=(), input_shapes=None, kwargs=None):
        layer = KerasLayer(name, cls, config, inputs)
        layer.output_shape, layer.arrays, layer.input_shapes = tuple(output_shape), list(arrays), input_shapes
        layer.kwargs = kwargs or {}
        self.layers.append(layer)
        return name

    def shape(self, name):
        return next(layer.output_shape for layer in self.layers if layer.name == name)

    def chain(self, layers, previous, shape):
        """Add the Keras twins of ``layers``, fed by ``previous`` -> (last name, its shape)."""
        for layer in layers:
            if isinstance(layer, L.Residual):
                block_end, block_shape = self.chain(layer.block, previous, shape)
                short_end, short_shape = self.chain(layer.shortcut, previous, shape)
                previous = self.add(layer.name, "Add", _layer_config(layer.name, {}), [block_end, short_end],
                                    block_shape, input_shapes=[block_shape, short_shape])
                if layer.activation == "relu":
                    name = self.fresh(f"{layer.name}_relu")
                    previous = self.add(name, "Activation", _layer_config(name, {"activation": "relu"}),
                                        [previous], block_shape)
                shape = tuple(block_shape)
                continue
            out_shape = tuple(layer.compute_output_shape(shape))
            described = _describe(layer, self.problems)
            if described is not None:
                cls, options, arrays = described
                kwargs = {"BatchNormalization": {"mask": None}, "Dropout": {"training": False}}.get(cls)
                previous = self.add(layer.name, cls, _layer_config(layer.name, options), [previous], out_shape,
                                    arrays, input_shapes=shape, kwargs=kwargs)
            shape = out_shape
        return previous, shape

    def final_softmax(self, model, softmax):
        """End in softmax if asked -> the output layer's name."""
        last = self.layers[-1]
        has = last.config.get("activation") == "softmax"
        want = getattr(model, "output_softmax", True) if softmax is None else bool(softmax)
        if has and softmax is False:
            raise ValueError(f"save_keras: model '{model.name}' already ends in softmax (layer '{last.name}'); "
                             "softmax=False cannot take it out")
        if want and not has:
            if last.cls == "Dense" and last.config["activation"] == "linear":
                last.config["activation"] = "softmax"
            else:
                name = self.fresh(getattr(model, "output_softmax_name", "softmax"))
                self.add(name, "Activation", _layer_config(name, {"activation": "softmax"}), [last.name],
                         last.output_shape)
        return self.layers[-1].name

    def keras_order(self) -> list[KerasLayer]:
        """The layers in Keras' order (``model.layers``: a Sequential's without the input),
        which numbers the groups of the weights file."""
        if not self.functional:
            return self.layers[1:]
        by_name = {layer.name: layer for layer in self.layers}
        return [by_name[name] for name in _keras_order({n: layer.inputs for n, layer in by_name.items()},
                                                      self.output)]


def _describe(layer, problems):
    """(Keras class, config options, [(Keras variable name, array)]) of a tinycnn layer,
    or None with the reason added to ``problems``."""
    weights = [(w, layer.weights[w].data) for w in _keras_weight_names(layer)]
    if isinstance(layer, L.Conv2DTranspose):
        return "Conv2DTranspose", _conv_options(layer, transpose=True), weights
    if isinstance(layer, L.Conv2D):
        return "Conv2D", _conv_options(layer), weights
    if isinstance(layer, L.SeparableConv2D):
        return "SeparableConv2D", _depthwise_options(layer, separable=True), weights
    if isinstance(layer, L.DepthwiseConv2D):       # Keras 3 calls its kernel "kernel"
        return "DepthwiseConv2D", _depthwise_options(layer), [("kernel" if w == "depthwise_kernel" else w, a)
                                                             for w, a in weights]
    if isinstance(layer, L.MaxPooling2D):
        return "MaxPooling2D", {"pool_size": list(layer.pool_size), "padding": layer.padding,
                                "strides": list(layer.strides), "data_format": "channels_last"}, []
    if isinstance(layer, L.BatchNormalization):
        return ("BatchNormalization",) + _batchnorm(layer, weights)
    if isinstance(layer, L.Dropout):
        return "Dropout", {"rate": layer.rate, "seed": layer.seed, "noise_shape": None}, []
    if isinstance(layer, L.GlobalAveragePooling2D):
        return "GlobalAveragePooling2D", {"data_format": "channels_last", "keepdims": False}, []
    if isinstance(layer, L.Flatten):
        return "Flatten", {"data_format": "channels_last"}, []
    if isinstance(layer, L.Dense):
        return "Dense", {"units": layer.units, "activation": layer.activation, "use_bias": layer.use_bias,
                         "kernel_initializer": _keras_initializer(layer.kernel_initializer),
                         "bias_initializer": _keras_initializer("zeros"), "kernel_regularizer": None,
                         "bias_regularizer": None, "kernel_constraint": None, "bias_constraint": None,
                         "quantization_config": None}, weights
    if isinstance(layer, L.ReLU):
        return "ReLU", {"max_value": None, "negative_slope": 0.0, "threshold": 0.0}, []
    if isinstance(layer, L.Activation):
        return "Activation", {"activation": layer.activation}, []
    problems.append(f"layer '{layer.name}' ({type(layer).__name__}): save_keras knows no Keras layer for it")
    return None


def _conv_options(layer, transpose=False):
    """Conv2D's and Conv2DTranspose's config, keys in Keras' order."""
    options = {"filters": layer.filters, "kernel_size": list(layer.kernel_size), "strides": list(layer.strides),
               "padding": layer.padding}
    options.update({"output_padding": None} if transpose else {})
    options.update({"data_format": "channels_last", "dilation_rate": [1, 1]})
    options.update({} if transpose else {"groups": 1})
    options.update({"activation": layer.activation, "use_bias": layer.use_bias,
                    "kernel_initializer": _keras_initializer(layer.kernel_initializer),
                    "bias_initializer": _keras_initializer(layer.bias_initializer),
                    "kernel_regularizer": None, "bias_regularizer": None, "activity_regularizer": None,
                    "kernel_constraint": None, "bias_constraint": None})
    return options


def _depthwise_options(layer, separable=False):
    """DepthwiseConv2D's config; SeparableConv2D's adds its pointwise kernel's keys."""
    pointwise = ["pointwise"] if separable else []
    options = {"depth_multiplier": layer.depth_multiplier, **({"filters": layer.filters} if separable else {}),
               "kernel_size": list(layer.kernel_size), "strides": list(layer.strides), "padding": layer.padding,
               "data_format": "channels_last", "dilation_rate": [1, 1],
               "activation": getattr(layer, "activation", None) or "linear", "use_bias": layer.use_bias}
    options.update({f"{w}_initializer": _keras_initializer(getattr(layer, f"{w}_initializer"))
                    for w in ["depthwise"] + pointwise + ["bias"]})
    options.update(dict.fromkeys([f"{w}_regularizer" for w in ["depthwise"] + pointwise + ["bias", "activity"]]
                                 + [f"{w}_constraint" for w in ["depthwise"] + pointwise + ["bias"]]))
    return options


def _batchnorm(layer, weights):
    """(options, arrays) of a BatchNormalization. A frozen beta of zeros (gamma of ones),
    which is what load_keras makes of center=False (scale=False), is written as such."""
    def constant(t, value):
        return not t.requires_grad and bool(np.all(t.data == value))
    center, scale = not constant(layer.beta, 0.0), not constant(layer.gamma, 1.0)
    weights = [(w, a) for w, a in weights if (w != "beta" or center) and (w != "gamma" or scale)]
    init = _keras_initializer
    return {"axis": -1, "momentum": layer.momentum, "epsilon": layer.epsilon, "center": center, "scale": scale,
            "beta_initializer": init("zeros"), "gamma_initializer": init("ones"),
            "moving_mean_initializer": init("zeros"), "moving_variance_initializer": init("ones"),
            "beta_regularizer": None, "gamma_regularizer": None, "beta_constraint": None,
            "gamma_constraint": None, "synchronized": False, "renorm": False, "renorm_clipping": None,
            "renorm_momentum": 0.99}, weights


def _keras_initializer(fn):
    name = getattr(fn, "__name__", fn)
    cls = {"he_uniform": "HeUniform", "zeros": "Zeros", "ones": "Ones"}.get(name, "GlorotUniform")
    config = {"GlorotUniform": {"seed": None, "input_axes": None, "output_axes": None},
              "HeUniform": {"seed": None}}.get(cls, {})
    return {"module": "keras.initializers", "class_name": cls, "config": config, "registered_name": None}


def _dtype_policy():
    return {"module": "keras", "class_name": "DTypePolicy", "config": {"name": "float32"}, "registered_name": None}


def _layer_config(name, options):
    return {"name": name, "trainable": True, "dtype": _dtype_policy(), **options}


def _input_config(name, input_shape):
    return {"batch_shape": [None, *map(int, input_shape)], "dtype": "float32", "sparse": False,
            "ragged": False, "name": name, "optional": False}


_BUILT = ("Conv2D", "Conv2DTranspose", "DepthwiseConv2D", "SeparableConv2D", "BatchNormalization", "Dense",
          "Flatten", "Add")   # the layers whose entry Keras gives a build_config


def _model_config(graph: _KerasGraph) -> dict:
    """config.json: the model as Keras 3 serialises it."""
    batch_shape = [None, *map(int, graph.model.input_shape)]
    if not graph.functional:
        return {"module": "keras", "class_name": "Sequential",
                "config": {"name": graph.name, "trainable": True, "dtype": _dtype_policy(),
                           "layers": [_entry(layer) for layer in graph.layers], "build_input_shape": batch_shape},
                "registered_name": None, "build_config": {"input_shape": batch_shape}, "compile_config": {}}
    entries = []
    for layer in graph.keras_order():
        entry = _entry(layer)
        entry["name"] = layer.name
        entry["inbound_nodes"] = [] if layer.cls == "InputLayer" else [_node(layer, graph)]
        entries.append(entry)
    return {"module": "keras.src.models.functional", "class_name": "Functional",
            "config": {"name": graph.name, "trainable": True, "layers": entries,
                       "input_layers": [graph.input, 0, 0], "output_layers": [graph.output, 0, 0]},
            "registered_name": "Functional", "build_config": {"input_shape": None}, "compile_config": {}}


def _entry(layer: KerasLayer) -> dict:
    entry = {"module": "keras.layers", "class_name": layer.cls, "config": layer.config, "registered_name": None}
    if layer.cls in _BUILT:
        shapes = layer.input_shapes
        entry["build_config"] = {"input_shape": [[None, *s] for s in shapes] if layer.cls == "Add"
                                 else [None, *shapes]}
    return entry


def _node(layer: KerasLayer, graph: _KerasGraph) -> dict:
    """A call of ``layer`` in Keras 3's form: its input tensors (shape, producer) and kwargs."""
    def tensor(name):
        return {"class_name": "__keras_tensor__",
                "config": {"shape": [None, *graph.shape(name)], "dtype": "float32", "keras_history": [name, 0, 0]}}
    args = [[tensor(n) for n in layer.inputs]] if layer.cls == "Add" else [tensor(layer.inputs[0])]
    return {"args": args, "kwargs": dict(layer.kwargs)}


def _write_archive(path, graph: _KerasGraph):
    """A .keras zip of metadata.json, config.json and model.weights.h5, stored uncompressed
    as Keras stores them."""
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as h5:
        layers = graph.keras_order()
        for group_name, layer in zip(_group_names(layer.cls for layer in layers), layers):
            group = h5.create_group(f"layers/{group_name}/vars")
            group.attrs["name"] = layer.name
            for i, (_, array) in enumerate(layer.arrays):
                group.create_dataset(str(i), data=np.asarray(array, np.float32))
        h5.create_group("vars").attrs["name"] = graph.name
    metadata = {"keras_version": KERAS_VERSION,
                "date_saved": datetime.datetime.now().strftime("%Y-%m-%d@%H:%M:%S")}
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr("metadata.json", json.dumps(metadata))
        z.writestr("config.json", json.dumps(_model_config(graph)))
        z.writestr("model.weights.h5", buffer.getvalue())


def _write_legacy_h5(path, graph: _KerasGraph):
    """A legacy HDF5 model file as Keras 3's ``save_model(model, "x.h5")`` writes it: the
    config without the Keras 3 keys module, registered_name, build_config; weights by
    layer name, each named by its variable's path (``<model>/<layer>/<weight>`` for a
    Sequential's layers, ``<layer>/<weight>`` for a functional model's)."""
    config = _model_config(graph)
    legacy = {"class_name": config["class_name"], "config": dict(config["config"])}
    legacy["config"]["layers"] = [{k: v for k, v in entry.items()
                                   if k not in ("module", "registered_name", "build_config")}
                                  for entry in config["config"]["layers"]]
    layers = graph.keras_order()
    prefix = "" if graph.functional else f"{graph.name}/"
    with h5py.File(path, "w") as h5:
        h5.attrs["backend"] = b"tensorflow"
        h5.attrs["keras_version"] = KERAS_VERSION.encode("utf8")
        h5.attrs["model_config"] = json.dumps(legacy).encode("utf8")
        weights = h5.create_group("model_weights")
        _save_strings(weights, "layer_names", [layer.name.encode("utf8") for layer in layers])
        weights.attrs["backend"] = b"tensorflow"
        weights.attrs["keras_version"] = KERAS_VERSION.encode("utf8")
        for layer in sorted(layers, key=lambda layer: layer.name):
            group = weights.create_group(layer.name)
            names = [f"{prefix}{layer.name}/{w}" for w, _ in layer.arrays]
            _save_strings(group, "weight_names", [n.encode("utf8") for n in names])
            for name, (_, array) in zip(names, layer.arrays):
                group.create_dataset(name, data=np.asarray(array, np.float32))
        _save_strings(weights.create_group("top_level_model_weights"), "weight_names", [])


def _save_strings(group, name, values, limit=64512):
    """A list-of-strings attribute, split into name0, name1, ... past HDF5's object header
    limit, as Keras splits it."""
    data = np.asarray(values)
    chunks = 1
    while any(part.nbytes > limit for part in np.array_split(data, chunks)):
        chunks += 1
    if chunks == 1:
        group.attrs[name] = list(values)     # as Keras: h5py stores a list of bytes as variable-length strings
    else:
        for k, part in enumerate(np.array_split(data, chunks)):
            group.attrs[f"{name}{k}"] = part


