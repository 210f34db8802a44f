"""Fused Functions: two layers computed as one, forward and backward, where the pair
saves a pass over memory. ``tinycnn.plan.fold.run_layers`` decides where they run; the
layers themselves (``tinycnn/layers``) know nothing of them, and each pair gives the
unfused layers' results (to the bit, or as the class says).

- ``Conv2DMaxPoolFn``: Conv2D then MaxPooling2D, the bias and ReLU applied after pooling
  (in training and inference).
- ``Conv2DBatchNormFn``: Conv2D(activation="relu") then BatchNormalization, in training.
- ``BatchNormReLUFn``: BatchNormalization then a ReLU, in training.
"""
from __future__ import annotations

from ..kernels import conv as K
from ..kernels import norm as N
from ..kernels import pool as P
from ..tensor import Function, is_grad_enabled


class Conv2DMaxPoolFn(Function):
    """y = maxpool(relu?(conv(x, w) + b)), computed as relu?(maxpool(conv(x, w)) + b).

    x (N, H, W, C), w (KH, KW, C, O), b (O,) -> y (N, PH, PW, O), the pooled map. Adding a
    channel's bias and the ReLU are both non-decreasing maps applied to each number
    alone, and such maps commute with max: ``max_i relu(z_i + b) = relu(max_i z_i + b)``
    (in float32 too: rounding ``z + b`` never reverses an order). So the pool runs on the
    convolution's raw output z, and the bias and ReLU on the pooled map, a quarter of z
    with 2x2 pools; so do their gradients in backward (the ReLU mask and the bias sum).
    Given the same convolution kernel, the output is the unfused layers' to the bit; a
    gradient differs only where two taps of a window tie after adding the bias but not
    before (the unfused pair sends it to the first, this to the larger).
    When no gradient will be asked of x (inference, or a first layer), or the convolution
    runs by Winograd (which keeps nothing of its own for backward), z is not kept:
    ``K.conv2d_maxpool`` pools as it convolves, and backward takes the gradients from the
    pooled gradient, x and w (``K.conv2d_grad_weight_pooled`` for a first layer).
    ``Sequential`` runs each Conv2D followed by a MaxPooling2D this way
    (``tinycnn.plan.fold``).
    Saved: ``conv`` (``K.ConvSaved``: x, w, strides, pads, cols), argmax, z's shape, the
    pool's geometry, y and relu.
    """

    @staticmethod
    def forward(ctx, x, w, b, strides, pads, relu, pool, pool_strides, pool_pads, pool_hw):
        z_shape = K.conv2d_output_shape(x.shape, w.shape, strides, pads)
        by_winograd = K.choose_algorithm(x.shape, w.shape, strides, pads) == "winograd"
        if is_grad_enabled() and ctx.needs_input_grad[0] and not by_winograd:
            z, cols = K.conv2d(x, w, strides, pads, keep_cols=True)   # im2col's columns may be kept for backward
            conv = K.ConvSaved(x, w, strides, pads, cols)
            y, argmax = P.maxpool(z, pool, pool_strides, pool_pads, pool_hw)
        else:  # backward will need only x, w and the pool's argmax: z need not be kept
            y, argmax = K.conv2d_maxpool(x, w, strides, pads, pool, pool_strides, pool_pads, pool_hw)
            conv = K.ConvSaved(x, w, strides, pads, None) if is_grad_enabled() else None
        K.bias_relu(y, b, relu)
        ctx.save(conv=conv, argmax=argmax, z_shape=z_shape, pool=pool, pool_strides=pool_strides,
                 pool_pads=pool_pads, y=y, relu=relu)
        return y

    @staticmethod
    def backward(ctx, g):
        g, db = K.bias_relu_grad(g, ctx.y, ctx.relu)
        need_x, need_w, need_b = ctx.needs_input_grad
        if need_x:
            gz = P.maxpool_grad(g, ctx.argmax, ctx.z_shape, ctx.pool, ctx.pool_strides, ctx.pool_pads)
            dx, dw = K.conv2d_grads(ctx.conv.x, gz, ctx.conv.w, ctx.conv.strides, ctx.conv.pads, need_x, need_w,
                                    cols=ctx.conv.cols)
        else:  # a first layer: only the weights' gradient, which may skip writing out gz
            dx = None
            dw = K.conv2d_grad_weight_pooled(g, ctx.argmax, ctx.conv, ctx.z_shape, ctx.pool, ctx.pool_strides,
                                             ctx.pool_pads) if need_w else None
        return dx, dw, db if need_b else None


class Conv2DBatchNormFn(Function):
    """out = batchnorm(relu(conv(x, w) + b)) in training: a Conv2D(activation="relu") and
    the BatchNormalization after it.

    x (N, H, W, C), w (KH, KW, C, O), b, gamma, beta (O,) -> out (N, HO, WO, O). The
    convolution's epilogue (bias and ReLU) runs inside BatchNorm's first pass, and its
    gradient (the ReLU's mask and the bias sum) inside BatchNorm's last backward pass
    (``N.bias_relu_batchnorm_forward`` and ``_backward``), instead of a pass each of its
    own. ``stats`` receives the batch mean and variance of y = relu(conv + b) for the
    moving averages. ``Sequential`` runs each such pair this way in training
    (``tinycnn.plan.fold``).
    Saved: x, w, strides, pads, cols (as in Conv2DFn), y, the batch mean, inv_std and gamma.
    """

    @staticmethod
    def forward(ctx, x, w, b, gamma, beta, strides, pads, eps, stats):
        if is_grad_enabled():
            z, cols = K.conv2d(x, w, strides, pads, keep_cols=True)
        else:
            z, cols = K.conv2d(x, w, strides, pads), None
        o = z.shape[-1]
        out2, y2, mean, var, inv_std = N.bias_relu_batchnorm_forward(z.reshape(-1, o), b, gamma, beta, eps)
        stats.update(mean=mean, var=var)
        ctx.save(x=x, w=w, strides=strides, pads=pads, cols=cols, y=y2.reshape(z.shape), mean=mean,
                 inv_std=inv_std, gamma=gamma)
        return out2.reshape(z.shape)

    @staticmethod
    def backward(ctx, g):
        o = ctx.y.shape[-1]
        dz2, db, dgamma, dbeta = N.bias_relu_batchnorm_backward(g.reshape(-1, o), ctx.y.reshape(-1, o), ctx.mean,
                                                               ctx.gamma, ctx.inv_std)
        need_x, need_w, need_b, _, _ = ctx.needs_input_grad
        dx, dw = K.conv2d_grads(ctx.x, dz2.reshape(ctx.y.shape), ctx.w, ctx.strides, ctx.pads, need_x, need_w,
                                cols=ctx.cols)
        return dx, dw, db if need_b else None, dgamma, dbeta


class BatchNormReLUFn(Function):
    """relu(batchnorm(x)) in training mode: a BatchNormalization and the ReLU after it.

    x (..., C), gamma, beta (C,) -> y (..., C), as BatchNormFn followed by ReLU, with
    the ReLU inside BatchNorm's passes (``N.batchnorm_relu_forward`` and ``_backward``):
    its mask is y > 0, read from the saved output, which costs no memory since the
    next layer keeps y as its input anyway. ``Sequential`` runs each BatchNormalization
    followed by a ReLU this way in training (``tinycnn.plan.fold``).
    Saved: x, y, the batch mean, inv_std and gamma.
    """

    @staticmethod
    def forward(ctx, x, gamma, beta, eps, stats):
        c = x.shape[-1]
        y2, mean, var, inv_std = N.batchnorm_relu_forward(x.reshape(-1, c), gamma, beta, eps)
        stats.update(mean=mean, var=var)
        y = y2.reshape(x.shape)
        ctx.save(x=x, y=y, mean=mean, inv_std=inv_std, gamma=gamma)
        return y

    @staticmethod
    def backward(ctx, g):
        c = ctx.x.shape[-1]
        dx2, dgamma, dbeta = N.batchnorm_relu_backward(g.reshape(-1, c), ctx.y.reshape(-1, c), ctx.x.reshape(-1, c),
                                                       ctx.mean, ctx.gamma, ctx.inv_std)
        return dx2.reshape(ctx.x.shape), dgamma, dbeta



# -- the pairs as layers call them ----------------------------------------------------------
def conv_then_pool(conv, pool, x):
    """``pool(conv(x))`` for a built Conv2D ``conv`` and MaxPooling2D ``pool``, as one
    Conv2DMaxPoolFn: the same output, with the bias and ReLU applied after pooling.
    x is an input Tensor (N, H, W, C)."""
    ho, wo, o = conv.compute_output_shape(x.shape[1:])
    pool_hw = pool.compute_output_shape((ho, wo, o))[:2]
    return Conv2DMaxPoolFn.apply(x, conv.kernel, conv.bias, strides=conv.strides,
                                 pads=conv._pads(x.shape[1], x.shape[2]), relu=conv.relu,
                                 pool=pool.pool_size, pool_strides=pool.strides,
                                 pool_pads=pool._pads(ho, wo), pool_hw=pool_hw)


def conv_then_batchnorm(conv, bn, x):
    """``bn(conv(x), training=True)`` for a built Conv2D(activation="relu") ``conv`` and
    BatchNormalization ``bn``, as one Conv2DBatchNormFn; updates bn's moving averages."""
    if not conv.relu:
        raise ValueError(f"{conv._label()}: conv_then_batchnorm fuses a ReLU convolution's epilogue, "
                         f"this layer's activation is {conv.activation!r}")
    conv.compute_output_shape(x.shape[1:])
    bn.check_training_batch(x)
    stats = {}
    y = Conv2DBatchNormFn.apply(x, conv.kernel, conv.bias, bn.gamma, bn.beta, strides=conv.strides,
                                pads=conv._pads(x.shape[1], x.shape[2]), eps=bn.epsilon, stats=stats)
    bn.update_moving_averages(stats)
    return y


def batchnorm_then_relu(bn, x):
    """relu(bn(x, training=True)) as one BatchNormReLUFn; x is a built input Tensor."""
    return bn._train(BatchNormReLUFn, x)
