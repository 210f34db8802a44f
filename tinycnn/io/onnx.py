"""Export a built ``Sequential`` to ONNX, for onnxruntime, OpenCV's DNN module, browsers.

    from tinycnn.io.onnx import export_onnx
    export_onnx(model, "fer.onnx")                  # input "input" (N, 48, 48, 1) float32
    probs = onnxruntime.InferenceSession("fer.onnx").run(None, {"input": x})[0]   # (N, 7)

The graph computes exactly what tinycnn computes in inference (``training=False``):
``softmax(model(x))`` as output ``"probabilities"``, or ``model(x)`` as ``"logits"``
with ``softmax=False``.

Layout: NHWC outside, NCHW inside
---------------------------------
tinycnn, like Keras, stores images as (N, H, W, C). ONNX's ``Conv``, ``ConvTranspose``,
``MaxPool``, ``BatchNormalization`` and ``GlobalAveragePool`` are defined for
(N, C, H, W) only: there is no ``data_format`` attribute. So the graph keeps the user's
NHWC input, transposes it once, and runs every image layer in NCHW::

    input (N, H, W, C) --Transpose(0, 3, 1, 2)--> (N, C, H, W) --Conv--> ... (N, C', H', W')

The weights are permuted once, at export, to ONNX's layouts. Both convolutions move
the last Keras axis to the front:

    Conv2D           kernel (KH, KW, C, O)  -> W (O, C, KH, KW)      transpose(3, 2, 0, 1)
    Conv2DTranspose  kernel (KH, KW, O, C)  -> W (C, O, KH, KW)      transpose(3, 2, 0, 1)
    DepthwiseConv2D  kernel (KH, KW, C, M)  -> W (C*M, 1, KH, KW)    a Conv with group=C
    SeparableConv2D  the depthwise Conv above, then a 1x1 Conv with (1, 1, C*M, F) -> (F, C*M, 1, 1)
    Dense            kernel (I, O)          -> Gemm's B (I, O), unchanged

Per-channel vectors (biases, BatchNorm's four) do not depend on the layout.

The one place the layout shows is ``Flatten``: it orders the features as the memory
order of an *NHWC* example, (h, w, c), and the ``Dense`` after it was trained on that
order. Flattening the NCHW tensor would give (c, h, w) and scramble the features, so
before a Flatten the graph transposes back::

    (N, C, H, W) --Transpose(0, 2, 3, 1)--> (N, H, W, C) --Flatten--> (N, H*W*C)

(``GlobalAveragePooling2D`` has no such problem: it leaves one value per channel.)
A model whose output is still an image (a fully convolutional one) is transposed back
to NHWC at the end, so outside the graph everything is NHWC, as in tinycnn.

Padding: explicit, computed by tinycnn
--------------------------------------
Keras' ``same`` padding puts the odd pixel of an odd total at the bottom/right
(``tinycnn.kernels.shapes.same_padding``). ONNX's ``auto_pad="SAME_UPPER"`` means the
same thing for Conv, but the meaning of the auto_pad modes has differed between
runtimes and ONNX versions (for ConvTranspose above all), so nothing is left to them:
the batch axis is dynamic but the image size is fixed by ``model.input_shape``, so every
layer's input size is known at export, and each layer gets explicit
``pads = [top, left, bottom, right]`` from tinycnn's own ``paddings()`` - the very
numbers its kernels use. MaxPool's padding is ignored by the max in both (tinycnn pads
with -inf), so ``pads`` carries over as is.

``Conv2DTranspose`` is the input gradient of a convolution from its output
(HO, WO) to its input (H, W) whose padding is ``paddings(padding, (HO, WO), ...)``.
Scattering each input pixel's kernel covers ``full = (H - 1) * S + K`` rows of that
convolution's padded input; the output is those rows from ``top`` on, ``HO`` of them.
Rows past ``full`` received nothing (only the bias) when ``HO + top + bottom > full``
(a stride that does not divide the padded size; always when K < S with ``valid``).
ONNX's ConvTranspose gives ``full + output_padding - pad_begin - pad_end`` rows, the
``output_padding`` ones appended at the end with no input, so per axis

    pad_begin = top,  pad_end = max(end, 0),  output_padding = max(-end, 0),
    where end = full - top - HO (rows to crop at the end; negative: rows to add).

Layers: Conv2D, Conv2DTranspose, DepthwiseConv2D, SeparableConv2D (each with its fused
ReLU), MaxPooling2D, BatchNormalization (the ONNX op, in inference mode, with the
layer's moving statistics and epsilon), Dense (Gemm), Flatten, GlobalAveragePooling2D,
Activation and ReLU, Residual (block and shortcut, Add, ReLU), and Dropout (the identity
in inference: no node). Any other layer raises ValueError naming it.
"""
from __future__ import annotations


import numpy as np

from .. import layers as L
from ..kernels.shapes import paddings
from ..model import Sequential, write_atomic

MIN_OPSET = 17
_NCHW, _NHWC = [0, 3, 1, 2], [0, 2, 3, 1]


def export_onnx(model, path, softmax=True, opset=MIN_OPSET, metadata=None):
    """Write ``model`` (a built ``tinycnn.Sequential``) to ``path`` as an ONNX graph.

    Args:
        model: built (``input_shape`` given, or called once); examples of rank 3
            (H, W, C) or rank 1 (features).
        path: the .onnx file to write (replaced atomically: never half a file).
        softmax: append a Softmax over the last axis and name the output
            ``"probabilities"``; ``False`` exports the logits, named ``"logits"``.
        opset: the ONNX operator set, ``MIN_OPSET`` (17) or later.
        metadata: optional ``{key: text}`` stored in the model's ``metadata_props``
            (e.g. what preprocessing the input needs), readable by any ONNX runtime.

    Input ``"input"`` (N, *model.input_shape) float32, N dynamic; output (N, *output
    shape), as tinycnn's. Returns the ``onnx.ModelProto`` written, which has passed
    ``onnx.checker.check_model`` with shape inference.

    Raises ValueError for an unbuilt model, a layer with no ONNX export here (named),
    or an opset out of range; TypeError for anything but a Sequential; ImportError if
    the ``onnx`` package is missing.
    """
    onnx = _import_onnx()
    if not isinstance(model, Sequential):
        raise TypeError(f"export_onnx: expected a tinycnn Sequential, got {type(model).__name__}")
    if model.input_shape is None:
        raise ValueError(f"export_onnx: model '{model.name}' is not built yet; pass "
                         "input_shape= to Sequential or call it on data first (the graph needs the image size)")
    if not MIN_OPSET <= int(opset) <= onnx.defs.onnx_opset_version():
        raise ValueError(f"export_onnx: opset must be from {MIN_OPSET} to {onnx.defs.onnx_opset_version()} "
                         f"(what this onnx package knows), got {opset}")
    for layer in model.all_layers():
        _emitter(layer)                    # unsupported layers fail here, before anything is built
        if not layer.built:
            raise ValueError(f"export_onnx: layer '{layer.name}' ({type(layer).__name__}) is not built "
                             "(added after the model was built?); call the model on data first")
    shape = tuple(model.input_shape)
    if len(shape) not in (1, 3):
        raise ValueError(f"export_onnx: examples must be images (H, W, C) or feature vectors (F,), "
                         f"got input_shape {shape}")

    g = _Graph(onnx)
    x = "input"
    if len(shape) == 3:
        x = g.node("Transpose", [x], "to_nchw", perm=_NCHW)
    x, shape = _chain(g, model.layers, x, shape)
    if len(shape) == 3:
        x = g.node("Transpose", [x], "to_nhwc", perm=_NHWC)
    if softmax:
        x = g.node("Softmax", [x], "softmax", axis=-1)
    output = "probabilities" if softmax else "logits"
    g.rename_output(x, output)

    h = onnx.helper
    graph = h.make_graph(
        g.nodes, model.name,
        [h.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["N", *model.input_shape])],
        [h.make_tensor_value_info(output, onnx.TensorProto.FLOAT, ["N", *shape])],
        initializer=g.initializers,
        doc_string="tinycnn Sequential; input NHWC float32, transposed to NCHW inside")
    opsets = [h.make_opsetid("", int(opset))]
    # the oldest IR version that can hold this opset: runtimes older than the onnx package still read it
    proto = h.make_model(graph, opset_imports=opsets, ir_version=h.find_min_ir_version_for(opsets),
                         producer_name="tinycnn", producer_version=_version())
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = str(key), str(value)
    onnx.checker.check_model(proto, full_check=True)
    data = proto.SerializeToString()

    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)
    write_atomic(path, write, suffix=".tmp.onnx")
    return proto


def _import_onnx():
    try:
        import onnx
        import onnx.checker
        import onnx.numpy_helper
    except ImportError:
        raise ImportError("export_onnx needs the onnx package: pip install tinycnn[interchange] "
                          "(or pip install onnx)") from None
    return onnx


def _version():
    from .. import __version__
    return __version__


class _Graph:
    """The nodes and initializers of the graph being built, with unique names."""

    def __init__(self, onnx):
        self.onnx = onnx
        self.nodes, self.initializers = [], []
        self._taken = {"input", "probabilities", "logits"}   # the graph's own names, never a layer's

    def _unique(self, name):
        base, k = name, 1
        while name in self._taken:
            name, k = f"{base}_{k}", k + 1
        self._taken.add(name)
        return name

    def constant(self, name, array) -> str:
        name = self._unique(name)
        self.initializers.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(array, np.float32), name))
        return name

    def node(self, op, inputs, name, **attributes) -> str:
        """Add one node; its single output is named after it, returned."""
        name = self._unique(name)
        self.nodes.append(self.onnx.helper.make_node(op, list(inputs), [name], name=name, **attributes))
        return name

    def rename_output(self, value, new):
        """Give the graph's final value the output's name (an Identity if it is the input)."""
        producer = [n for n in self.nodes if value in n.output]
        if not producer:
            self.nodes.append(self.onnx.helper.make_node("Identity", [value], [new], name=new))
            return
        producer[-1].output[list(producer[-1].output).index(value)] = new


def _chain(g, layers, x, shape):
    """Emit ``layers`` in order on value ``x`` of example shape ``shape`` (tinycnn's, NHWC)."""
    for layer in layers:
        x = _emitter(layer)(g, layer, x, shape)
        shape = tuple(layer.compute_output_shape(shape))
    return x, shape


def _emitter(layer):
    emit = _EMITTERS.get(type(layer))      # exact type: a subclass may compute something else
    if emit is None:
        names = sorted(t.__name__ for t in _EMITTERS)
        raise ValueError(f"export_onnx: layer '{layer.name}' ({type(layer).__name__}) has no ONNX export; "
                         f"supported layers: {', '.join(names)}")
    return emit


def _activation(g, layer, x, activation, rank):
    if activation in (None, "linear"):
        return x
    if activation == "relu":
        return g.node("Relu", [x], f"{layer.name}/relu")
    if activation == "softmax":           # over tinycnn's last axis: channels, axis 1 in NCHW
        return g.node("Softmax", [x], f"{layer.name}/softmax", axis=1 if rank == 3 else -1)
    raise ValueError(f"export_onnx: layer '{layer.name}' ({type(layer).__name__}) has activation "
                     f"{activation!r}, which has no ONNX export here")


def _bias(g, layer, name="bias"):
    b = layer.weights.get(name)
    return [g.constant(f"{layer.name}/{name}", b.data)] if b is not None else []


def _onnx_pads(pads):
    """tinycnn's ((top, bottom), (left, right)) -> ONNX's [top, left, bottom, right]."""
    (top, bottom), (left, right) = pads
    return [int(top), int(left), int(bottom), int(right)]


# -- one emitter per layer: (graph, layer, value, input example shape) -> output value ---------
def _conv2d(g, layer, x, shape):
    kernel = layer.weights["kernel"].data                     # (KH, KW, C, O)
    w = g.constant(f"{layer.name}/kernel", kernel.transpose(3, 2, 0, 1))   # (O, C, KH, KW)
    y = g.node("Conv", [x, w] + _bias(g, layer), layer.name, kernel_shape=list(layer.kernel_size),
               strides=list(layer.strides),
               pads=_onnx_pads(paddings(layer.padding, shape[:2], layer.kernel_size, layer.strides)))
    return _activation(g, layer, y, layer.activation, 3)


def _conv2d_transpose(g, layer, x, shape):
    kernel = layer.weights["kernel"].data                     # (KH, KW, O, C)
    w = g.constant(f"{layer.name}/kernel", kernel.transpose(3, 2, 0, 1))   # (C, O, KH, KW)
    out_hw = layer.compute_output_shape(shape)[:2]
    forward_pads = paddings(layer.padding, out_hw, layer.kernel_size, layer.strides)
    per_axis = [_transpose_pads(shape[a], out_hw[a], layer.kernel_size[a], layer.strides[a], *forward_pads[a])
                for a in (0, 1)]
    pads = [per_axis[0][0], per_axis[1][0], per_axis[0][1], per_axis[1][1]]
    y = g.node("ConvTranspose", [x, w] + _bias(g, layer), layer.name, kernel_shape=list(layer.kernel_size),
               strides=list(layer.strides), pads=pads, output_padding=[per_axis[0][2], per_axis[1][2]])
    return _activation(g, layer, y, layer.activation, 3)


def _transpose_pads(size, out, kernel, stride, top, bottom):
    """(pad_begin, pad_end, output_padding) of ONNX's ConvTranspose along one axis, for
    tinycnn's transposed convolution from ``size`` to ``out`` whose forward convolution
    pads (top, bottom); see the module docstring."""
    full = (size - 1) * stride + kernel
    end = full - top - out
    return int(top), max(int(end), 0), max(int(-end), 0)


def _depthwise(g, layer, shape):
    """(weight, attributes) of a depthwise layer's grouped Conv: ONNX's group=C splits
    the C input channels into C groups of one, and output channel c*M + m (Keras' order)
    belongs to group c and convolves channel c with depthwise_kernel[:, :, c, m]."""
    kernel = layer.weights["depthwise_kernel"].data           # (KH, KW, C, M)
    kh, kw, c, m = kernel.shape
    w = g.constant(f"{layer.name}/depthwise_kernel", kernel.transpose(2, 3, 0, 1).reshape(c * m, 1, kh, kw))
    pads = _onnx_pads(paddings(layer.padding, shape[:2], (kh, kw), layer.strides))
    return w, dict(kernel_shape=[kh, kw], strides=list(layer.strides), pads=pads, group=c)


def _depthwise_conv2d(g, layer, x, shape):
    w, attributes = _depthwise(g, layer, shape)
    y = g.node("Conv", [x, w] + _bias(g, layer), layer.name, **attributes)
    return _activation(g, layer, y, layer.activation, 3)


def _separable_conv2d(g, layer, x, shape):
    w, attributes = _depthwise(g, layer, shape)
    y = g.node("Conv", [x, w], f"{layer.name}/depthwise", **attributes)
    pointwise = layer.weights["pointwise_kernel"].data         # (1, 1, C*M, F)
    p = g.constant(f"{layer.name}/pointwise_kernel", pointwise.transpose(3, 2, 0, 1))   # (F, C*M, 1, 1)
    y = g.node("Conv", [y, p] + _bias(g, layer), f"{layer.name}/pointwise", kernel_shape=[1, 1])
    return _activation(g, layer, y, layer.activation, 3)


def _max_pool(g, layer, x, shape):
    return g.node("MaxPool", [x], layer.name, kernel_shape=list(layer.pool_size), strides=list(layer.strides),
                  pads=_onnx_pads(paddings(layer.padding, shape[:2], layer.pool_size, layer.strides)))


def _batch_norm(g, layer, x, shape):
    # channels are axis 1 both in NCHW images and in (N, F) features: ONNX's op fits both
    stats = [g.constant(f"{layer.name}/{k}", layer.weights[k].data)
             for k in ("gamma", "beta", "moving_mean", "moving_variance")]
    return g.node("BatchNormalization", [x] + stats, layer.name, epsilon=float(layer.epsilon))


def _dense(g, layer, x, shape):
    w = g.constant(f"{layer.name}/kernel", layer.weights["kernel"].data)   # (I, O): Gemm's B as is
    y = g.node("Gemm", [x, w] + _bias(g, layer), layer.name)
    return _activation(g, layer, y, layer.activation, 1)


def _flatten(g, layer, x, shape):
    if len(shape) == 1:
        return x
    if len(shape) == 3:                    # tinycnn flattens (h, w, c): back to NHWC first
        x = g.node("Transpose", [x], f"{layer.name}/to_nhwc", perm=_NHWC)
    return g.node("Flatten", [x], layer.name, axis=1)


def _global_average_pool(g, layer, x, shape):
    y = g.node("GlobalAveragePool", [x], layer.name)       # (N, C, 1, 1)
    return g.node("Flatten", [y], f"{layer.name}/flatten", axis=1)


def _identity(g, layer, x, shape):
    return x


def _activation_layer(g, layer, x, shape):
    return _activation(g, layer, x, layer.activation, len(shape))


def _residual(g, layer, x, shape):
    y, _ = _chain(g, layer.block, x, shape)
    s, _ = _chain(g, layer.shortcut, x, shape)   # an empty shortcut: x itself
    out = g.node("Add", [y, s], f"{layer.name}/add")
    return g.node("Relu", [out], f"{layer.name}/relu") if layer.activation == "relu" else out


_EMITTERS = {
    L.Conv2D: _conv2d,
    L.Conv2DTranspose: _conv2d_transpose,
    L.DepthwiseConv2D: _depthwise_conv2d,
    L.SeparableConv2D: _separable_conv2d,
    L.MaxPooling2D: _max_pool,
    L.BatchNormalization: _batch_norm,
    L.Dense: _dense,
    L.Flatten: _flatten,
    L.GlobalAveragePooling2D: _global_average_pool,
    L.Dropout: _identity,
    L.Activation: _activation_layer,
    L.ReLU: _activation_layer,
    L.Residual: _residual,
}


