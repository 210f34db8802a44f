"""The one switch between the readable NumPy kernels and the fast Numba kernels.

Every heavy op (convolution, pooling, batch normalisation) has two implementations
with the same signature: ``reference`` (plain NumPy, written to be read) and
``numba`` (compiled, parallel over the batch). The Numba path is the default.

    tc.set_backend("numpy")          # for the rest of the program
    with tc.use_backend("numpy"):    # for one block
        ...

The environment variable ``TINYCNN_BACKEND`` sets the starting value.
"""
from __future__ import annotations

import contextlib
import os

BACKENDS = ("numba", "numpy")

# Whether the Numba kernels run their ``prange`` loops (over images or rows) on several
# threads. Off by default: the big matrix products already use every core through
# BLAS, and BLAS's idle worker threads spin for a while after each product, so Numba
# threads started in between fight them for the cores. Measured on 2 cores
# (vggbn, batch 128): 61 img/s with both threaded, 113 img/s with only BLAS threaded;
# one-image latency 52 ms against 2.9 ms. ``TINYCNN_NUMBA_PARALLEL=1`` turns it on
# (read at import; Numba compiles and caches each setting separately).
PARALLEL = os.environ.get("TINYCNN_NUMBA_PARALLEL", "0") == "1"
_current = os.environ.get("TINYCNN_BACKEND", "numba")
if _current not in BACKENDS:
    raise ValueError(f"TINYCNN_BACKEND={_current!r}: expected one of {BACKENDS}")


def get_backend() -> str:
    return _current


def set_backend(name: str) -> None:
    """Select the kernels used from now on: ``"numba"`` (fast) or ``"numpy"`` (reference)."""
    global _current
    if name not in BACKENDS:
        raise ValueError(f"set_backend({name!r}): expected one of {BACKENDS}")
    _current = name


@contextlib.contextmanager
def use_backend(name: str):
    """Select the kernels for the duration of a ``with`` block."""
    previous = get_backend()
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


def dispatch(reference, fast):
    """Return a function that calls ``reference`` or ``fast`` by the current backend."""
    def kernel(*args, **kwargs):
        return (fast if _current == "numba" else reference)(*args, **kwargs)
    kernel.__name__ = reference.__name__.replace("_reference", "")
    kernel.__doc__ = reference.__doc__
    kernel.reference, kernel.fast = reference, fast
    return kernel
