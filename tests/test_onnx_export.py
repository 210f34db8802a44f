"""export_onnx: onnxruntime computes what tinycnn computes.

Every architecture on real faces, batches of 3 and 1, as probabilities and as logits,
with BatchNorm statistics and biases made non-trivial (fresh models have mean 0,
variance 1, gamma 1, beta 0 and zero biases, which would hide a swapped or missing
one). Then the layers' awkward cases one at a time: Keras' asymmetric 'same' padding on
odd sizes, transposed convolutions whose stride does not divide the output, Flatten
after the NCHW interior, depthwise and separable convolutions in a residual block.
"""
import copy
import subprocess
import sys

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest

import fer_models
import tinycnn
from fer_models.classes import CLASSES
from fer_models.data import IMAGE_EXTENSIONS, default_location
from fixtures_faces import smooth_random_images
from tinycnn.io.onnx import export_onnx
from tinycnn.layers import (Activation, BatchNormalization, Conv2D, Conv2DTranspose, Dense, DepthwiseConv2D,
                            Dropout, Flatten, GlobalAveragePooling2D, Layer, MaxPool2D, ReLU, Residual,
                            SeparableConv2D)

FER_ROOT = default_location()   # $FER2013_DIR, else ../shared/fer2013
TOL = 1e-5


def faces(n):
    """n FER-2013 test faces (n, 48, 48, 1) in [0, 1], from the classes in turn; when the
    data set is absent, ``smooth_random_images`` (pixel noise would leave the outputs
    near-uniform). The comparison holds for any input; ``spread_logits`` makes sure the
    outputs are decided on whichever images come."""
    folders = [FER_ROOT / "test" / c for c in CLASSES]
    files = [sorted(p for p in f.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)[:n] if f.is_dir() else []
             for f in folders]
    in_turn = [fs[i] for i in range(n) for fs in files if i < len(fs)][:n]
    images = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in in_turn]
    if len(images) < n or any(im is None for im in images):
        return smooth_random_images(n)
    images = [cv2.resize(im, (48, 48), interpolation=cv2.INTER_AREA) for im in images]
    return (np.stack(images)[..., None] / np.float32(255)).astype(np.float32)


def randomise(model, seed=0):
    """Give every BatchNorm non-trivial statistics and affine weights, and every bias
    small random values."""
    rng = np.random.default_rng(seed)
    for layer in model.all_layers():
        if isinstance(layer, BatchNormalization):
            c = layer.gamma.shape[0]
            layer.gamma.data = rng.uniform(0.5, 1.5, c).astype(np.float32)
            layer.beta.data = rng.normal(0, 0.3, c).astype(np.float32)
            layer.moving_mean.data = rng.normal(0, 0.3, c).astype(np.float32)
            layer.moving_variance.data = rng.uniform(0.3, 2.0, c).astype(np.float32)
        if "bias" in layer.weights:
            b = layer.weights["bias"]
            b.data = rng.normal(0, 0.1, b.shape).astype(np.float32)
    return model


def spread_logits(model, x, width=3.0):
    """Scale the last weighted layer (linear up to the output) so that the logits on x
    spread by ``width``, or further until some output is decided (a probability above
    0.5): random weights give near-uniform probabilities, which would make an absolute
    tolerance on them weak. Scaling the logits only raises softmax's largest probability,
    so doubling them until it passes 0.5 ends (their spread, 2 ** 10 times the first
    scale at most, is far from float32's limits)."""
    logits = model(x).data
    factor = np.float32(width / logits.std())
    last = [layer for layer in model.layers if layer.weights][-1]
    original = {name: last.weights[name].data for name in ("kernel", "pointwise_kernel", "bias")
                if name in last.weights}
    for doubling in range(11):
        for name, value in original.items():
            last.weights[name].data = value * np.float32(factor * 2 ** doubling)
        probabilities = tinycnn.softmax(model(x)).data
        if probabilities.max() > 0.5:
            return model
    raise AssertionError(f"the test needs decided outputs, not near-uniform ones: largest probability "
                         f"{probabilities.max():.3f} with the logits spread by {width * 2 ** doubling:g}")


def session(path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1      # a small shared machine
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def assert_matches(model, batches, tmp_path, rtol_logits=TOL):
    """For softmax True and False, export once and compare onnxruntime's output with
    ``tinycnn.softmax(model(x))`` (absolute TOL) or ``model(x)`` on each batch."""
    for softmax in (True, False):
        path = tmp_path / f"{model.name}-{'probabilities' if softmax else 'logits'}.onnx"
        export_onnx(model, path, softmax=softmax)
        run = session(path)
        assert [i.name for i in run.get_inputs()] == ["input"]
        assert [o.name for o in run.get_outputs()] == ["probabilities" if softmax else "logits"]
        for x in batches:
            got = run.run(None, {"input": x})[0]
            if softmax:
                expected = tinycnn.softmax(model(x)).data
                np.testing.assert_allclose(got, expected, rtol=0, atol=TOL,
                                           err_msg=f"{model.name}: probabilities, batch of {len(x)}")
            else:
                expected = model(x).data
                np.testing.assert_allclose(got, expected, rtol=rtol_logits, atol=TOL,
                                           err_msg=f"{model.name}: logits, batch of {len(x)}")
            assert got.shape == expected.shape and got.dtype == np.float32


@pytest.mark.parametrize("name", fer_models.architectures.names())
def test_architecture_matches_tinycnn(name, tmp_path):
    x = faces(4)
    model = spread_logits(randomise(fer_models.build(name, seed=0)), x)
    assert_matches(model, [x[:3], x[3:]], tmp_path)


def test_graph_is_nchw_inside_with_dynamic_batch(tmp_path):
    """One transpose in, none out for a pooled model; one more before a Flatten."""
    for name, transposes in (("mini", 1), ("small3", 2)):
        export_onnx(fer_models.build(name, seed=0), tmp_path / f"{name}.onnx")
        written = onnx.load(str(tmp_path / f"{name}.onnx"))
        onnx.checker.check_model(written, full_check=True)
        dims = written.graph.input[0].type.tensor_type.shape.dim
        assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [48, 48, 1]
        assert [d.dim_value for d in written.graph.output[0].type.tensor_type.shape.dim[1:]] == [7]
        ops = [node.op_type for node in written.graph.node]
        assert ops.count("Transpose") == transposes and ops[0] == "Transpose" and ops[-1] == "Softmax"
        assert written.opset_import[0].version == 17


# -- padding and sizes, one layer at a time ------------------------------------------------------
def _image_model(layers, input_shape, name):
    model = randomise(tinycnn.Sequential(layers, input_shape=input_shape, seed=1, name=name))
    rng = np.random.default_rng(2)
    batches = [rng.standard_normal((n,) + input_shape).astype(np.float32) for n in (3, 1)]
    return model, batches


@pytest.mark.parametrize("kernel, strides, padding, input_shape, relu", [
    (3, 2, "same", (7, 5, 3), True),          # as in updown, on odd sizes
    (3, 2, "valid", (7, 5, 3), False),
    (2, 3, "valid", (5, 4, 2), False),        # kernel < stride: the last rows get only the bias
    (2, 3, "same", (5, 4, 2), True),
    (4, 2, "same", (5, 5, 1), False),         # even kernel: 'same' pads asymmetrically
    ((3, 2), (2, 3), "same", (6, 7, 2), False),
    ((4, 1), (3, 1), "valid", (5, 3, 1), True),
    (5, 1, "same", (4, 5, 3), False),
])
def test_conv2d_transpose(kernel, strides, padding, input_shape, relu, tmp_path):
    layer = Conv2DTranspose(4, kernel, strides=strides, padding=padding, activation="relu" if relu else None)
    model, batches = _image_model([layer], input_shape, "conv2d_transpose")
    assert_matches(model, batches, tmp_path)


@pytest.mark.parametrize("layer, input_shape", [
    (MaxPool2D(2, padding="same"), (7, 5, 2)),
    (MaxPool2D(3, strides=2, padding="same"), (9, 11, 3)),
    (MaxPool2D(3, strides=1, padding="same"), (5, 6, 2)),
    (MaxPool2D((2, 3), strides=(1, 2), padding="same"), (7, 7, 1)),
    (MaxPool2D(3, strides=2), (9, 8, 2)),
    (Conv2D(4, 4, strides=2, padding="same"), (7, 6, 3)),
    (Conv2D(4, 3, strides=2, padding="same", activation="relu"), (8, 9, 2)),
    (Conv2D(4, (2, 5), strides=(3, 1), padding="same"), (7, 6, 3)),
    (Conv2D(4, 3, strides=2), (9, 8, 2)),
], ids=lambda v: type(v).__name__ if isinstance(v, Layer) else str(v))
def test_same_padding_on_odd_sizes(layer, input_shape, tmp_path):
    layer = copy.deepcopy(layer)          # a fresh, unbuilt one on every run
    model, batches = _image_model([layer], input_shape, layer.kind)
    assert_matches(model, batches, tmp_path)


def test_feature_vectors_and_activation_layers(tmp_path):
    """A model of (F,) examples: BatchNormalization on (N, F), Activation layers, Dropout,
    and a Residual without activation on an identity shortcut."""
    model = tinycnn.Sequential([
        Dense(16), BatchNormalization(), ReLU(), Dropout(0.5),
        Residual([Dense(16, activation="relu"), Dense(16)], activation=None), Activation("relu"),
        Dense(5), Activation("linear")], input_shape=(10,), seed=3, name="features")
    randomise(model)
    rng = np.random.default_rng(4)
    assert_matches(model, [rng.standard_normal((n, 10)).astype(np.float32) for n in (3, 1)], tmp_path)


def test_flatten_after_images_with_softmax_layer(tmp_path):
    """Flatten keeps tinycnn's (h, w, c) order; a softmax inside the model (over channels,
    NCHW axis 1) and a Dense with a softmax activation are exported too."""
    layers = [Conv2D(3, 3, padding="same"), Activation("softmax"), MaxPool2D(padding="same"), Flatten(),
              Dense(6, activation="softmax")]
    model, batches = _image_model(layers, (5, 7, 2), "flatten")
    assert_matches(model, batches, tmp_path)


# -- depthwise and separable convolutions ------------------------------------------------------------
def mini_xception():
    """Mini-Xception's shape (Arriaga et al., 2017): separable convolutions in residual
    blocks whose shortcut is a strided 1x1 convolution, here on an odd 23 px map."""
    def block(filters):
        return Residual([SeparableConv2D(filters, 3, padding="same", use_bias=False), BatchNormalization(), ReLU(),
                         SeparableConv2D(filters, 3, padding="same", use_bias=False), BatchNormalization(),
                         MaxPool2D(3, strides=2, padding="same")],
                        shortcut=[Conv2D(filters, 1, strides=2, padding="same", use_bias=False),
                                  BatchNormalization()],
                        activation=None)
    layers = [Conv2D(8, 3, use_bias=False), BatchNormalization(), ReLU(),                      # 46 px
              DepthwiseConv2D(3, strides=2, padding="same", depth_multiplier=2, activation="relu"),  # 23 px
              block(16), block(32),                                                            # 12, 6 px
              SeparableConv2D(7, 3, padding="same", depth_multiplier=2), GlobalAveragePooling2D()]
    return tinycnn.Sequential(layers, input_shape=(48, 48, 1), seed=0, name="mini_xception")


def test_mini_xception(tmp_path):
    x = faces(4)
    model = spread_logits(randomise(mini_xception()), x)
    assert_matches(model, [x[:3], x[3:]], tmp_path)


@pytest.mark.parametrize("layer", [
    DepthwiseConv2D(3),
    DepthwiseConv2D(4, strides=2, padding="same", depth_multiplier=3, activation="relu"),
    DepthwiseConv2D((2, 3), strides=(3, 1), padding="same", depth_multiplier=2, use_bias=False),
    SeparableConv2D(5, 3, strides=2, padding="same"),
    SeparableConv2D(5, (3, 2), depth_multiplier=2, activation="relu"),
    SeparableConv2D(5, 2, strides=(1, 2), padding="same", depth_multiplier=2, use_bias=False),
], ids=lambda layer: type(layer).__name__)
def test_depthwise_and_separable(layer, tmp_path):
    layer = copy.deepcopy(layer)          # a fresh, unbuilt one on every run
    model, batches = _image_model([layer], (7, 8, 3), layer.kind)
    assert_matches(model, batches, tmp_path)


# -- errors -------------------------------------------------------------------------------------
class Upsample(Layer):
    """A layer export_onnx does not know."""

    def compute_output_shape(self, input_shape):
        h, w, c = input_shape
        return 2 * h, 2 * w, c

    def call(self, x, training):
        return tinycnn.Tensor(x.data.repeat(2, axis=1).repeat(2, axis=2))


def test_unbuilt_model_or_not_a_model(tmp_path):
    with pytest.raises(ValueError, match="not built"):
        export_onnx(tinycnn.Sequential([Dense(3)]), tmp_path / "m.onnx")
    with pytest.raises(TypeError, match="expected a tinycnn Sequential, got Dense"):
        export_onnx(Dense(3), tmp_path / "m.onnx")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("nested", [False, True])
def test_unsupported_layer(nested, tmp_path):
    inner = [Conv2D(1, 3, padding="same"), Upsample(name="up")]
    layers = [Residual(inner, shortcut=[Upsample(name="up2")])] if nested else inner
    model = tinycnn.Sequential(layers + [GlobalAveragePooling2D()], input_shape=(4, 4, 1))
    with pytest.raises(ValueError, match=r"layer 'up' \(Upsample\) has no ONNX export"):
        export_onnx(model, tmp_path / "m.onnx")
    assert not list(tmp_path.iterdir())


def test_opset_out_of_range(tmp_path):
    with pytest.raises(ValueError, match="opset"):
        export_onnx(fer_models.build("mini"), tmp_path / "m.onnx", opset=13)


def test_missing_onnx_package_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnx", None)       # as if not installed
    with pytest.raises(ImportError, match=r"pip install tinycnn\[interchange\]"):
        export_onnx(fer_models.build("mini"), tmp_path / "m.onnx")


def test_onnx_not_imported_by_tinycnn():
    code = "import sys, tinycnn, tinycnn.io.onnx; assert 'onnx' not in sys.modules, 'onnx imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
