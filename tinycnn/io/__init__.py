"""Model files of other frameworks: Keras (``.keras``, legacy ``.h5``) in and out, ONNX out.

    from tinycnn.io import load_keras, save_keras, export_onnx
    model = load_keras("mini_xception.keras")     # a tinycnn.Sequential, outputting logits
    save_keras(model, "copy.keras")               # opens with keras.models.load_model
    export_onnx(model, "model.onnx")              # runs in onnxruntime (pip install tinycnn[interchange])

The layers never import this package: formats sit on top of the library.
"""
from .keras import load_keras, save_keras
from .onnx import export_onnx

__all__ = ["load_keras", "save_keras", "export_onnx"]
