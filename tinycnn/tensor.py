"""Reverse-mode automatic differentiation: ``Tensor``, ``Function`` and the basic ops.

A ``Tensor`` wraps a float32 NumPy array. When a ``Function`` is applied to tensors
that require gradients, the output remembers the function and its inputs (its
*context*). ``Tensor.backward()`` then visits that graph from the output back to the
leaves in reverse topological order and hands every input the gradient of its output.

Two rules make this correct:

* gradients are **accumulated** (``grad = grad + g``), never assigned: a tensor used
  twice, as in ``x * x``, must receive the sum of both contributions;
* a node's gradient is complete only once every node that consumed it has been
  visited, which is exactly what the reverse topological order guarantees.
"""
from __future__ import annotations

import contextlib
import threading

import numpy as np

from .backend import one_blas_thread
from .kernels import activation as activation_kernels

_state = threading.local()


def is_grad_enabled() -> bool:
    """True unless inside a ``no_grad()`` block."""
    return getattr(_state, "grad_enabled", True)


@contextlib.contextmanager
def no_grad():
    """Record nothing: for inference, where no gradient will be asked for."""
    previous = is_grad_enabled()
    _state.grad_enabled = False
    try:
        yield
    finally:
        _state.grad_enabled = previous


class Context:
    """What a Function's forward hands its backward.

    ``ctx.save(name=array, ...)`` stores arrays by name; backward reads them as
    attributes (``ctx.x``). ``ctx.inputs`` and ``ctx.function`` link the graph.
    """

    def __init__(self):
        self.function = None
        self.inputs = ()
        self.needs_input_grad = ()  # one bool per input: backward may skip the others

    def save(self, **arrays):
        self.__dict__.update(arrays)


class Tensor:
    """A float32 array with an optional gradient.

    Args:
        data: array-like; stored as float32 (other dtypes are converted).
        requires_grad: whether ``backward`` should compute ``grad`` for it.
        name: optional label, used in error messages and ``repr``.
    """

    __array_priority__ = 100  # so that ndarray + Tensor calls Tensor.__radd__

    def __init__(self, data, requires_grad: bool = False, name: str | None = None):
        if isinstance(data, Tensor):
            data = data.data
        self._data = np.asarray(data, dtype=np.float32)
        self.version = 0     # see ``data``
        self.grad: np.ndarray | None = None
        self.requires_grad = bool(requires_grad)
        self.name = name
        self._ctx: Context | None = None
        self._freed = False  # set once backward() has released the graph that made it

    # -- the data, and views of it ---------------------------------------------------
    @property
    def data(self) -> np.ndarray:
        """The float32 array. Each time it is handed out (or replaced), ``version`` moves
        on: whoever took the array may write into it, so a model's inference copy made
        from this weight (``Sequential.predict``) is made again before it is used next."""
        self.version += 1
        return self._data

    @data.setter
    def data(self, value):
        self.version += 1
        self._data = value

    @property
    def shape(self):
        return self._data.shape

    @property
    def ndim(self):
        return self._data.ndim

    @property
    def size(self):
        return self._data.size

    @property
    def dtype(self):
        return self._data.dtype

    def numpy(self) -> np.ndarray:
        return self.data

    def item(self) -> float:
        return float(self.data.reshape(-1)[0]) if self.data.size == 1 else float(self.data)

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        label = f", name={self.name!r}" if self.name else ""
        return f"Tensor(shape={self.shape}, requires_grad={self.requires_grad}{label})"

    # -- backward -----------------------------------------------------------------
    def backward(self, grad=None):
        """Compute the gradient of this tensor with respect to every leaf.

        Args:
            grad: the upstream gradient, same shape as this tensor. May be omitted
                only when this tensor is a scalar (it is then 1).
        """
        if grad is None:
            if self.data.size != 1:
                raise ValueError(
                    f"backward() without a gradient needs a scalar, got shape {self.shape}; "
                    "pass grad= of that shape")
            grad = np.ones_like(self.data)
        grad = np.asarray(grad, dtype=np.float32)
        if grad.shape != self.shape:
            raise ValueError(f"backward(): grad has shape {grad.shape}, tensor has {self.shape}")

        with one_blas_thread():   # tinycnn's products on its own threads (backend.py)
            order = _topological_order(self)
            self.grad = grad if self.grad is None else self.grad + grad
            for node in reversed(order):
                ctx = node._ctx
                if node._freed and node.grad is not None:
                    # silently stopping here would drop every gradient behind this node
                    raise RuntimeError(
                        f"backward() reached a tensor of shape {node.shape} whose graph an earlier "
                        "backward() freed; call backward once per forward (e.g. on the sum of the losses)")
                if ctx is None or node.grad is None:
                    continue  # a leaf: its grad stays for the optimiser to read
                grads = ctx.function.backward(ctx, node.grad)
                if not isinstance(grads, tuple):
                    grads = (grads,)
                for parent, g in zip(ctx.inputs, grads):
                    if g is None or not parent.requires_grad:
                        continue
                    if g.shape != parent.shape:
                        raise RuntimeError(
                            f"{ctx.function.__name__}.backward returned a gradient of shape "
                            f"{g.shape} for an input of shape {parent.shape}")
                    # accumulate, never assign: a tensor used twice gets the sum
                    parent.grad = g if parent.grad is None else parent.grad + g
                node.grad = None  # intermediate gradients are not kept
                node._ctx = None  # nor the graph: backward is called once per forward
                node._freed = True

    # -- operators ------------------------------------------------------------------
    def __add__(self, other):
        return Add.apply(self, other)

    __radd__ = __add__

    def __sub__(self, other):
        return Sub.apply(self, other)

    def __rsub__(self, other):
        return Sub.apply(other, self)

    def __mul__(self, other):
        return Mul.apply(self, other)

    __rmul__ = __mul__

    def __truediv__(self, other):
        return Div.apply(self, other)

    def __rtruediv__(self, other):
        return Div.apply(other, self)

    def __neg__(self):
        return Neg.apply(self)

    def __matmul__(self, other):
        return MatMul.apply(self, other)

    def sum(self, axis=None, keepdims=False):
        return Sum.apply(self, axis=axis, keepdims=keepdims)

    def mean(self, axis=None, keepdims=False):
        return Mean.apply(self, axis=axis, keepdims=keepdims)

    def reshape(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return Reshape.apply(self, shape=shape)

    def flatten(self):
        """(N, ...) -> (N, prod(...))."""
        return self.reshape(self.shape[0], int(np.prod(self.shape[1:])))

    def relu(self):
        return ReLU.apply(self)

    def exp(self):
        return Exp.apply(self)

    def log(self):
        return Log.apply(self)


def _topological_order(root: Tensor) -> list[Tensor]:
    """Every node reachable from ``root``, each after all of its inputs."""
    order, seen = [], set()
    stack = [(root, False)]
    while stack:  # iterative depth-first search: deep graphs do not hit the recursion limit
        node, inputs_done = stack.pop()
        if inputs_done:
            order.append(node)
            continue
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.append((node, True))
        if node._ctx is not None:
            for parent in node._ctx.inputs:
                if parent.requires_grad and id(parent) not in seen:
                    stack.append((parent, False))
    return order


def as_tensor(x) -> Tensor:
    return x if isinstance(x, Tensor) else Tensor(x)


class Function:
    """One differentiable operation: ``forward`` computes, ``backward`` differentiates.

    Subclasses define two static methods, forward directly above backward:

    * ``forward(ctx, *arrays, **options) -> array`` computes the output from the
      input arrays and saves what backward needs with ``ctx.save(...)``;
    * ``backward(ctx, grad_out) -> tuple`` returns one gradient per input array
      (``None`` for an input that has none), each the shape of that input.

    ``Function.apply(*tensors, **options)`` runs forward on the tensors' data and, if
    any input requires a gradient, links the output into the graph.
    """

    @classmethod
    def apply(cls, *inputs, **options):
        tensors = tuple(as_tensor(x) for x in inputs)
        ctx = Context()
        ctx.needs_input_grad = tuple(t.requires_grad for t in tensors)
        try:
            with one_blas_thread():   # tinycnn's products on its own threads (backend.py)
                data = cls.forward(ctx, *(t.data for t in tensors), **options)
        except ValueError as e:   # NumPy's own complaint (shapes that do not broadcast, ...): name the op
            shapes = ", ".join(str(t.shape) for t in tensors)
            raise ValueError(f"{cls.__name__}: {e} (inputs of shape {shapes})") from None
        needs_grad = is_grad_enabled() and any(t.requires_grad for t in tensors)
        out = Tensor(data, requires_grad=needs_grad)
        if needs_grad:
            ctx.function, ctx.inputs = cls, tensors
            out._ctx = ctx
        return out

    @staticmethod
    def forward(ctx, *arrays, **options):
        raise NotImplementedError

    @staticmethod
    def backward(ctx, grad_out):
        raise NotImplementedError


def unbroadcast(grad: np.ndarray, shape: tuple) -> np.ndarray:
    """Sum ``grad`` back to ``shape``: the adjoint of NumPy broadcasting."""
    if grad.shape == shape:
        return grad
    extra = grad.ndim - len(shape)
    grad = grad.sum(axis=tuple(range(extra))) if extra else grad
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if axes:
        grad = grad.sum(axis=axes, keepdims=True)
    return grad.reshape(shape)


# -- elementwise arithmetic, with broadcasting ------------------------------------------
class Add(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save(a_shape=a.shape, b_shape=b.shape)
        return a + b

    @staticmethod
    def backward(ctx, g):
        return unbroadcast(g, ctx.a_shape), unbroadcast(g, ctx.b_shape)


class Sub(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save(a_shape=a.shape, b_shape=b.shape)
        return a - b

    @staticmethod
    def backward(ctx, g):
        return unbroadcast(g, ctx.a_shape), unbroadcast(-g, ctx.b_shape)


class Mul(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save(a=a, b=b)
        return a * b

    @staticmethod
    def backward(ctx, g):
        need_a, need_b = ctx.needs_input_grad
        return (unbroadcast(g * ctx.b, ctx.a.shape) if need_a else None,
                unbroadcast(g * ctx.a, ctx.b.shape) if need_b else None)


class Div(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save(a=a, b=b)
        return a / b

    @staticmethod
    def backward(ctx, g):
        da = g / ctx.b
        db = -g * ctx.a / (ctx.b * ctx.b)
        return unbroadcast(da, ctx.a.shape), unbroadcast(db, ctx.b.shape)


class Neg(Function):
    @staticmethod
    def forward(ctx, a):
        return -a

    @staticmethod
    def backward(ctx, g):
        return (-g,)


class Exp(Function):
    @staticmethod
    def forward(ctx, a):
        out = np.exp(a)
        ctx.save(out=out)
        return out

    @staticmethod
    def backward(ctx, g):
        return (g * ctx.out,)


class Log(Function):
    @staticmethod
    def forward(ctx, a):
        ctx.save(a=a)
        return np.log(a)

    @staticmethod
    def backward(ctx, g):
        return (g / ctx.a,)


class MatMul(Function):
    """(..., m, k) @ (k, n) -> (..., m, n)."""

    @staticmethod
    def forward(ctx, a, b):
        if a.ndim < 2 or b.ndim < 2:  # a vector has no row or column to transpose in backward
            raise ValueError(f"operands must be matrices (..., m, k) @ (k, n), got {a.shape} @ {b.shape}; "
                             "reshape a vector to (1, k) or (k, 1)")
        ctx.save(a=a, b=b)
        return a @ b

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.a, ctx.b
        da = g @ np.swapaxes(b, -1, -2)
        db = np.swapaxes(a, -1, -2) @ g
        return unbroadcast(da, a.shape), unbroadcast(db, b.shape)


# -- reductions and shapes --------------------------------------------------------------
class Sum(Function):
    @staticmethod
    def forward(ctx, a, axis=None, keepdims=False):
        ctx.save(shape=a.shape, axis=axis, keepdims=keepdims)
        return np.sum(a, axis=axis, keepdims=keepdims)

    @staticmethod
    def backward(ctx, g):
        if ctx.axis is not None and not ctx.keepdims:
            g = np.expand_dims(g, ctx.axis)  # put the reduced axes back, size 1
        return (np.broadcast_to(g, ctx.shape).astype(np.float32, order="C"),)  # a plain array, not a view


class Mean(Function):
    @staticmethod
    def forward(ctx, a, axis=None, keepdims=False):
        out = np.mean(a, axis=axis, keepdims=keepdims)
        ctx.save(shape=a.shape, axis=axis, keepdims=keepdims, count=a.size // max(np.size(out), 1))
        return out

    @staticmethod
    def backward(ctx, g):
        if ctx.axis is not None and not ctx.keepdims:
            g = np.expand_dims(g, ctx.axis)
        return (np.broadcast_to(g / ctx.count, ctx.shape).astype(np.float32, order="C"),)


class Reshape(Function):
    @staticmethod
    def forward(ctx, a, shape):
        ctx.save(shape=a.shape)
        return a.reshape(shape)

    @staticmethod
    def backward(ctx, g):
        return (g.reshape(ctx.shape),)


# -- activations --------------------------------------------------------------------------
class ReLU(Function):
    @staticmethod
    def forward(ctx, a):
        out = np.maximum(a, 0)
        ctx.save(out=out)
        return out

    @staticmethod
    def backward(ctx, g):
        return (activation_kernels.relu_grad(g, ctx.out),)


def _log_softmax(a, axis):
    shifted = a - a.max(axis=axis, keepdims=True)  # log-sum-exp trick: exp never overflows
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


class Softmax(Function):
    @staticmethod
    def forward(ctx, a, axis=-1):
        out = np.exp(_log_softmax(a, axis))
        ctx.save(out=out, axis=axis)
        return out

    @staticmethod
    def backward(ctx, g):
        s = ctx.out
        # Jacobian-vector product of softmax: s * (g - <g, s>)
        return (s * (g - (g * s).sum(axis=ctx.axis, keepdims=True)),)


class LogSoftmax(Function):
    @staticmethod
    def forward(ctx, a, axis=-1):
        out = _log_softmax(a, axis)
        ctx.save(out=out, axis=axis)
        return out

    @staticmethod
    def backward(ctx, g):
        s = np.exp(ctx.out)
        return (g - s * g.sum(axis=ctx.axis, keepdims=True),)


def relu(x):
    """max(x, 0), elementwise."""
    return ReLU.apply(x)


def softmax(x, axis=-1):
    """exp(x) / sum(exp(x)) along ``axis``, computed stably."""
    return Softmax.apply(x, axis=axis)


def log_softmax(x, axis=-1):
    """log(softmax(x)) along ``axis``, computed stably with log-sum-exp."""
    return LogSoftmax.apply(x, axis=axis)
