"""How a model runs its layers, as opposed to what each layer computes (``tinycnn/layers``).

- ``fold``: ``run_layers``, which runs a list of layers with the fusions below where they
  apply, BatchNormalization folded into the Conv2D or Dense before it in inference, and
  ``inference_copy``, a model's copy for inference with the folding done once.
- ``fused``: the Functions that compute two layers as one (Conv2D + MaxPooling2D,
  Conv2D(relu) + BatchNormalization, BatchNormalization + ReLU), forward and backward.
"""
from .fold import FOLD_MIN_BATCH, folded_weights, inference_copy, run_layers
from .fused import BatchNormReLUFn, Conv2DBatchNormFn, Conv2DMaxPoolFn

__all__ = ["run_layers", "inference_copy", "folded_weights", "FOLD_MIN_BATCH", "Conv2DMaxPoolFn",
           "Conv2DBatchNormFn", "BatchNormReLUFn"]
