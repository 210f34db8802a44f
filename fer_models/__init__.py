"""fer_models: facial-emotion recognition on FER-2013, built with tinycnn."""
from .architectures import build, describe, names
from .classes import CLASSES, NUM_CLASSES

__all__ = ["build", "names", "describe", "CLASSES", "NUM_CLASSES", "predict_emotion", "load_model"]


def __getattr__(name):  # the predictor pulls in OpenCV: import it only when asked
    if name in ("predict_emotion", "load_model", "EmotionClassifier"):
        from . import predict
        return getattr(predict, name)
    raise AttributeError(name)
